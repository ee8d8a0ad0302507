"""Serve deployment around the LightGBM ranker: one stacked predict call per batch."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
from ray import serve

from core.scoring import score_top_k
from core.settings import load_settings
from deployments.serving.admission import lower_priority
from deployments.serving.autoscaling import LatencyWindow
from deployments.serving.batching import AdaptiveWait, BatchConfig, BatchStats, apply_batch_config
from deployments.serving.model_swap import RankerSlot, split_model_config
from deployments.serving.resources import deployment_options

__all__ = ["RankerDeployment"]


@serve.deployment(name="Ranker", **deployment_options("Ranker"))
class RankerDeployment:
    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        lower_priority()  # HAProxy and the proxy get the CPU first: refusals stay fast
        self.settings = load_settings(**(settings or {}))
        self.slot = RankerSlot(self.settings)  # the model in use; swapped by reconfigure
        self.batch_stats = BatchStats()
        self.batch_config = BatchConfig()
        self.wait = AdaptiveWait()
        self.latency = LatencyWindow()

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        # {"model_path": ...} moves to another model (loaded off the event loop, then switched);
        # the other keys are batching knobs. Bad values are refused before anything changes.
        model_config, batching = split_model_config(user_config)
        self.batch_config = apply_batch_config(self._rank_calls, batching, self.wait)
        await self.slot.apply(model_config)

    def record_autoscaling_stats(self) -> dict[str, float]:
        return self.latency.stats()

    async def rank(self, featured: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Scores for a batch of requests' features (the ingress coalesces requests)."""
        start = time.perf_counter()
        self.wait.before_call()
        try:
            return await self._rank_calls(featured)
        finally:
            self.latency.observe(time.perf_counter() - start)

    async def explain_rows(self, rows: np.ndarray) -> np.ndarray:
        """Contributions of feature rows the batch did not explain: rows a personal prior moved
        into the top k in the Ingress (rare; one small call)."""
        return await asyncio.to_thread(self.slot.ranker.contributions, rows)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0)
    async def _rank_calls(self, calls: list[list[dict[str, Any]]]) -> list[list[dict[str, Any]]]:
        with self.wait.running():
            flat = await self._rank([f for c in calls for f in c])
        out, start = [], 0
        for call in calls:
            out.append(flat[start: start + len(call)])
            start += len(call)
        return out

    async def _rank(self, featured: list[dict[str, Any]]) -> list[dict[str, Any]]:
        start = time.perf_counter()
        self.batch_stats.record(len(featured))
        ranker = self.slot.ranker  # one model for the whole batch, even if a swap lands now
        out: list[Any] = list(featured)  # requests that failed upstream keep their error
        rows = [i for i, f in enumerate(featured) if not isinstance(f, BaseException)]
        # Explanations only for the k rows each response shows (core/scoring.py).
        # Inline, not asyncio.to_thread: see FeatureExtractorDeployment._extract.
        scored = score_top_k(
            ranker, [featured[i]["features"] for i in rows], [featured[i]["k"] for i in rows]
        ) if rows else []
        ms = (time.perf_counter() - start) * 1000
        for i, s in zip(rows, scored, strict=True):
            f = featured[i]
            out[i] = {
                **f,  # features included: the Ingress may need rows the ranker did not explain
                **{key: v for key, v in s.items() if key != "features_top"},
                "model_version": ranker.version,
                "ms": {**f["ms"], "rank": ms},
            }
        return out

    async def health(self) -> dict[str, Any]:
        return {
            "ok": True,
            **self.slot.status(),
            # A refused swap serves an older model than asked for: that is degraded too.
            "degraded": self.slot.ranker.degraded or self.slot.last_error is not None,
            "batching": self.batch_config.model_dump(),
            "batch_sizes": self.batch_stats.summary(),
            **self.latency.stats(),
        }
