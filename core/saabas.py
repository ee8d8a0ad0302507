"""Per-feature contributions from a table of the trees' leaves (Saabas), for ``why``.

Every node of a LightGBM tree carries the value the tree would output had it stopped there
(``internal_value``). Walking from the root to a leaf, each split moves that value by
``value(child) - value(node)``; crediting the move to the split's feature gives contributions that
add up exactly to the tree's output minus its root value (the bias). Summed over the path once per
leaf at load time, a row's contributions are a gather of one table row per tree, indexed by the
leaves ``predict(pred_leaf=True)`` returns: about ten times cheaper than TreeSHAP
(``pred_contrib``), which the service paid for every shown candidate (``python -m
benchmarks.explanations`` measures both, and how often their explanations agree).

TreeSHAP spreads credit over every ordering of the features; Saabas follows the path the row
took, so it credits the splits that separated this candidate from the average. Both add up to the
score, and both name what drove it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import sparse  # lightgbm's own dependency

__all__ = ["LeafContributions"]


class LeafContributions:
    """Contributions of each leaf of each tree, stacked: ``table[offsets[t] + leaf]``."""

    def __init__(self, table: np.ndarray, offsets: np.ndarray, bias: float) -> None:
        self.table = table  # (total leaves, features) float32
        self.offsets = offsets  # (trees,) int64: first row of each tree
        self.bias = bias
        # A leaf's path splits on a few features only (at most its depth of the ~150): summed as
        # a sparse product, a row costs a few thousand additions instead of a dense gather of
        # trees × features (~7x less CPU in the Ranker: docs/performance.md). float64, as the
        # dense sum accumulated: the same additions in the same (tree) order, bit for bit.
        self._sparse = sparse.csr_matrix(table.astype(np.float64))

    @classmethod
    def from_booster(cls, booster: Any) -> LeafContributions:
        n_features = booster.num_feature()
        trees = booster.dump_model()["tree_info"]
        blocks: list[np.ndarray] = []
        offsets = np.zeros(len(trees), np.int64)
        bias, start = 0.0, 0
        for t, tree in enumerate(trees):
            root = tree["tree_structure"]
            block = np.zeros((tree["num_leaves"], n_features), np.float32)
            bias += _expect(root)
            _walk(root, np.zeros(n_features, np.float64), block)
            offsets[t] = start
            start += len(block)
            blocks.append(block)
        table = np.vstack(blocks) if blocks else np.zeros((0, n_features), np.float32)
        return cls(table, offsets, float(bias))

    def contributions(self, booster: Any, X: np.ndarray) -> np.ndarray:
        """(rows, features + 1): per-feature contributions, the bias in the last column; a row
        sums to ``booster.predict(X)``."""
        n_features, trees = self.table.shape[1], len(self.offsets)
        out = np.zeros((len(X), n_features + 1), np.float64)
        if not len(X) or not trees:
            return out
        leaves = np.asarray(booster.predict(X, pred_leaf=True, num_threads=1), np.int64)
        rows = (leaves.reshape(len(X), -1) + self.offsets).ravel()
        # One 1.0 per (row, tree) at the leaf the row reached: the product sums those leaves'
        # table rows in tree order, as ``table[rows].sum(axis=1)`` does.
        picked = sparse.csr_matrix((np.ones(len(rows)), rows, np.arange(0, len(rows) + 1, trees)),
                                   shape=(len(X), len(self.table)))
        out[:, :n_features] = (picked @ self._sparse).toarray()
        out[:, n_features] = self.bias
        return out


def _expect(node: dict[str, Any]) -> float:
    """The tree's mean output over the training rows that reached ``node`` (cached on it)."""
    if "expected" not in node:
        if "leaf_value" in node:
            node["expected"], node["weight"] = node["leaf_value"], max(node.get("leaf_count", 1), 1)
        else:
            left, right = node["left_child"], node["right_child"]
            el, er = _expect(left), _expect(right)
            wl, wr = left["weight"], right["weight"]
            node["weight"] = wl + wr
            node["expected"] = (el * wl + er * wr) / (wl + wr)
    return node["expected"]


def _walk(node: dict[str, Any], path: np.ndarray, block: np.ndarray) -> None:
    """Depth-first: ``path`` is what the splits above ``node`` credited to each feature."""
    if "leaf_value" in node:  # a single-leaf tree's only leaf has no index
        block[node.get("leaf_index", 0)] = path
        return
    feature, value = node["split_feature"], _expect(node)
    for side in ("left_child", "right_child"):
        child = node[side]
        moved = path.copy()
        moved[feature] += _expect(child) - value
        _walk(child, moved, block)
