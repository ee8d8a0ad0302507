"""The plots people read: each is drawn from the committed JSON (or evaluate's table) into a PNG."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.plots import RESULTS, main, plot_accuracy, plot_llm_weight
from tools.plotting import metric_bars, split_rows

PNG = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    assert path.is_file(), f"{path} was not written"
    data = path.read_bytes()
    assert data[:8] == PNG and len(data) > 1000, f"{path} is not a PNG"


def test_accuracy_plot_from_the_committed_json(tmp_path: Path) -> None:
    out = plot_accuracy(json.loads((RESULTS / "requests.json").read_text()), tmp_path / "a.png")
    assert out == tmp_path / "a.png"
    assert_png(out)


def test_llm_weight_plot_from_the_committed_json(tmp_path: Path) -> None:
    out = plot_llm_weight(json.loads((RESULTS / "llm_path.json").read_text()), tmp_path / "w.png")
    assert_png(out)


def test_main_redraws_both(tmp_path: Path) -> None:
    for name in ("requests.json", "llm_path.json"):
        (tmp_path / name).write_text((RESULTS / name).read_text())
    assert main(["--results", str(tmp_path)]) == 0
    assert_png(tmp_path / "accuracy.png")
    assert_png(tmp_path / "llm_weight.png")


def test_split_rows_groups_evaluate_rows() -> None:
    rows = {"real: generator order": {"hit@1": 0.4, "mrr": 0.5},
            "real: lgbm-x": {"hit@1": 0.6, "mrr": 0.7},
            "feedback: as served": {"hit@1": 0.3, "mrr": 0.4}}
    panels = split_rows(rows, ["hit@1", "mrr"])
    assert panels["hit@1"] == {"real": {"generator order": 0.4, "lgbm-x": 0.6},
                               "feedback": {"as served": 0.3}}
    assert panels["mrr"]["real"]["lgbm-x"] == 0.7


def test_nothing_to_plot_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        metric_bars({"hit@1": {}}, tmp_path / "e.png", title="empty")
    assert not (tmp_path / "e.png").exists()


def test_evaluate_plot_writes_a_png(tmp_path: Path) -> None:
    from tools.cli import _parser, plot_evaluation

    args = _parser().parse_args(["evaluate", "--plot", str(tmp_path / "eval.png"), "--max-apis", "2"])
    assert args.plot == tmp_path / "eval.png"
    m = {"n": 10, "hit@1": 0.5, "hit@3": 0.8, "hit@5": 0.9, "mrr": 0.65, "ndcg@5": 0.7}
    rows = {"real: generator order": m, "real: heuristic fallback": {**m, "hit@1": 0.3},
            "real: lgbm-test": {**m, "hit@1": 0.6}, "feedback: as served": m, "feedback: lgbm-test": m}
    out = plot_evaluation(rows, args.plot, model="lgbm-test")
    assert out == args.plot
    assert_png(out)
