"""Serve deployment around :class:`CandidateGenerator` (retrieval, optionally widened by an LLM)."""

from __future__ import annotations

import time
from typing import Any

from ray import serve

from deployments.components import build_generator
from deployments.resources import DEFAULT_OPTIONS
from deployments.settings import load_settings
from deployments.spec.store import SpecStore

__all__ = ["CandidateGeneratorDeployment"]


@serve.deployment(name="CandidateGenerator", **DEFAULT_OPTIONS)
class CandidateGeneratorDeployment:
    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        self.settings = load_settings(**(settings or {}))
        self.store = SpecStore(self.settings)
        self.generator = build_generator(self.settings)

    async def generate(self, request: dict[str, Any]) -> dict[str, Any]:
        start = time.perf_counter()
        spec = await self.store.by_hash(request["spec_hash"])
        history = spec.resolve_history(request["history"])
        result = await self.generator.generate(spec, history, request["prompt"], k=request["k"])
        wire = result.to_wire()
        wire["ms"] = {"candidates": (time.perf_counter() - start) * 1000}
        return wire

    async def health(self) -> dict[str, Any]:
        return {"ok": True, **self.generator.status(), "spec_cache": self.store.status()}

    async def __del__(self) -> None:
        await self.generator.aclose()
