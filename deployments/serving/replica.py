"""What every deployment of the graph does as a replica: take its CPU priority, read its
settings, and report its own latency to the autoscaler."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from core.settings import load_settings
from deployments.serving.admission import lower_priority_if_graph_replica
from deployments.serving.autoscaling import LatencyWindow
from deployments.serving.batching import AdaptiveWait, BatchConfig, BatchStats
from deployments.serving.logs import route_to_serve
from deployments.serving.metrics import enable as enable_metrics

__all__ = ["Replica", "BatchedReplica", "per_call"]

T = TypeVar("T")


class Replica:
    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        # The graph's work runs below HAProxy and the Ingress: refusals and /health stay fast
        # while it is saturated. Most replicas lowered themselves when their worker first
        # imported ``deployments``; this catches a worker that had imported it before it became
        # the replica. By the process title: the Ingress, and a replica built in-process (a test
        # runner lowered to 19 would start every later Ray head of the session at 19), keep theirs.
        lower_priority_if_graph_replica()
        self.settings = load_settings(**(settings or {}))
        enable_metrics(self.settings.metrics)
        route_to_serve()  # our log lines in Serve's replica log, as JSON
        self.latency = LatencyWindow()

    def record_autoscaling_stats(self) -> dict[str, float]:
        return self.latency.stats()


class BatchedReplica(Replica):
    """A replica whose calls ``@serve.batch`` groups, with batching knobs set by ``reconfigure``."""

    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        super().__init__(settings)
        self.batch_stats = BatchStats()
        self.batch_config = BatchConfig()
        self.wait = AdaptiveWait()

    def batching_status(self) -> dict[str, Any]:
        return {"batching": self.batch_config.model_dump(), "batch_sizes": self.batch_stats.summary()}


def per_call(calls: Sequence[Sequence[Any]], flat: Sequence[T]) -> list[list[T]]:
    """``flat``, the results of every call's items in order, cut back into one list per call."""
    out, start = [], 0
    for call in calls:
        out.append(list(flat[start: start + len(call)]))
        start += len(call)
    return out
