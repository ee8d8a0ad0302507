"""A one-deployment app whose latency is set by the test, autoscaled by the latency policy."""

from __future__ import annotations

import asyncio
import time

from ray import serve
from ray.serve import Application

from deployments.serving.autoscaling import LatencyWindow


@serve.deployment(ray_actor_options={"num_cpus": 0.1, "memory": 100 * 1024 * 1024}, max_ongoing_requests=4)
class Slow:
    def __init__(self, work_s: float) -> None:
        self.work_s = work_s
        self.latency = LatencyWindow(window_s=2.0)

    def record_autoscaling_stats(self) -> dict[str, float]:
        return self.latency.stats()

    async def __call__(self) -> str:
        start = time.perf_counter()
        await asyncio.sleep(self.work_s)
        self.latency.observe(time.perf_counter() - start)
        return "ok"


def build(*, work_s: float, target_p95_ms: float) -> Application:
    autoscaling = {
        "min_replicas": 1,
        "max_replicas": 2,
        "metrics_interval_s": 0.5,
        "look_back_period_s": 1.5,
        "upscale_delay_s": 0.5,
        "downscale_delay_s": 2.0,
        "policy": {
            "policy_function": "deployments.serving.autoscaling:LatencyPolicy",
            "policy_kwargs": {"target_p95_ms": target_p95_ms},
        },
    }
    return Slow.options(autoscaling_config=autoscaling).bind(work_s)
