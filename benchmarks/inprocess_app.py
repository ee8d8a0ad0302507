"""The in-process pipeline behind one uvicorn process: the Serve graph's baseline over HTTP.

    OPENSESAME_ALLOW_PRIVATE_SPEC_HOSTS=1 python -m uvicorn benchmarks.inprocess_app:app --port 8100

The same plain classes as the graph (deployments/serving/pipeline.py), the same request and response
models, no Ray: what one Python process does with a CPU.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from deployments.serving.http_errors import install_error_handlers
from deployments.serving.pipeline import Pipeline
from deployments.serving.schemas import PredictRequest, PredictResponse

__all__ = ["app"]

_state: dict[str, Any] = {}


@asynccontextmanager
async def _lifespan(_: FastAPI):  # type: ignore[no-untyped-def]
    _state["pipeline"] = Pipeline()
    try:
        yield
    finally:
        await _state.pop("pipeline").aclose()


app = FastAPI(title="opensesame-predictor (in-process)", lifespan=_lifespan)
install_error_handlers(app)


@app.post("/predict", response_model=PredictResponse)
async def predict(body: PredictRequest) -> PredictResponse:
    return await _state["pipeline"].predict(body)
