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

``python -m deployments.serving.admission`` prints the value; ``make run`` and the Dockerfile put it in
the Ray head's environment (the HAProxy manager started by the head reads it).

Replicas also lower their own CPU priority (:func:`lower_priority`): on a 2-CPU node HAProxy, the
proxy and the clients' connections then get the CPU first, so refusals stay fast while the
replicas are saturated.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

__all__ = [
    "ENV_VAR",
    "MAX_CONCURRENT_PER_INGRESS",
    "OVERLOAD_MESSAGE",
    "REFUSED_BY",
    "REFUSED_BY_HEADER",
    "REPLICA_NICE_INCREMENT",
    "STRIPPED_HEADERS",
    "haproxy_health_check_inter",
    "lower_priority",
]

ENV_VAR = "RAY_SERVE_HAPROXY_HEALTH_CHECK_INTER"
# Requests in flight per Ingress replica: enough to fill its coalesced batches (max_batch_size 16)
# and keep both CPUs busy, few enough that an accepted request is not kept waiting (measured:
# tests/test_overload.py, RELIABILITY.md "Overload").
MAX_CONCURRENT_PER_INGRESS = 16
HEALTH_CHECK_INTER = "5s"  # Ray's own default for the value we extend
RETRY_AFTER_S = 1  # as deployments/serving/http_errors.py
OVERLOAD_MESSAGE = "the service is overloaded; retry shortly"
REPLICA_NICE_INCREMENT = 5
# Says who refused (clients and the load generator can tell HAProxy's refusals from a replica's).
REFUSED_BY_HEADER = "X-Refused-By"
REFUSED_BY = "admission"
# Serve's per-request hints (names in ray/serve/_private/constants.py) that a client could use to
# disable its request timeout and disconnect handling: removed here, at the edge, and ignored by
# the Ingress (deployments/serving/fairness.py). Only the operator may set them.
STRIPPED_HEADERS = (b"x-request-timeout-seconds", b"x-request-disconnect-disabled")


def haproxy_health_check_inter(
    *,
    max_concurrent: int = MAX_CONCURRENT_PER_INGRESS,
    inter: str = HEALTH_CHECK_INTER,
    retry_after_s: int = RETRY_AFTER_S,
) -> str:
    """The value of ``RAY_SERVE_HAPROXY_HEALTH_CHECK_INTER`` that adds admission control."""
    if max_concurrent < 1:
        raise ValueError(f"max_concurrent must be at least 1, got {max_concurrent}")
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
            "http-request return status 503 content-type application/json"
            f" hdr Retry-After {retry_after_s} hdr {REFUSED_BY_HEADER} {REFUSED_BY}"
            f" string '{body}' if {{ queue gt 0 }}",
            "#",  # Ray appends " check" to this line
        ]
    )


_lowered = False


def lower_priority(increment: int = REPLICA_NICE_INCREMENT) -> int:
    """Lower this process's CPU priority once (a replica calls it in its constructor); returns the
    niceness now in force. Never raises: priority is a preference, not a requirement.

    On Linux niceness belongs to each thread, and a replica's constructor runs in one of several
    (Serve's user-code thread): every thread of the process is lowered; threads started later
    inherit it from theirs. Ray already starts workers at niceness 15; this takes replicas lower
    than Ray's own processes (controller, HAProxy manager and HAProxy)."""
    global _lowered
    try:
        current = os.getpriority(os.PRIO_PROCESS, 0)
        if _lowered:
            return current
        _lowered = True
        target = min(19, current + increment)
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


if __name__ == "__main__":
    sys.stdout.write(haproxy_health_check_inter() + "\n")
