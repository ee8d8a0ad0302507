"""Serve deployment around :class:`CandidateGenerator` (retrieval, optionally widened by an LLM)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ray import serve

from core.errors import PredictorError
from deployments.serving.components import build_generator
from deployments.serving.messages import Generated, GraphRequest
from deployments.serving.metrics import metrics
from deployments.serving.replica import Replica
from deployments.serving.resources import deployment_options
from deployments.serving.spec_store import SpecStore

__all__ = ["CandidateGeneratorDeployment"]

log = logging.getLogger(__name__)


@serve.deployment(name="CandidateGenerator", **deployment_options("CandidateGenerator"))
class CandidateGeneratorDeployment(Replica):
    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        super().__init__(settings)
        self.store = SpecStore(self.settings)
        self.generator = build_generator(self.settings)

    async def generate_batch(self, requests: list[GraphRequest]) -> list[Generated | BaseException]:
        """Candidates for a batch of requests (the ingress coalesces them), concurrently. A request
        that fails (its spec left the node's cache, or a fault) gets its error in its place: the
        other users' requests of the batch are answered."""
        start = time.perf_counter()
        try:
            results = await asyncio.gather(*(self.generate(r) for r in requests), return_exceptions=True)
            for r in results:
                if isinstance(r, BaseException) and not isinstance(r, Exception):
                    raise r  # cancelled, or the process is stopping
                if isinstance(r, Exception) and not isinstance(r, PredictorError):
                    log.error("candidate generation failed for one request", exc_info=r)
            return list(results)
        finally:
            self.latency.observe(time.perf_counter() - start)

    async def generate(self, request: GraphRequest) -> Generated:
        start = time.perf_counter()
        spec = await self.store.by_hash(request["spec_hash"], shipped=request.get("spec_index"))
        history = spec.resolve_history(request["history"])
        result = await self.generator.generate(spec, history, request["prompt"], k=request["k"])
        breaker = getattr(self.generator.llm, "breaker", None)  # None: no LLM configured
        metrics().generated(fallback_reason=result.fallback_reason,
                            breaker_state=breaker.state if breaker is not None else None)
        return Generated(**result.to_wire(), ms={"candidates": (time.perf_counter() - start) * 1000})

    async def health(self) -> dict[str, Any]:
        return {
            "ok": True,
            **self.generator.status(),
            "spec_cache": self.store.status(),
            **self.latency.stats(),
        }

    async def __del__(self) -> None:
        await self.generator.aclose()
