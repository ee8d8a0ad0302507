"""Serve deployment around :class:`core.features.FeatureExtractor`, batched."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from ray import serve

from core.candidates.generator import CandidateSet
from core.errors import PredictorError
from core.features import UserTransitions
from core.priors.population import PopulationView
from deployments.serving.batching import apply_batch_config
from deployments.serving.components import build_extractor
from deployments.serving.messages import Featured, Generated, GraphRequest, candidates_of
from deployments.serving.replica import BatchedReplica, per_call
from deployments.serving.resources import deployment_options
from deployments.serving.spec_store import SpecStore

__all__ = ["FeatureExtractorDeployment"]

log = logging.getLogger(__name__)


@serve.deployment(name="FeatureExtractor", **deployment_options("FeatureExtractor"))
class FeatureExtractorDeployment(BatchedReplica):
    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        super().__init__(settings)
        self.store = SpecStore(self.settings)
        self.extractor = build_extractor(self.settings)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        # Ray's stub for @serve.batch knows methods of one list argument only; this one takes two.
        self.batch_config = apply_batch_config(self._extract_calls, user_config, self.wait)  # type: ignore[misc]

    async def extract(
        self, requests: list[GraphRequest], generated: list[Generated | BaseException]
    ) -> list[Featured | BaseException]:
        """Features for a batch of requests (the ingress coalesces them) and their candidates."""
        start = time.perf_counter()
        self.wait.before_call()
        try:
            return await self._extract_calls(requests, generated)  # type: ignore[misc, call-arg]
        finally:
            self.latency.observe(time.perf_counter() - start)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0)  # type: ignore[arg-type]
    async def _extract_calls(  # type: ignore[misc]
        self, calls: list[list[GraphRequest]], generated_calls: list[list[Generated | BaseException]]
    ) -> list[list[Featured | BaseException]]:
        with self.wait.running():
            flat = await self._extract([r for c in calls for r in c], [g for c in generated_calls for g in c])
        return per_call(calls, flat)

    async def _extract(
        self, requests: list[GraphRequest], generated: list[Generated | BaseException]
    ) -> list[Featured | BaseException]:
        start = time.perf_counter()
        self.batch_stats.record(len(requests))
        # A request that failed upstream, or fails here, fails alone: its error takes its place.
        failed: dict[int, BaseException] = {}
        jobs, rows = [], []
        for i, (request, gen) in enumerate(zip(requests, generated, strict=True)):
            if isinstance(gen, BaseException):
                failed[i] = gen
                continue
            try:
                spec = await self.store.by_hash(request["spec_hash"], shipped=request.get("spec_index"))
            except PredictorError as exc:
                failed[i] = exc
                continue
            cset = CandidateSet.from_wire(gen)
            jobs.append((spec, spec.resolve_history(request["history"]), request["prompt"], cset.candidates,
                         UserTransitions.from_wire(request.get("personal")),
                         PopulationView.from_wire(request.get("population"))))
            rows.append(i)
        # Inline, not in a worker thread: a thread hop per batch cost ~0.5 ms, and the few ms of
        # a batch hold up nothing (calls arriving meanwhile join the next batch; HAProxy, not
        # this replica, refuses the excess). benchmarks/SERVING.md.
        matrices: dict[int, np.ndarray] = {}
        for i, job in zip(rows, jobs, strict=True):
            try:
                matrices[i] = self.extractor.extract(*job)
            except Exception as exc:  # noqa: BLE001 - fails its own request, not the batch
                log.error("feature extraction failed for one request", exc_info=exc)
                failed[i] = exc
        ms = (time.perf_counter() - start) * 1000
        done: dict[int, Featured] = {}
        for i, x in matrices.items():
            gen = generated[i]
            assert not isinstance(gen, BaseException)
            done[i] = Featured(**candidates_of(gen), ms={**gen["ms"], "features": ms}, features=x,
                               k=requests[i]["k"])
        return [done[i] if i in done else failed[i] for i in range(len(requests))]

    async def health(self) -> dict[str, Any]:
        return {
            "ok": True,
            **self.batching_status(),
            **self.latency.stats(),
            "spec_cache": self.store.status(),
        }
