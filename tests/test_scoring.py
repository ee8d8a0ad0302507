"""Explaining only the rows a response shows: same order, same numbers, fewer rows explained."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from core.candidates.types import Candidate
from core.scoring import blend_llm, expand_rows, score_top_k, top_rows


class LinearScorer:
    """A stand-in ranker: score = sum of the row; contributions = the row itself plus a bias.
    Explains each group's top ``explain_top`` rows as the trained ranker does (core/scorer.py),
    counting the rows it explains and the calls."""

    def __init__(self) -> None:
        self.explained_rows = 0
        self.calls = 0

    def score_groups(
        self, groups: Sequence[np.ndarray], *, explain_top: int | Sequence[int] = 5,
        contributions: bool = True,
    ) -> list[tuple[np.ndarray, np.ndarray | None]]:
        self.calls += 1
        ks = [explain_top] * len(groups) if isinstance(explain_top, int) else list(explain_top)
        out: list[tuple[np.ndarray, np.ndarray | None]] = []
        for g, k in zip(groups, ks, strict=True):
            g = np.asarray(g, np.float64)
            probs = g.sum(axis=1)
            if not contributions:
                out.append((probs, None))
                continue
            contrib = np.full((len(g), g.shape[1] + 1), np.nan)
            top = np.argsort(-probs, kind="stable")[:k]
            contrib[top] = self.contributions(g[top])
            out.append((probs, contrib))
        return out

    def contributions(self, X: np.ndarray) -> np.ndarray:
        self.explained_rows += len(X)
        return np.hstack([X, np.ones((len(X), 1))])


def test_only_the_top_k_rows_are_explained_in_one_call() -> None:
    rng = np.random.default_rng(0)
    groups = [rng.random((30, 4)), rng.random((12, 4)), np.zeros((0, 4))]
    scorer = LinearScorer()
    out = score_top_k(scorer, groups, [5, 3, 5])
    assert scorer.explained_rows == 8
    assert scorer.calls == 1
    for g, o, k in zip(groups, out, [5, 3, 5], strict=True):
        assert np.array_equal(o.top, top_rows(g.sum(axis=1), k))
        assert np.array_equal(o.features_top, g[o.top])
        assert np.allclose(o.contribs_top[:, :4], g[o.top])
        full = expand_rows(len(g), o.top, o.contribs_top)
        assert full.shape[0] == len(g)
        assert np.allclose(full[o.top], o.contribs_top)


def test_top_rows_is_a_stable_descending_order() -> None:
    assert top_rows(np.array([0.1, 0.5, 0.5, 0.9]), 3).tolist() == [3, 1, 2]


def test_k_must_match_the_groups() -> None:
    with pytest.raises(ValueError, match="values of k"):
        score_top_k(LinearScorer(), [np.zeros((2, 4))], [1, 2])


def test_blend_llm_mixes_the_llms_confidences_after_the_model() -> None:
    probs = np.array([0.6, 0.3, 0.1])
    cands = [Candidate(0), Candidate(1, {"llm": 0.9, "bm25": 2.0}), Candidate(2, {"llm": 0.3})]
    blended, part = blend_llm(probs, cands, 0.5)
    # q = confidences normalised over the proposals: 0, 0.75, 0.25
    assert np.allclose(blended, [0.3, 0.15 + 0.375, 0.05 + 0.125])
    assert np.isclose(blended.sum(), probs.sum())  # still a distribution over the candidates
    assert np.allclose(part, [0.0, 0.375, 0.125])  # the LLM's part of each row's score
    for weight, cs in ((0.0, cands), (0.5, [Candidate(0), Candidate(1, {"bm25": 1.0})])):
        same, none = blend_llm(probs, cs, weight)  # off, or nothing proposed
        assert same is probs and none is None
