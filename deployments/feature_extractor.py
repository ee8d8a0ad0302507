"""Serve deployment around :class:`core.features.FeatureExtractor`, batched."""

from __future__ import annotations

import time
from typing import Any

from ray import serve

from core.candidates.generator import CandidateSet
from core.errors import PredictorError
from core.features import UserTransitions
from core.settings import load_settings
from deployments.serving.admission import lower_priority
from deployments.serving.autoscaling import LatencyWindow
from deployments.serving.batching import AdaptiveWait, BatchConfig, BatchStats, apply_batch_config
from deployments.serving.components import build_extractor
from deployments.serving.resources import deployment_options
from deployments.serving.spec_store import SpecStore

__all__ = ["FeatureExtractorDeployment"]


@serve.deployment(name="FeatureExtractor", **deployment_options("FeatureExtractor"))
class FeatureExtractorDeployment:
    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        lower_priority()  # HAProxy and the proxy get the CPU first: refusals stay fast
        self.settings = load_settings(**(settings or {}))
        self.store = SpecStore(self.settings)
        self.extractor = build_extractor(self.settings)
        self.batch_stats = BatchStats()
        self.batch_config = BatchConfig()
        self.wait = AdaptiveWait()
        self.latency = LatencyWindow()

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        self.batch_config = apply_batch_config(self._extract_calls, user_config, self.wait)

    def record_autoscaling_stats(self) -> dict[str, float]:
        return self.latency.stats()

    async def extract(
        self, requests: list[dict[str, Any]], generated: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """Features for a batch of requests (the ingress coalesces them) and their candidates."""
        start = time.perf_counter()
        self.wait.before_call()
        try:
            return await self._extract_calls(requests, generated)
        finally:
            self.latency.observe(time.perf_counter() - start)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0)
    async def _extract_calls(
        self, calls: list[list[dict[str, Any]]], generated_calls: list[list[dict[str, Any]]]
    ) -> list[list[dict[str, Any]]]:
        with self.wait.running():
            flat = await self._extract([r for c in calls for r in c], [g for c in generated_calls for g in c])
        out, start = [], 0
        for call in calls:
            out.append(flat[start: start + len(call)])
            start += len(call)
        return out

    async def _extract(
        self, requests: list[dict[str, Any]], generated: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        start = time.perf_counter()
        self.batch_stats.record(len(requests))
        # A request that failed upstream, or fails here, fails alone: its error takes its place.
        out: list[Any] = list(generated)
        jobs, rows = [], []
        for i, (request, gen) in enumerate(zip(requests, generated, strict=True)):
            if isinstance(gen, BaseException):
                continue
            try:
                spec = await self.store.by_hash(request["spec_hash"], shipped=request.get("spec_index"))
            except PredictorError as exc:
                out[i] = exc
                continue
            cset = CandidateSet.from_wire(gen)
            jobs.append((spec, spec.resolve_history(request["history"]), request["prompt"], cset.candidates,
                         UserTransitions.from_wire(request.get("personal"))))
            rows.append(i)
        # Inline, not in a worker thread: a thread hop per batch cost ~0.5 ms, and the few ms of
        # a batch hold up nothing (calls arriving meanwhile join the next batch; HAProxy, not
        # this replica, refuses the excess). benchmarks/SERVING.md.
        matrices = self.extractor.extract_batch(jobs) if jobs else []
        ms = (time.perf_counter() - start) * 1000
        for i, x in zip(rows, matrices, strict=True):
            gen = generated[i]
            out[i] = {**gen, "features": x, "k": requests[i]["k"], "ms": {**gen["ms"], "features": ms}}
        return out

    async def health(self) -> dict[str, Any]:
        return {
            "ok": True,
            "batching": self.batch_config.model_dump(),
            "batch_sizes": self.batch_stats.summary(),
            **self.latency.stats(),
            "spec_cache": self.store.status(),
        }
