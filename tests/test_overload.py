"""Overload at 2x and 5x capacity for a minute each, on the service as ``make run`` deploys it
(RELIABILITY.md, "Overload"): a capped Ray head with HAProxy and its admission control
(:mod:`deployments.serving.admission`), ``serve_config.yaml``, the benchmark's workload (real specs by URL,
warm spec cache), and an open-loop load generator on loopback (:mod:`tools.loadgen`).

Promised, and asserted: no 5xx other than 503 and no client error (refused, reset, timed out); every
503 carries ``Retry-After``; 503s in under 50 ms at p99 at 2x (on a quiet machine, those the client
sent on schedule); what is accepted is answered 200; node RSS under 4 GB; no replica crashed or
failed its health checks (the Serve controller's log: the autoscaler adding or removing replicas is
not a death); afterwards the service serves again, every request 200, with its usual latency. One
``FAULT {...}`` line per phase (``FAULTS_REPORT=f.jsonl`` collects them; RELIABILITY.md "Overload").

    FAULTS_REPORT=var/overload.jsonl .venv/bin/python -m pytest -s tests/test_overload.py   # ~4 min
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.cluster import (
    RayHead,
    make_run_env,
    process_title,
    replica_failures,
    spec_server,
    wait_http,
)
from benchmarks.serving import replica_counts
from benchmarks.workload import build_workload
from deployments.serving.admission import MAX_CONCURRENT_PER_INGRESS, REFUSED_BY, REPLICA_NICENESS
from tests.faults import record
from tools.loadgen import (
    CLIENT_OVERFLOW,
    NodeSampler,
    RunResult,
    Sample,
    closed_loop,
    open_loop,
    percentile,
    probe,
)

pytestmark = [pytest.mark.serve, pytest.mark.slow, pytest.mark.faults]

PHASE_S = 60.0  # each overload phase lasts a minute
CAPACITY_WARMUP_S = 10.0
CAPACITY_S = 15.0
RECOVERY_S = 10.0
NODE_MB = 4000
ADMISSION = f"refused-by:{REFUSED_BY}"  # how tools.loadgen labels HAProxy's refusals
# An open-loop request sent later than this after it came due was held up by this client (its
# event loop stopped, or was catching up on what came due meanwhile), and its latency is then
# partly the client's. Measured at 2x and 5x: late_s p50 0.6 ms, p99 ~15 ms (~3% over 5 ms).
LATE_S = 0.005


@pytest.fixture(scope="module")
def service(jentic_dir: Path, tmp_path_factory) -> Iterator[dict[str, Any]]:
    workload = build_workload(jentic_dir)
    with spec_server(workload.specs) as specs:
        bodies = workload.with_base_url(specs.base_url)
        env = {
            **make_run_env(),
            "RAY_AUTH_MODE": "disabled",
            "OPENSESAME_ALLOW_PRIVATE_SPEC_HOSTS": "1",  # the spec host is on loopback
            "OPENSESAME_DATA_DIR": str(tmp_path_factory.mktemp("overload-data")),
        }
        with RayHead(env=env) as head:
            app = head.deploy(json.dumps(bodies[0]).encode())
            # Warm: every spec fetched and cached once, as in the benchmark.
            seen: set[str] = set()
            for body in bodies:
                if body["spec_url"] not in seen:
                    seen.add(body["spec_url"])
                    _post(app.url + "/predict", body)
            yield {"head": head, "url": app.url, "bodies": bodies}


def _post(url: str, body: dict[str, Any]) -> None:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        assert r.status == 200


def _haproxy_config(head: RayHead) -> str:
    """The config of the HAProxy that runs (Ray writes it in a subdirectory of its own)."""
    base = Path(head.env["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"])
    found = sorted(base.parent.rglob(base.name))
    assert found, f"no {base.name} under {base.parent}"
    return "\n".join(p.read_text() for p in found)


async def _measured(head: RayHead, run: Any) -> RunResult:
    async with NodeSampler(head.marked_pids) as sampler:
        result: RunResult = await run
    result.node = sampler.result()
    return result


async def _with_floor(
    head: RayHead, base_url: str, run: Any, seconds: float
) -> tuple[RunResult, list[Sample]]:
    """The run, and beside it the floor: HAProxy answering its own ``/-/healthz`` (no replica
    involved) to the same client, every 50 ms. On a busy machine every answer, a refusal too,
    waits for HAProxy and this client to get a CPU; the floor measures that wait."""
    result, floor = await asyncio.gather(
        _measured(head, run), probe(base_url + "/-/healthz", interval_s=0.05, duration_s=seconds)
    )
    return result, floor


def _numbers(result: RunResult, **extra: Any) -> dict[str, Any]:
    s = result.summary()
    # Requests the load generator did not send (512 already in flight) are its own limit, not the
    # service's answer: counted apart.
    overflow = s["errors_from"].get(CLIENT_OVERFLOW, 0)
    shed = [x.latency_s * 1000 for x in result.samples if x.status == 503]
    by_haproxy = [x.latency_s * 1000 for x in result.samples if x.status == 503 and x.who == ADMISSION]
    slow = sorted({int(x.sent) for x in result.samples if x.status == 503 and x.latency_s > 0.05})
    on_time = [x.latency_s * 1000 for x in result.samples if x.status == 503 and x.late_s <= LATE_S]
    return {
        **extra,
        "seconds": result.duration_s,
        "requests": s["requests"],
        "served_rps": s["throughput_rps"],
        "rate_503": s["rate_503"],
        "p50_503_ms": round(sorted(shed)[len(shed) // 2], 1) if shed else None,
        "p99_503_ms": s["p99_503_ms"],
        "retry_after_on_503": s["retry_after_on_503"],
        "503_from": s["503_from"],
        "p99_503_admission_ms": round(percentile(by_haproxy, 99), 1) if by_haproxy else None,
        # When slow refusals happened (seconds into the phase): spread out or in bursts.
        "503_over_50ms": sum(ms > 50 for ms in shed),
        "503_over_50ms_at_s": slow[:30],
        # Refusals the client sent on schedule: their latency is HAProxy's and the machine's.
        "503_sent_late": len(shed) - len(on_time),
        "p99_503_on_time_ms": round(percentile(on_time, 99), 1) if on_time else None,
        "client_gc_max_ms": s.get("client_gc_max_ms"),
        "p50_200_ms": s["p50_ms"],
        "p99_200_ms": s["p99_ms"],
        "client_overflow": overflow,
        "other_errors": sum(s["errors_from"].values()) - overflow,  # exact: error_rate is rounded
        "error_statuses": s["error_statuses"],
        "errors_from": s["errors_from"],
        "node_peak_rss_mb": s["node_peak_rss_mb"],
        "node_peak_pss_mb": s["node_peak_pss_mb"],
        "load_average": os.getloadavg()[0],
    }


def _stat_fields(pid: int) -> list[str] | None:
    """``/proc/PID/stat`` after the command name: state, ppid, … (None: gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()


def _niceness_by_title(head: RayHead) -> dict[str, set[int]]:
    """The niceness of each of the head's processes, by process title (Ray's ``ray::…``, else the
    program's name, the method a worker runs left out). With the marked ones, their children: an
    actor whose title overwrote its environment and that holds no log file at that instant is
    still the raylet's child."""
    pids = set(head.marked_pids())
    for entry in os.listdir("/proc"):
        fields = _stat_fields(int(entry)) if entry.isdigit() else None
        if fields is not None and int(fields[1]) in pids:
            pids.add(int(entry))
    found: dict[str, set[int]] = {}
    for pid in pids:
        title = (process_title(pid) or "").strip()
        fields = _stat_fields(pid)
        if not title or fields is None:
            continue  # gone meanwhile
        # a Ray worker's title carries the method it runs at that instant
        # ("ray::ServeController.listen_for_change()"): the actor's name is before it
        name = (re.split(r"[.(\s]", title, maxsplit=1)[0] if title.startswith("ray::")
                else Path(title.split()[0]).name)
        found.setdefault(name, set()).add(int(fields[16]))
    return found


def test_the_graph_runs_below_haproxy_the_ingress_and_rays_daemons(service: dict[str, Any]) -> None:
    """As ``make run`` starts them (deployments/serving/admission.py): HAProxy, the Ingress, Serve's
    controller and Ray's daemons at the niceness the head started at (0), every replica of the
    graph lowered to 19. A new
    worker's start runs at the raylet's 0 whatever Ray's worker niceness is; HAProxy and the
    Ingress at Ray's default 15 (or lowered with the graph) stalled /health behind it."""
    nice = _niceness_by_title(service["head"])
    base = min(nice["raylet"])  # the test runner's own: a head cannot start above it
    if base >= REPLICA_NICENESS:
        pytest.skip(f"the tests run at niceness {base}: nothing below it to order")
    graph = {t: n for t, n in nice.items() if t.startswith("ray::ServeReplica:")}
    ingress = {n for t, ns in graph.items() if t.endswith(":Ingress") for n in ns}
    below = {n for t, ns in graph.items() if not t.endswith(":Ingress") for n in ns}
    assert ingress == {base}, nice
    assert below == {REPLICA_NICENESS} and len(graph) == 4, nice
    for daemon in ("ray::ServeController", "haproxy", "gcs_server"):
        assert nice.get(daemon) == {base}, (daemon, nice)


def test_overload_2x_and_5x_for_a_minute_fast_503s_and_full_recovery(service: dict[str, Any]) -> None:
    head: RayHead = service["head"]
    url, bodies = service["url"] + "/predict", service["bodies"]
    # The admission control is in force in the HAProxy that answers (not only in the template).
    assert f"maxconn {MAX_CONCURRENT_PER_INGRESS} check" in _haproxy_config(head)
    assert "if { queue gt 0 }" in _haproxy_config(head)

    # Capacity: what the service serves when saturated, after the autoscaler has had time to add
    # replicas (closed loop, as many clients as two Ingress replicas admit, honouring Retry-After).
    clients = 2 * MAX_CONCURRENT_PER_INGRESS
    cap = asyncio.run(
        _measured(
            head,
            closed_loop(url, bodies, concurrency=clients, duration_s=CAPACITY_S, warmup_s=CAPACITY_WARMUP_S),
        )
    )
    capacity = cap.summary()["throughput_rps"]
    cap_numbers = _numbers(cap, phase="capacity", clients=clients)
    record("overload capacity", **cap_numbers)
    assert capacity and capacity > 1, cap_numbers

    phases: dict[int, dict[str, Any]] = {}
    for factor in (2, 5):
        load = open_loop(url, bodies, rate=factor * capacity, duration_s=PHASE_S, seed=factor)
        run, floor = asyncio.run(_with_floor(head, service["url"], load, PHASE_S))
        phases[factor] = _numbers(
            run, phase=f"{factor}x", capacity_rps=capacity, offered_rps=round(factor * capacity, 1)
        )
        floor_ms = [x.latency_s * 1000 for x in floor if x.status == 200]
        phases[factor]["floor"] = {
            "probes": len(floor),
            "ok": len(floor_ms),
            "p50_ms": round(percentile(floor_ms, 50), 1) if floor_ms else None,
            "p99_ms": round(percentile(floor_ms, 99), 1) if floor_ms else None,
        }
        phases[factor]["replicas_after"] = replica_counts(head)
        record(f"overload {factor}x", **phases[factor])

    # Recovery: /health ok, then a light closed load is all 200s with its usual latency.
    t0 = time.monotonic()
    wait_http(url, timeout_s=60, data=json.dumps(bodies[0]).encode())
    serving_after_s = time.monotonic() - t0
    wait_http(service["url"] + "/health", timeout_s=60)
    after = asyncio.run(_measured(head, closed_loop(url, bodies, concurrency=4, duration_s=RECOVERY_S)))
    recovery = _numbers(after, phase="recovery", clients=4, serving_again_s=round(serving_after_s, 2))
    failures = replica_failures(head)
    recovery["replica_failures"] = failures[:5]
    record("overload recovery", **recovery)

    for factor, p in phases.items():
        # Answers and refusals only: no 500/502/504, no 4xx, no connection error or timeout.
        assert p["other_errors"] == 0, (factor, p)
        # At 5x this one loopback client, sharing 2 CPUs with the service, sometimes has 512
        # requests in flight and skips a few (0.2% and 1.2% in two full runs): the offered load
        # stays within 5% of the nominal one.
        assert p["client_overflow"] <= 0.05 * p["requests"], (factor, p)
        # What is accepted is served (all of it 200, above), and not kept waiting without bound.
        assert p["served_rps"] > 0 and p["p99_200_ms"] < 10_000, (factor, p)
        assert p["node_peak_rss_mb"] < NODE_MB, (factor, p)
        assert p["floor"]["ok"] == p["floor"]["probes"] > 0, (factor, p["floor"])
        # 2x a capacity measured on a busy machine may come out near the true capacity; 5x not.
        assert p["rate_503"] > 0 or factor == 2, (f"{factor}x capacity but nothing refused", p)
        if p["rate_503"]:
            assert p["retry_after_on_503"] == 1.0, (factor, p)
            # Refusals are fast: the typical one takes a few ms whatever else runs on the machine,
            # and the slowest are bounded (measured: 110-390 ms at 2x, 136-534 ms at 5x under load
            # average 8-23, the test niced or not). Their tail is the wait for a CPU: it matches the
            # floor, HAProxy's own /-/healthz answered to the same client meanwhile.
            assert p["p50_503_ms"] < 50, (factor, p)
            assert p["p99_503_ms"] < {2: 1000, 5: 2000}[factor], (factor, p)
    # The target, 503s within 50 ms at p99 at 2x, is asserted when the machine is quiet enough to
    # measure it (the floor's p99 within 5 ms), on the refusals this client sent on schedule (if
    # 95% were); on a busy machine it is reported. Refusals sent late, after the client's event
    # loop stopped and then sent what came due meanwhile at once, wait for each other in the
    # client, not in HAProxy (RELIABILITY.md, "Overload").
    p2 = phases[2]
    refused = sum(p2["503_from"].values())
    if p2["floor"]["p99_ms"] <= 5 and refused and p2["503_sent_late"] <= 0.05 * refused:
        assert p2["p99_503_on_time_ms"] < 50, p2
    assert not failures, failures
    assert recovery["requests"] > 0 and recovery["rate_503"] == 0 and recovery["other_errors"] == 0, recovery
    assert recovery["p99_200_ms"] <= max(1000.0, 2 * cap_numbers["p99_200_ms"]), (recovery, cap_numbers)
