"""What the node has and what each deployment may take of it: the one place these numbers live.

The node is 2 CPUs and 4 GB. Ray itself (GCS, raylet, agents), its object store, the Serve
controller and the HTTP proxy come off the top; what is left is the ``memory`` resource the Ray
head announces, so the scheduler itself refuses a replica that would not fit. Each deployment
reserves a fraction of a CPU and a measured amount of memory per replica, and its autoscaling
maximum is chosen so that every deployment at its maximum still fits (checked by
``tests/test_config_budget.py`` against ``serve_config.yaml``, which states the same numbers).

``python -m deployments.serving.resources`` prints the ``ray start`` arguments that announce these caps:
``make run`` and the Docker image start the head with them.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["NodeBudget", "NODE", "DEPLOYMENT_OPTIONS", "deployment_options", "MB"]

MB = 1024 * 1024


@dataclass(frozen=True)
class NodeBudget:
    num_cpus: int = 2
    total_mb: int = 4000
    # Measured RSS on this node (benchmarks/SERVING.md): Ray idle (GCS, raylet, agents, the
    # `serve run` driver), the controller and the proxy; the object store is counted whole.
    ray_base_mb: int = 700
    object_store_mb: int = 200
    controller_mb: int = 150
    proxy_mb: int = 150
    # Ray's dashboard (measured ~120 MB RSS): `make run` starts it so that `serve status` and
    # `serve deploy` work; reserved whether or not a head runs it.
    dashboard_mb: int = 130

    def __post_init__(self) -> None:
        if self.replica_memory_mb <= 0:
            raise ValueError(
                f"nothing left for replicas: {self.total_mb} MB total, Ray and Serve take "
                f"{self.total_mb - self.replica_memory_mb} MB"
            )

    @property
    def replica_memory_mb(self) -> int:
        """What replicas may reserve in all: the ``memory`` resource the head announces."""
        return (self.total_mb - self.ray_base_mb - self.object_store_mb - self.controller_mb
                - self.proxy_mb - self.dashboard_mb)

    def ray_start_args(self, *, dashboard: bool = False) -> list[str]:
        return [
            "--num-cpus", str(self.num_cpus),
            "--memory", str(self.replica_memory_mb * MB),
            "--object-store-memory", str(self.object_store_mb * MB),
            f"--include-dashboard={'true' if dashboard else 'false'}",
            "--disable-usage-stats",
        ]


NODE = NodeBudget()

# Per replica, the same numbers as serve_config.yaml (which deploys; these are the defaults of
# `serve run graph:app` and of tests). A request past max_ongoing_requests + max_queued_requests
# is answered 503 with Retry-After at once rather than queued into a timeout. The downstream
# deployments count calls, each carrying a batch of requests (deployments/serving/batching.py), and keep
# max_ongoing_requests >= max_batch_size of their @serve.batch.
_BACKPRESSURE = {"status_code": 503, "retry_after_s": 1}
# Serve notices a dead replica at its next health check: every 2 s rather than the default 10 s.
_HEALTH_CHECK_PERIOD_S = 2.0
DEPLOYMENT_OPTIONS: Mapping[str, Mapping[str, Any]] = {
    "Ingress": {
        "ray_actor_options": {"num_cpus": 0.25, "memory": 250 * MB},
        "max_ongoing_requests": 32,
        "max_queued_requests": 32,
        "backpressure_config": _BACKPRESSURE,
        "health_check_period_s": _HEALTH_CHECK_PERIOD_S,
    },
    "CandidateGenerator": {
        "ray_actor_options": {"num_cpus": 0.25, "memory": 300 * MB},
        "max_ongoing_requests": 8,
        "max_queued_requests": 16,
        "backpressure_config": _BACKPRESSURE,
        "health_check_period_s": _HEALTH_CHECK_PERIOD_S,
    },
    "FeatureExtractor": {
        "ray_actor_options": {"num_cpus": 0.25, "memory": 300 * MB},
        "max_ongoing_requests": 8,
        "max_queued_requests": 16,
        "backpressure_config": _BACKPRESSURE,
        "health_check_period_s": _HEALTH_CHECK_PERIOD_S,
    },
    "Ranker": {
        "ray_actor_options": {"num_cpus": 0.25, "memory": 250 * MB},
        "max_ongoing_requests": 8,
        "max_queued_requests": 16,
        "backpressure_config": _BACKPRESSURE,
        "health_check_period_s": _HEALTH_CHECK_PERIOD_S,
    },
}


def deployment_options(name: str) -> dict[str, Any]:
    """Keyword arguments for ``@serve.deployment`` (``serve_config.yaml`` may override them)."""
    options = DEPLOYMENT_OPTIONS[name]
    return {
        **options,
        "ray_actor_options": dict(options["ray_actor_options"]),
        "backpressure_config": dict(options["backpressure_config"]),
    }


if __name__ == "__main__":
    sys.stdout.write(" ".join(NODE.ray_start_args()) + "\n")
