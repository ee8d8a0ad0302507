"""Serve deployment around :class:`ranker.features.FeatureExtractor`, batched."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ray import serve

from deployments.batching import BatchConfig, apply_batch_config
from deployments.candidates.generator import CandidateSet
from deployments.components import build_extractor
from deployments.resources import DEFAULT_OPTIONS
from deployments.settings import load_settings
from deployments.spec.store import SpecStore

__all__ = ["FeatureExtractorDeployment"]


@serve.deployment(name="FeatureExtractor", **DEFAULT_OPTIONS)
class FeatureExtractorDeployment:
    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        self.settings = load_settings(**(settings or {}))
        self.store = SpecStore(self.settings)
        self.extractor = build_extractor(self.settings)
        self.batch_sizes: list[int] = []
        self.batch_config = BatchConfig()

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        self.batch_config = apply_batch_config(self.extract, user_config)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def extract(
        self, requests: list[dict[str, Any]], generated: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        start = time.perf_counter()
        self.batch_sizes.append(len(requests))
        del self.batch_sizes[:-1000]
        jobs = []
        for request, gen in zip(requests, generated, strict=True):
            spec = await self.store.by_hash(request["spec_hash"])
            cset = CandidateSet.from_wire(gen)
            jobs.append((spec, spec.resolve_history(request["history"]), request["prompt"], cset.candidates))
        matrices = await asyncio.to_thread(self.extractor.extract_batch, jobs)
        ms = (time.perf_counter() - start) * 1000
        return [
            {**gen, "features": x, "ms": {**gen["ms"], "features": ms}}
            for gen, x in zip(generated, matrices, strict=True)
        ]

    async def health(self) -> dict[str, Any]:
        sizes = self.batch_sizes
        return {
            "ok": True,
            "batching": self.batch_config.model_dump(),
            "mean_batch_size": sum(sizes) / len(sizes) if sizes else None,
            "spec_cache": self.store.status(),
        }
