"""Score candidate groups, and explain only the rows that will be returned.

The ranker's per-feature contributions cost more than its predict (~0.05 ms a row from the leaf
table of :mod:`core.saabas`, against ~1.3 ms for TreeSHAP); a response shows at most ``k``
candidates, so only those ``k`` rows of each group are explained (benchmarks/SERVING.md). Rows
are stacked across the groups of a batch: one model call per batch (the trained ranker reads
both the scores and the shown rows' contributions from one pass over its trees).
The Ranker deployment and the in-process pipeline both use this, so they do the same work.

After the model, :func:`after_model` blends in what the model was not trained on (the LLM's
proposals, a user's habits); :func:`deployments.serving.respond.respond` calls it for the Ingress
and the in-process pipeline alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from core.priors.personal import TransitionPrior, previous_of
from core.spec.index import Call, SpecIndex

__all__ = ["Scorer", "TopK", "top_rows", "unexplained_rows", "score_top_k", "expand_rows", "blend_llm",
           "after_model", "annotate"]


class Scorer(Protocol):
    def score_groups(
        self, groups: Sequence[np.ndarray], *, explain_top: int | Sequence[int] = 5,
        contributions: bool = True,
    ) -> list[tuple[np.ndarray, np.ndarray | None]]: ...

    def contributions(self, X: np.ndarray) -> np.ndarray: ...


def top_rows(probs: np.ndarray, k: int) -> np.ndarray:
    """The rows a response shows, best first: the same order as ``assemble_predictions``."""
    return np.argsort(-np.asarray(probs, dtype=np.float64), kind="stable")[:k]


def unexplained_rows(probs: np.ndarray, k: int, explained: np.ndarray) -> list[int]:
    """The rows a response shows under ``probs`` that are not among ``explained`` (the model's
    own top ``k``, already explained): those a blend after the model moved up."""
    done = set(np.asarray(explained).tolist())
    return [int(r) for r in top_rows(probs, k) if int(r) not in done]


@dataclass(frozen=True, slots=True)
class TopK:
    """One group scored: every row's probability, and the rows a response shows, explained."""

    probs: np.ndarray  # (rows,)
    top: np.ndarray  # row indices, best first
    features_top: np.ndarray  # the feature rows of ``top``
    contribs_top: np.ndarray  # their contributions (features + bias)


def score_top_k(ranker: Scorer, groups: Sequence[np.ndarray], ks: Sequence[int]) -> list[TopK]:
    """Every group scored; contributions for each group's top ``k`` rows only, in one call."""
    if len(groups) != len(ks):
        raise ValueError(f"{len(groups)} groups but {len(ks)} values of k")
    # One model call: the scorer explains each group's top k rows (NaN elsewhere, never read).
    scored = ranker.score_groups(groups, explain_top=ks)
    out = []
    for g, (probs, contrib), k in zip(groups, scored, ks, strict=True):
        top = top_rows(probs, k)
        assert contrib is not None
        out.append(TopK(probs=probs, top=top, features_top=np.asarray(g)[top], contribs_top=contrib[top]))
    return out


def expand_rows(n_rows: int, top: np.ndarray, values_top: np.ndarray) -> np.ndarray:
    """A full-height array holding ``values_top`` at rows ``top`` (zeros elsewhere, never read)."""
    values_top = np.asarray(values_top)
    width = values_top.shape[1] if values_top.ndim == 2 else 0
    full = np.zeros((n_rows, width), dtype=np.float64)
    if len(top):
        full[np.asarray(top)] = values_top
    return full


def blend_llm(
    probs: np.ndarray, candidates: Sequence[Any], weight: float
) -> tuple[np.ndarray, np.ndarray | None]:
    """The LLM's say after the model: ``p' = (1 - w)·p + w·q``, ``q`` the LLM's confidences over
    the candidates it proposed, normalised to sum to 1. Returns (the blend, the LLM's part
    ``w·q`` of it), as :meth:`TransitionPrior.mix` does; (``probs``, None) at weight 0 or without
    proposals.

    After the model, because the model never saw an LLM candidate (its ``src_llm`` feature is 0
    in every training group) and the LLM's worth depends on which LLM it is: ``weight`` is the
    operator's setting (``llm_weight``), chosen with ``python -m benchmarks.llm_path``.
    """
    conf = np.array([c.sources.get("llm", 0.0) for c in candidates], np.float64)
    total = float(conf.sum())
    if weight <= 0 or total <= 0:
        return probs, None
    part = weight * conf / total
    return (1 - weight) * np.asarray(probs, np.float64) + part, part


# Said in a prediction's ``why`` when a blend after the model gave most of its score.
LLM_NOTE = "suggested by the language model"
PRIOR_NOTE = "what you usually do next"


def after_model(
    probs: np.ndarray, *, spec: SpecIndex, history: Sequence[Call], candidates: Sequence[Any],
    user_id: str, prior: TransitionPrior | None, llm_weight: float, threshold: float = 0.5,
) -> tuple[np.ndarray, dict[str, str]]:
    """The blends after the model, as the Ingress and the in-process pipeline both serve them:
    the LLM's proposals, then the user's own habits (``prior``; off at its weight 0). Returns (the
    scores, a note by endpoint for each prediction a blend gave at least ``threshold`` of)."""
    keys = [spec.operations[c.index].key for c in candidates]
    notes: dict[str, str] = {}

    def note(blended: np.ndarray, part: np.ndarray | None, text: str) -> None:
        if part is not None:
            notes.update({key: text for key, s, b in zip(keys, part, blended, strict=True)
                          if s > 0 and s >= threshold * b})

    probs, part = blend_llm(probs, candidates, llm_weight)
    note(probs, part, LLM_NOTE)
    if prior is not None:
        probs, part = prior.mix(user_id, spec.spec_hash, previous_of(history), keys, probs)
        note(probs, part, PRIOR_NOTE)
    return probs, notes


def annotate(predictions: Sequence[Any], notes: dict[str, str]) -> None:
    """Lead a prediction's ``why`` with what gave it most of its score, when that was a blend."""
    for p in predictions:
        if p.endpoint in notes:
            p.why = f"{notes[p.endpoint]}; {p.why}"
