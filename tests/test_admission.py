"""The admission-control lines reach HAProxy's config through Ray 2.60's own template, and HAProxy
accepts the result (deployments/serving/admission.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml

from benchmarks.cluster import free_port, wait_http
from core.settings import Settings, load_settings
from deployments.serving.admission import (
    CLIENT_SHARE_REFUSED_BY,
    ENV_VAR,
    MAX_CONCURRENT_PER_INGRESS,
    REPLICA_NICENESS,
    body_cap_lines,
    client_share_lines,
    deployed_lines,
    haproxy_health_check_inter,
)

haproxy = pytest.importorskip("ray.serve._private.haproxy")
ROOT = Path(__file__).resolve().parent.parent


def _render(tmp_path: Path, inter: str) -> str:
    """Ray's HAProxy config for an app with two Ingress replicas and the head's proxy as fallback."""
    cfg = haproxy.HAProxyConfig(
        socket_path=str(tmp_path / "admin.sock"),
        server_state_base=str(tmp_path),
        server_state_file=str(tmp_path / "server-state"),
        health_check_inter=inter,
    )
    backend = haproxy.BackendConfig(
        name="opensesame",
        path_prefix="/",
        app_name="opensesame",
        servers=[
            haproxy.ServerConfig(name="r1", host="127.0.0.1", port=30001),
            haproxy.ServerConfig(name="r2", host="127.0.0.1", port=30002),
        ],
        fallback_server=haproxy.ServerConfig(name="fallback", host="127.0.0.1", port=8000),
    )
    api = haproxy.HAProxyApi(cfg, {"opensesame": backend}, config_file_path=str(tmp_path / "haproxy.cfg"))
    api._generate_config_file_internal()
    return (tmp_path / "haproxy.cfg").read_text()


def _backend(text: str) -> list[str]:
    lines = text.splitlines()
    start = lines.index("backend opensesame")
    end = next(i for i in range(start + 1, len(lines)) if not lines[i].startswith(" "))
    return [line.strip() for line in lines[start:end]]


def test_the_value_is_what_ray_reads_and_the_module_prints() -> None:
    printed = subprocess.run(
        [sys.executable, "-m", "deployments.serving.admission"], capture_output=True, text=True, check=True
    ).stdout
    settings = load_settings()  # the Ingress's share, also enforced at the edge
    assert printed.rstrip("\n") == deployed_lines(settings)
    assert deployed_lines(settings) == haproxy_health_check_inter(
        client_share=settings.client_max_concurrent, body_wait_s=settings.request_timeout_s,
        max_body_bytes=settings.request_body_max_bytes)
    assert ENV_VAR == "RAY_SERVE_HAPROXY_HEALTH_CHECK_INTER"
    assert ENV_VAR in Path(haproxy.__file__).with_name("constants.py").read_text()


def test_ray_template_gets_the_limit_the_refusal_and_keeps_health_checks(tmp_path: Path) -> None:
    backend = _backend(_render(tmp_path, haproxy_health_check_inter()))
    default_server = [line for line in backend if line.startswith("default-server")]
    assert default_server == [
        f"default-server fastinter 250ms downinter 250ms fall 2 rise 2 inter 5s "
        f"maxconn {MAX_CONCURRENT_PER_INGRESS} check"
    ]
    [refusal] = [line for line in backend if line.startswith("http-request return status 503")]
    assert "content-type application/json" in refusal and "hdr Retry-After 1" in refusal
    assert "hdr X-Refused-By admission" in refusal
    assert refusal.endswith("if { queue gt 0 }")
    assert """'{"error":{"status":503,"message":"the service is overloaded; retry shortly"}}'""" in refusal
    # Serve's client-settable timeout and disconnect hints are removed before any replica sees them.
    assert "http-request del-header x-request-timeout-seconds" in backend
    assert "http-request del-header x-request-disconnect-disabled" in backend
    # What Ray appends after the value is commented out, not glued to the rule.
    assert "# check" in backend
    # Every server is still health-checked (the per-server `check` is Ray's own).
    servers = [line for line in backend if line.startswith("server ")]
    assert len(servers) == 3 and all(" check" in s for s in servers)
    assert servers[-1].endswith("check backup")


def test_haproxy_accepts_the_config(tmp_path: Path) -> None:
    text = _render(tmp_path, haproxy_health_check_inter(max_concurrent=4))
    assert "maxconn 4 check" in text
    done = subprocess.run(
        [haproxy.get_haproxy_binary(), "-c", "-f", str(tmp_path / "haproxy.cfg")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_client_share_goes_before_admission_and_haproxy_accepts_it(tmp_path: Path) -> None:
    backend = _backend(_render(tmp_path, haproxy_health_check_inter(client_share=4)))
    [share] = [i for i, line in enumerate(backend) if line.startswith("http-request return status 429")]
    [admission] = [i for i, line in enumerate(backend) if line.startswith("http-request return status 503")]
    # A client past its share is refused before it could wait for (and take) an admission slot.
    assert share < admission and backend[share].endswith("if { sc1_conn_cur gt 4 }"), backend
    assert f"hdr X-Refused-By {CLIENT_SHARE_REFUSED_BY}" in backend[share]
    assert "client_max_concurrent = 4" in backend[share]
    assert any(line.startswith("stick-table type string") for line in backend)
    done = subprocess.run([haproxy.get_haproxy_binary(), "-c", "-f", str(tmp_path / "haproxy.cfg")],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr


@contextlib.contextmanager
def _haproxy_before(
    tmp_path: Path, lines: list[str], *, answer_after_s: float = 0.0
) -> Iterator[tuple[int, list[str]]]:
    """A real HAProxy whose backend has ``lines``, in front of a loopback server that answers
    200 after ``answer_after_s``: HAProxy's port, and the bodies that reached the server."""
    hits: list[str] = []

    class Server(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            hits.append(self.rfile.read(int(self.headers.get("content-length") or 0)).decode())
            self.do_GET()

        def do_GET(self) -> None:  # noqa: N802
            time.sleep(answer_after_s)
            self.send_response(200)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = free_port()
    backend = "\n    ".join(lines)
    (tmp_path / "h.cfg").write_text(
        "defaults\n    mode http\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n"
        f"frontend f\n    bind 127.0.0.1:{port}\n    default_backend b\n"
        f"backend b\n    {backend}\n    server s 127.0.0.1:{server.server_address[1]} maxconn 64\n")
    proc = subprocess.Popen([haproxy.get_haproxy_binary(), "-f", str(tmp_path / "h.cfg")])
    try:
        wait_http(f"http://127.0.0.1:{port}/", timeout_s=10)
        yield port, hits
    finally:
        proc.terminate()
        proc.wait(10)
        server.shutdown()


def test_haproxy_refuses_a_client_past_its_share_and_only_that_client(tmp_path: Path) -> None:
    """A real HAProxy with the share's lines in front of a loopback server that answers after
    0.5 s: ten concurrent requests of one user get 2 through and 8 refused 429 by HAProxy (none
    reaches the server); two other users' and a GET go through meanwhile; an API key is a
    client of its own whatever user ids it sends; once the requests end the share is free; a
    body sent slowly is waited for."""
    with _haproxy_before(tmp_path, client_share_lines(2), answer_after_s=0.5) as (port, hits):
        url = f"http://127.0.0.1:{port}/predict"

        async def burst(calls: list[tuple[str, dict[str, str]]]) -> list[tuple[str, int, str | None]]:
            async with httpx.AsyncClient(timeout=10) as c:
                async def one(user: str, headers: dict[str, str]) -> tuple[str, int, str | None]:
                    if user == "GET":
                        r = await c.get(url.replace("/predict", "/health"))
                    else:
                        r = await c.post(url, json={"user_id": user, "prompt": "x"}, headers=headers)
                    return user, r.status_code, r.headers.get("x-refused-by")
                return await asyncio.gather(*(one(u, h) for u, h in calls))

        key = {"authorization": "Bearer a-tenant-token-0123456789"}
        got = asyncio.run(burst([("flooder", {})] * 10 + [("alice", {}), ("bob", {}), ("GET", {})]
                                + [(f"k{i}", key) for i in range(4)]))
        flooder = Counter((s, by) for u, s, by in got if u == "flooder")
        assert flooder == {(200, None): 2, (429, CLIENT_SHARE_REFUSED_BY): 8}, got
        assert {(u, s) for u, s, _ in got if u in ("alice", "bob", "GET")} == {
            ("alice", 200), ("bob", 200), ("GET", 200)}
        keyed = Counter(s for u, s, _ in got if u.startswith("k"))
        assert keyed == {200: 2, 429: 2}, got  # one key, one client: its user ids do not matter
        assert sum('"flooder"' in h for h in hits) == 2  # the refused never reached the server
        again = asyncio.run(burst([("flooder", {})] * 2))
        assert [s for _, s, _ in again] == [200, 200], again
        # A body that comes slowly is waited for (body_wait_s), not cut at once with a 408.
        body = json.dumps({"user_id": "slow", "prompt": "x"}).encode()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(body) + body[:10])
            time.sleep(1.5)
            sock.sendall(body[10:])
            assert sock.recv(64).startswith(b"HTTP/1.1 200"), "a slow body was not waited for"


def test_haproxy_refuses_a_declared_body_over_the_cap_before_waiting_for_it(tmp_path: Path) -> None:
    """The body cap goes before the share's wait for the body: a Content-Length over the cap,
    with only the body's first bytes sent, is answered 413 in the service's envelope at once
    (without the cap's line HAProxy waits ``body_wait_s`` for the rest, then answers 408); a
    body under the cap still reaches the server, and a chunked one passes to it to be counted."""
    lines = [*body_cap_lines(1000), *client_share_lines(2, body_wait_s=20)]
    with _haproxy_before(tmp_path, lines) as (port, hits):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 1001\r\n\r\n" + b'{"user_id": "u", "spec": "')
            answer = sock.recv(65536)  # 10 s: a wait for the body (20 s) times out here
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 413"), answer[:300]
        assert json.loads(body)["error"] == {"status": 413, "message": "request body over 1000 bytes"}
        assert hits == []
        ok = httpx.post(f"http://127.0.0.1:{port}/predict", json={"user_id": "u", "prompt": "x" * 900})
        chunked = httpx.post(f"http://127.0.0.1:{port}/predict", content=iter([b'{"user_id": "u"}']))
        assert (ok.status_code, chunked.status_code) == (200, 200) and len(hits[0]) > 900, hits


def test_without_the_value_ray_writes_no_limit(tmp_path: Path) -> None:
    backend = _backend(_render(tmp_path, "5s"))
    assert not [line for line in backend if "maxconn" in line or "queue gt" in line]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_concurrent": 0}, "max_concurrent must be at least 1"),
        ({"retry_after_s": -1}, "retry_after_s must not be negative"),
        ({"inter": "5s maxconn 1"}, "inter must be one HAProxy time"),
        ({"inter": ""}, "inter must be one HAProxy time"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        haproxy_health_check_inter(**kwargs)


def test_lower_priority_lowers_every_thread_once() -> None:
    # Linux niceness is per thread: a thread started before the call must be lowered too.
    code = (
        "import os, threading, time; from deployments.serving.admission import lower_priority as f\n"
        "ev = threading.Event(); t = threading.Thread(target=ev.wait); t.start()\n"
        "b = os.getpriority(os.PRIO_PROCESS, 0); a = f(min(19, b + 3)); c = f(19); d = f(0)\n"
        "other = os.getpriority(os.PRIO_PROCESS, t.native_id); ev.set(); t.join()\n"
        "print(b, a, c, d, other)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, after, again, raised, other = map(int, done.stdout.split())
    # once only, and never raised (0 would need a privilege a worker does not have)
    assert after == min(19, before + 3) and again == raised == after and other == after


def test_the_kuberay_manifest_sets_the_same_value() -> None:
    manifest = yaml.safe_load((ROOT / "configs" / "rayservice.yaml").read_text())
    cluster = manifest["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for pod in pods:
        env = {e["name"]: e.get("value") for e in pod["template"]["spec"]["containers"][0]["env"]}
        assert env[ENV_VAR] == deployed_lines(Settings())  # what make run and the image deploy


def test_the_images_health_check_is_answered_outside_admission(tmp_path: Path) -> None:
    """The Dockerfile's HEALTHCHECK asks /-/healthz: HAProxy answers it in its frontend from the
    servers' state, before any request reaches the backend where admission refuses (a busy
    container is not restarted)."""
    text = _render(tmp_path, haproxy_health_check_inter())
    lines = [line.strip() for line in text.splitlines()]
    frontend = lines[next(i for i, line in enumerate(lines) if line.startswith("frontend")):
                     lines.index("backend opensesame")]
    assert any("/-/healthz" in line for line in frontend), frontend
    answers = [i for i, line in enumerate(frontend)
               if line.startswith("http-request return") and "healthcheck" in line]
    first_backend = next(i for i, line in enumerate(frontend)
                         if line.startswith(("use_backend", "default_backend")))
    assert answers and max(answers) < first_backend
    assert not any("healthcheck" in line for line in _backend(text))
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "127.0.0.1:8000/-/healthz" in dockerfile and "/health'" not in dockerfile
    assert "RAY_AUTH_MODE=token" in dockerfile and "RAY_AUTH_MODE=disabled" not in dockerfile


def test_a_replica_built_in_process_leaves_its_callers_priority_alone(tmp_path: Path) -> None:
    """Only a replica in its own Ray actor lowers itself: a test that builds one in-process would
    otherwise lower the test runner, and every Ray head it starts later, to 19."""
    code = (
        "import os; from deployments.candidate_generator import CandidateGeneratorDeployment as D\n"
        "b = os.getpriority(os.PRIO_PROCESS, 0)\n"
        f"D.func_or_class(settings={{'data_dir': {str(tmp_path)!r}, 'feedback_enabled': False}})\n"
        "print(b, os.getpriority(os.PRIO_PROCESS, 0))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=ROOT, timeout=120)
    before, after = map(int, done.stdout.split()[-2:])
    assert before < 19 and after == before, done.stdout


@pytest.mark.parametrize(
    ("title", "lowered"),
    [
        ("ray::SERVE_REPLICA::opensesame#Ranker#q2bz:ServeReplica:opensesame:Ranker.__init__", True),
        ("ray::SERVE_REPLICA::hostile#FeatureExtractor#a1:ServeReplica:hostile:FeatureExtractor.__init__",
         True),
        ("ray::SERVE_REPLICA::opensesame#Ingress#x:ServeReplica:opensesame:Ingress.__init__", False),
        ("ray::build_serve_application", False),
    ],
)
def test_a_graph_replica_lowers_itself_before_importing_the_deployments(title: str, lowered: bool) -> None:
    """A process titled as a replica of the graph is at :data:`REPLICA_NICENESS` as soon as the
    ``deployments`` package is imported, before any deployment module loads its dependencies
    (~1 s of CPU a new replica spent at the workers' niceness 0); the Ingress, and the task that
    builds the app, keep theirs."""
    code = ("import os, sys; b = os.getpriority(os.PRIO_PROCESS, 0); import deployments\n"
            "print(b, os.getpriority(os.PRIO_PROCESS, 0), 'deployments.ranking' in sys.modules)\n")
    done = subprocess.run(["bash", "-c", 'exec -a "$0" "$1" -c "$2"', title, sys.executable, code],
                          capture_output=True, text=True, check=True, cwd=ROOT, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    before, after, loaded = done.stdout.split()
    assert int(before) < REPLICA_NICENESS and loaded == "False", done.stdout
    assert int(after) == (REPLICA_NICENESS if lowered else int(before)), (title, done.stdout)
