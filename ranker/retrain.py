"""Retrain the ranker on the base data plus recorded outcomes; keep the new model only if it is
not worse on the held-out APIs; roll back.

The library: :func:`retrain` (a :class:`RetrainConfig`, and the recorded outcomes as any
:class:`~core.outcomes.OutcomeLog`), :func:`rollback` and :func:`list_versions`. The command line
(``python -m tools.retrain``, ``opensesame retrain``) opens the feedback store, prints the results
and rolls the running app out to them.

1. Base data exactly as ``python -m ranker.train`` builds it (:func:`ranker.train.base_examples`):
   real workflows, synthetic sequences and simulated returning users, split by whole API
   (:func:`ranker.data.split_of`).
2. Feedback: every stored prediction with an outcome that is an operation of its spec. Its
   features are rebuilt from the stored context (spec, events, prompt, the candidates the
   generator returned then, and the user's transitions the features were served with) with
   today's :class:`FeatureExtractor`. The latest ``holdout_fraction`` of them (by time) are held
   out for evaluation only, and so is feedback on a spec of a held-out API (the gate must stay a
   measure on APIs never trained on).
3. :func:`ranker.train.fit_stopped` (LightGBM lambdarank, its parameters) on the training APIs
   plus the feedback groups (weight ``feedback_weight`` each), the number of trees and the
   calibration chosen on training APIs held out of a first fit, as ``ranker.train`` does; the
   calibration's error is measured on the validation APIs.
4. The validation table: the model in service (the baseline) and the retrained one, on the same
   held-out APIs and held-out feedback. The gate: hit@1 and MRR on the real workflows of
   held-out APIs must not drop by more than ``tolerance``.
5. Passed: the model is added to the registry as a new version (``<models_dir>/<version>``) and
   promoted (unless ``promote=False``). Refused: nothing is written.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import math
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from core.candidates.retrieval import RetrievalGenerator
from core.candidates.types import Candidate
from core.features import FEATURE_NAMES, FEATURE_VERSION, FeatureExtractor, UserTransitions
from core.outcomes import OutcomeLog, StoredPrediction
from core.priors.population import PopulationView
from core.priors.transitions import load_transitions
from core.progress import step, track
from core.scorer import CARD_FILE, MODEL_FILE, ModelCard, RankerModel, default_model_path, file_sha256
from core.spec.index import SpecIndex
from ranker.data import load_spec, load_workflows, split_of
from ranker.evaluate import (
    MISS,
    Groups,
    build_groups,
    empty_groups,
    examples_hash,
    metrics_table,
    ranking_metrics,
    ranks_from_scores,
)
from ranker.registry import ModelRegistry
from ranker.train import (
    CANDIDATES,
    DEFAULT_PARAMS,
    FitConfig,
    base_examples,
    calibration_report,
    example_weights,
    fit_stopped,
    watched_by_early_stopping,
)

__all__ = [
    "RetrainConfig", "RetrainResult", "retrain", "RollbackResult", "rollback", "ModelVersion",
    "ModelVersions", "list_versions", "FeedbackGroups", "feedback_groups", "gate",
    "spec_fingerprint",
]

FEEDBACK_WEIGHT = 1.0
TOLERANCE = 0.005
GATE_METRICS = ("hit@1", "mrr")


# -- feedback as ranking groups ------------------------------------------------------------------


def spec_fingerprint(spec: SpecIndex) -> str:
    """The same API whether its spec came as a file, a URL or inline (their hashes differ)."""
    return hashlib.sha256("\n".join(sorted(op.key for op in spec.operations)).encode()).hexdigest()


@dataclass
class FeedbackGroups:
    # split "train", "holdout" (latest), or "heldout_api"; source "feedback"; api "feedback:<hash>"
    groups: Groups
    served_ranks: np.ndarray  # (groups,) 0-based rank among the predictions shown, or MISS
    skipped: dict[str, int]
    ids: list[str]


def feedback_groups(
    reader: OutcomeLog,
    stored: Sequence[StoredPrediction],
    *,
    extractor: FeatureExtractor,
    holdout_fraction: float = 0.2,
    held_out_specs: set[str] | frozenset[str] = frozenset(),
    progress: bool = True,
) -> FeedbackGroups:
    """One group per outcome, features rebuilt from the stored context, oldest first; the latest
    ``holdout_fraction`` are split "holdout", those on a spec whose :func:`spec_fingerprint` is in
    ``held_out_specs`` "heldout_api". Outcomes that cannot teach (not an operation of the spec,
    spec missing) are counted in ``skipped``."""
    if not 0 <= holdout_fraction < 1:
        raise ValueError(f"holdout_fraction must be in [0, 1), got {holdout_fraction}")
    usable = [s for s in stored if s.actual_key is not None]
    skipped = {"not_an_operation": len(stored) - len(usable), "spec_missing": 0,
               "target_not_generated": 0}
    n_hold = int(round(len(usable) * holdout_fraction))
    X, labels, meta, ids, served = [], [], [], [], []
    for i, s in enumerate(track(usable, "feedback features", enabled=progress and bool(usable))):
        try:
            spec = reader.spec(s.spec_hash)
        except KeyError:
            skipped["spec_missing"] += 1
            continue
        cands = [Candidate.from_wire(c) for c in s.candidates if 0 <= c[0] < len(spec.operations)]
        history = spec.resolve_history(s.history)
        x = (extractor.extract(spec, history, s.prompt, cands, UserTransitions.from_wire(s.personal),
                               PopulationView.from_wire(s.population))
             if cands else np.zeros((0, len(FEATURE_NAMES))))
        y = np.array([spec.operations[c.index].key == s.actual_key for c in cands], np.float32)
        hit = np.flatnonzero(y)
        if not hit.size:
            skipped["target_not_generated"] += 1  # still a miss in evaluation
        X.append(np.asarray(x, np.float32))
        labels.append(y)
        split = "holdout" if i >= len(usable) - n_hold else "train"
        if held_out_specs and spec_fingerprint(spec) in held_out_specs:
            split = "heldout_api"
        meta.append((f"feedback:{s.spec_hash[:12]}", split, len(history), int(hit[0]) if hit.size else MISS))
        ids.append(s.prediction_id)
        served.append(s.rank - 1 if s.rank else MISS)
    if not X:
        return FeedbackGroups(empty_groups(), np.zeros(0, int), skipped, [])
    groups = Groups(
        X=np.vstack(X), labels=np.concatenate(labels), sizes=np.array([len(y) for y in labels], int),
        api=np.array([m[0] for m in meta], dtype=object),
        source=np.array(["feedback"] * len(meta), dtype=object),
        split=np.array([m[1] for m in meta], dtype=object),
        history_len=np.array([m[2] for m in meta], int), gen_rank=np.array([m[3] for m in meta], int),
    )
    return FeedbackGroups(groups, np.array(served, int), skipped, ids)


# -- fitting -------------------------------------------------------------------------------------


def gate(baseline: dict[str, float] | None, candidate: dict[str, float], *,
         tolerance: float = TOLERANCE) -> tuple[bool, str]:
    """Whether ``candidate`` is not worse than ``baseline`` on :data:`GATE_METRICS` (within
    ``tolerance``, absolute), and why."""
    if baseline is None:
        return True, "no usable baseline model: nothing to be worse than"
    drops = [f"{m} {candidate[m]:.3f} < {baseline[m]:.3f} - {tolerance}" for m in GATE_METRICS
             if not candidate[m] >= baseline[m] - tolerance]
    if drops:
        return False, "worse on held-out APIs: " + "; ".join(drops)
    verdict = ("within the tolerance of " + str(tolerance)
               if any(candidate[m] < baseline[m] for m in GATE_METRICS) else "not worse")
    return True, f"{verdict} on held-out APIs: " + ", ".join(
        f"{m} {candidate[m]:.3f} vs {baseline[m]:.3f}" for m in GATE_METRICS)


# -- commands ------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class RetrainConfig(FitConfig):
    models_dir: Path  # the registry: versioned models and registry.json
    feedback_store: str | None = None  # where the outcomes come from: for the log and the model card
    baseline: Path | None = None  # the model to beat; None: the registry's current one, else the shipped one
    feedback_weight: float = FEEDBACK_WEIGHT  # of each feedback group (base groups: 1.0, synthetic less)
    holdout_fraction: float = 0.2  # the latest share of the outcomes, kept out of training
    tolerance: float = TOLERANCE  # allowed drop of hit@1 and MRR on held-out APIs (absolute)
    promote: bool = True  # False: write the version but keep the current one in service

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (math.isfinite(self.feedback_weight) and self.feedback_weight >= 0):
            raise ValueError(f"feedback_weight must be finite and >= 0, got {self.feedback_weight}")
        if not 0 <= self.holdout_fraction < 1:
            raise ValueError(f"holdout_fraction must be in [0, 1), got {self.holdout_fraction}")
        if not self.tolerance >= 0:
            raise ValueError(f"tolerance must be >= 0, got {self.tolerance}")


@dataclass(frozen=True, kw_only=True)
class RetrainResult:
    passed: bool  # by the gate
    reason: str  # the gate's
    baseline_version: str  # "none": no usable baseline
    baseline_path: str
    metrics: dict[str, dict[str, float]]  # the validation table's rows
    table: str  # the validation table
    feedback_train: int  # feedback groups trained on
    feedback_holdout: int  # the latest ones, held out
    skipped: dict[str, int]  # outcomes that could not teach, by why
    version: str | None = None  # the version written; None: refused
    path: Path | None = None  # its directory in the registry
    promoted: bool = False
    seconds: float = 0.0


def _baseline(registry: ModelRegistry, explicit: Path | None) -> tuple[RankerModel | None, str]:
    path = explicit or registry.current_path()
    if path is None:
        from core.settings import load_settings

        path = load_settings().model_path or default_model_path()
    try:
        return RankerModel.load(path).ensure_loaded(), str(path)
    except (OSError, ValueError) as exc:  # e.g. features changed since: it can't serve anyway
        step(f"      baseline {path} unusable ({exc}); the gate has nothing to compare with")
        return None, str(path)


def retrain(
    config: RetrainConfig,
    *,
    outcomes: OutcomeLog | None = None,
    show_table: Callable[[str], None] = step,
) -> RetrainResult:
    """Retrain on the base data plus ``outcomes`` (None: the base data alone), gate, and write
    (and promote) a new version when the gate passes. Progress goes to stderr; the validation
    table to ``show_table`` as soon as it is computed, before the gate decides."""
    from core.settings import load_settings

    started = time.perf_counter()
    settings = load_settings()
    registry = ModelRegistry(config.models_dir)
    jentic_dir = config.jentic_dir or settings.jentic_dir
    transitions = load_transitions(config.transitions)
    generator = RetrievalGenerator(transitions=transitions)
    extractor = FeatureExtractor(transitions=transitions)

    step(f"[1/7] base data from {jentic_dir}")
    workflows = load_workflows(jentic_dir, progress=True)
    real, synthetic, personal = base_examples(
        workflows, synthetic_per_api=config.synthetic_per_api,
        personal_users_per_api=config.personal_users_per_api, seed=config.seed,
        population_same_flow=config.population_same_flow, named_find_id=config.named_find_id)
    step(f"      {len({w.api for w in workflows})} APIs, {len(real)} real + {len(synthetic)} "
         f"synthetic + {len(personal)} returning-user groups")

    step(f"[2/7] feedback from {config.feedback_store or 'no store'}")
    if outcomes is not None:
        stored = list(outcomes.predictions(with_outcome=True))
        step(f"      {outcomes.counts()}")
    else:
        step("      no feedback store there: training on the base data alone")
        stored = []

    step(f"[3/7] candidates and features ({len(FEATURE_NAMES)}, version {FEATURE_VERSION})")
    base_list = [*real, *synthetic, *personal]
    base = build_groups(track(base_list, "base features", total=len(base_list)),
                        generator=generator, extractor=extractor)
    held_out_specs = {spec_fingerprint(load_spec(w.spec_path))
                      for w in workflows if split_of(w.api) == "valid"}
    fb = (feedback_groups(outcomes, stored, extractor=extractor, holdout_fraction=config.holdout_fraction,
                          held_out_specs=held_out_specs)
          if outcomes is not None else FeedbackGroups(empty_groups(), np.zeros(0, int), {}, []))
    fb_train = fb.groups.select((fb.groups.split == "train") & fb.groups.has_target)
    fb_hold_mask = fb.groups.split == "holdout"
    fb_api_mask = fb.groups.split == "heldout_api"
    step(f"      feedback: {len(fb_train)} groups to learn from, {int(fb_hold_mask.sum())} held out "
         f"(latest), {int(fb_api_mask.sum())} on held-out APIs (never trained on); skipped {fb.skipped}")

    is_train, is_valid, is_real = base.split == "train", base.split == "valid", base.source == "real"
    base_weight = example_weights(base_list, synthetic_weight=config.synthetic_weight,
                                  find_id_weight=config.find_id_weight)

    step(f"[4/7] LightGBM lambdarank on {int((is_train & base.has_target).sum())} base + {len(fb_train)} "
         f"feedback groups (feedback weight {config.feedback_weight})")
    with contextlib.redirect_stdout(sys.stderr):  # LightGBM's evaluation log is progress, not result
        stopped = fit_stopped(base, base_weight, watched=watched_by_early_stopping(base_list),
                              config=config, extra=fb_train,
                              extra_weight=np.full(len(fb_train), config.feedback_weight))
    booster, best, calibration = stopped.booster, stopped.best_iteration, stopped.calibration

    step("[5/7] calibration, measured on the validation APIs")
    valid_real = base.select(is_valid & is_real)
    cal_report = calibration_report(calibration, booster.predict(valid_real.X, num_iteration=best),
                                    valid_real)

    step("[6/7] validation: the model in service vs the retrained one")
    baseline, baseline_path = _baseline(registry, config.baseline)
    baseline_name = baseline.version if baseline else "none"
    rows: dict[str, dict[str, float]] = {}

    def evaluate(name: str, part: Groups, served: np.ndarray | None = None) -> None:
        if not len(part):
            return
        if served is not None:
            rows[f"{name}: as served"] = ranking_metrics(served)
        if baseline is not None:
            rows[f"{name}: baseline {baseline_name}"] = ranking_metrics(
                ranks_from_scores(part, baseline.raw_scores(part.X) if len(part.X) else np.zeros(0)))
        scores = booster.predict(part.X, num_iteration=best) if len(part.X) else np.zeros(0)
        rows[f"{name}: retrained"] = ranking_metrics(ranks_from_scores(part, scores))

    evaluate("real, held-out APIs", valid_real)
    evaluate("synthetic, held-out APIs", base.select(is_valid & (base.source == "synthetic")))
    evaluate("returning users, held-out APIs", base.select(is_valid & (base.source == "personal")))
    evaluate("feedback, held out (latest)", fb.groups.select(fb_hold_mask), fb.served_ranks[fb_hold_mask])
    evaluate("feedback on held-out APIs", fb.groups.select(fb_api_mask), fb.served_ranks[fb_api_mask])
    trained_mask = fb.groups.split == "train"
    evaluate("feedback, trained on", fb.groups.select(trained_mask), fb.served_ranks[trained_mask])
    table = metrics_table(rows, title="validation (held-out APIs; a target the generator missed is a miss)")
    show_table(table)
    ok, why = gate(rows.get(f"real, held-out APIs: baseline {baseline_name}"),
                   rows["real, held-out APIs: retrained"], tolerance=config.tolerance)
    step(f"      gate: {'PASSED' if ok else 'REFUSED'} — {why}")

    result = RetrainResult(
        passed=ok, reason=why, baseline_version=baseline_name, baseline_path=baseline_path,
        metrics=rows, table=table, feedback_train=len(fb_train), feedback_holdout=int(fb_hold_mask.sum()),
        skipped=fb.skipped,
    )
    if not ok:
        step("[7/7] nothing written: the model in service stays")
        return replace(result, seconds=round(time.perf_counter() - started, 1))

    step(f"[7/7] writing a new version to {config.models_dir}")
    with tempfile.TemporaryDirectory(dir=_mkdir(config.models_dir)) as tmp:
        out = Path(tmp)
        booster.save_model(str(out / MODEL_FILE), num_iteration=best)
        created = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
        model_sha = file_sha256(out / MODEL_FILE)
        version = f"lgbm-f{FEATURE_VERSION}-{created[:19].replace('-', '').replace(':', '')}-{model_sha[:8]}"
        fb_hash = hashlib.sha256("\n".join(fb.ids).encode()).hexdigest()
        card = ModelCard(
            version=version, feature_names=list(FEATURE_NAMES), feature_version=FEATURE_VERSION,
            training_data_hash=hashlib.sha256(
                (examples_hash(e for e in base_list if split_of(e.api) == "train") + fb_hash).encode()
            ).hexdigest(),
            calibration={"temperature": calibration.temperature, "a": calibration.a, "b": calibration.b},
            metrics={"validation": rows, "calibration": cal_report, "gate": {"passed": ok, "reason": why}},
            params={**DEFAULT_PARAMS, "seed": config.seed}, best_iteration=int(best),
            data={
                "model_sha256": model_sha, "transitions_sha256": file_sha256(config.transitions),
                "retrained_from": {
                    "baseline": baseline_name, "feedback_store": config.feedback_store,
                    "feedback_groups": len(fb_train), "feedback_weight": config.feedback_weight,
                    "feedback_ids_sha256": fb_hash, "skipped": fb.skipped,
                },
                "stopping_apis": len(stopped.stopping_apis),
                "groups": {"train": int((is_train & base.has_target).sum()),
                           "early_stopping": stopped.stop_groups},
                "synthetic_per_api": config.synthetic_per_api, "synthetic_weight": config.synthetic_weight,
                "find_id_weight": config.find_id_weight,
                "named_find_id": config.named_find_id,
                "candidates": CANDIDATES, "seconds": round(time.perf_counter() - started, 1),
            },
            created=created,
        )
        (out / CARD_FILE).write_text(card.to_json())
        RankerModel.load(out).ensure_loaded()  # it must load as serving loads it
        registry.add(out, version)
    path = registry.path(version)
    step(f"      {path}")
    if config.promote:
        registry.promote(version, reason=why)
        step(f"      promoted: {version} is current (roll back: python -m tools.retrain rollback)")
    return replace(result, version=version, path=path, promoted=config.promote,
                               seconds=round(time.perf_counter() - started, 1))


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True, kw_only=True)
class RollbackResult:
    retired: str | None  # the version taken out of service
    current: str | None  # the version now current; None: the shipped model
    path: Path | None  # its directory in the registry; None: the shipped model


def rollback(models_dir: Path, *, reason: str = "manual rollback") -> RollbackResult:
    """Retire the current version of the registry at ``models_dir``; raises
    :class:`~ranker.registry.RegistryError` when the shipped model is already current."""
    registry = ModelRegistry(models_dir)
    before = registry.current()
    now = registry.rollback(reason=reason)
    return RollbackResult(retired=before, current=now, path=registry.path(now) if now else None)


@dataclass(frozen=True, kw_only=True)
class ModelVersion:
    version: str
    current: bool
    created: str
    hit_at_1: float | None  # on the real workflows of held-out APIs, as its retrain measured it


@dataclass(frozen=True, kw_only=True)
class ModelVersions:
    current: str | None  # None: the shipped model
    versions: list[ModelVersion]  # oldest first
    events: list[dict[str, Any]]  # every promotion and rollback, with its reason


def list_versions(models_dir: Path) -> ModelVersions:
    """The versions in the registry at ``models_dir`` and which one is current."""
    registry = ModelRegistry(models_dir)
    current = registry.current()
    rows = []
    for v in registry.versions():
        card = registry.card(v)
        hit1 = card.metrics.get("validation", {}).get("real, held-out APIs: retrained", {}).get("hit@1")
        rows.append(ModelVersion(version=v, current=v == current, created=card.created, hit_at_1=hit1))
    return ModelVersions(current=current, versions=rows, events=registry.state()["events"])
