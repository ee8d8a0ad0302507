"""The HTTP ingress: validates the request, resolves the spec, drives the graph, answers."""

# No `from __future__ import annotations` here: Serve rebuilds the route functions and FastAPI
# must see real types, not strings, to read the body model.


import asyncio
import time
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.candidates.generator import CandidateSet
from deployments.http_errors import BodySizeLimit, install_error_handlers
from deployments.predictions import assemble_predictions, build_response
from deployments.schemas import ErrorBody, HealthResponse, PredictRequest, PredictResponse
from deployments.resources import DEFAULT_OPTIONS
from deployments.settings import load_settings
from deployments.spec.store import SpecStore

__all__ = ["Ingress", "api"]

HEALTH_TIMEOUT_S = 2.0
_ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": dict[str, ErrorBody], "description": d}
    for s, d in [
        (413, "too large"),
        (422, "invalid request or spec"),
        (502, "spec host failed"),
        (503, "overloaded (Retry-After)"),
        (504, "spec host timed out"),
    ]
}

api = FastAPI(
    title="opensesame-predictor",
    description="Predicts the next API call from recent calls, a prompt and an OpenAPI spec.",
    version="0.1.0",
)
install_error_handlers(api)
# Starlette refuses middleware added once the app runs, so it is added here and reads its limit
# from the replica's settings, set in Ingress.__init__.
_body_limit = BodySizeLimit.install(api)


@serve.deployment(name="Ingress", **DEFAULT_OPTIONS)
@serve.ingress(api)
class Ingress:
    def __init__(
        self,
        generator: DeploymentHandle,
        extractor: DeploymentHandle,
        ranker: DeploymentHandle,
        settings: dict[str, Any] | None = None,
    ) -> None:
        self.settings = load_settings(**(settings or {}))
        self.store = SpecStore(self.settings)
        self.generator = generator
        self.extractor = extractor
        self.ranker = ranker
        _body_limit.max_bytes = self.settings.spec_max_bytes + 1024 * 1024

    @api.post("/predict", response_model=PredictResponse, responses=_ERRORS)
    async def predict(self, body: PredictRequest) -> PredictResponse:
        t0 = time.perf_counter()
        spec = await self.store.resolve(spec_url=body.spec_url, spec=body.spec)
        spec_ms = (time.perf_counter() - t0) * 1000
        request = {"spec_hash": spec.spec_hash, "history": body.history(), "prompt": body.prompt, "k": body.k}
        # Chained without awaiting in between: each stage's output goes straight to the next.
        generated = self.generator.generate.remote(request)
        featured = self.extractor.extract.remote(request, generated)
        ranked = await self.ranker.rank.remote(featured)
        history = spec.resolve_history(request["history"])
        cset = CandidateSet.from_wire(ranked)
        predictions = assemble_predictions(
            spec=spec,
            history=history,
            prompt=body.prompt,
            candidates=cset,
            features=ranked["features"],
            probs=ranked["probs"],
            contribs=ranked["contribs"],
            k=body.k,
        )
        timings = {"spec": spec_ms, **ranked["ms"], "total": (time.perf_counter() - t0) * 1000}
        return build_response(
            predictions=predictions,
            model_version=ranked["model_version"],
            candidates=cset,
            history=history,
            timings_ms=timings,
        )

    @api.get("/health", response_model=HealthResponse)
    async def health(self) -> HealthResponse:
        names = ("candidate_generator", "feature_extractor", "ranker")
        handles = (self.generator, self.extractor, self.ranker)

        async def ask(handle: DeploymentHandle) -> dict[str, Any]:
            try:
                return await asyncio.wait_for(handle.health.remote(), HEALTH_TIMEOUT_S)
            except Exception as exc:  # noqa: BLE001 - any failure is reported, not raised
                return {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}

        answers = dict(zip(names, await asyncio.gather(*(ask(h) for h in handles)), strict=True))
        answers["ingress"] = {"ok": True, "spec_cache": self.store.status()}
        degraded = (
            not all(a.get("ok") for a in answers.values())
            or bool(answers["ranker"].get("degraded"))
            or not self.store.status().get("healthy", True)
        )
        return HealthResponse(
            status="degraded" if degraded else "ok",
            model_version=str(answers["ranker"].get("model_version", "unknown")),
            deployments=answers,
        )

    async def __del__(self) -> None:
        await self.store.aclose()
