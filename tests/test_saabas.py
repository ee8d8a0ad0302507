"""The leaf-path contributions behind ``why``: exact, and naming what TreeSHAP names."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pytest

from core.saabas import LeafContributions


@pytest.fixture(scope="module")
def booster() -> lgb.Booster:
    """A small lambdarank model whose label depends on feature 0 much more than on feature 1."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 4)).astype(np.float32)
    y = (2.0 * X[:, 0] + 0.3 * X[:, 1] + rng.normal(scale=0.2, size=3000) > 1.5).astype(float)
    params = {"objective": "lambdarank", "num_leaves": 7, "min_data_in_leaf": 20, "verbosity": -1,
              "deterministic": True, "num_threads": 1, "seed": 0}
    return lgb.train(params, lgb.Dataset(X, label=y, group=[30] * 100), num_boost_round=40)


def test_contributions_add_up_to_the_score_with_treeshap_bias(booster) -> None:
    X = np.random.default_rng(1).normal(size=(200, 4)).astype(np.float32)
    leaves = LeafContributions.from_booster(booster)
    c = leaves.contributions(booster, X)
    assert c.shape == (200, 5)
    np.testing.assert_allclose(c.sum(1), booster.predict(X), atol=1e-6)
    shap = booster.predict(X, pred_contrib=True)
    # the bias is the model's mean output over its training rows, as TreeSHAP's is
    np.testing.assert_allclose(c[:, -1], shap[:, -1], atol=1e-6)


def test_it_names_the_feature_that_drove_the_score(booster) -> None:
    X = np.random.default_rng(2).normal(size=(300, 4)).astype(np.float32)
    c = LeafContributions.from_booster(booster).contributions(booster, X)
    shap = booster.predict(X, pred_contrib=True)
    strong = np.abs(X[:, 0]) > 1.0  # rows where feature 0 clearly decides
    assert (np.argmax(np.abs(c[strong, :-1]), 1) == 0).mean() > 0.95
    assert (np.argmax(np.abs(shap[strong, :-1]), 1) == 0).mean() > 0.95
    assert np.corrcoef(c[:, :-1].ravel(), shap[:, :-1].ravel())[0, 1] > 0.9
    # the noise features get little
    assert np.abs(c[:, 2:4]).mean() < 0.1 * np.abs(c[:, 0]).mean()


def test_no_rows_and_constant_trees() -> None:
    X = np.zeros((50, 2), np.float32)
    y = np.zeros(50)
    const = lgb.train({"objective": "regression", "verbosity": -1, "num_threads": 1},
                      lgb.Dataset(X, label=y), num_boost_round=2)
    leaves = LeafContributions.from_booster(const)
    assert leaves.contributions(const, np.zeros((0, 2), np.float32)).shape == (0, 3)
    c = leaves.contributions(const, X[:3])
    np.testing.assert_allclose(c.sum(1), const.predict(X[:3]), atol=1e-9)
    assert not c[:, :2].any()


def test_the_sparse_sum_is_the_dense_sum_bit_for_bit(booster) -> None:
    """The served contributions are the leaf table's rows summed in tree order, in float64: the
    sparse product adds exactly what the dense gather adds, in the same order."""
    X = np.random.default_rng(3).normal(size=(300, 4)).astype(np.float32)
    leaves = LeafContributions.from_booster(booster)
    reached = np.asarray(booster.predict(X, pred_leaf=True), np.int64) + leaves.offsets
    dense = leaves.table[reached].sum(axis=1, dtype=np.float64)
    assert leaves.contributions(booster, X)[:, :-1].tobytes() == dense.tobytes()


def test_the_leaves_sum_is_predict_bit_for_bit(booster) -> None:
    """Scores read from the leaves (one pass over the trees serves scores and contributions) are
    LightGBM's own, bit for bit: its leaf values added in tree order from 0.0, for many rows and
    for one (where numpy's own sum would add pairwise)."""
    X = np.random.default_rng(4).normal(size=(300, 4)).astype(np.float32)
    leaves = LeafContributions.from_booster(booster)
    assert leaves.raw_output  # lambdarank: predict is the raw sum
    for rows in (X, X[:1], X[:7]):
        reached = leaves.leaves(booster, rows)
        assert leaves.raw(reached).tobytes() == np.asarray(booster.predict(rows), np.float64).tobytes()
        assert leaves.contributions_of(reached).tobytes() == leaves.contributions(booster, rows).tobytes()


def test_a_link_function_is_not_a_raw_sum() -> None:
    X = np.random.default_rng(5).normal(size=(200, 3)).astype(np.float32)
    binary = lgb.train({"objective": "binary", "verbosity": -1, "num_threads": 1},
                       lgb.Dataset(X, label=(X[:, 0] > 0).astype(float)), num_boost_round=3)
    assert not LeafContributions.from_booster(binary).raw_output
