"""Score candidate groups, and explain only the rows that will be returned.

The ranker's per-feature contributions cost more than its predict (TreeSHAP ~1.3 ms a row; the
leaf table of :mod:`ranker.saabas` that replaced it, ~0.05 ms); a response shows at most ``k``
candidates, so only those ``k`` rows of each group are explained (benchmarks/SERVING.md). Rows
are stacked across the groups of a batch: one predict call and one contributions call per batch.
The Ranker deployment and the in-process pipeline both use this, so they do the same work.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

__all__ = ["Scorer", "top_rows", "unexplained_rows", "score_top_k", "expand_rows"]


class Scorer(Protocol):
    def score_groups(
        self, groups: Sequence[np.ndarray], *, contributions: bool = True
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


def score_top_k(ranker: Scorer, groups: Sequence[np.ndarray], ks: Sequence[int]) -> list[dict[str, Any]]:
    """Per group: ``probs`` (every row), ``top`` (row indices), and ``features_top`` /
    ``contribs_top`` for those rows only."""
    if len(groups) != len(ks):
        raise ValueError(f"{len(groups)} groups but {len(ks)} values of k")
    scored = ranker.score_groups(groups, contributions=False)
    tops = [top_rows(probs, k) for (probs, _), k in zip(scored, ks, strict=True)]
    picked = [np.asarray(g)[t] for g, t in zip(groups, tops, strict=True)]
    counts = [len(t) for t in tops]
    if sum(counts):
        contrib = ranker.contributions(np.vstack([p for p in picked if len(p)]))
    else:
        contrib = np.zeros((0, 0))
    out, start = [], 0
    for (probs, _), top, rows, n in zip(scored, tops, picked, counts, strict=True):
        out.append(
            {"probs": probs, "top": top, "features_top": rows, "contribs_top": contrib[start: start + n]}
        )
        start += n
    return out


def expand_rows(n_rows: int, top: np.ndarray, values_top: np.ndarray) -> np.ndarray:
    """A full-height array holding ``values_top`` at rows ``top`` (zeros elsewhere, never read)."""
    values_top = np.asarray(values_top)
    width = values_top.shape[1] if values_top.ndim == 2 else 0
    full = np.zeros((n_rows, width), dtype=np.float64)
    if len(top):
        full[np.asarray(top)] = values_top
    return full
