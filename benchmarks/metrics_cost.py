"""What the Prometheus metrics cost a prediction, in CPU: every record a prediction makes
(deployments/serving/metrics.py's hooks), timed inside a real Serve replica — on the request path
(an append to the recorder's deque), in the recorder thread (counters and gauges summed per series,
every histogram value), and, for comparison, with one Ray call per record — against the service's
throughput and CPU per request measured side by side with metrics on and off.

    python -m benchmarks.serving_ab --variant metrics_on --variant metrics_off:OPENSESAME_METRICS=0 \\
        --rounds 6 --levels 1,16 --duration 15 \\
        --out benchmarks/results/serving_ab_metrics_aggregated.json   # the side-by-side (~22 min)
    python -m benchmarks.metrics_cost                                 # this (~1 min)
    python -m benchmarks.metrics_cost --paired 8     # both heads at once, 8 pairs (~5 min)

Writes benchmarks/results/metrics_cost.json: the replica's numbers and, from the side-by-side
files in ``SIDE_BY_SIDE`` (two runs of the command above, the second written to ``..._2.json``),
metrics on over off round by round and the medians. On this shared 2-CPU machine throughput swings
with the neighbours' load by far more than 5 % between rounds (the load average moved between 5
and 28 during one run), so only the median of many alternated rounds says anything about a few
per cent; the records' own cost, measured in the replica, is the steady measure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

from tools.cluster import free_port

RESULTS = Path(__file__).resolve().parent / "results"
N = 5000


def _replica_cost(per_period: int = 10) -> dict[str, Any]:
    import ray
    from ray import serve

    @serve.deployment(ray_actor_options={"num_cpus": 0.1})
    class Recorder:
        def __init__(self) -> None:
            from deployments.serving.metrics import Metrics, _Recorder

            self.recorder = _Recorder(start=False)  # flushed by hand below, timed apart
            self.deferred = Metrics(enabled=True, recorder=self.recorder)
            # The same Ray metrics recorded straight away: one Ray call per record, as the request
            # path paid before the recorder thread, and the recorder before it summed counters.
            self.direct = Metrics(enabled=True, recorder=_Recorder(start=False))
            for name in vars(self.direct):
                if hasattr(getattr(self.direct, name), "_metric"):
                    setattr(self.direct, name, getattr(self.direct, name)._metric)

        def run(self, n: int) -> dict[str, float]:
            """µs per prediction for its records: on the request path (appended), made by the
            recorder (``per_period`` predictions per flush), and made one Ray call each."""
            start = time.perf_counter()
            for _ in range(n):
                _one_prediction(self.deferred)
            path = time.perf_counter() - start
            self.recorder.flush()
            record = 0.0
            calls = 0
            for _ in range(n // per_period):
                for _ in range(per_period):
                    _one_prediction(self.deferred)
                start = time.perf_counter()
                calls += self.recorder.flush()
                record += time.perf_counter() - start
            start = time.perf_counter()
            for _ in range(n):
                _one_prediction(self.direct)
            direct = time.perf_counter() - start
            return {"request_path_us": path / n * 1e6, "recorder_us": record / n * 1e6,
                    "recorder_ray_calls": calls / n, "one_ray_call_each_us": direct / n * 1e6}

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=200_000_000)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
        handle = serve.run(Recorder.bind(), name="metrics-cost", route_prefix="/metrics-cost")
        handle.run.remote(500).result()  # warm: series created
        runs = [handle.run.remote(N).result() for _ in range(5)]
        out: dict[str, Any] = {"records_per_prediction": RECORDS, "predictions_per_flush": per_period,
                               "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()]}
        for key in runs[0]:
            out[f"{key}_median"] = round(statistics.median(r[key] for r in runs), 2)
            out[f"{key}_runs"] = [round(r[key], 2) for r in runs]
        return out
    finally:
        serve.shutdown()
        ray.shutdown()


def _one_prediction(m: Any) -> None:
    """The records one prediction makes, in the order the hooks make them (one replica here)."""
    m.spec_cache.inc(tags={"result": "hit"})                                  # Ingress: spec resolved
    m.batch(1)                                                                 # Ingress: coalesced
    m.generated(fallback_reason="circuit_open", breaker_state="open")          # CandidateGenerator
    m.batch(1)                                                                 # FeatureExtractor
    m.batch(1)                                                                 # Ranker
    m.stages({"spec": 1.0, "candidates": 5.0, "features": 2.0, "rank": 1.0})  # Ingress
    m.feedback.inc(tags={"result": "written"})                                # feedback writer
    m.http_requests.inc(tags={"route": "/predict", "status": "200"})          # RequestMetrics
    m.http_request_ms.observe(12.0, tags={"route": "/predict"})


RECORDS = 16  # in _one_prediction: at batch size 1; larger batches make fewer


def side_by_side(paths: list[Path]) -> dict[str, Any]:
    """Per level: metrics on over off, round by round (both measured in the same round of the same
    run), and the medians of those ratios, for throughput and the service's CPU per request."""
    by: dict[tuple[str, tuple[int, int], int], dict[str, Any]] = {}
    for i, path in enumerate(paths):
        for r in json.loads(path.read_text())["runs"]:
            variant, _, rnd = r["setup"].rpartition(" r")
            by[(variant, (i, int(rnd)), r["level"])] = r
    out: dict[str, Any] = {}
    for level in sorted({lv for _, _, lv in by}):
        rounds = sorted({rnd for _, rnd, lv in by if lv == level and (ON, rnd, level) in by
                         and (OFF, rnd, level) in by})
        level_out: dict[str, Any] = {"rounds": len(rounds)}
        for key in ("throughput_rps", "service_cpu_ms_per_request"):
            ratios = [by[(ON, rnd, level)][key] / by[(OFF, rnd, level)][key] for rnd in rounds]
            level_out[key] = {
                "on_median": round(statistics.median(by[(ON, rnd, level)][key] for rnd in rounds), 2),
                "off_median": round(statistics.median(by[(OFF, rnd, level)][key] for rnd in rounds), 2),
                "on_over_off_median": round(statistics.median(ratios), 3),
                "on_over_off_per_round": [round(x, 3) for x in ratios],
            }
        out[f"{level} clients"] = level_out
    return out


async def paired(rounds: int, *, duration_s: float = 15.0, clients: int = 16) -> dict[str, Any]:
    """Both heads (metrics on, off) up at once and loaded at the same time, ``rounds`` times: the
    neighbours' load, which moves throughput by 2x from one minute to the next here, hits both
    alike, so the ratio of each pair is steadier than that of the alternated side-by-side (each
    head is slower than alone: they share the CPUs). The head started first (metrics on) is not
    like the second: an A/A run, both off, read 1.09x CPU per request and 0.95x throughput for the
    first (results/serving_ab_metrics_paired_aa.json), so read a pair against that."""
    from contextlib import ExitStack

    from benchmarks.cluster import spec_server
    from benchmarks.serving_ab import DEPLOYMENTS, PINNED, warm_head
    from benchmarks.workload import build_workload
    from core.settings import load_settings
    from tools.loadgen import closed_loop, tree_cpu_ticks

    ticks = os.sysconf("SC_CLK_TCK")
    workload = build_workload(load_settings().jentic_dir)
    rows: list[dict[str, Any]] = []
    with spec_server(workload.specs) as specs, ExitStack() as stack:
        bodies = workload.with_base_url(specs.base_url)
        heads = {}
        for name, env in ((ON, {}), (OFF, {"OPENSESAME_METRICS": "0"})):
            heads[name] = stack.enter_context(warm_head(
                env, f"/tmp/metrics-cost-{name}-{int(time.time())}",
                dict.fromkeys(DEPLOYMENTS, PINNED), bodies))
        urls = [url for _, url in heads.values()]
        await asyncio.gather(*(closed_loop(url, bodies, concurrency=4, duration_s=20) for url in urls))
        for i in range(rounds):
            cpu0 = {n: tree_cpu_ticks(h.pids()) for n, (h, _) in heads.items()}
            runs = await asyncio.gather(*(closed_loop(url, bodies, concurrency=clients,
                                                      duration_s=duration_s, seed=i) for url in urls))
            cpu1 = {n: tree_cpu_ticks(h.pids()) for n, (h, _) in heads.items()}
            row: dict[str, Any] = {"load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()]}
            for n, run in zip(heads, runs, strict=True):
                rps = run.summary()["throughput_rps"]
                cpu_s = sum(t - cpu0[n].get(pid, 0) for pid, t in cpu1[n].items()) / ticks
                row[n] = {"throughput_rps": rps,
                          "service_cpu_ms_per_request": round(cpu_s * 1000 / (rps * duration_s), 2)}
            for key in ("throughput_rps", "service_cpu_ms_per_request"):
                row[f"{key}_on_over_off"] = round(row[ON][key] / row[OFF][key], 3)
            print(json.dumps(row), flush=True)
            rows.append(row)
    return {"clients": clients, "duration_s": duration_s, "rounds": rows, "medians": {
        key: round(statistics.median(r[f"{key}_on_over_off"] for r in rows), 3)
        for key in ("throughput_rps", "service_cpu_ms_per_request")}}


ON, OFF = "metrics_on", "metrics_off"
# Two runs of 6 rounds each, pooled (the same code and settings; see the module's docstring).
SIDE_BY_SIDE = [RESULTS / "serving_ab_metrics_aggregated.json",
                RESULTS / "serving_ab_metrics_aggregated_2.json"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.metrics_cost", description=__doc__.splitlines()[0])
    p.add_argument("--paired", type=int, metavar="ROUNDS",
                   help="instead: both heads at once, ROUNDS times (results/serving_ab_metrics_paired.json)")
    args = p.parse_args(argv)
    if args.paired:
        result = asyncio.run(paired(args.paired))
        (RESULTS / "serving_ab_metrics_paired.json").write_text(json.dumps(result, indent=1) + "\n")
        print("medians, on over off:", result["medians"])
        return
    out: dict[str, Any] = {"replica": _replica_cost()}
    found = [p for p in SIDE_BY_SIDE if p.exists()]
    r = out["replica"]
    print(f"metrics, µs of CPU per prediction ({r['records_per_prediction']} records): "
          f"{r['request_path_us_median']} on the request path, {r['recorder_us_median']} in the recorder "
          f"({r['recorder_ray_calls_median']} Ray calls), "
          f"{r['one_ray_call_each_us_median']} with one Ray call each")
    if found:
        out["side_by_side_files"] = [p.name for p in found]
        out["side_by_side"] = side_by_side(found)
        for level, numbers in out["side_by_side"].items():
            for key in ("throughput_rps", "service_cpu_ms_per_request"):
                m = numbers[key]
                print(f"  {level:>10} {key}: on/off {m['on_over_off_median']} (median of "
                      f"{numbers['rounds']} rounds: {m['on_over_off_per_round']})")
    (RESULTS / "metrics_cost.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
