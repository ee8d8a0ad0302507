"""Serve deployment around the LightGBM ranker: one stacked predict call per batch."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
from ray import serve

from core.scoring import score_top_k
from deployments.serving.batching import apply_batch_config
from deployments.serving.messages import Featured, Ranked, candidates_of
from deployments.serving.metrics import metrics
from deployments.serving.model_swap import RankerSlot, split_model_config
from deployments.serving.probes import check_model_scores
from deployments.serving.replica import BatchedReplica, per_call
from deployments.serving.resources import deployment_options

__all__ = ["RankerDeployment"]


@serve.deployment(name="Ranker", **deployment_options("Ranker"))
class RankerDeployment(BatchedReplica):
    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        super().__init__(settings)
        self.slot = RankerSlot(self.settings)  # the model in use; swapped by reconfigure
        metrics().serving_model(self.slot.ranker.version)

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        # {"model_path": ...} moves to another model (loaded off the event loop, then switched);
        # the other keys are batching knobs. Bad values are refused before anything changes.
        model_config, batching = split_model_config(user_config)
        self.batch_config = apply_batch_config(self._rank_calls, batching, self.wait)
        await self.slot.apply(model_config)
        metrics().serving_model(self.slot.ranker.version)

    async def rank(self, featured: list[Featured | BaseException]) -> list[Ranked | BaseException]:
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
    async def _rank_calls(
        self, calls: list[list[Featured | BaseException]]
    ) -> list[list[Ranked | BaseException]]:
        with self.wait.running():
            return per_call(calls, await self._rank([f for c in calls for f in c]))

    async def _rank(self, featured: list[Featured | BaseException]) -> list[Ranked | BaseException]:
        start = time.perf_counter()
        self.batch_stats.record(len(featured))
        ranker = self.slot.ranker  # one model for the whole batch, even if a swap lands now
        ok = [f for f in featured if not isinstance(f, BaseException)]
        # Explanations only for the k rows each response shows (core/scoring.py).
        # Inline, not asyncio.to_thread: see FeatureExtractorDeployment._extract.
        scored = iter(score_top_k(ranker, [f["features"] for f in ok], [f["k"] for f in ok]) if ok else [])
        ms = (time.perf_counter() - start) * 1000
        out: list[Ranked | BaseException] = []
        for f in featured:  # requests that failed upstream keep their error
            if isinstance(f, BaseException):
                out.append(f)
                continue
            s = next(scored)
            out.append(Ranked(
                **candidates_of(f),
                ms={**f["ms"], "rank": ms},
                features=f["features"],  # the Ingress may need rows the ranker did not explain
                k=f["k"], probs=s.probs, top=s.top, contribs_top=s.contribs_top,
                model_version=ranker.version,
            ))
        return out

    def check_health(self) -> None:
        check_model_scores(self.slot.ranker)  # deployments/serving/probes.py says why only this

    async def health(self) -> dict[str, Any]:
        return {
            "ok": True,
            **self.slot.status(),
            # A refused swap or start serves another model than asked for: degraded too.
            "degraded": self.slot.degraded,
            **self.batching_status(),
            **self.latency.stats(),
        }
