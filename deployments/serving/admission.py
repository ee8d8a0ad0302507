"""Admission control in front of the Ingress replicas: HAProxy refuses what they cannot take.

Past its capacity the service must answer the excess at once with 503 + ``Retry-After`` and
finish what it accepted (RELIABILITY.md, "Overload"). Serve's own ``max_queued_requests`` refuses inside the
Ingress replica, i.e. only after the request has crossed the proxy and reached a replica that is
itself short of CPU; at 5x capacity the refusals then queue behind the work. HAProxy (which
``make run`` and the image use, ``RAY_SERVE_ENABLE_HA_PROXY=1``) can refuse before any of that.

Ray 2.60 has no setting for it, but its HAProxy template (``ray/serve/_private/haproxy.py``,
``BackendConfig.build_health_check_config``) writes ``RAY_SERVE_HAPROXY_HEALTH_CHECK_INTER``
unescaped into each backend's ``default-server ... inter <value> check`` line. The value built
here ends that line itself (``check`` kept: the health checks still run), caps every Ingress
server at :data:`MAX_CONCURRENT_PER_INGRESS` requests, and adds a rule answering 503 when the
backend already has a request waiting for a slot; a trailing ``#`` turns the ``check`` Ray
appends into a comment. So at most a request or so per backend waits, everything else is refused
by HAProxy without touching a replica. ``tests/test_admission.py`` renders Ray's own template
with it and has HAProxy check the result.

The same lines also give each client a share at the edge (:func:`client_share_lines`, the
Ingress's ``client_max_concurrent``): a client past it is answered 429 by HAProxy, so its excess
neither reaches a replica nor takes the admission slots every other client needs (measured: a
slow-spec flood whose refused requests passed HAProxy took them, and HAProxy answered 503 to
the other client's requests and to ``/health``; RELIABILITY.md, issue 19).

``python -m deployments.serving.admission`` prints the value (with the share from the
``OPENSESAME_*`` environment); ``make run`` and the Dockerfile put it in
the Ray head's environment (the HAProxy manager started by the head reads it).

The graph's replicas also lower their own CPU priority (:func:`lower_priority`, to
:data:`REPLICA_NICENESS`): on a 2-CPU node HAProxy, the Ingress and the clients' connections then
get the CPU first, so refusals and ``/health`` stay fast while the replicas are saturated.
``make run`` starts Ray's workers at niceness 0 (``RAY_worker_niceness``, :func:`tools.cluster.make_run_env`):
Ray applies a worker's niceness only once its interpreter has started and imported ``ray``, so
each new worker spends its first ~0.3 s of CPU at the raylet's 0; at Ray's default 15 for
HAProxy and the Ingress, that start stalled them for 100-600 ms whenever autoscaling added
replicas (RELIABILITY.md, "Ray's daemons and a worker's start").
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from core.settings import Settings

__all__ = [
    "CLIENT_SHARE_REFUSED_BY",
    "ENV_VAR",
    "GRAPH_REPLICAS",
    "MAX_CONCURRENT_PER_INGRESS",
    "OVERLOAD_MESSAGE",
    "REFUSED_BY",
    "REFUSED_BY_HEADER",
    "REPLICA_NICENESS",
    "STRIPPED_HEADERS",
    "body_cap_lines",
    "body_over_cap",
    "client_share_lines",
    "deployed_lines",
    "haproxy_health_check_inter",
    "lower_priority",
    "lower_priority_if_graph_replica",
    "process_title",
    "replica_of",
]

ENV_VAR = "RAY_SERVE_HAPROXY_HEALTH_CHECK_INTER"
# Requests in flight per Ingress replica: enough to fill its coalesced batches (max_batch_size 16)
# and keep both CPUs busy, few enough that an accepted request is not kept waiting (measured:
# tests/test_overload.py, RELIABILITY.md "Overload").
MAX_CONCURRENT_PER_INGRESS = 16
HEALTH_CHECK_INTER = "5s"  # Ray's own default for the value we extend
RETRY_AFTER_S = 1  # as deployments/serving/http_errors.py
OVERLOAD_MESSAGE = "the service is overloaded; retry shortly"
# The graph's replicas (generator, features, ranker): below HAProxy, the Ingress and Ray's own.
# The Ingress keeps the workers' priority: it answers /livez and /health and takes requests off
# HAProxy, beside HAProxy and Ray's daemons, not below a replica that is starting or saturated.
REPLICA_NICENESS = 19
GRAPH_REPLICAS = ("CandidateGenerator", "FeatureExtractor", "Ranker")
# A Serve replica's process title names its app and deployment: ``ray::ServeReplica:<app>:<name>``
# once it runs (a method it runs after a dot), and while its actor is built
# ``ray::SERVE_REPLICA::<app>#<name>#<id>:ServeReplica:<app>:<name>.__init__``.
_REPLICA_TITLE = re.compile(r"ServeReplica:(?P<app>[^:#\s]+):(?P<name>[A-Za-z0-9_\-]+)")
# Says who refused (clients and the load generator can tell HAProxy's refusals from a replica's).
REFUSED_BY_HEADER = "X-Refused-By"
REFUSED_BY = "admission"
CLIENT_SHARE_REFUSED_BY = "client-share"
# A client's key at the edge is cut past this many characters (user ids are at most 256).
CLIENT_KEY_LEN = 300
# How long HAProxy waits for a body to key its client: the default request_timeout_s.
BODY_WAIT_S = 30.0
# Serve's per-request hints (names in ray/serve/_private/constants.py) that a client could use to
# disable its request timeout and disconnect handling: removed here, at the edge, and ignored by
# the Ingress (deployments/serving/fairness.py). Only the operator may set them.
STRIPPED_HEADERS = (b"x-request-timeout-seconds", b"x-request-disconnect-disabled")


def client_share_lines(share: int, *, body_wait_s: float = BODY_WAIT_S,
                       retry_after_s: int = RETRY_AFTER_S) -> list[str]:
    """HAProxy lines that refuse a client past ``share`` requests in flight with 429, before any
    replica is asked. The client is keyed as the Ingress keys its share
    (:func:`deployments.serving.fairness.client_key`): its API key when it sends one (hashed),
    else the ``user_id`` of its JSON body and its own address (which the Ingress, behind
    HAProxy, cannot see). A request without either (a GET, a body with no ``user_id``) is not
    counted here; the Ingress's share still is. The Ingress counts per replica, this per service.

    A refusal here costs microseconds; in the Ingress it costs a request's work (Serve's routing,
    the replica's share of the request, the body read), and a client's refused requests come
    back in bursts that took admission's slots from everyone else (RELIABILITY.md, issue 19).

    The key needs the body: HAProxy waits for it (or for a full buffer) up to ``body_wait_s``,
    then answers 408; the Ingress's own deadline (``request_timeout_s``) would have cut such a
    request at the same time."""
    if share < 1:
        raise ValueError(f"client_share must be at least 1, got {share}")
    if body_wait_s <= 0:
        raise ValueError(f"body_wait_s must be positive, got {body_wait_s}")
    message = (f"this client already has its share of requests in flight (client_max_concurrent = "
               f"{share}); retry when one has finished")
    body = json.dumps({"error": {"status": 429, "message": message}}, separators=(",", ":"))
    assert "'" not in body
    return [
        "# Per-client share (deployments/serving/admission.py client_share_lines).",
        f"stick-table type string len {CLIENT_KEY_LEN} size 100k expire 60s store conn_cur",
        f"http-request wait-for-body time {round(body_wait_s * 1000)}ms if METH_POST",
        "http-request set-var(txn.client_src) src",
        "http-request set-var(txn.client) req.body,json_query('$.user_id'),concat(@,txn.client_src)"
        " if METH_POST",
        "http-request set-var(txn.client) req.hdr(authorization),xxh3 if { req.hdr(authorization) -m found }",
        "http-request track-sc1 var(txn.client) if { var(txn.client) -m found }",
        "http-request return status 429 content-type application/json"
        f" hdr Retry-After {retry_after_s} hdr {REFUSED_BY_HEADER} {CLIENT_SHARE_REFUSED_BY}"
        f" string '{body}' if {{ sc1_conn_cur gt {share} }}",
    ]


def body_over_cap(max_bytes: int) -> str:
    """What a client is told of a body over the cap, by the Ingress or by HAProxy."""
    return f"request body over {max_bytes} bytes"


def body_cap_lines(max_bytes: int) -> list[str]:
    """HAProxy lines that answer a declared body over ``max_bytes`` with the Ingress's own 413
    from its ``Content-Length`` alone, before the share's rule waits for the body: otherwise
    HAProxy would wait ``body_wait_s`` for bytes a client may never send, then answer 408
    (measured: tests/test_hostile_http.py ``[make run]``). A body without a length is counted
    by the Ingress while it streams."""
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be at least 1, got {max_bytes}")
    body = json.dumps({"error": {"status": 413, "message": body_over_cap(max_bytes)}}, separators=(",", ":"))
    return [
        "# Body cap (deployments/serving/admission.py body_cap_lines).",
        f"http-request return status 413 content-type application/json string '{body}'"
        f" if {{ req.hdr_val(content-length) gt {max_bytes} }}",
    ]


def haproxy_health_check_inter(
    *,
    max_concurrent: int = MAX_CONCURRENT_PER_INGRESS,
    inter: str = HEALTH_CHECK_INTER,
    retry_after_s: int = RETRY_AFTER_S,
    client_share: int | None = None,
    body_wait_s: float = BODY_WAIT_S,
    max_body_bytes: int | None = None,
) -> str:
    """The value of ``RAY_SERVE_HAPROXY_HEALTH_CHECK_INTER`` that adds admission control and,
    with ``client_share``, a per-client share (:func:`client_share_lines`); with
    ``max_body_bytes``, the body cap first (:func:`body_cap_lines`)."""
    if max_concurrent < 1:
        raise ValueError(f"max_concurrent must be at least 1, got {max_concurrent}")
    if client_share is not None and client_share < 1:
        raise ValueError(f"client_share must be at least 1, got {client_share}")
    if retry_after_s < 0:
        raise ValueError(f"retry_after_s must not be negative, got {retry_after_s}")
    if not inter or any(c.isspace() or c in "#'" for c in inter):
        raise ValueError(f"inter must be one HAProxy time like '5s', got {inter!r}")
    # The service's error envelope (deployments/serving/http_errors.py); single-quoted for HAProxy, which
    # takes everything between single quotes literally.
    body = json.dumps({"error": {"status": 503, "message": OVERLOAD_MESSAGE}}, separators=(",", ":"))
    assert "'" not in body
    return "\n    ".join(
        [
            f"{inter} maxconn {max_concurrent} check",
            "# Admission control (deployments/serving/admission.py): refuse while waiting for a slot.",
            *(f"http-request del-header {h.decode()}" for h in STRIPPED_HEADERS),
            *(body_cap_lines(max_body_bytes) if max_body_bytes is not None else ()),
            *(client_share_lines(client_share, body_wait_s=body_wait_s, retry_after_s=retry_after_s)
              if client_share else ()),
            "http-request return status 503 content-type application/json"
            f" hdr Retry-After {retry_after_s} hdr {REFUSED_BY_HEADER} {REFUSED_BY}"
            f" string '{body}' if {{ queue gt 0 }}",
            "#",  # Ray appends " check" to this line
        ]
    )


_lowered = False


def lower_priority(niceness: int = REPLICA_NICENESS) -> int:
    """Lower this process's CPU priority to ``niceness`` once (a replica of the graph calls it:
    :func:`lower_priority_if_graph_replica`); returns the niceness now in force. Never raises,
    never raises a priority: priority is a preference, not a requirement.

    On Linux niceness belongs to each thread, and a replica's constructor runs in one of several
    (Serve's user-code thread): every thread of the process is lowered; threads started later
    inherit it from theirs."""
    global _lowered
    try:
        current = os.getpriority(os.PRIO_PROCESS, 0)
        if _lowered:
            return current
        _lowered = True
        target = min(19, max(current, niceness))
        tasks = Path("/proc/self/task")
        for tid in [int(t) for t in os.listdir(tasks)] if tasks.is_dir() else [0]:
            try:
                if os.getpriority(os.PRIO_PROCESS, tid) < target:
                    os.setpriority(os.PRIO_PROCESS, tid, target)
            except OSError:
                continue  # a thread that ended meanwhile
        return os.getpriority(os.PRIO_PROCESS, 0)
    except OSError:
        return 0


def process_title(pid: int | None = None) -> str | None:
    """A process's title (this one's by default): Ray's workers set theirs (``ray::IDLE``, a
    replica's below), other processes show their program. None once the process is gone."""
    try:
        cmdline = Path(f"/proc/{pid or os.getpid()}/cmdline").read_bytes()
    except OSError:
        return None
    return cmdline.split(b"\0")[0].decode(errors="replace")


def replica_of(title: str | None, app: str | None = None) -> str | None:
    """The deployment whose Serve replica a process title names (of ``app``, or of any app)."""
    found = _REPLICA_TITLE.search(title or "")
    return found["name"] if found and app in (None, found["app"]) else None


def lower_priority_if_graph_replica() -> bool:
    """Lower this process to :data:`REPLICA_NICENESS` now if it is a replica of the graph (its
    process title says so). ``deployments`` calls it when first imported: a new replica's worker
    imports the deployment's code (numpy, LightGBM, the service's modules: ~1 s of CPU) before
    its constructor runs, and at the workers' niceness 0 that start stalled HAProxy and the
    Ingress (RELIABILITY.md, "Where a worker's start takes the CPU")."""
    if replica_of(process_title()) not in GRAPH_REPLICAS:
        return False
    lower_priority()
    return True


def deployed_lines(settings: Settings, *, client_share: int | None = None) -> str:
    """What ``make run``, the image and the KubeRay manifest deploy: admission, the Ingress's
    body cap and a client's share (``client_share``, else the settings'
    ``client_max_concurrent``), HAProxy waiting for a body as long as the Ingress would
    (``request_timeout_s``)."""
    return haproxy_health_check_inter(client_share=client_share or settings.client_max_concurrent,
                                      body_wait_s=settings.request_timeout_s,
                                      max_body_bytes=settings.request_body_max_bytes)


if __name__ == "__main__":
    from core.settings import load_settings

    sys.stdout.write(deployed_lines(load_settings()) + "\n")
