"""Turn ranked candidates into the response: best first, params filled, a reason each."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np

from core.candidates.generator import CandidateSet
from core.explain import explain
from core.params import fill_params
from core.spec.index import Call, SpecIndex
from deployments.serving.schemas import Prediction, PredictMetadata, PredictResponse

__all__ = ["assemble_predictions", "build_response"]


def assemble_predictions(
    *,
    spec: SpecIndex,
    history: Sequence[Call],
    prompt: str | None,
    candidates: CandidateSet,
    features: np.ndarray,
    probs: np.ndarray,
    contribs: np.ndarray,
    k: int,
) -> list[Prediction]:
    # Stable sort: equal scores keep the generator's order.
    order = np.argsort(-np.asarray(probs, dtype=np.float64), kind="stable")[:k]
    predictions = []
    for row in order:
        cand = candidates.candidates[row]
        op = spec.operations[cand.index]
        params, missing = fill_params(op, history, proposed=candidates.llm_params.get(cand.index),
                                      prompt=prompt)
        predictions.append(
            Prediction(
                endpoint=op.key,
                params=params,
                score=round(float(np.clip(probs[row], 0.0, 1.0)), 4),
                why=explain(op, features[row], contribs[row], history=history, prompt=prompt),
                destructive=cand.destructive or op.destructive,
                missing_params=missing,
            )
        )
    return predictions


def build_response(
    *,
    predictions: list[Prediction],
    model_version: str,
    candidates: CandidateSet,
    history: Sequence[Call],
    timings_ms: dict[str, Any],
) -> PredictResponse:
    return PredictResponse(
        predictions=predictions,
        prediction_id=uuid.uuid4().hex,
        metadata=PredictMetadata(
            model_version=model_version,
            generator=candidates.generator,  # type: ignore[arg-type]
            cold_start=not history,
            timings_ms={k: round(float(v), 3) for k, v in timings_ms.items()},
            fallback_reason=candidates.fallback_reason,
            unknown_events=sum(1 for c in history if c.operation is None),
        ),
    )
