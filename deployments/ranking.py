"""Serve deployment around the LightGBM ranker: one stacked predict call per batch."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ray import serve

from deployments.batching import BatchConfig, apply_batch_config
from deployments.components import build_ranker
from deployments.resources import DEFAULT_OPTIONS
from deployments.settings import load_settings

__all__ = ["RankerDeployment"]


@serve.deployment(name="Ranker", **DEFAULT_OPTIONS)
class RankerDeployment:
    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        self.settings = load_settings(**(settings or {}))
        self.ranker = build_ranker(self.settings)
        self.batch_sizes: list[int] = []
        self.batch_config = BatchConfig()

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        self.batch_config = apply_batch_config(self.rank, user_config)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def rank(self, featured: list[dict[str, Any]]) -> list[dict[str, Any]]:
        start = time.perf_counter()
        self.batch_sizes.append(len(featured))
        del self.batch_sizes[:-1000]
        scored = await asyncio.to_thread(self.ranker.score_groups, [f["features"] for f in featured])
        ms = (time.perf_counter() - start) * 1000
        return [
            {
                **f,
                "probs": probs,
                "contribs": contribs,
                "model_version": self.ranker.version,
                "ms": {**f["ms"], "rank": ms},
            }
            for f, (probs, contribs) in zip(featured, scored, strict=True)
        ]

    async def health(self) -> dict[str, Any]:
        sizes = self.batch_sizes
        return {
            "ok": True,
            "model_version": self.ranker.version,
            "degraded": self.ranker.degraded,
            "batching": self.batch_config.model_dump(),
            "mean_batch_size": sum(sizes) / len(sizes) if sizes else None,
        }
