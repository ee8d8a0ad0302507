"""``make run`` as an operator meets it (tools/run.py, on ports of its own): it refuses at once
when a port is taken, prints where it listens, serves the graph with its metrics on the metrics
port — each metric of deployments/serving/metrics.py with the counts of what was sent, Ray
Serve's own beside them, every series the Grafana dashboard queries — answers ``serve status``
through its dashboard, and ``make stop`` leaves none of its processes or ports behind."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from benchmarks.cluster import free_port, marked_pids, wait_http
from deployments.serving.metrics import METRICS, exported_names
from tests.test_metrics_dashboard import dashboard_queries, metric_names
from tools.cluster import listening_sockets
from tools.run import Ports, preflight

ROOT = Path(__file__).resolve().parent.parent
REQUEST = json.loads((ROOT / "examples" / "request.json").read_text())
_SERIES = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? ([0-9.eE+\-]+|NaN|\+Inf)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse(text: str) -> list[tuple[str, dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        m = _SERIES.match(line)
        if m:
            out.append((m[1], dict(_LABEL.findall(m[2] or "")), float(m[3])))
    return out


def total(series: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    return sum(v for n, lab, v in series if n == name and all(lab.get(k) == w for k, w in labels.items()))


_ACCESS = re.compile(r"^[A-Z]+ /\S* \d{3} ")


def _access(ports: Ports) -> list[str]:
    """Serve's access lines of the run's Ingress (``POST /predict 422 1.0ms``), one a request
    it answered: which requests the counts came from, when they are off."""
    logs = Path(ports.temp_dir) / "session_latest" / "logs" / "serve"
    lines = [json.loads(line) for f in logs.glob("replica_opensesame_Ingress_*.log")
             for line in f.read_text(errors="replace").splitlines() if line.startswith("{")]
    return [f"{d['asctime']} {d['message']}" for d in lines if _ACCESS.match(d.get("message", ""))]


def _ports() -> Ports:
    return Ports(http=free_port(), ray=free_port(), metrics=free_port(), dashboard=free_port(),
                 haproxy_metrics=free_port(), haproxy_stats=free_port())


def _args(p: Ports) -> list[str]:
    return ["--port", str(p.http), "--ray-port", str(p.ray), "--metrics-port", str(p.metrics),
            "--dashboard-port", str(p.dashboard), "--haproxy-metrics-port", str(p.haproxy_metrics),
            "--haproxy-stats-port", str(p.haproxy_stats)]


def test_a_taken_port_is_named_in_one_line_at_once() -> None:
    ports = _ports()
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports.http))
        s.listen()
        problem = preflight(ports)
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "tools.run", "start", *_args(ports)], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
    assert problem is not None and f"port {ports.http} (HTTP) is taken by python" in problem, problem
    assert done.returncode == 1 and done.stderr.strip().count("\n") == 0, done.stderr
    assert problem in done.stderr and time.monotonic() - started < 10
    assert marked_pids(ports.temp_dir) == []  # nothing was started


def test_a_bad_setting_is_named_in_one_line_at_once() -> None:
    """README, Settings: an unknown or malformed OPENSESAME_* is refused at start, naming it; like a
    taken port, in one line, before the banner and before anything starts."""
    ports = _ports()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENSESAME_LLM_WEIGHT": "2"}
    done = subprocess.run([sys.executable, "-m", "tools.run", "start", *_args(ports)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == "", (done.stdout, done.stderr[-2000:])
    assert done.stderr.strip() == ("make run: invalid setting OPENSESAME_LLM_WEIGHT='2': "
                                   "Input should be less than or equal to 1"), done.stderr[-2000:]
    assert marked_pids(ports.temp_dir) == []  # nothing was started


_RUN_LOGS: dict[int, Path] = {}  # what each `make run` of the fixture printed, by its pid


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Ports, subprocess.Popen[str]]]:
    ports = _ports()
    data = tmp_path_factory.mktemp("ops-run")
    dead_llm = free_port()  # nothing listens: every LLM call fails, the generator falls back
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled",
           "OPENSESAME_DATA_DIR": str(data), "OPENSESAME_LLM_BASE_URL": f"http://127.0.0.1:{dead_llm}",
           "OPENSESAME_LLM_MODEL": "none", "OPENSESAME_LLM_BREAKER_RESET_S": "600"}
    log = open(data / "run.log", "w+")  # noqa: SIM115 - read back at the end
    proc = subprocess.Popen([sys.executable, "-m", "tools.run", "start", *_args(ports), "--access-log"],
                            cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT, text=True)
    _RUN_LOGS[proc.pid] = data / "run.log"
    try:
        wait_http(f"http://127.0.0.1:{ports.http}/predict", timeout_s=240,
                  data=json.dumps(REQUEST).encode(), head=proc)
        log.seek(0)
        assert log.readline().strip() == ports.banner()  # the first thing it says: where it listens
        assert ports.banner().startswith(f"Ray 127.0.0.1:{ports.ray}, HTTP 127.0.0.1:{ports.http}, ")
        yield ports, proc
    finally:
        subprocess.run([sys.executable, "-m", "tools.run", "stop", *_args(ports)], cwd=ROOT, timeout=120)
        proc.wait(60)
        log.seek(0)
        print(log.read()[-3000:])
        log.close()


@pytest.mark.serve
@pytest.mark.slow
def test_make_run_exports_every_metric_with_the_counts_sent(run: tuple[Ports, subprocess.Popen[str]]) -> None:
    ports, _proc = run
    base = f"http://127.0.0.1:{ports.http}"
    with httpx.Client(base_url=base, timeout=30) as client:
        ids = []
        for _ in range(6):
            r = client.post("/predict", json=REQUEST)
            assert r.status_code == 200, r.text
            ids.append(r.json()["prediction_id"])
        shown = r.json()["predictions"]
        assert client.post("/predict", json={**REQUEST, "k": 0}).status_code == 422
        # Outcomes: two accepted (rank 1), one the 2nd prediction (rank 2), one no prediction had.
        outcomes = [{"accepted": True}, {"accepted": True}, {"actual_endpoint": shown[1]["endpoint"]},
                    {"actual_endpoint": "DELETE /nowhere"}]
        answers = [client.post("/feedback", json={"prediction_id": i, **o})
                   for i, o in zip(ids[:4], outcomes, strict=True)]
        assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
        ranks = [a.json()["rank"] for a in answers]
        assert ranks == [1, 1, 2, None], ranks
        assert client.get(f"/feedback/{ids[5]}").status_code == 200  # flushes the store
    sent = 1 + 6  # the fixture's probe (the Ingress saw no other: HAProxy answered before) and these

    def scrape() -> list[tuple[str, dict[str, str], float]]:
        return parse(httpx.get(f"http://127.0.0.1:{ports.metrics}/metrics", timeout=10).text)

    deadline = time.monotonic() + 60  # Ray's agent exports every ~10 s
    while True:
        series = scrape()
        done = total(series, "ray_opensesame_http_requests_total", route="/predict", status="200")
        # Each replica exports on its own schedule: wait for the last of them.
        if (done >= sent and total(series, "ray_opensesame_outcomes_total") >= 4
                and total(series, "ray_opensesame_feedback_total", result="written") >= sent
                and total(series, "ray_opensesame_fallbacks_total") >= sent
                and total(series, "ray_opensesame_batched_requests_total", deployment="Ranker") >= sent
                and {n for n in metric_names(dashboard_queries()) if n.startswith("ray_")}
                <= {n for n, _, _ in series}) \
                or time.monotonic() > deadline:
            break
        time.sleep(2)
    names = {n for n, _, _ in series}
    missing = [m for m in METRICS if not exported_names([m]) & names]
    assert missing == [], missing
    seen = [s for s in series if s[0] == "ray_opensesame_http_requests_total"], _access(ports)
    assert total(series, "ray_opensesame_http_requests_total", route="/predict", status="200") == sent, seen
    assert total(series, "ray_opensesame_http_requests_total", route="/predict", status="422") == 1, seen
    assert total(series, "ray_opensesame_http_requests_total", route="/feedback", status="200") == 4
    # Every answer is timed once: the 200s, the 422, and any the fixture's probe got while the
    # graph was still starting (a 503 under load).
    answered = total(series, "ray_opensesame_http_requests_total", route="/predict")
    assert answered >= sent + 1, seen
    assert total(series, "ray_opensesame_http_request_ms_count", route="/predict") == answered, seen
    for stage in ("spec", "candidates", "features", "rank"):
        assert total(series, "ray_opensesame_stage_ms_count", stage=stage) == sent, stage
        assert total(series, "ray_opensesame_stage_ms_sum", stage=stage) > 0, stage
    for deployment in ("Ingress", "FeatureExtractor", "Ranker"):  # every request in some batch
        batched = total(series, "ray_opensesame_batched_requests_total", deployment=deployment)
        assert batched == sent, deployment
        assert 1 <= total(series, "ray_opensesame_batch_size_count", deployment=deployment) <= sent
    # Every prediction went without the LLM (nothing listens), the breaker opened and stays open.
    assert total(series, "ray_opensesame_fallbacks_total") == sent
    assert total(series, "ray_opensesame_fallbacks_total", reason="circuit_open") >= 1
    assert total(series, "ray_opensesame_llm_breaker_state") == 1.0
    # The same inline spec: parsed once, then cached.
    assert total(series, "ray_opensesame_spec_cache_total", result="miss") == 1
    assert total(series, "ray_opensesame_spec_cache_total", result="hit") == sent - 1
    assert total(series, "ray_opensesame_feedback_total", result="written") == sent
    assert total(series, "ray_opensesame_feedback_total", result="dropped") == 0
    versions = [lab["version"] for n, lab, v in series if n == "ray_opensesame_model_info" and v == 1]
    assert len(versions) == 1 and versions[0], versions
    # Quality in production: 4 explicit outcomes on the Billing API, 2 first, 3 in the top 3.
    assert total(series, "ray_opensesame_outcomes_total", api="Billing") == 4
    assert total(series, "ray_opensesame_outcome_hits_total", api="Billing", k="1") == 2
    assert total(series, "ray_opensesame_outcome_hits_total", api="Billing", k="3") == 3
    # Ray Serve's own metrics come with them, and every series the dashboard queries exists
    # (HAProxy's, admission refusals included, on its own port).
    assert total(series, "ray_serve_deployment_request_counter_total", deployment="Ranker") >= 1
    edge = parse(httpx.get(f"http://127.0.0.1:{ports.haproxy_metrics}/metrics", timeout=10).text)
    assert total(edge, "haproxy_frontend_http_responses_total", proxy="http_frontend", code="2xx") >= sent
    assert metric_names(dashboard_queries()) - names - {n for n, _, _ in edge} == set()


@pytest.mark.serve
@pytest.mark.slow
def test_serve_status_works_against_make_run(run: tuple[Ports, subprocess.Popen[str]]) -> None:
    ports, _ = run
    serve = Path(sys.executable).parent / "serve"
    out = subprocess.run([str(serve), "status", "-a", f"http://127.0.0.1:{ports.dashboard}"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "opensesame" in out.stdout and "RUNNING" in out.stdout, out.stdout


@pytest.mark.serve
@pytest.mark.slow
@pytest.mark.parametrize("driver", [["-m", "tools.cli", "predict", "--json", "--request"],
                                    ["examples/handle_client.py", "--address-first"]])
def test_a_driver_joins_make_run_at_its_loopback_address(run: tuple[Ports, subprocess.Popen[str]],
                                                         driver: list[str]) -> None:
    """The README's handle commands, against make run's head at 127.0.0.1 and with only
    RAY_AUTH_MODE set: make run's head is a one-machine cluster, and a driver that is not one
    looked for it at the machine's address (every call 'did not accept this driver')."""
    ports, _ = run
    address = f"127.0.0.1:{ports.ray}"
    if driver[-1] == "--address-first":
        argv = [driver[0], "--address", address, "examples/request.json"]
    else:
        argv = [*driver[:-1], "--address", address, driver[-1], "examples/request.json"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    out = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**env, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled"})
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert json.loads(out.stdout)["predictions"], out.stdout[:500]


@pytest.mark.serve
@pytest.mark.slow
def test_logs_are_json_lines_with_the_prediction_id(run: tuple[Ports, subprocess.Popen[str]]) -> None:
    ports, _ = run
    r = httpx.post(f"http://127.0.0.1:{ports.http}/predict", json=REQUEST, timeout=30)
    prediction_id = r.json()["prediction_id"]
    logs = Path(ports.temp_dir) / "session_latest" / "logs" / "serve"
    deadline, found = time.monotonic() + 30, []
    while not found and time.monotonic() < deadline:
        lines = [line for f in logs.glob("replica_opensesame_Ingress_*.log")
                 for line in f.read_text(errors="replace").splitlines() if prediction_id in line]
        found = [json.loads(line) for line in lines]  # JSON, or this fails
        time.sleep(1)
    mine = [d for d in found if d.get("message") == "prediction"]
    assert mine and mine[0]["prediction_id"] == prediction_id, found
    assert mine[0]["request_id"] and mine[0]["deployment"].endswith("Ingress"), mine[0]
    # Serve's access line of the same request, found through its request id
    access = [json.loads(line) for f in logs.glob("replica_opensesame_Ingress_*.log")
              for line in f.read_text(errors="replace").splitlines() if mine[0]["request_id"] in line]
    assert any("/predict" in d.get("message", "") for d in access), access


@pytest.mark.serve
@pytest.mark.slow
def test_liveness_and_readiness(run: tuple[Ports, subprocess.Popen[str]]) -> None:
    ports, _ = run
    base = f"http://127.0.0.1:{ports.http}"
    assert httpx.get(base + "/livez", timeout=10).json() == {"status": "ok"}
    ready = httpx.get(base + "/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json() == {"status": "ready", "reasons": []}, ready.text


@pytest.mark.serve
def test_make_run_listens_on_loopback_only(run: tuple[Ports, subprocess.Popen[str]]) -> None:
    """HOST unset: every TCP socket of the run (Ray's GCS, raylet, agents and metrics export,
    HAProxy's HTTP, metrics and stats frontends, the dashboard) is on loopback — but for the one
    Ray Serve 2.60 hard-codes: each replica's inter-deployment gRPC server on ``[::]:0``
    (ray/serve/_private/replica.py; README, Operations)."""
    ports, _proc = run
    sockets = listening_sockets(marked_pids(ports.temp_dir))
    ours = {port for _pid, _address, port in sockets}
    assert {ports.http, ports.ray, ports.metrics, ports.haproxy_metrics, ports.haproxy_stats} <= ours, sockets
    opened = [(pid, Path(f"/proc/{pid}/comm").read_text().strip(), address, port)
              for pid, address, port in sockets
              if not (ipaddress.ip_address(address).is_loopback or address.startswith("::ffff:127."))]
    grpc = [o for o in opened if o[1].startswith("ray::ServeRepli") and o[2] == "::"]
    assert sorted(opened) == sorted(grpc), opened
    assert len(grpc) == len({o[0] for o in grpc}), grpc  # one a replica


@pytest.mark.serve
def test_make_run_shares_no_port_with_another_cluster(run: tuple[Ports, subprocess.Popen[str]]) -> None:
    """Serve's Python proxy (HAProxy's fallback until the Ingress replica is in its backend)
    binds with SO_REUSEPORT: on Serve's default port, 8500, every cluster on the machine would
    share it, and the kernel would hand one cluster's requests (a readiness probe) to another's
    proxy and Ingress, and count them there. The run's proxy has a port of its own, and no
    process outside the run listens on any port of the run."""
    ports, _proc = run
    pids = set(marked_pids(ports.temp_dir))
    sockets = listening_sockets(pids)
    proxy = {port for pid, _address, port in sockets
             if Path(f"/proc/{pid}/comm").read_text().startswith("ray::ProxyActor")}
    assert proxy and not proxy & {8500, 9500}, proxy  # Serve's defaults (HTTP, gRPC)
    others = {int(p) for p in os.listdir("/proc") if p.isdigit()} - pids
    shared = {port for _pid, _address, port in listening_sockets(others)} & {p for _, _, p in sockets}
    assert shared == set(), shared


@pytest.mark.serve
@pytest.mark.slow
def test_make_stop_leaves_nothing(run: tuple[Ports, subprocess.Popen[str]]) -> None:
    ports, proc = run
    assert marked_pids(ports.temp_dir)
    done = subprocess.run([sys.executable, "-m", "tools.run", "stop", *_args(ports)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "stopped" in done.stdout, done.stdout
    # `make run` itself ends with what it started, on its own and quietly: no SIGKILL of it, no
    # stack dump or traceback of the Serve driver in its terminal.
    assert proc.wait(30) == 0
    said = _RUN_LOGS[proc.pid].read_text()
    assert "Traceback" not in said and "SIGTERM received" not in said, said[-3000:]
    assert marked_pids(ports.temp_dir) == []
    assert preflight(ports) is None  # every port free again: the next `make run` starts


@pytest.mark.serve
@pytest.mark.slow
def test_sigint_stops_a_run_started_in_the_background(tmp_path: Path) -> None:
    """Ctrl-C stops everything; so does SIGINT from a script, whose background jobs inherit
    SIGINT ignored (Python then raises no KeyboardInterrupt unless the launcher asks for it)."""
    ports = _ports()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled",
           "OPENSESAME_DATA_DIR": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "tools.run", "start", *_args(ports)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        wait_http(f"http://127.0.0.1:{ports.http}/livez", timeout_s=240, head=proc)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(90) == 0
        assert marked_pids(ports.temp_dir) == []
        assert preflight(ports) is None
    finally:
        subprocess.run([sys.executable, "-m", "tools.run", "stop", *_args(ports)], cwd=ROOT, timeout=120)
        if proc.poll() is None:
            proc.kill()


def test_the_ports_a_head_draws_are_none_of_those_it_was_given(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    # A port given to the launcher is bound only once the head and the app are up; a port the
    # head draws meanwhile (Ray's client server, the fallback proxy, …) must not be one of them.
    # Twelve ports in all, seven given: without the guard, some draw lands on a given one.
    import tools.cluster as cluster

    monkeypatch.setattr(cluster, "_PORTS", range(24000, 24012))
    given = [24000, 24001, 24002, 24003, 24004, 24005, 24006]
    extra = ("--metrics-export-port", str(given[3]), "--dashboard-port", str(given[4]))
    head = cluster.RayHead(port=given[0], haproxy_ports=(given[1], given[2]), temp_dir=str(tmp_path),
                           extra_args=extra, reserved_ports=(given[5], given[6]))
    drawn = {int(head.env[f"RAY_SERVE_FALLBACK_PROXY_{kind}_PORT"]) for kind in ("HTTP", "GRPC")}
    drawn |= {head._free_port(), head._free_port()}  # as start() draws the client and agent ports
    assert len(drawn) == 4 and not drawn & set(given), drawn


def test_a_replicas_deployment_is_read_from_its_process_title() -> None:
    from tools.cluster import process_title, replica_of

    assert replica_of("ray::ServeReplica:opensesame:Ranker") == "Ranker"
    assert replica_of("ray::ServeReplica:opensesame:Ingress.handle_request") == "Ingress"  # running a method
    building = "ray::SERVE_REPLICA::opensesame#Ranker#q2bz:ServeReplica:opensesame:Ranker.__init__"
    assert replica_of(building) == "Ranker" == replica_of(building, "opensesame")  # its actor being built
    assert replica_of("ray::ServeReplica:other:Ranker", "opensesame") is None
    assert replica_of("ray::ServeReplica:other:Ranker") == "Ranker"  # any app
    assert replica_of("ray::IDLE") is None and replica_of(None) is None
    assert "python" in (process_title(os.getpid()) or "")
    assert process_title(2**22 + 1) is None  # no such process
