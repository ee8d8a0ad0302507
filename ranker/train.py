"""Train the LightGBM lambdarank ranker: ``python -m ranker.train [options]``, or from code
:func:`train` with a :class:`TrainConfig` (the same steps; it returns a :class:`TrainResult`).

1. Real workflows of ``--jentic-dir`` give one ranking group per step; synthetic sequences
   (:mod:`ranker.synth`) add ``--synthetic-per-api`` sequences per API; simulated returning
   users (:mod:`ranker.returning_users`, ``--personal-users-per-api``) add groups whose personal
   features are not zero, so the model learns what a user's own habits are worth; and the real
   workflows again with what other users of their API did (:mod:`ranker.population`, out of
   fold, ``--population-same-flow``), so it learns when to trust the population memory.
2. Candidates come from the embedded :class:`RetrievalGenerator` (limit 30, 50 after a history:
   :func:`~core.candidates.retrieval.candidate_limit`) and features from
   :class:`FeatureExtractor` — exactly the serving code. A group whose target the generator
   missed cannot teach anything (no positive label) but counts as a miss in evaluation.
3. LightGBM ``lambdarank`` (:func:`fit_stopped`): a first fit on the TRAINING APIs but a fifth of
   them (:func:`ranker.data.stopping_apis`) stops early on that fifth; the calibration
   (temperature softmax + Platt) is fitted on that fifth's real workflows with the first model,
   which never saw them; the shipped model is fitted again on all the training APIs for the same
   number of trees. The VALIDATION APIs (split by whole API, :func:`ranker.data.split_of`) choose
   nothing.
4. The calibration's expected error is measured on the validation APIs.
5. The validation table (real and synthetic apart) is printed and written to the model card;
   ``ranker.txt`` and ``model_card.json`` are written to ``--out``.

No metric here is computed on data that trained the model or chose its number of trees.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.candidates.retrieval import CANDIDATE_LIMIT, HISTORY_CANDIDATE_LIMIT, RetrievalGenerator
from core.features import FEATURE_NAMES, FEATURE_VERSION, FeatureExtractor
from core.priors.transitions import DEFAULT_PATH as TRANSITIONS_PATH
from core.priors.transitions import Transitions, load_transitions
from core.priors.word_vectors import DEFAULT_PATH as WORD_VECTORS_PATH
from core.priors.word_vectors import load_word_vectors
from core.progress import step
from core.scorer import (
    CARD_FILE,
    MODEL_FILE,
    Calibration,
    ModelCard,
    expected_calibration_error,
    file_sha256,
)
from core.settings import SHIPPED_MODELS_DIR
from ranker.data import Example, Workflow, examples, load_workflows, split_of, stopping_apis
from ranker.evaluate import (
    Groups,
    build_groups,
    concat_groups,
    empty_groups,
    examples_hash,
    metrics_table,
    ranking_metrics,
    ranks_from_scores,
)

__all__ = [
    "DEFAULT_PARAMS", "FitConfig", "TrainConfig", "TrainResult", "train", "fit_ranker", "source_weights",
    "example_weights", "watched_by_early_stopping", "Stopped", "fit_stopped",
    "calibration_report", "base_examples", "subset_apis", "main",
]

DEFAULT_PARAMS: dict[str, Any] = {
    "objective": "lambdarank",
    "metric": "ndcg",
    "eval_at": [3, 5],  # ndcg@3 (smoother than @1 on ~1,200 groups) drives early stopping
    "learning_rate": 0.05,
    "num_leaves": 15,
    "min_data_in_leaf": 50,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "num_threads": 2,
    "deterministic": True,
    "force_col_wise": True,
    "verbosity": -1,
}
DEFAULT_ROUNDS = 2000
# Synthetic sequences cover patterns and APIs without workflows, but their template prompts are
# easier than real ones: they count less (on training APIs, 2-fold CV, weights 0/0.3/1 were
# within noise of each other on real workflows).
SYNTHETIC_WEIGHT = 0.3
# Find-id asks (ranker.requests) after a history: the read that finds the id a step needs. Those
# without a history weigh 1.0: with no history and no values their request is a direct ask's,
# whose target is the step itself, and weighing either answer up only trades one for the other
# (docs/accuracy.md, "Weighing the find-id asks").
FIND_ID_WEIGHT = 3.0
# Simulated returning users per API, of each kind (ranker.returning_users); their groups weigh 1.0.
PERSONAL_USERS_PER_API = 1
# Share of the workflows that also see their own flow run by other users (ranker.population); 0:
# no population groups at all.
POPULATION_SAME_FLOW = 0.5
EARLY_STOPPING = 100
# The pools build_groups gives, as the service does (core.candidates.retrieval.candidate_limit);
# for the card and the log.
CANDIDATES = {"no history": CANDIDATE_LIMIT, "history": HISTORY_CANDIDATE_LIMIT}


def source_weights(source: np.ndarray, synthetic_weight: float) -> np.ndarray:
    """One weight per group by its ``source``: ``synthetic_weight`` for synthetic sequences, 1.0
    for the others (real workflows, requests, returning users, feedback)."""
    return np.where(source == "synthetic", synthetic_weight, 1.0)


def example_weights(
    examples: Sequence[Example], *, synthetic_weight: float, find_id_weight: float = FIND_ID_WEIGHT,
) -> np.ndarray:
    """One training weight per example: :func:`source_weights`, and ``find_id_weight`` for the
    find-id asks after a history."""
    weights = source_weights(np.array([e.source for e in examples]), synthetic_weight)
    weights[[e.request == "find_id" and bool(e.history) for e in examples]] = find_id_weight
    return weights


def watched_by_early_stopping(examples: Sequence[Example]) -> np.ndarray:
    """Which groups early stopping may watch (of the stopping APIs' ones): workflow steps and
    the direct and find-id asks alike, so that one does not pay for the other; the named find-id
    asks are trained on but not watched, so the stopping point is chosen on the same groups as
    before they were added."""
    return np.array([e.source in ("real", "request") and e.request != "find_id_named"
                     for e in examples])


def fit_ranker(
    train: Groups,
    valid: Groups | None,
    *,
    params: dict[str, Any] | None = None,
    num_boost_round: int = DEFAULT_ROUNDS,
    early_stopping_rounds: int = EARLY_STOPPING,
    log_period: int = 50,
    seed: int = 0,
    synthetic_weight: float = 1.0,
    group_weight: np.ndarray | None = None,
) -> Any:
    """LightGBM lambdarank with ``group=``, early stopping on ``valid`` (logged as "stop") and
    evaluation logging; ``valid`` None: exactly ``num_boost_round`` trees.

    Synthetic groups weigh ``synthetic_weight`` against the others (real, personal, feedback:
    1.0), unless ``group_weight`` (one non-negative weight per training group) says otherwise."""
    import lightgbm as lgb

    for name, groups in (("train", train), ("stop", valid)):
        if groups is None:
            continue
        if not len(groups):
            raise ValueError(f"no {name} groups to fit on")
        if not groups.has_target.all():
            raise ValueError(f"{name} groups must all contain their target (select has_target)")
    if not 0 <= synthetic_weight <= 1:
        raise ValueError(f"synthetic_weight must be in [0, 1], got {synthetic_weight}")
    params = {**DEFAULT_PARAMS, **(params or {}), "seed": seed}
    if group_weight is None:
        group_weight = source_weights(train.source, synthetic_weight)
    group_weight = np.asarray(group_weight, np.float64)
    if group_weight.shape != (len(train),):
        raise ValueError(f"group_weight must have one weight per training group ({len(train)}), "
                         f"got shape {group_weight.shape}")
    if not (np.isfinite(group_weight).all() and (group_weight >= 0).all()):
        raise ValueError("group_weight must be finite and >= 0")
    train_set = lgb.Dataset(
        train.X, label=train.labels, group=train.sizes, weight=np.repeat(group_weight, train.sizes),
        feature_name=list(FEATURE_NAMES), free_raw_data=False,
    )
    if valid is None:
        return lgb.train(params, train_set, num_boost_round=num_boost_round)
    valid_set = lgb.Dataset(valid.X, label=valid.labels, group=valid.sizes, reference=train_set)
    return lgb.train(
        params,
        train_set,
        num_boost_round=num_boost_round,
        valid_sets=[valid_set],
        valid_names=["stop"],
        callbacks=[
            lgb.early_stopping(early_stopping_rounds, first_metric_only=True, verbose=False),
            lgb.log_evaluation(period=log_period),
        ],
    )


@dataclass(frozen=True, kw_only=True)
class Stopped:
    """What :func:`fit_stopped` gives: the model to ship and how it was chosen."""

    booster: Any  # fitted on every training group, ``best_iteration`` trees
    best_iteration: int
    calibration: Calibration
    stopping_apis: frozenset[str]
    stop_groups: int  # the groups early stopping watched


def fit_stopped(
    base: Groups, base_weight: np.ndarray, *, watched: np.ndarray, config: FitConfig,
    params: dict[str, Any] | None = None, extra: Groups | None = None,
    extra_weight: np.ndarray | None = None,
) -> Stopped:
    """Fit on the training APIs of ``base`` (one weight per ``base`` group) and ``extra`` (groups
    trained on as they are, e.g. feedback), choosing the number of trees and the calibration on
    training APIs held out of a first fit (:func:`~ranker.data.stopping_apis`; early stopping
    watches their groups that ``watched`` marks, the calibration fits their real workflows), then
    fitting again on all of them for that many trees. The other APIs of ``base`` (validation) are
    not read: their numbers stay a measure of a model nothing about which was chosen on them."""
    is_train = (base.split == "train") & base.has_target
    held = stopping_apis(base.api[base.split == "train"])
    is_held = np.isin(base.api, list(held))
    extra = extra if extra is not None else empty_groups()
    extra_weight = np.asarray(extra_weight if extra_weight is not None else np.ones(len(extra)), np.float64)
    first = concat_groups(base.select(is_train & ~is_held), extra)
    first_weight = np.concatenate([base_weight[is_train & ~is_held], extra_weight])
    stop_on = base.select(is_train & is_held & np.asarray(watched, bool))
    step(f"      early stopping: {len(first)} groups fitted, {len(stop_on)} watched on {len(held)} "
         f"training APIs held out")
    booster = fit_ranker(first, stop_on, params=params, num_boost_round=config.num_boost_round,
                         early_stopping_rounds=config.early_stopping, log_period=config.log_period,
                         seed=config.seed, group_weight=first_weight)
    best = int(booster.best_iteration or booster.current_iteration())
    held_real = base.select(is_held & (base.source == "real") & (base.split == "train"))
    calibration = Calibration.fit(booster.predict(held_real.X, num_iteration=best), held_real.labels,
                                  held_real.sizes)
    step(f"      best iteration {best}; calibration on {len(held_real)} real steps of the held-out "
         f"training APIs: temperature {calibration.temperature:.4f}, a {calibration.a:.4f}, "
         f"b {calibration.b:.4f}")
    everything = concat_groups(base.select(is_train), extra)
    weight = np.concatenate([base_weight[is_train], extra_weight])
    step(f"      fitted again on all {len(everything)} training groups, {best} trees")
    booster = fit_ranker(everything, None, params=params, num_boost_round=best, seed=config.seed,
                         group_weight=weight)
    return Stopped(booster=booster, best_iteration=best, calibration=calibration, stopping_apis=held,
                   stop_groups=len(stop_on))


def calibration_report(cal: Calibration, raw: np.ndarray, groups: Groups) -> dict[str, float]:
    """How ``cal`` fits ``groups``, which it was not fitted on: the expected calibration error over
    all candidates and over each group's first, the first's mean score against its accuracy, and
    the uncalibrated softmax's error for comparison."""
    report: dict[str, float] = {"temperature": cal.temperature, "a": cal.a, "b": cal.b}
    if not len(groups):
        return report
    p = cal.probabilities(raw, groups.sizes)
    b = groups.bounds
    tops = np.array([b[g] + int(np.argmax(p[b[g]:b[g + 1]])) for g in range(len(groups)) if b[g + 1] > b[g]])
    report["ece_all_candidates"] = expected_calibration_error(p, groups.labels)
    report["ece_top1"] = expected_calibration_error(p[tops], groups.labels[tops])
    report["mean_top1_score"] = float(np.mean(p[tops]))
    report["top1_accuracy"] = float(np.mean(groups.labels[tops]))
    p_raw = Calibration(temperature=1.0).softmax(raw, groups.sizes)
    report["ece_uncalibrated_softmax"] = expected_calibration_error(p_raw, groups.labels)
    return report


def subset_apis(workflows: list[Workflow], max_apis: int | None) -> list[Workflow]:
    """A deterministic small subset of whole APIs, with both splits represented."""
    if not max_apis:
        return workflows
    apis = sorted({w.api for w in workflows}, key=lambda a: hashlib.sha256(a.encode()).hexdigest())
    valid = [a for a in apis if split_of(a) == "valid"][: max(1, max_apis // 3)]
    train = [a for a in apis if split_of(a) == "train"][: max(1, max_apis - len(valid))]
    keep = set(valid) | set(train)
    return [w for w in workflows if w.api in keep]


def synthetic_examples(
    workflows: Sequence[Workflow], *, per_api: int, seed: int
) -> list[Example]:
    """``per_api`` synthetic sequences for the spec of every API in ``workflows``."""
    if per_api <= 0:
        return []
    from ranker.synth import synthesize_for_apis

    return list(examples(synthesize_for_apis(workflows, seed=seed, per_api=per_api)))


def base_examples(
    workflows: Sequence[Workflow], *, synthetic_per_api: int, personal_users_per_api: int, seed: int,
    population_same_flow: float = POPULATION_SAME_FLOW, named_find_id: bool = False,
) -> tuple[list[Example], list[Example], list[Example]]:
    """(real, synthetic, simulated users) examples: what ``ranker.train`` and ``ranker.retrain``
    train on. The real ones are the workflows' steps and the requests built from them (one step
    asked for on its own, or the read that finds the id a step needs: :mod:`ranker.requests`,
    source "request"), so the model learns what users type as well as workflow summaries.
    Simulated users: returning users replaying the real and synthetic routines of their API
    (``source="personal"``), then the real workflows with other users' traffic
    (``source="population"``; none when ``population_same_flow`` < 0). ``named_find_id``: the
    named find-id asks too (off by default: docs/accuracy.md, "Find-id asks that name the thing")."""
    from ranker.requests import request_examples

    real = [*examples(workflows), *request_examples(workflows, "training", named=named_find_id)]
    synthetic = synthetic_examples(workflows, per_api=synthetic_per_api, seed=seed)
    personal: list[Example] = []
    if personal_users_per_api > 0:
        from ranker.returning_users import personal_examples
        from ranker.synth import synthesize_for_apis

        routines = [*workflows, *synthesize_for_apis(workflows, seed=seed + 1, per_api=6)]
        personal = list(personal_examples(routines, seed=seed, users_per_api=personal_users_per_api))
    if population_same_flow >= 0:
        from ranker.population import population_examples

        personal += population_examples(workflows, seed=seed, same_flow=population_same_flow)
    return real, synthetic, personal


@dataclass(frozen=True, kw_only=True)
class FitConfig:
    """What ``ranker.train`` and ``ranker.retrain`` both train on, and how long."""

    jentic_dir: Path | None = None  # workflows + specs; None: settings.jentic_dir
    synthetic_per_api: int = 20
    synthetic_weight: float = SYNTHETIC_WEIGHT
    find_id_weight: float = FIND_ID_WEIGHT  # of the find-id asks after a history (ranker.requests)
    named_find_id: bool = False  # also train on the named find-id asks (ranker.requests)
    personal_users_per_api: int = PERSONAL_USERS_PER_API  # of each kind (habits, wandering); 0: none
    population_same_flow: float = POPULATION_SAME_FLOW  # ranker.population; < 0: no population groups
    seed: int = 0
    transitions: Path = TRANSITIONS_PATH
    num_boost_round: int = DEFAULT_ROUNDS
    early_stopping: int = EARLY_STOPPING
    log_period: int = 50

    def __post_init__(self) -> None:
        if self.synthetic_per_api < 0:
            raise ValueError(f"synthetic_per_api must be >= 0, got {self.synthetic_per_api}")
        if not 0 <= self.synthetic_weight <= 1:
            raise ValueError(f"synthetic_weight must be in [0, 1], got {self.synthetic_weight}")
        if not 0 < self.find_id_weight <= 10:
            raise ValueError(f"find_id_weight must be in (0, 10], got {self.find_id_weight}")
        if self.personal_users_per_api < 0:
            raise ValueError(f"personal_users_per_api must be >= 0, got {self.personal_users_per_api}")
        if self.num_boost_round < 1:
            raise ValueError(f"num_boost_round must be >= 1, got {self.num_boost_round}")
        if self.early_stopping < 1:
            raise ValueError(f"early_stopping must be >= 1, got {self.early_stopping}")
        if self.log_period < 0:
            raise ValueError(f"log_period must be >= 0, got {self.log_period}")


@dataclass(frozen=True, kw_only=True)
class TrainConfig(FitConfig):
    out: Path = SHIPPED_MODELS_DIR  # ranker.txt and model_card.json go here
    word_vectors: Path = WORD_VECTORS_PATH  # of the semantic source and features
    max_apis: int | None = None  # a deterministic subset of this many APIs (smoke runs); None, 0: all

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_apis is not None and self.max_apis < 0:
            raise ValueError(f"max_apis must be >= 0, got {self.max_apis}")


@dataclass(frozen=True, kw_only=True)
class TrainResult:
    version: str
    model_path: Path
    card_path: Path
    best_iteration: int
    metrics: dict[str, Any]  # the card's "validation": by source, the ranker and the generator's order
    calibration: dict[str, float]
    table: str  # the validation table
    seconds: float


def train(config: TrainConfig, *, show_table: Callable[[str], None] = step) -> TrainResult:
    """Fit, calibrate and validate a ranker on the base data and write it to ``config.out``.
    Progress goes to stderr; the validation table to ``show_table`` as soon as it is computed."""
    from core.settings import load_settings

    started = time.perf_counter()
    jentic_dir = config.jentic_dir or load_settings().jentic_dir
    step(f"[1/6] workflows from {jentic_dir}")
    workflows = subset_apis(load_workflows(jentic_dir, progress=True), config.max_apis)
    transitions: Transitions = load_transitions(config.transitions)
    real, synthetic, personal = base_examples(
        workflows, synthetic_per_api=config.synthetic_per_api,
        personal_users_per_api=config.personal_users_per_api, seed=config.seed,
        population_same_flow=config.population_same_flow, named_find_id=config.named_find_id)
    step(f"      {len({w.api for w in workflows})} APIs, {len(workflows)} workflows, "
         f"{len(real)} real + {len(synthetic)} synthetic + {len(personal)} returning-user and "
         "population groups")

    step(f"[2/6] candidates (retrieval, limit {CANDIDATE_LIMIT}, {HISTORY_CANDIDATE_LIMIT} after a "
         f"history) and features "
         f"({len(FEATURE_NAMES)}, version {FEATURE_VERSION})")
    word_vectors = load_word_vectors(config.word_vectors)
    generator = RetrievalGenerator(transitions=transitions, word_vectors=word_vectors)
    extractor = FeatureExtractor(transitions=transitions, word_vectors=word_vectors)
    base = [*real, *synthetic, *personal]
    groups = build_groups(base, generator=generator, extractor=extractor, progress="features")
    is_train, is_valid = groups.split == "train", groups.split == "valid"
    is_real = groups.source == "real"
    train_weight = example_weights(base, synthetic_weight=config.synthetic_weight,
                                   find_id_weight=config.find_id_weight)
    step(f"      train {int((is_train & groups.has_target).sum())} groups "
         f"({int((is_train & ~groups.has_target).sum())} with the target missing, dropped)")

    step("[3/6] LightGBM lambdarank")
    stopped = fit_stopped(groups, train_weight, watched=watched_by_early_stopping(base), config=config)
    booster, best, calibration = stopped.booster, stopped.best_iteration, stopped.calibration

    step("[4/6] calibration, measured on the validation APIs")
    valid_real = groups.select(is_valid & is_real)
    cal_report = calibration_report(calibration, booster.predict(valid_real.X, num_iteration=best),
                                    valid_real)
    step("      " + ", ".join(f"{k} {v:.4f}" for k, v in cal_report.items()))

    step("[5/6] validation (held-out APIs; a target the generator missed is a miss)")
    metrics: dict[str, Any] = {}
    rows: dict[str, dict[str, float]] = {}
    for source in ("real", "request", "synthetic", "personal", "population"):
        part = groups.select(is_valid & (groups.source == source))
        if not len(part):
            continue
        model_ranks = ranks_from_scores(part, booster.predict(part.X, num_iteration=best)
                                        if len(part.X) else np.zeros(0))
        rows[f"{source}: generator order"] = ranking_metrics(part.gen_rank)
        rows[f"{source}: ranker"] = ranking_metrics(model_ranks)
        metrics[source] = {
            "ranker": rows[f"{source}: ranker"],
            "generator": rows[f"{source}: generator order"],
            "recall": float(part.has_target.mean()),  # of the pool (30, 50 after a history)
            "apis": len(set(part.api)),
        }
    table = metrics_table(rows, title="validation APIs")
    show_table(table)

    out = config.out
    step(f"[6/6] writing {out}")
    out.mkdir(parents=True, exist_ok=True)
    model_path = out / MODEL_FILE
    booster.save_model(str(model_path), num_iteration=best)
    created = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    model_sha = file_sha256(model_path)
    card = ModelCard(
        version=f"lgbm-f{FEATURE_VERSION}-{created[:10].replace('-', '')}-{model_sha[:8]}",
        feature_names=list(FEATURE_NAMES),
        feature_version=FEATURE_VERSION,
        training_data_hash=examples_hash(
            e for e in [*real, *synthetic, *personal] if split_of(e.api) == "train"
        ),
        calibration={"temperature": calibration.temperature, "a": calibration.a, "b": calibration.b},
        metrics={"validation": metrics, "calibration": cal_report},
        params={**DEFAULT_PARAMS, "seed": config.seed},
        best_iteration=int(best),
        data={
            "model_sha256": model_sha,
            "transitions_sha256": file_sha256(config.transitions),
            "word_vectors_sha256": word_vectors.sha256,
            "word_vectors": {k: word_vectors.meta.get(k) for k in ("model", "dim", "corpus")},
            "apis": {"train": len(set(groups.api[is_train])), "valid": len(set(groups.api[is_valid]))},
            "stopping_apis": len(stopped.stopping_apis),
            "groups": {"train": int((is_train & groups.has_target).sum()),
                       "early_stopping": stopped.stop_groups,
                       "valid_real": int((is_valid & is_real).sum()),
                       "valid_request": int((is_valid & (groups.source == "request")).sum()),
                       "valid_synthetic": int((is_valid & (groups.source == "synthetic")).sum()),
                       "valid_personal": int((is_valid & (groups.source == "personal")).sum()),
                       "valid_population": int((is_valid & (groups.source == "population")).sum())},
            "synthetic_per_api": config.synthetic_per_api,
            "personal_users_per_api": config.personal_users_per_api,
            "population_same_flow": config.population_same_flow,
            "synthetic_weight": config.synthetic_weight,
            "find_id_weight": config.find_id_weight,
            "named_find_id": config.named_find_id,
            "max_apis": config.max_apis,
            "candidates": CANDIDATES,
            "seconds": round(time.perf_counter() - started, 1),
        },
        created=created,
    )
    json.dumps(card.metrics)  # the card must stay plain JSON
    card_path = out / CARD_FILE
    card_path.write_text(card.to_json())
    size = model_path.stat().st_size
    seconds = time.perf_counter() - started
    step(f"      {model_path} ({size / 1e6:.2f} MB), {card_path}; version {card.version}; "
         f"{seconds:.0f}s in all")
    if size > 5e6:
        step(f"      warning: model is {size / 1e6:.1f} MB, above the 5 MB target")
    return TrainResult(version=card.version, model_path=model_path, card_path=card_path,
                       best_iteration=int(best), metrics=metrics, calibration=cal_report, table=table,
                       seconds=round(seconds, 1))


def main(argv: list[str] | None = None, *, prog: str = "python -m ranker.train") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--jentic-dir", type=Path, default=None,
                        help="workflows + specs (default: settings.jentic_dir)")
    parser.add_argument("--out", type=Path, default=SHIPPED_MODELS_DIR)
    parser.add_argument("--synthetic-per-api", type=int, default=20)
    parser.add_argument("--synthetic-weight", type=float, default=SYNTHETIC_WEIGHT)
    parser.add_argument("--find-id-weight", type=float, default=FIND_ID_WEIGHT,
                        help="weight of the find-id asks after a history (ranker.requests) "
                             "against real steps' 1.0")
    parser.add_argument("--named-find-id", action="store_true",
                        help="also train on the find-id asks that name the thing (ranker.requests)")
    parser.add_argument("--personal-users-per-api", type=int, default=PERSONAL_USERS_PER_API,
                        help="simulated returning users per API and kind (habits, wandering); 0: none")
    parser.add_argument("--population-same-flow", type=float, default=POPULATION_SAME_FLOW,
                        help="share of workflows that also see their own flow run by other users "
                             "(ranker.population); < 0: no population groups")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--transitions", type=Path, default=TRANSITIONS_PATH)
    parser.add_argument("--word-vectors", type=Path, default=WORD_VECTORS_PATH,
                        help="word vectors of the semantic source and features "
                             "(`python -m ranker.word_vectors build`)")
    parser.add_argument("--max-apis", type=int, default=None,
                        help="train on a deterministic subset of this many APIs (smoke runs)")
    parser.add_argument("--num-boost-round", type=int, default=DEFAULT_ROUNDS)
    parser.add_argument("--early-stopping", type=int, default=EARLY_STOPPING)
    parser.add_argument("--log-period", type=int, default=50)
    args = parser.parse_args(argv)
    try:
        config = TrainConfig(**vars(args))
    except ValueError as exc:
        parser.error(str(exc))
    train(config, show_table=print)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
