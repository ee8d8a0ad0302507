"""The scorer: a LightGBM lambdarank model over :mod:`core.features`, its calibration and its card
(the words that explain a prediction are :mod:`core.explain`'s).

A shipped model is two files side by side: the LightGBM text model (``ranker.txt``) and its card
(``model_card.json``: version, training-data hash, feature names and version, metrics,
calibration). A model whose features are not exactly this code's :data:`FEATURE_NAMES` is
refused with a :class:`ModelMismatch` naming the difference — a model silently fed the wrong
columns would still produce confident scores.

Scores read as P(this candidate is the next call): a softmax over the request's candidates at a
fitted temperature, then a Platt map fitted on validation APIs. Both maps are monotone, so scores
never increase down the ranked list.

When no model can be loaded the service runs :class:`HeuristicRanker`: a fixed linear score over
the same features with the same interface, documented and tested as the degraded mode.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.features import (
    FEATURE_NAMES,
    FEATURE_VERSION,
)
from core.saabas import LeafContributions
from core.scoring import top_rows
from core.settings import SHIPPED_MODELS_DIR

__all__ = [
    "RankerModel",
    "HeuristicRanker",
    "ModelCard",
    "Calibration",
    "ModelMismatch",
    "GroupSizes",
    "default_model_path",
    "expected_calibration_error",
    "MODEL_FILE",
    "CARD_FILE",
]

MODEL_FILE = "ranker.txt"
CARD_FILE = "model_card.json"
CARD_FORMAT = 1

# Number of candidates of each request, in the order their rows are stacked.
GroupSizes = Sequence[int] | np.ndarray


def default_model_path() -> Path:
    return SHIPPED_MODELS_DIR / MODEL_FILE


class ModelMismatch(ValueError):
    """The model file or its card does not fit this code (features, version, format)."""


# -- calibration ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Calibration:
    """``p = sigmoid(a * logit(softmax(raw / temperature)) + b)``, per group of candidates."""

    temperature: float = 1.0
    a: float = 1.0
    b: float = 0.0

    def __post_init__(self) -> None:
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not (self.a > 0 and math.isfinite(self.a)) or not math.isfinite(self.b):
            raise ValueError(f"Platt slope must be > 0 and finite (monotone), got a={self.a} b={self.b}")

    def softmax(self, raw: np.ndarray, group_sizes: GroupSizes) -> np.ndarray:
        raw = np.asarray(raw, np.float64)
        _check_groups(raw, group_sizes)
        out = np.empty_like(raw)
        start = 0
        for n in group_sizes:
            z = raw[start: start + n] / self.temperature
            z = np.exp(z - z.max()) if n else z
            out[start: start + n] = z / z.sum() if n else z
            start += n
        return out

    def probabilities(self, raw: np.ndarray, group_sizes: GroupSizes) -> np.ndarray:
        p = np.clip(self.softmax(raw, group_sizes), 1e-9, 1 - 1e-9)
        return _sigmoid(self.a * np.log(p / (1 - p)) + self.b)

    @classmethod
    def fit(
        cls, raw: np.ndarray, labels: np.ndarray, group_sizes: GroupSizes
    ) -> Calibration:
        """Temperature by the likelihood of the true candidate over groups that contain it, then
        a Platt map on every candidate (groups missing the target teach it humility)."""
        raw = np.asarray(raw, np.float64)
        labels = np.asarray(labels, np.float64)
        _check_groups(raw, group_sizes)
        if raw.shape != labels.shape:
            raise ValueError(f"raw {raw.shape} and labels {labels.shape} differ in shape")
        if not labels.any():
            raise ValueError("calibration needs at least one positive label")
        bounds = np.cumsum([0, *group_sizes])
        with_target = [(s, e) for s, e in zip(bounds[:-1], bounds[1:], strict=True)
                       if labels[s:e].any()]

        def nll(temperature: float) -> float:
            total = 0.0
            for s, e in with_target:
                z = raw[s:e] / temperature
                m = z.max()
                total -= float(z[labels[s:e] > 0][0] - m - math.log(np.exp(z - m).sum()))
            return total

        # golden-section search on log T
        lo, hi = math.log(0.05), math.log(20.0)
        g = (math.sqrt(5) - 1) / 2
        x1, x2 = hi - g * (hi - lo), lo + g * (hi - lo)
        f1, f2 = nll(math.exp(x1)), nll(math.exp(x2))
        for _ in range(40):
            if f1 < f2:
                hi, x2, f2 = x2, x1, f1
                x1 = hi - g * (hi - lo)
                f1 = nll(math.exp(x1))
            else:
                lo, x1, f1 = x1, x2, f2
                x2 = lo + g * (hi - lo)
                f2 = nll(math.exp(x2))
        temperature = math.exp((lo + hi) / 2)
        p = np.clip(cls(temperature=temperature).softmax(raw, group_sizes), 1e-9, 1 - 1e-9)
        a, b = _fit_platt(np.log(p / (1 - p)), labels)
        return cls(temperature=temperature, a=a, b=b)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(0.5 * np.asarray(x, np.float64)))


def _fit_platt(x: np.ndarray, y: np.ndarray, *, iterations: int = 100) -> tuple[float, float]:
    """Logistic regression of y on x (Newton's method, a tiny ridge); slope kept positive."""
    a, b = 1.0, 0.0
    for _ in range(iterations):
        p = _sigmoid(a * x + b)
        w = np.maximum(p * (1 - p), 1e-9)
        g = np.array([((p - y) * x).sum() + 1e-3 * (a - 1), (p - y).sum()])
        h = np.array([[(w * x * x).sum() + 1e-3, (w * x).sum()], [(w * x).sum(), w.sum() + 1e-9]])
        step = np.linalg.solve(h, g)
        a, b = a - float(step[0]), b - float(step[1])
        if abs(step).max() < 1e-8:
            break
    return max(a, 1e-3), b


def _check_groups(values: np.ndarray, group_sizes: GroupSizes) -> None:
    if any(n < 0 for n in group_sizes):
        raise ValueError("group sizes must be >= 0")
    if sum(group_sizes) != len(values):
        raise ValueError(
            f"group sizes add up to {sum(group_sizes)} but there are {len(values)} rows"
        )


def expected_calibration_error(
    probs: np.ndarray, labels: np.ndarray, *, bins: int = 10
) -> float:
    """Mean |accuracy - confidence| over equal-width bins, weighted by the bins' counts."""
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels, np.float64)
    if probs.shape != labels.shape:
        raise ValueError(f"probs {probs.shape} and labels {labels.shape} differ in shape")
    if not len(probs):
        return float("nan")
    which = np.minimum((probs * bins).astype(int), bins - 1)
    ece = 0.0
    for k in range(bins):
        m = which == k
        if m.any():
            ece += m.mean() * abs(labels[m].mean() - probs[m].mean())
    return float(ece)


# -- the model card ------------------------------------------------------------------------------


@dataclass
class ModelCard:
    version: str
    feature_names: list[str]
    feature_version: str
    training_data_hash: str
    calibration: dict[str, float]
    metrics: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    best_iteration: int = 0
    data: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    format: int = CARD_FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_path(cls, path: Path) -> ModelCard:
        try:
            doc = json.loads(Path(path).read_text())
        except json.JSONDecodeError as exc:
            raise ModelMismatch(f"model card {path} is not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise ModelMismatch(f"model card {path} is not a JSON object")
        if doc.get("format") != CARD_FORMAT:
            raise ModelMismatch(f"model card {path}: format {doc.get('format')!r}, expected {CARD_FORMAT}")
        missing = [k for k in ("version", "feature_names", "feature_version",
                               "training_data_hash", "calibration") if k not in doc]
        if missing:
            raise ModelMismatch(f"model card {path} lacks {', '.join(missing)}")
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in doc.items() if k in known})

    def check_features(self, *, where: str) -> None:
        """Refuse a card whose features are not this code's, saying exactly how they differ."""
        if self.feature_version != FEATURE_VERSION:
            raise ModelMismatch(
                f"{where}: trained on feature version {self.feature_version!r}, this code "
                f"computes version {FEATURE_VERSION!r}; retrain with `python -m ranker.train`"
            )
        _check_names(list(self.feature_names), where=where)


def _check_names(names: list[str], *, where: str) -> None:
    if names == list(FEATURE_NAMES):
        return
    extra = [n for n in names if n not in FEATURE_NAMES]
    absent = [n for n in FEATURE_NAMES if n not in names]
    detail = []
    if absent:
        detail.append(f"missing {absent[:5]}{'…' if len(absent) > 5 else ''}")
    if extra:
        detail.append(f"unknown {extra[:5]}{'…' if len(extra) > 5 else ''}")
    if not detail:
        first = next(i for i, (a, b) in enumerate(zip(names, FEATURE_NAMES, strict=True)) if a != b)
        detail.append(f"order differs from column {first} ({names[first]!r} vs {FEATURE_NAMES[first]!r})")
    raise ModelMismatch(
        f"{where}: feature names do not match this code's FEATURE_NAMES ({len(names)} vs "
        f"{len(FEATURE_NAMES)}): {'; '.join(detail)}"
    )


def _model_file_feature_names(path: Path) -> list[str]:
    """The ``feature_names=`` line of a LightGBM text model, read without loading the trees."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f):
            if line.startswith("feature_names="):
                return line.strip().split("=", 1)[1].split(" ")
            if n > 50 or line.startswith("Tree="):
                break
    raise ModelMismatch(f"{path} is not a LightGBM text model (no feature_names line)")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# -- scorers -------------------------------------------------------------------------------------


class _Scorer:
    """What both rankers share: calibration and grouping."""

    version: str
    degraded: bool
    calibration: Calibration

    def raw_scores(self, X: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def contributions(self, X: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def probabilities(self, raw: np.ndarray, group_sizes: GroupSizes) -> np.ndarray:
        return self.calibration.probabilities(raw, group_sizes)

    def score_groups(
        self, groups: Sequence[np.ndarray], *, explain_top: int | Sequence[int] = 5,
        contributions: bool = True,
    ) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """(probabilities, contributions) per group, with one stacked model call for all groups.

        Contributions (a gather per tree, ~0.05 ms a row) are computed only for each group's
        ``explain_top`` best candidates — pass the request's ``k``, or one ``k`` per group; other
        rows are NaN, and :func:`explain` then falls back to what it can say without them.
        ``contributions=False`` skips them altogether (``None``), e.g. to compute them later for
        chosen rows only.
        """
        tops_k = [explain_top] * len(groups) if isinstance(explain_top, int) else list(explain_top)
        if len(tops_k) != len(groups):
            raise ValueError(f"{len(groups)} groups but {len(tops_k)} values of explain_top")
        if any(k < 0 for k in tops_k):
            raise ValueError(f"explain_top must be >= 0, got {explain_top}")
        width = len(FEATURE_NAMES)
        sizes = [len(g) for g in groups]
        if not sum(sizes):
            return [(np.zeros(0), np.zeros((0, width + 1)) if contributions else None)
                    for _ in groups]
        X = np.vstack([np.asarray(g, np.float32).reshape(-1, width) for g in groups])
        raw, explain_rows = self._scored(X)
        probs = self.probabilities(raw, sizes)
        bounds = np.concatenate([[0], np.cumsum(sizes)])
        if not contributions:
            return [(probs[s:e], None) for s, e in zip(bounds[:-1], bounds[1:], strict=True)]
        top = np.concatenate([
            s + top_rows(probs[s:e], k)  # the rows the response shows
            for s, e, k in zip(bounds[:-1], bounds[1:], tops_k, strict=True)
        ]).astype(int)
        contrib = np.full((len(X), width + 1), np.nan)
        if len(top):
            contrib[top] = explain_rows(top)
        return [(probs[s:e], contrib[s:e]) for s, e in zip(bounds[:-1], bounds[1:], strict=True)]

    def _scored(self, X: np.ndarray) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
        """The raw scores of ``X``'s rows, and the contributions of some of them by row index."""
        return self.raw_scores(X), lambda rows: self.contributions(X[rows])

    @staticmethod
    def _check_X(X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, np.float32)
        if X.ndim != 2 or X.shape[1] != len(FEATURE_NAMES):
            raise ValueError(
                f"features must be (n, {len(FEATURE_NAMES)}), got {X.shape}"
            )
        return X


class RankerModel(_Scorer):
    """The trained LightGBM ranker. The card is read and checked at construction; the trees are
    loaded on first use (or by :meth:`ensure_loaded`, e.g. from a thread off the event loop)."""

    degraded = False

    def __init__(self, model_path: Path | str, card_path: Path | str | None = None) -> None:
        self.model_path = Path(model_path)
        self.card_path = Path(card_path) if card_path else self.model_path.with_name(CARD_FILE)
        if not self.model_path.is_file():
            raise FileNotFoundError(f"ranker model {self.model_path} not found")
        if not self.card_path.is_file():
            raise FileNotFoundError(f"model card {self.card_path} not found (it must sit beside the model)")
        self.card = ModelCard.from_path(self.card_path)
        self.card.check_features(where=str(self.card_path))
        _check_names(_model_file_feature_names(self.model_path), where=str(self.model_path))
        model_hash = self.card.data.get("model_sha256")
        if model_hash and model_hash != file_sha256(self.model_path):
            raise ModelMismatch(
                f"{self.model_path} is not the model its card describes (sha256 differs)"
            )
        self.version = self.card.version
        self.calibration = Calibration(**self.card.calibration)
        self._booster: Any = None
        self._leaves: LeafContributions | None = None
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: Path | str | None = None) -> RankerModel:
        """A model file (its card beside it), or a directory holding both."""
        path = Path(path) if path else default_model_path()
        if path.is_dir():
            path = path / MODEL_FILE
        return cls(path)

    @property
    def loaded(self) -> bool:
        return self._booster is not None

    def ensure_loaded(self) -> RankerModel:
        if self._booster is None:
            with self._lock:
                if self._booster is None:
                    import lightgbm as lgb

                    booster = lgb.Booster(model_file=str(self.model_path))
                    _check_names(booster.feature_name(), where=str(self.model_path))
                    self._leaves = LeafContributions.from_booster(booster)
                    self._booster = booster
        return self

    @property
    def booster(self) -> Any:
        return self.ensure_loaded()._booster

    def raw_scores(self, X: np.ndarray) -> np.ndarray:
        X = self._check_X(X)
        if not len(X):
            return np.zeros(0)
        return np.asarray(self.booster.predict(X, num_threads=1), np.float64) + _policy(X)

    def contributions(self, X: np.ndarray) -> np.ndarray:
        """Per-feature contributions to the raw score (last column: the bias) from the trees'
        decision paths (:mod:`core.saabas`), plus the destructive-intent policy in its own
        column, so a row still adds up to :meth:`raw_scores`."""
        X = self._check_X(X)
        if not len(X):
            return np.zeros((0, len(FEATURE_NAMES) + 1))
        leaves = self.ensure_loaded()._leaves
        assert leaves is not None  # set by ensure_loaded
        contrib = leaves.contributions(self._booster, X)
        contrib[:, _DWI] += _policy(X)
        return contrib

    def _scored(self, X: np.ndarray) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
        """One pass over the trees for both: the leaves every row reaches give its raw score (the
        same sum as ``predict``, bit for bit) and, for the rows explained, their contributions;
        ~0.2 ms a request less than a predict of every row and a second one of the shown rows."""
        leaves = self.ensure_loaded()._leaves
        assert leaves is not None  # set by ensure_loaded
        if not leaves.raw_output:
            return super()._scored(X)
        X = self._check_X(X)
        reached = leaves.leaves(self._booster, X)
        policy = _policy(X)

        def explain_rows(rows: np.ndarray) -> np.ndarray:
            contrib = leaves.contributions_of(reached[rows])
            contrib[:, _DWI] += policy[rows]
            return contrib

        return leaves.raw(reached) + policy, explain_rows


# Policy, not learned: a destructive operation the prompt doesn't ask for goes below every
# other candidate. The generator never proposes one, so training data can't teach it; an LLM
# generator may still propose one, and the ranker must not put it first.
DESTRUCTIVE_PENALTY = 10.0
_DWI = FEATURE_NAMES.index("destructive_without_intent")


def _policy(X: np.ndarray) -> np.ndarray:
    return -DESTRUCTIVE_PENALTY * np.nan_to_num(X[:, _DWI].astype(np.float64), nan=0.0)


# Weights of the fallback: a conditional-logit fit (softmax over each group) on the TRAINING
# APIs, rounded and frozen here, so the fallback needs no file. Each is what a unit of the
# feature is worth in the score; the destructive-intent policy applies on top, as for the model.
HEURISTIC_WEIGHTS: Mapping[str, float] = {
    "gen_rank_norm": -2.0,  # the generator's own order is a decent baseline
    "overlap_path": 2.0,  # the prompt names the path's words
    "clause_next_score": 1.6,  # ... in the part of the prompt not done yet
    "overlap_summary": 1.1,
    "bm25_norm": 0.9,
    "prompt_new_coverage": -0.5,  # (collinear with clause_next_score; fitted sign kept)
    "params_unfilled": -1.0,  # needs ids nobody has given
    "params_from_last_call": 0.65,
    "consumes_last_output": 0.35,
    "rel_same": 0.2,
    "role_lift": 0.25,
    "relation_lift": 0.35,
    "called_last": -1.15,  # rarely the same call twice in a row
    "times_called": -2.0,
}
_HEURISTIC_COLS = np.array([FEATURE_NAMES.index(n) for n in HEURISTIC_WEIGHTS])
_HEURISTIC_W = np.array(list(HEURISTIC_WEIGHTS.values()), np.float64)


class HeuristicRanker(_Scorer):
    """The degraded mode: a fixed linear score over the same features, with contributions
    (weight × value) so explanations keep working. No file, nothing to load, never fails."""

    degraded = True

    def __init__(self, *, reason: str = "no model loaded", temperature: float = 0.5) -> None:
        self.reason = reason
        self.version = "heuristic-" + FEATURE_VERSION
        self.calibration = Calibration(temperature=temperature, a=0.8, b=-0.6)

    def contributions(self, X: np.ndarray) -> np.ndarray:
        X = self._check_X(X)
        values = np.nan_to_num(X[:, _HEURISTIC_COLS].astype(np.float64), nan=0.0)
        contrib = np.zeros((len(X), len(FEATURE_NAMES) + 1))
        contrib[:, _HEURISTIC_COLS] = values * _HEURISTIC_W
        contrib[:, _DWI] += _policy(X)
        return contrib

    def raw_scores(self, X: np.ndarray) -> np.ndarray:
        return self.contributions(X).sum(1)
