"""``python -m ranker.train`` end to end on a tiny slice of the data, into a temporary folder; the
CV and error benchmarks of the ranker on the same slice."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from core.features import FEATURE_NAMES
from core.scorer import CARD_FILE, MODEL_FILE, RankerModel
from core.settings import PROJECT_ROOT
from ranker.data import split_of, stopping_apis
from ranker.evaluate import Groups
from ranker.train import FIND_ID_WEIGHT


def _tiny_jentic(jentic_dir: Path, root: Path, *, train: int = 4, valid: int = 2) -> list[str]:
    """A jentic-shaped folder with a few small APIs: workflow folders linked, specs shared."""
    wanted = {"train": train, "valid": valid}
    picked: list[str] = []
    files = sorted((jentic_dir / "workflows").glob("*/workflows.arazzo.json"),
                   key=lambda f: hashlib.sha256(f.parent.name.encode()).hexdigest())
    for wf_file in files:
        api = wf_file.parent.name
        split = split_of(api)
        if not wanted[split]:
            continue
        doc = json.loads(wf_file.read_text())
        urls = [s.get("url") for s in doc.get("sourceDescriptions") or [] if isinstance(s, dict)]
        spec = jentic_dir / str(urls[0]) if urls else None
        if spec is None or not spec.is_file() or not 10_000 < spec.stat().st_size < 80_000:
            continue
        (root / "workflows").mkdir(parents=True, exist_ok=True)
        (root / "workflows" / api).symlink_to(wf_file.parent, target_is_directory=True)
        wanted[split] -= 1
        picked.append(api)
        if not any(wanted.values()):
            break
    (root / "apis").symlink_to(jentic_dir / "apis", target_is_directory=True)
    return picked


def test_find_id_asks_weigh_what_they_are_given(tmp_path) -> None:
    """``--find-id-weight`` weighs the find-id asks after a history alone: one without a history
    is a direct ask's request, and stays at 1; synthetic sequences keep their weight."""
    from core.spec.openapi import parse_spec
    from ranker.data import Example, RequestKind, Source
    from ranker.train import TrainConfig, example_weights, watched_by_early_stopping
    from tests.specs import billing_spec

    spec = parse_spec(billing_spec())

    def ask(source: Source, request: RequestKind | None = None) -> Example:
        return Example(api="a", workflow_id="w", spec=spec, history=(), prompt="list invoices",
                       target="GET /invoices", source=source, request=request)

    after = (spec.resolve("GET /v1/invoices", {}),)
    asks = [ask("real"), ask("synthetic"), ask("request", "direct"),
            ask("request", "direct_values"), ask("request", "find_id"),
            replace(ask("request", "find_id"), history=after)]
    assert example_weights(asks, synthetic_weight=0.3, find_id_weight=2.0).tolist() == [
        1.0, 0.3, 1.0, 1.0, 1.0, 2.0]
    assert example_weights(asks, synthetic_weight=0.3).tolist() == [
        1.0, 0.3, 1.0, 1.0, 1.0, FIND_ID_WEIGHT]
    with pytest.raises(ValueError, match=r"find_id_weight must be in \(0, 10\], got 0"):
        TrainConfig(find_id_weight=0)
    # early stopping watches steps and asks, not the named find-id asks nor simulated sequences
    named = ask("request", "find_id_named")
    assert watched_by_early_stopping([*asks, named]).tolist() == [
        True, False, True, True, True, True, False]


def _random_groups(seed: int, apis: list[str], split: str, *, per_api: int = 8, size: int = 10) -> Groups:
    """Groups whose target is the candidate with the highest first feature, give or take noise."""
    rng = np.random.default_rng(seed)
    n = len(apis) * per_api
    X = rng.normal(size=(n * size, len(FEATURE_NAMES))).astype(np.float32)
    noisy = X[:, 0].reshape(n, size) + rng.normal(scale=0.7, size=(n, size))
    labels = np.zeros((n, size), np.float32)
    labels[np.arange(n), noisy.argmax(axis=1)] = 1
    return Groups(X=X, labels=labels.ravel(), sizes=np.full(n, size),
                  api=np.repeat(np.array(apis, object), per_api), source=np.array(["real"] * n, object),
                  split=np.array([split] * n, object),
                  history_len=np.zeros(n, int), gen_rank=np.zeros(n, int))


def test_the_validation_apis_choose_nothing_in_the_fit() -> None:
    """The trees, their number and the calibration come from the training APIs alone: noise in
    place of the validation groups changes nothing; a change in the held-out training APIs does."""
    from ranker.evaluate import concat_groups
    from ranker.train import FitConfig, fit_stopped

    train = _random_groups(1, [f"t{i}" for i in range(20)], "train")
    config = FitConfig(num_boost_round=200, early_stopping=5, log_period=0)

    def fit(valid: Groups, base: Groups = train) -> tuple[str, object]:
        groups = concat_groups(base, valid)
        stopped = fit_stopped(groups, np.ones(len(groups)), watched=np.ones(len(groups), bool), config=config)
        assert 0 < stopped.best_iteration < 200 and stopped.stop_groups == 4 * 8
        return stopped.booster.model_to_string(), stopped.calibration

    apis = [f"v{i}" for i in range(5)]
    one = fit(_random_groups(2, apis, "valid"))
    assert fit(_random_groups(3, apis, "valid")) == one
    held = stopping_apis(train.api)
    moved = train.select(~np.isin(train.api, list(held)))
    other = _random_groups(4, sorted(held), "train")
    assert fit(_random_groups(2, apis, "valid"), concat_groups(moved, other)) != one


def test_train_entry_point_end_to_end(jentic_dir, tmp_path) -> None:
    apis = _tiny_jentic(jentic_dir, tmp_path / "jentic")
    assert len(apis) == 6
    out = tmp_path / "model"
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    run = subprocess.run(
        [sys.executable, "-m", "ranker.train", "--jentic-dir", str(tmp_path / "jentic"),
         "--out", str(out), "--synthetic-per-api", "3", "--num-boost-round", "30",
         "--early-stopping", "10", "--log-period", "10"],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    # progress, evaluation logging and the validation table
    assert "[3/6] LightGBM lambdarank" in run.stderr
    assert "stop's ndcg@3" in run.stdout + run.stderr
    assert "| real: ranker |" in run.stdout and "hit@1" in run.stdout
    assert "| synthetic: ranker |" in run.stdout
    # the written model loads, fits the code, and carries its card
    model = RankerModel.load(out / MODEL_FILE)
    card = json.loads((out / CARD_FILE).read_text())
    assert card["feature_names"] == list(FEATURE_NAMES)
    assert card["data"]["apis"] == {"train": 4, "valid": 2}
    kinds = {"real", "request", "synthetic", "personal", "population"}
    assert {"real", "synthetic"} <= set(card["metrics"]["validation"]) <= kinds
    assert card["data"]["personal_users_per_api"] == 1
    assert card["data"]["population_same_flow"] == 0.5
    assert card["data"]["find_id_weight"] == FIND_ID_WEIGHT
    assert 0 <= card["metrics"]["validation"]["real"]["ranker"]["hit@1"] <= 1
    assert model.card.calibration["temperature"] > 0
    assert (out / MODEL_FILE).stat().st_size < 5_000_000


@pytest.mark.slow
def test_ranking_cv_reads_training_apis_only(jentic_dir, tmp_path, capsys) -> None:
    """The CV benchmark scores every real step of the training APIs from a model that did not
    train on its API, and never reads a validation API."""
    from benchmarks import ranking_cv

    apis = _tiny_jentic(jentic_dir, tmp_path / "jentic")
    assert ranking_cv.main(["--jentic-dir", str(tmp_path / "jentic"), "--folds", "3",
                            "--synthetic-per-api", "2", "--personal-users-per-api", "0"]) == 0
    out = capsys.readouterr().out
    train_apis = sum(split_of(a) == "train" for a in apis)
    assert f"3-fold CV over {train_apis} training APIs" in out
    n = int(out.split("| ranker | ")[1].split(" |")[0])
    assert n > 0  # held-out folds were scored


def test_request_misses_puts_every_miss_in_one_cause(jentic_dir, tmp_path, capsys) -> None:
    import re

    from benchmarks import request_misses

    _tiny_jentic(jentic_dir, tmp_path / "jentic")
    assert request_misses.main(["--jentic-dir", str(tmp_path / "jentic"), "--list", "the"]) == 0
    out = capsys.readouterr().out
    tables = out.split("**")[1::2]
    assert [t.split(":")[0] for t in tables] == [
        "direct, one call", "workflow", "workflow, by the summary's clauses"]
    for title, body in zip(tables, out.split("**")[2::2], strict=True):
        asks, right, missed = map(int, re.findall(r"(\d+) asks, (\d+) right at \d, (\d+) missed",
                                                  title)[0])
        assert asks == right + missed and asks > 0, title
        rows = [line.strip("|").split("|")[1:] for line in body.splitlines()
                if line.startswith("| ")][1:]  # the header apart
        assert sum(int(r[0]) for r in rows) == missed, body
        assert all(int(r[1]) <= int(r[0]) for r in rows), body


def test_ranking_errors_counts_first_and_later_steps(jentic_dir, tmp_path, capsys) -> None:
    from benchmarks import ranking_errors

    _tiny_jentic(jentic_dir, tmp_path / "jentic")
    assert ranking_errors.main(["--jentic-dir", str(tmp_path / "jentic"), "--examples", "1"]) == 0
    out = capsys.readouterr().out
    counts = {line[7:]: int(line[:5]) for line in out.splitlines() if line[:5].strip().isdigit()}
    for kind in ("first", "later"):
        steps = counts[f"{kind}: steps"]
        assert steps == sum(counts.get(f"{kind}: {what}", 0)
                            for what in ("right", "wrong", "generator missed the target"))
