"""The serving benchmark: the Serve graph on a capped head against the in-process pipeline.

    python -m benchmarks.serving            # ~10 min; or `make bench`
    python -m benchmarks.serving --quick    # shorter runs, for a smoke check

Everything runs on this machine, over loopback, in one run, so ratios compare like with like on a
shared, noisy 2-CPU node (absolute numbers move with the neighbours; ratios much less):

1. the workload: real workflows of APIs held out from training (benchmarks/workload.py), specs
   by URL from a loopback server, fetched once (warm spec cache), embedded candidate generator;
2. the in-process pipeline (deployments/serving/pipeline.py) called directly, with per-step timings, and
   behind one uvicorn process (benchmarks/inprocess_app.py) for the same HTTP load;
3. a Ray head with the node's caps and `serve run serve_config.yaml` (what `make run` does),
   settled by 45 s of unrecorded load (``--settle``; a fresh deploy is slower for its first
   minute), then: closed loop at 1, 4, 16, 64 clients (1, 4 and 16 again mid-run and at the end:
   medians of three); open loop at fixed rates; the same closed load alternated with the
   in-process server, as ratios; batching on against off; a stress run raising the rate
   to the breaking point (p95 > 2 s or > 0.1 % not served); overload at twice the saturating rate
   (503s with Retry-After, accepted requests finishing, replicas alive, node memory);
4. the same graph behind Serve's Python proxy instead of HAProxy.

Writes benchmarks/results/serving.json, serving.md (the README's table) and serving.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from benchmarks.cluster import (
    RayHead,
    ServeApp,
    free_port,
    make_run_env,
    process_title,
    replica_failures,
    replica_of,
    spec_server,
    wait_http,
    write_config,
)
from benchmarks.workload import Workload, build_workload
from core.settings import load_settings
from deployments.serving.resources import NODE
from tools.loadgen import NodeSampler, RunResult, closed_loop, open_loop, percentile, process_tree

RESULTS = Path(__file__).resolve().parent / "results"
# What `make run` and the image put in the head's environment.
SERVE_ENV = make_run_env()
# Closed-loop levels measured three times (start, middle and end of the Serve phase), reported
# as medians: one 8 s run on this shared machine moves by ±20% from one minute to the next.
CLOSED_ROUNDS_LEVELS = (1, 4, 16)
NO_BATCHING = {
    "Ingress": {"user_config": {"batching": {"max_batch_size": 1, "max_in_flight": 64}}},
    "FeatureExtractor": {"user_config": {"max_batch_size": 1, "batch_wait_timeout_s": 0.0}},
    "Ranker": {"user_config": {"max_batch_size": 1, "batch_wait_timeout_s": 0.0}},
}


def log(*args: object) -> None:
    print(f"[{time.strftime('%H:%M:%S')}]", *args, file=sys.stderr, flush=True)


def post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def calibration_ms() -> float:
    """How fast this machine is right now: the best of three runs of a fixed pure-Python loop,
    in ms. The shared host's speed moves by half from one minute to the next (the kernel shows no
    steal time for it), and every run records this beside its numbers so that they can be read
    against it."""
    best = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        total = 0
        for i in range(200_000):
            total += i * i
        best = min(best, time.perf_counter() - t0)
    return round(best * 1000, 2)


class Bench:
    def __init__(self, *, duration_s: float, out: Path, settle_s: float = 0.0) -> None:
        self.duration_s = duration_s
        self.settle_s = settle_s  # load on a fresh deploy before its first measurement (settle())
        # The replicas per deployment of the app measured, read at the start and end of each run
        # (did the autoscaler act?); None for the in-process setups.
        self.replicas: Callable[[], dict[str, int]] | None = None
        self.out = out
        self.results: dict[str, Any] = {"runs": [], "notes": {}}

    async def measure(
        self,
        label: str,
        url: str,
        bodies: list[dict[str, Any]],
        *,
        roots: Callable[[], Iterable[int]],
        concurrency: int | None = None,
        rate: float | None = None,
        duration_s: float | None = None,
    ) -> dict[str, Any]:
        duration = duration_s or self.duration_s
        speed = calibration_ms()
        replicas = self.replicas if label.startswith("serve") else None
        before = replicas() if replicas else None
        async with NodeSampler(roots) as sampler:
            if concurrency is not None:
                run: RunResult = await closed_loop(url, bodies, concurrency=concurrency, duration_s=duration)
            else:
                assert rate is not None
                run = await open_loop(url, bodies, rate=rate, duration_s=duration)
        run.node = sampler.result()
        summary = {"setup": label, **run.summary(), "calibration_ms": speed}
        if replicas:
            summary["replicas"] = {"start": before, "end": replicas()}
        self.results["runs"].append(summary)
        log(
            f"{label:<24} {summary['mode']:>6} {summary['level']:>6}: {summary['throughput_rps']} req/s "
            f"p50 {summary['p50_ms']} p95 {summary['p95_ms']} p99 {summary['p99_ms']} ms, "
            f"503 {summary['rate_503']:.1%} err {summary['error_rate']:.1%}, cpu {summary['node_cpu_pct']}% "
            f"(service {summary.get('service_cpu_ms_per_request')} ms/req) "
            f"rss {summary['node_peak_rss_mb']} MB"
        )
        return summary


# -- the in-process pipeline -------------------------------------------------------------------


def profile_in_process(bodies: list[dict[str, Any]], data_dir: str, seconds: float) -> dict[str, Any]:
    """Direct calls of Pipeline.predict in this process: throughput and the median of each step."""
    from deployments.serving.pipeline import Pipeline
    from deployments.serving.schemas import PredictRequest

    pipeline = Pipeline(load_settings(allow_private_spec_hosts=True, data_dir=data_dir))

    async def run() -> dict[str, Any]:
        for body in bodies:  # warm: every spec fetched, parsed and indexed once
            await pipeline.predict(PredictRequest.model_validate(body))
        steps: dict[str, list[float]] = {}
        latencies: list[float] = []
        cpu0 = time.process_time()
        start = time.perf_counter()
        i = 0
        while time.perf_counter() - start < seconds:
            t0 = time.perf_counter()
            response = await pipeline.predict(PredictRequest.model_validate(bodies[i % len(bodies)]))
            latencies.append((time.perf_counter() - t0) * 1000)
            for k, v in response.metadata.timings_ms.items():
                steps.setdefault(k, []).append(v)
            i += 1
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu0
        await pipeline.aclose()
        return {
            "requests": i,
            "throughput_rps": round(i / elapsed, 1),
            "p50_ms": round(percentile(latencies, 50), 2),
            "p99_ms": round(percentile(latencies, 99), 2),
            "cpu_ms_per_request": round(cpu * 1000 / i, 2),
            "step_median_ms": {k: round(statistics.median(v), 3) for k, v in steps.items()},
        }

    return asyncio.run(run())


class InProcessServer:
    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "benchmarks.inprocess_app:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            env={**os.environ, **env},
            cwd=Path(__file__).resolve().parent.parent,
        )

    def start(self, probe: dict[str, Any]) -> InProcessServer:
        wait_http(self.url + "/predict", timeout_s=120, data=json.dumps(probe).encode())
        return self

    def pids(self) -> list[int]:
        return [self.proc.pid]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# -- the Serve graph -------------------------------------------------------------------------------


def replica_pids(head: RayHead) -> dict[int, str]:
    """ServeReplica processes of the app under the head, by pid: a replica that died and came back
    has a new pid."""
    named = {pid: replica_of(process_title(pid)) for pid in process_tree(head.pids())}
    return {pid: name for pid, name in named.items() if name}


def replica_counts(head: RayHead) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name in replica_pids(head).values():
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def batch_summary(url: str) -> dict[str, Any]:
    health = get(url + "/health")["deployments"]
    return {
        "ingress_requests_per_call": health["ingress"].get("batch_sizes"),
        "feature_extractor_requests_per_batch": health["feature_extractor"].get("batch_sizes"),
        "ranker_requests_per_batch": health["ranker"].get("batch_sizes"),
        "p95_latency_ms": {k: v.get("p95_latency_ms") for k, v in health.items()},
    }


async def settle(bench: Bench, url: str, bodies: list[dict[str, Any]]) -> None:
    """Load a fresh deploy for ``bench.settle_s`` before measuring it: a graph just deployed
    answers one client ~30% slower in its first minute than later (benchmarks/SERVING.md), and a
    service runs for hours. Not recorded; the autoscaler may act on it."""
    if bench.settle_s <= 0:
        return
    run = await closed_loop(url, bodies, concurrency=4, duration_s=bench.settle_s)
    log(f"settled: {bench.settle_s:.0f} s at 4 clients, {run.summary()['throughput_rps']} req/s "
        f"(not recorded); replicas {bench.replicas() if bench.replicas else '-'}")
    bench.results["notes"]["settle_s"] = bench.settle_s


async def serve_phase(
    bench: Bench, workload: Workload, specs_url: str, data_dir: str, quick: bool, inproc: InProcessServer
) -> None:
    bodies = workload.with_base_url(specs_url)
    env = {
        **SERVE_ENV,
        "RAY_AUTH_MODE": "disabled",
        "OPENSESAME_ALLOW_PRIVATE_SPEC_HOSTS": "1",
        "OPENSESAME_DATA_DIR": data_dir,
    }
    r = bench.results
    with RayHead(env=env) as head:
        t0 = time.perf_counter()
        app = head.deploy(json.dumps(bodies[0]).encode())
        r["notes"]["deploy_s"] = round(time.perf_counter() - t0, 1)
        url = app.url + "/predict"
        roots = head.pids
        for body in bodies:
            post(url, body)
        log("deployed in", r["notes"]["deploy_s"], "s; replicas", replica_counts(head))
        bench.replicas = lambda: replica_counts(head)
        await settle(bench, url, bodies)
        sample = post(url, bodies[1])
        r["serve_timings_ms_one_request"] = sample["metadata"]["timings_ms"]
        pids_before = replica_pids(head)

        for c in (1, 4, 16, 64):
            await bench.measure("serve", url, bodies, roots=roots, concurrency=c)
        r["batching_under_load"] = batch_summary(app.url)
        for rate in (50, 100, 150):
            await bench.measure("serve", url, bodies, roots=roots, rate=rate)

        # Side by side: the same closed load, alternated, so drift on the node hits both.
        ratios = []
        for _ in range(1 if quick else 3):
            s = await bench.measure("serve (side by side)", url, bodies, roots=roots, concurrency=16)
            p = await bench.measure(
                "in-process http (side by side)",
                inproc.url + "/predict",
                bodies,
                roots=inproc.pids,
                concurrency=16,
            )
            ratios.append(s["throughput_rps"] / p["throughput_rps"])
        r["serve_over_in_process_http_throughput"] = {
            "median": round(statistics.median(ratios), 3),
            "rounds": [round(x, 3) for x in ratios],
        }
        if not quick:  # the closed levels again, mid-run (and once more at the end): medians
            for c in CLOSED_ROUNDS_LEVELS:
                await bench.measure("serve", url, bodies, roots=roots, concurrency=c)

        # Stress: raise the rate until p95 > 2 s or more than 0.1 % are not served.
        stress = []
        rate = 100.0
        while rate <= 1200:
            s = await bench.measure(
                "serve (stress)", url, bodies, roots=roots, rate=rate, duration_s=min(bench.duration_s, 8)
            )
            stress.append(s)
            if (s["p95_ms"] or 0) > 2000 or s["error_rate"] + s["rate_503"] > 0.001:
                break
            rate *= 1.25
        saturating = max(s["throughput_rps"] for s in stress)
        r["stress"] = {
            "breaking_rate": stress[-1]["level"],
            "best_throughput_rps": saturating,
            "last_clean_rate": stress[-2]["level"] if len(stress) > 1 else None,
        }
        r["replicas_after_stress"] = replica_counts(head)

        # Overload: twice the saturating load. Fast 503s, accepted ones finish, nobody dies.
        over = await bench.measure(
            "serve (overload 2x)",
            url,
            bodies,
            roots=roots,
            rate=2 * saturating,
            duration_s=bench.duration_s + 2,
        )
        health = get(app.url + "/health")
        pids_after = replica_pids(head)
        # Pids alone cannot tell a crash from the autoscaler removing a replica: the controller's log can.
        failures = replica_failures(head)
        r["overload"] = {
            "rate": round(2 * saturating, 1),
            "ok_throughput_rps": over["throughput_rps"],
            "rate_503": over["rate_503"],
            "p99_503_ms": over["p99_503_ms"],
            "retry_after_on_503": over["retry_after_on_503"],
            "other_errors": over["error_rate"],
            "error_statuses": over["error_statuses"],
            "ok_p99_ms": over["p99_ms"],
            "node_peak_rss_mb": over["node_peak_rss_mb"],
            "node_peak_pss_mb": over["node_peak_pss_mb"],
            "health_after": health["status"],
            "replicas_before": sorted(pids_before.values()),
            "replicas_after": sorted(pids_after.values()),
            "replica_failures": len(failures),
        }
        # After the overload the service answers normally again.
        await asyncio.sleep(5)
        await bench.measure(
            "serve (after overload)",
            url,
            bodies,
            roots=roots,
            concurrency=4,
            duration_s=min(bench.duration_s, 5),
        )

        # Batching off against on, alternated (user_config only: replicas reconfigure in place).
        no_batch = write_config(
            Path(head.temp_dir) / "serve-nobatch.yaml", port=app.port, deployments=NO_BATCHING
        )
        on = []
        off = []
        for _ in range(1 if quick else 2):
            ServeApp(head, no_batch).start(json.dumps(bodies[0]).encode())
            await asyncio.sleep(2)
            off.append(await bench.measure("serve, batching off", url, bodies, roots=roots, concurrency=32))
            ServeApp(head, app.config).start(json.dumps(bodies[0]).encode())
            await asyncio.sleep(2)
            on.append(await bench.measure("serve, batching on", url, bodies, roots=roots, concurrency=32))
        r["batching_on_over_off_throughput"] = round(
            statistics.median(o["throughput_rps"] for o in on)
            / statistics.median(o["throughput_rps"] for o in off),
            3,
        )
        # CPU per answered request is what the neighbours on a shared node do not distort.
        r["batching_service_cpu_ms_per_request"] = {
            "on": statistics.median(o["service_cpu_ms_per_request"] for o in on),
            "off": statistics.median(o["service_cpu_ms_per_request"] for o in off),
        }
        r["batching_last_run"] = batch_summary(app.url)
        if not quick:
            await asyncio.sleep(2)
            for c in CLOSED_ROUNDS_LEVELS:
                await bench.measure("serve", url, bodies, roots=roots, concurrency=c)
        r["replicas_at_end"] = replica_counts(head)

    # The Python proxy instead of HAProxy: a head without RAY_SERVE_ENABLE_HA_PROXY.
    env_py = {**env, "RAY_SERVE_ENABLE_HA_PROXY": "0"}
    with RayHead(env=env_py) as head:
        app = head.deploy(json.dumps(bodies[0]).encode())
        url = app.url + "/predict"
        bench.replicas = lambda: replica_counts(head)
        for body in bodies:
            post(url, body)
        await settle(bench, url, bodies)
        for c in (1, 16):
            await bench.measure("serve, python proxy", url, bodies, roots=head.pids, concurrency=c)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="short runs (smoke check)")
    p.add_argument("--duration", type=float, default=None, help="seconds per measured point")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--settle", type=float, default=None,
                   help="seconds of unrecorded load on a fresh deploy before measuring "
                        "(default 45; 5 with --quick)")
    p.add_argument("--replot", action="store_true", help="only redraw serving.png from serving.json")
    args = p.parse_args(argv)
    if args.replot:
        plot(json.loads((args.out / "serving.json").read_text()), args.out / "serving.png")
        return
    duration = args.duration or (4.0 if args.quick else 8.0)
    settle_s = args.settle if args.settle is not None else (5.0 if args.quick else 45.0)
    bench = Bench(duration_s=duration, out=args.out, settle_s=settle_s)
    r = bench.results
    r["machine"] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": os.getloadavg(),
    }
    r["node_budget"] = {
        "num_cpus": NODE.num_cpus,
        "total_mb": NODE.total_mb,
        "replica_memory_mb": NODE.replica_memory_mb,
    }
    workload = build_workload(load_settings().jentic_dir)
    r["workload"] = {
        "requests": len(workload.bodies),
        "specs": len(workload.specs),
        "spec_bytes": sorted(len(b) for b in workload.specs.values()),
    }
    data_dir = tempfile.mkdtemp(prefix="os5data-")
    started = time.time()
    with spec_server(workload.specs) as specs:
        bodies = workload.with_base_url(specs.base_url)
        log("in-process pipeline, direct calls")
        r["in_process_direct"] = profile_in_process(bodies, tempfile.mkdtemp(prefix="os5inproc-"), duration)
        log("in-process:", r["in_process_direct"])
        inproc = InProcessServer(
            {
                "OPENSESAME_ALLOW_PRIVATE_SPEC_HOSTS": "1",
                "OPENSESAME_DATA_DIR": tempfile.mkdtemp(prefix="os5http-"),
            }
        ).start(bodies[0])
        try:
            for body in bodies:
                post(inproc.url + "/predict", body)

            async def in_process_http() -> None:
                for c in (1, 4, 16, 64):
                    await bench.measure(
                        "in-process http", inproc.url + "/predict", bodies, roots=inproc.pids, concurrency=c
                    )

            asyncio.run(in_process_http())
            asyncio.run(serve_phase(bench, workload, specs.base_url, data_dir, args.quick, inproc))
        finally:
            inproc.stop()
    r["notes"]["total_s"] = round(time.time() - started)
    r["targets"] = targets(r)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serving.json").write_text(json.dumps(r, indent=1) + "\n")
    table = markdown(r)
    (args.out / "serving.md").write_text(table)
    print(table)
    try:
        plot(r, args.out / "serving.png")
    except ImportError:
        log("matplotlib not installed (pip install -e '.[bench]'): no plot")


_MEDIAN_KEYS = ("throughput_rps", "p50_ms", "p95_ms", "p99_ms", "max_ms", "service_cpu_ms_per_request",
                "calibration_ms", "node_cpu_pct", "node_peak_rss_mb")


def summaries(r: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs, with the repeated ones (same setup, mode and level) merged into one of their
    medians, in the order each first ran; a merged one's 503 and error rates are its worst round's,
    and ``rounds`` holds each round's throughput and p50."""
    groups: dict[tuple[str, str, float], list[dict[str, Any]]] = {}
    for x in r["runs"]:
        groups.setdefault((x["setup"], x["mode"], x["level"]), []).append(x)
    out = []
    for xs in groups.values():
        if len(xs) == 1:
            out.append(xs[0])
            continue
        merged = {**xs[0], **{k: round(statistics.median(x[k] for x in xs), 2) for k in _MEDIAN_KEYS
                              if all(x.get(k) is not None for x in xs)}}
        merged.update(
            rate_503=max(x["rate_503"] for x in xs), error_rate=max(x["error_rate"] for x in xs),
            rounds=[{"throughput_rps": x["throughput_rps"], "p50_ms": x["p50_ms"]} for x in xs],
        )
        out.append(merged)
    return out


def targets(r: dict[str, Any]) -> dict[str, Any]:
    runs = summaries(r)
    one = next((x for x in runs if (x["setup"], x["mode"], x["level"]) == ("serve", "closed", 1)), {})
    sustained = [
        x
        for x in runs
        if x["setup"].startswith("serve")
        and x["error_rate"] == 0
        and x["rate_503"] == 0
        and (x["p99_ms"] or 1e9) <= 250
    ]
    best = max(sustained, key=lambda x: x["throughput_rps"], default={})
    serve_runs = [
        x
        for x in runs
        if x["setup"] in ("serve", "serve (side by side)") and x["mode"] == "closed" and x["level"] >= 4
    ]
    over = r.get("overload", {})
    return {
        "one_client_p50_ms": {
            "value": one.get("p50_ms"),
            "target": 15,
            "met": (one.get("p50_ms") or 1e9) <= 15,
        },
        "sustained_rps_p99_le_250ms": {
            "value": best.get("throughput_rps"),
            "target": 150,
            "met": (best.get("throughput_rps") or 0) >= 150,
            "run": {k: best.get(k) for k in ("setup", "mode", "level", "p99_ms")},
        },
        "min_rps_at_4plus_clients": {
            "value": min((x["throughput_rps"] for x in serve_runs), default=None),
            "target": 100,
            "met": min((x["throughput_rps"] for x in serve_runs), default=0) >= 100,
        },
        "serve_over_in_process": {
            "value": r.get("serve_over_in_process_http_throughput", {}).get("median"),
            "target": 0.25,
            "met": (r.get("serve_over_in_process_http_throughput", {}).get("median") or 0) >= 0.25,
        },
        "overload_only_503_fast": {
            "value": {
                "p99_503_ms": over.get("p99_503_ms"),
                "other_errors": over.get("other_errors"),
                "rss_mb": over.get("node_peak_rss_mb"),
                "replica_failures": over.get("replica_failures"),
            },
            "met": bool(over)
            and over.get("other_errors") == 0
            and (over.get("p99_503_ms") or 0) < 50
            and (over.get("node_peak_rss_mb") or 1e9) < 4000
            and over.get("replica_failures") == 0,
        },
    }


def markdown(r: dict[str, Any]) -> str:
    lines = [
        "| setup | load | req/s | p50 ms | p95 ms | p99 ms | 503 | errors | service CPU ms/req | node CPU % "
        "| service RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for x in summaries(r):
        if "side by side" in x["setup"] or x["setup"] == "serve (after overload)":
            continue
        load = f"{int(x['level'])} clients" if x["mode"] == "closed" else f"{x['level']:.0f} req/s offered"
        setup = f"{x['setup']} (median of {len(x['rounds'])})" if "rounds" in x else x["setup"]
        lines.append(
            f"| {setup} | {load} | {x['throughput_rps']} | {x['p50_ms']} | {x['p95_ms']} | "
            f"{x['p99_ms']} | "
            f"{x['rate_503']:.1%} | {x['error_rate']:.1%} | {x.get('service_cpu_ms_per_request')} | "
            f"{x['node_cpu_pct']} | {x['node_peak_rss_mb']} |"
        )
    d = r["in_process_direct"]
    t = r["targets"]
    side = r["serve_over_in_process_http_throughput"]

    def row(label: str, key: str, unit: str = "") -> str:
        met = "met" if t[key]["met"] else "**not met**"
        value = t[key]["value"]
        value = json.dumps(value) if isinstance(value, dict) else f"{value}{unit}"
        return f"| {label} | {value} | {met} |"

    lines += [
        "",
        f"In-process pipeline, direct calls in one process: {d['throughput_rps']} req/s, "
        f"p50 {d['p50_ms']} ms, {d['cpu_ms_per_request']} CPU ms/request "
        f"(steps, median ms: {d['step_median_ms']}).",
        f"Serve / in-process over HTTP, closed loop at 16 clients, alternated: {side['median']} "
        f"(rounds {side['rounds']}).",
        f"Batching on / off at 32 clients: {r['batching_on_over_off_throughput']}; requests per call "
        f"and batch under load: {json.dumps(r['batching_under_load'])}.",
        f"Stress: {r['stress']}. Overload at 2x: {json.dumps(r['overload'])}.",
        "",
        "| target | value | |",
        "|---|---|---|",
        row("1 client p50 ≤ 15 ms over HTTP", "one_client_p50_ms", " ms"),
        row("≥ 150 req/s sustained, p99 ≤ 250 ms, no errors", "sustained_rps_p99_le_250ms", " req/s"),
        row("≥ 100 req/s in every run (≥ 4 clients)", "min_rps_at_4plus_clients", " req/s"),
        row("Serve ≥ 25 % of in-process (HTTP, side by side)", "serve_over_in_process"),
        row("2× saturation: only 503s, p99 < 50 ms, RSS < 4 GB, no replica lost", "overload_only_503_fast"),
        "",
    ]
    return "\n".join(lines)


def plot(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5.5))
    series = [
        ("serve", "closed", "o-"),
        ("serve", "open", "s--"),
        ("in-process http", "closed", "^-"),
        ("serve (stress)", "open", "x:"),
        ("serve, python proxy", "closed", "d-"),
    ]
    for setup, mode, style in series:
        # Joined left to right (by throughput), each point labelled with its load (clients of a
        # closed loop, offered req/s of an open one): a closed loop that loses throughput at more
        # clients shows as a label out of sequence, not as a line doubling back over itself.
        pts = sorted(
            (x for x in summaries(r) if x["setup"] == setup and x["mode"] == mode and x["p99_ms"]),
            key=lambda x: x["throughput_rps"],
        )
        if not pts:
            continue
        xs = [x["throughput_rps"] for x in pts]
        (line,) = ax.plot(xs, [x["p99_ms"] for x in pts], style, label=f"{setup} ({mode} loop), p99")
        ax.plot(xs, [x["p50_ms"] for x in pts], style, color=line.get_color(), alpha=0.35,
                label=f"{setup} ({mode} loop), p50")
        unit = "c" if mode == "closed" else "/s"
        for x in pts:
            ax.annotate(f"{x['level']:g}{unit}", (x["throughput_rps"], x["p99_ms"]), fontsize=6,
                        xytext=(3, 3), textcoords="offset points", color=line.get_color())
    ax.set_xlabel("throughput (req/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.axhline(250, color="grey", lw=0.8, ls=":", label="p99 target, 250 ms")
    ax.set_title("opensesame-predictor on 2 CPUs: latency against throughput\n"
                 "(point labels: load, c = closed-loop clients, /s = open-loop offered req/s)", fontsize=10)
    # Outside the axes: the legend never covers a point.
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
