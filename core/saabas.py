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

__all__ = ["LeafContributions"]

# Objectives whose prediction is the trees' raw sum (no link function after it): for them
# :meth:`LeafContributions.raw` is ``booster.predict(X)``.
_RAW_OUTPUT_OBJECTIVES = frozenset({"lambdarank", "rank_xendcg", "regression"})


class LeafContributions:
    """Contributions of each leaf of each tree, stacked: ``table[offsets[t] + leaf]``, and each
    leaf's output, ``values[offsets[t] + leaf]``."""

    def __init__(self, table: np.ndarray, offsets: np.ndarray, bias: float,
                 values: np.ndarray | None = None, *, raw_output: bool = False) -> None:
        self.table = table  # (total leaves, features) float32
        self.offsets = offsets  # (trees,) int64: first row of each tree
        self.bias = bias
        self.values = values  # (total leaves,) float64: what each leaf adds to the score
        # booster.predict(X) is the leaves' sum (a ranking objective): raw() may stand for it
        self.raw_output = raw_output and values is not None
        # A leaf's path splits on a few features only (at most its depth of the ~150): each
        # table row's nonzeros (as CSR arrays), so a row's contributions add a few thousand
        # values instead of trees × features (docs/performance.md). float64, as the dense sum
        # accumulated: the same additions in the same (tree) order, bit for bit.
        rows, cols = np.nonzero(table)
        self._indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=len(table)))])
        self._cols = cols.astype(np.int64)
        self._data = table[rows, cols].astype(np.float64)

    @classmethod
    def from_booster(cls, booster: Any) -> LeafContributions:
        n_features = booster.num_feature()
        dump = booster.dump_model()
        trees = dump["tree_info"]
        blocks: list[np.ndarray] = []
        outputs: list[np.ndarray] = []
        offsets = np.zeros(len(trees), np.int64)
        bias, start = 0.0, 0
        for t, tree in enumerate(trees):
            root = tree["tree_structure"]
            block = np.zeros((tree["num_leaves"], n_features), np.float32)
            values = np.zeros(tree["num_leaves"], np.float64)
            bias += _expect(root)
            _walk(root, np.zeros(n_features, np.float64), block, values)
            offsets[t] = start
            start += len(block)
            blocks.append(block)
            outputs.append(values)
        table = np.vstack(blocks) if blocks else np.zeros((0, n_features), np.float32)
        values = np.concatenate(outputs) if outputs else np.zeros(0)
        objective = str(dump.get("objective", "")).split(" ")[0]
        return cls(table, offsets, float(bias), values,
                   raw_output=objective in _RAW_OUTPUT_OBJECTIVES and dump.get("num_class", 1) == 1)

    def leaves(self, booster: Any, X: np.ndarray) -> np.ndarray:
        """(rows, trees): the table row of the leaf each row of ``X`` reaches in each tree."""
        if not len(X) or not len(self.offsets):
            return np.zeros((len(X), len(self.offsets)), np.int64)
        reached = np.asarray(booster.predict(X, pred_leaf=True, num_threads=1), np.int64)
        return reached.reshape(len(X), -1) + self.offsets

    def raw(self, leaves: np.ndarray) -> np.ndarray:
        """The rows' raw scores from the leaves they reached: each tree's leaf value added in
        tree order from 0.0, in float64, as LightGBM's predict adds them (equal bit for bit)."""
        assert self.values is not None
        if not leaves.size:
            return np.zeros(len(leaves))
        # accumulated along the trees: a sequential sum (numpy's sum may add pairwise)
        return np.cumsum(self.values[leaves], axis=1)[:, -1]

    def contributions(self, booster: Any, X: np.ndarray) -> np.ndarray:
        """(rows, features + 1): per-feature contributions, the bias in the last column; a row
        sums to ``booster.predict(X)``."""
        return self.contributions_of(self.leaves(booster, X))

    def contributions_of(self, leaves: np.ndarray) -> np.ndarray:
        """:meth:`contributions` of the rows that reached ``leaves`` (from :meth:`leaves`)."""
        n, n_features = len(leaves), self.table.shape[1]
        out = np.zeros((n, n_features + 1), np.float64)
        if not n or not len(self.offsets):
            return out
        flat = leaves.ravel()
        starts = self._indptr[flat]
        counts = self._indptr[flat + 1] - starts
        # every nonzero of the reached table rows, row by row and in tree order within a row
        ends = np.cumsum(counts)
        at = np.arange(int(ends[-1])) + np.repeat(starts - (ends - counts), counts)
        row = np.repeat(np.arange(n), counts.reshape(n, -1).sum(axis=1))
        # bincount adds its weights in order: per (row, feature), the trees' values in tree order
        out[:, :n_features] = np.bincount(row * n_features + self._cols[at], weights=self._data[at],
                                          minlength=n * n_features).reshape(n, n_features)
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


def _walk(node: dict[str, Any], path: np.ndarray, block: np.ndarray, values: np.ndarray) -> None:
    """Depth-first: ``path`` is what the splits above ``node`` credited to each feature."""
    if "leaf_value" in node:  # a single-leaf tree's only leaf has no index
        block[node.get("leaf_index", 0)] = path
        values[node.get("leaf_index", 0)] = node["leaf_value"]
        return
    feature, value = node["split_feature"], _expect(node)
    for side in ("left_child", "right_child"):
        child = node[side]
        moved = path.copy()
        moved[feature] += _expect(child) - value
        _walk(child, moved, block, values)
