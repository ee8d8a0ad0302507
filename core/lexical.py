"""Okapi BM25 over the operations of one spec: the generator's index and the features' scores.

Each caller brings its own terms (the generator: field-weighted :func:`core.vocabulary.index_stem`
terms; the features: :func:`core.vocabulary.feature_stem` counts of each operation's text) and
the float precision of the length normalisation; the weights are the same formula.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["BM25", "Postings", "K1", "B", "idf"]

K1, B = 1.2, 0.75


def idf(n_docs: int, df: int) -> float:
    """BM25's inverse document frequency of a term found in ``df`` of ``n_docs`` documents."""
    return math.log(1 + (n_docs - df + 0.5) / (df + 0.5))


@dataclass(frozen=True)
class Postings:
    docs: np.ndarray  # int32 operation indices
    weights: np.ndarray  # float32 BM25 term weights (idf * saturated tf)


class BM25:
    """The BM25 weight of every term in every document, as postings; scores all documents at once.

    ``tfs``: each document's term frequencies (counts, or sums of field weights). ``precision``:
    the float type the document lengths and their normalisation are computed in (the generator
    float64, the features float32); the weights are float32 either way.
    """

    def __init__(
        self, tfs: Sequence[Mapping[str, float]], *, precision: type[np.floating] = np.float64
    ) -> None:
        n = len(tfs)
        lengths = np.array([sum(tf.values()) for tf in tfs], dtype=precision)
        avg = float(lengths.mean()) if n and lengths.mean() > 0 else 1.0
        self.norm = K1 * (1 - B + B * lengths / avg)
        per_term: dict[str, tuple[list[int], list[float]]] = {}
        for i, tf in enumerate(tfs):
            for term, f in tf.items():
                docs, values = per_term.setdefault(term, ([], []))
                docs.append(i)
                values.append(f * (K1 + 1) / (f + self.norm[i]))
        self.n = n
        self.postings: dict[str, Postings] = {
            term: Postings(
                np.asarray(docs, dtype=np.int32),
                np.asarray(values, dtype=np.float32) * np.float32(idf(n, len(docs))),
            )
            for term, (docs, values) in per_term.items()
        }

    def scores(self, terms: Iterable[str]) -> np.ndarray:
        """Sum of the weights of the distinct ``terms`` in each document (float32)."""
        out = np.zeros(self.n, np.float32)
        for term in sorted(set(terms)):  # a fixed order: sums identical in every process
            hit = self.postings.get(term)
            if hit is not None:
                out[hit.docs] += hit.weights
        return out
