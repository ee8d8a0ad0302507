"""benchmarks.candidate_recall's metrics on tiny inputs (no data, milliseconds)."""

from __future__ import annotations

import pytest

from benchmarks.candidate_recall import _metrics, _table


def test_recall_of_the_whole_pool_is_reported_only_beyond_30() -> None:
    ranks = [1, 12, 35, None]  # 1-based places of the target; None: not proposed

    at_30 = _metrics(ranks, limit=30)
    at_50 = _metrics(ranks, limit=50)

    assert "recall@50" not in at_30
    assert at_50["recall@30"] == pytest.approx(0.5)
    assert at_50["recall@50"] == pytest.approx(0.75)
    assert at_50["hit@1"] == pytest.approx(0.25)


def test_the_table_has_a_column_for_the_pool_and_leaves_it_empty_where_not_measured() -> None:
    rows = {"generator": _metrics([1, 35], limit=40), "bm25": _metrics([1, 35])}

    lines = _table(rows, limit=40).splitlines()

    assert "recall@40" in lines[0]
    assert "| generator | 2 | 0.500 | 0.500 | 1.000 |" in lines[2]
    assert "| bm25 | 2 | 0.500 | 0.500 |  |" in lines[3]
