"""What the Prometheus metrics cost a prediction, in CPU: every record a prediction makes
(deployments/serving/metrics.py's hooks), timed inside a real Serve replica, against the service's
CPU per request measured side by side with metrics on and off.

    python -m benchmarks.serving_ab --variant metrics_on --variant metrics_off:OPENSESAME_METRICS=0 \\
        --out benchmarks/results/serving_ab_metrics.json      # the side-by-side (~10 min)
    python -m benchmarks.metrics_cost                          # this (~30 s)

Writes benchmarks/results/metrics_cost.json. On a shared 2-CPU machine the throughput of the
side-by-side swings with the neighbours' load far more than 5 % between rounds; the CPU the
service spends per request, and the records' own cost below, are the steadier measures.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

from tools.cluster import free_port

RESULTS = Path(__file__).resolve().parent / "results"
N = 5000


def _replica_cost() -> dict[str, float]:
    import ray
    from ray import serve

    @serve.deployment(ray_actor_options={"num_cpus": 0.1})
    class Recorder:
        def __init__(self) -> None:
            from deployments.serving.metrics import enable

            self.m = enable(True)

        def one_prediction(self, n: int) -> float:
            """µs for the records one prediction makes, in the order the hooks make them."""
            m = self.m
            start = time.perf_counter()
            for _ in range(n):
                m.spec_cache.inc(tags={"result": "hit"})                       # Ingress: spec resolved
                m.batch(1)                                                      # Ingress: coalesced
                m.batch(1)                                                      # FeatureExtractor
                m.batch(1)                                                      # Ranker
                m.stages({"spec": 1.0, "candidates": 5.0, "features": 2.0, "rank": 1.0})
                m.feedback.inc(tags={"result": "written"})                     # feedback writer
                m.http_requests.inc(tags={"route": "/predict", "status": "200"})
                m.http_request_ms.observe(12.0, tags={"route": "/predict"})
            return (time.perf_counter() - start) / n * 1e6

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=200_000_000)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
        handle = serve.run(Recorder.bind(), name="metrics-cost", route_prefix="/metrics-cost")
        handle.one_prediction.remote(500).result()  # warm: series created
        runs = [handle.one_prediction.remote(N).result() for _ in range(5)]
        return {"records_per_prediction": 14, "us_per_prediction_median": round(statistics.median(runs), 1),
                "us_per_prediction_runs": [round(r, 1) for r in runs]}
    finally:
        serve.shutdown()
        ray.shutdown()


def main() -> None:
    out: dict[str, Any] = {"replica": _replica_cost()}
    ab = RESULTS / "serving_ab_metrics.json"
    if ab.exists():
        medians = json.loads(ab.read_text())["medians"]
        out["side_by_side"] = medians
    us = out["replica"]["us_per_prediction_median"]
    print(f"metrics: {us} µs of CPU per prediction ({out['replica']['records_per_prediction']} records)")
    for variant, levels in out.get("side_by_side", {}).items():
        for level, m in levels.items():
            print(f"  {variant:12} {level:>10}: {m['throughput_rps']} req/s, "
                  f"{m['service_cpu_ms_per_request']} ms CPU/request")
    (RESULTS / "metrics_cost.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
