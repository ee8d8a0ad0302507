"""Everything after the model, as users get it: the blends the model was not trained on (the LLM's
proposals, a user's habits), the reasons for rows a blend moved up, the predictions best first
with their params filled, and the response.

The Ingress and the in-process pipeline both answer through :func:`respond`, so the benchmarks of
the pipeline measure what users get.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np

from core.candidates.generator import CandidateSet
from core.explain import explain
from core.params import fill_params, history_ids
from core.priors.personal import TransitionPrior
from core.scoring import after_model, annotate, expand_rows, unexplained_rows
from core.spec.index import Call, SpecIndex
from deployments.serving.messages import Ranked
from deployments.serving.schemas import Prediction, PredictMetadata, PredictRequest, PredictResponse

__all__ = ["respond", "assemble_predictions", "build_response"]

# Contributions of feature rows the Ranker did not explain (the Ranker deployment, or the
# in-process scorer).
ExplainRows = Callable[[np.ndarray], Awaitable[np.ndarray]]


async def respond(
    ranked: Ranked,
    *,
    request: PredictRequest,
    spec: SpecIndex,
    history: Sequence[Call],
    prior: TransitionPrior | None,
    llm_weight: float,
    explain_rows: ExplainRows,
    timings_ms: dict[str, float],
    started: float,
) -> PredictResponse:
    """The response to ``request`` from the ranker's scores. ``history``: its events resolved on
    ``spec``; ``prior``: the users' habits to blend in (off at its weight 0); ``timings_ms``: the
    stages so far, ``total`` is added from ``started`` (a ``time.perf_counter()``)."""
    cset = CandidateSet.from_wire(ranked)
    features = ranked["features"]
    probs, notes = after_model(
        ranked["probs"], spec=spec, history=history, candidates=cset.candidates,
        user_id=request.user_id, prior=prior, llm_weight=llm_weight)
    contribs = expand_rows(len(cset.candidates), ranked["top"], ranked["contribs_top"])
    # The Ranker explained its own top k; a row a blend moved up needs explaining.
    missing = unexplained_rows(probs, request.k, ranked["top"])
    if missing:
        contribs[missing] = await explain_rows(features[missing])
    predictions = assemble_predictions(
        spec=spec, history=history, prompt=request.prompt, candidates=cset, features=features,
        probs=probs, contribs=contribs, k=request.k,
    )
    annotate(predictions, notes)
    return build_response(
        predictions=predictions,
        model_version=ranked["model_version"],
        candidates=cset,
        history=history,
        timings_ms={**timings_ms, "total": (time.perf_counter() - started) * 1000},
    )


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
    ids = history_ids(history)  # the same for every prediction
    scores = np.clip(np.asarray(probs)[order], 0.0, 1.0).tolist()
    predictions = []
    for row, score in zip(order, scores, strict=True):
        cand = candidates.candidates[row]
        op = spec.operations[cand.index]
        params, missing = fill_params(op, history, proposed=candidates.llm_params.get(cand.index),
                                      prompt=prompt, ids=ids, api_words=spec.name_words)
        predictions.append(
            Prediction(
                endpoint=op.key,
                params=params,
                score=round(score, 4),
                why=explain(op, features[row], contribs[row], history=history, prompt=prompt,
                            ids=ids),
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
            generator=candidates.generator,
            cold_start=not history,
            timings_ms={k: round(float(v), 3) for k, v in timings_ms.items()},
            fallback_reason=candidates.fallback_reason,
            unknown_events=sum(1 for c in history if c.operation is None),
        ),
    )
