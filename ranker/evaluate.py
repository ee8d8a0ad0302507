"""Ranking groups and their metrics: what training and the benchmark both measure.

A group is one request: the candidates the generator returned for an example (history, prompt,
spec), their feature rows, and which one is the true next call. A target the generator did not
return makes a group with no positive label: useless for training, but a miss in every metric.

Ranks are 0-based positions after a stable sort by score (ties keep the generator's order, as
serving does); a missing target has rank ``MISS``.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from core.candidates.retrieval import RetrievalGenerator
from core.candidates.types import Candidate
from core.features import FEATURE_NAMES, FeatureExtractor
from ranker.data import Example, split_of

__all__ = [
    "Groups",
    "empty_groups",
    "concat_groups",
    "build_groups",
    "ranks_from_scores",
    "ranking_metrics",
    "metrics_table",
    "examples_hash",
    "MISS",
]

MISS = 10**6
METRICS = ("hit@1", "hit@3", "hit@5", "mrr", "ndcg@5")


@dataclass
class Groups:
    """Stacked groups: rows of ``X``/``labels`` group by group, in ``sizes`` order."""

    X: np.ndarray  # (rows, features) float32
    labels: np.ndarray  # (rows,) float32, 1 for the true next call
    sizes: np.ndarray  # (groups,) int, candidates per group
    api: np.ndarray  # (groups,) str
    source: np.ndarray  # (groups,) "real" | "synthetic" | "personal" | "population" (| "feedback")
    split: np.ndarray  # (groups,) "train" | "valid"
    history_len: np.ndarray  # (groups,) int
    gen_rank: np.ndarray  # (groups,) int: the target's index in the generator's order, or MISS
    examples: list[Example] | None = None

    def __len__(self) -> int:
        return len(self.sizes)

    @property
    def bounds(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.sizes)])

    @property
    def has_target(self) -> np.ndarray:
        return self.gen_rank != MISS

    def select(self, mask: np.ndarray) -> Groups:
        mask = np.asarray(mask, bool)
        b = self.bounds
        rows = np.concatenate(
            [np.arange(b[i], b[i + 1]) for i in np.flatnonzero(mask)] or [np.zeros(0, int)]
        ).astype(int)
        return Groups(
            X=self.X[rows], labels=self.labels[rows], sizes=self.sizes[mask], api=self.api[mask],
            source=self.source[mask], split=self.split[mask], history_len=self.history_len[mask],
            gen_rank=self.gen_rank[mask],
            examples=[e for e, m in zip(self.examples, mask, strict=True) if m]
            if self.examples is not None else None,
        )


def empty_groups() -> Groups:
    return Groups(
        X=np.zeros((0, len(FEATURE_NAMES)), np.float32), labels=np.zeros(0, np.float32),
        sizes=np.zeros(0, int), api=np.array([], dtype=object), source=np.array([], dtype=object),
        split=np.array([], dtype=object), history_len=np.zeros(0, int), gen_rank=np.zeros(0, int),
    )


def concat_groups(*parts: Groups) -> Groups:
    """``parts`` one after the other (their examples are not kept)."""
    parts = tuple(p for p in parts if len(p))
    if not parts:
        return empty_groups()
    return Groups(
        X=np.vstack([p.X for p in parts]), labels=np.concatenate([p.labels for p in parts]),
        sizes=np.concatenate([p.sizes for p in parts]),
        api=np.concatenate([p.api for p in parts]), source=np.concatenate([p.source for p in parts]),
        split=np.concatenate([p.split for p in parts]),
        history_len=np.concatenate([p.history_len for p in parts]),
        gen_rank=np.concatenate([p.gen_rank for p in parts]),
    )


def build_groups(
    examples: Iterable[Example],
    *,
    generator: RetrievalGenerator,
    extractor: FeatureExtractor,
    limit: int | None = None,
    keep_examples: bool = False,
    progress: str | None = None,
    valid_fraction: float = 0.2,
) -> Groups:
    """Candidates from ``generator`` and features from ``extractor`` — the serving code path —
    for each example; ``limit`` None: the pool the service gives the example's history
    (:func:`core.candidates.retrieval.candidate_limit`)."""
    X: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    meta: list[tuple[str, str, str, int, int]] = []
    kept: list[Example] = []
    start = time.perf_counter()
    for n, ex in enumerate(examples, 1):
        candidates: list[Candidate] = generator.generate(ex.spec, ex.history, ex.prompt, limit=limit)
        x = extractor.extract(ex.spec, ex.history, ex.prompt, candidates, ex.personal, ex.population)
        y = np.array([ex.spec.operations[c.index].key == ex.target for c in candidates], np.float32)
        X.append(x)
        labels.append(y)
        hit = np.flatnonzero(y)
        meta.append((ex.api, ex.source, split_of(ex.api, valid_fraction=valid_fraction),
                     len(ex.history), int(hit[0]) if hit.size else MISS))
        if keep_examples:
            kept.append(ex)
        if progress and n % 2000 == 0:
            print(f"  {progress}: {n} groups, {time.perf_counter() - start:.0f}s",
                  file=sys.stderr, flush=True)
    width = len(FEATURE_NAMES)
    return Groups(
        X=np.vstack(X) if X else np.zeros((0, width), np.float32),
        labels=np.concatenate(labels) if labels else np.zeros(0, np.float32),
        sizes=np.array([len(y) for y in labels], int),
        api=np.array([m[0] for m in meta], dtype=object),
        source=np.array([m[1] for m in meta], dtype=object),
        split=np.array([m[2] for m in meta], dtype=object),
        history_len=np.array([m[3] for m in meta], int),
        gen_rank=np.array([m[4] for m in meta], int),
        examples=kept if keep_examples else None,
    )


def ranks_from_scores(groups: Groups, scores: np.ndarray) -> np.ndarray:
    """The target's 0-based rank in each group under ``scores`` (stable: ties keep the
    generator's order); ``MISS`` where the generator did not return the target."""
    scores = np.asarray(scores, np.float64)
    if len(scores) != len(groups.labels):
        raise ValueError(f"{len(scores)} scores for {len(groups.labels)} rows")
    b = groups.bounds
    ranks = np.full(len(groups), MISS, int)
    for g in np.flatnonzero(groups.has_target):
        s, e = b[g], b[g + 1]
        order = np.argsort(-scores[s:e], kind="stable")
        ranks[g] = int(np.flatnonzero(order == groups.gen_rank[g])[0])
    return ranks


def ranking_metrics(ranks: Sequence[int] | np.ndarray) -> dict[str, float]:
    """hit@1/3/5, MRR and NDCG@5 (one relevant item) over 0-based ranks; ``MISS`` counts 0."""
    r = np.asarray(ranks, np.float64)
    if not len(r):
        return {"n": 0, **{m: float("nan") for m in METRICS}}
    return {
        "n": len(r),
        "hit@1": float((r < 1).mean()),
        "hit@3": float((r < 3).mean()),
        "hit@5": float((r < 5).mean()),
        "mrr": float(np.where(r < MISS, 1 / (r + 1), 0).mean()),
        "ndcg@5": float(np.where(r < 5, 1 / np.log2(r + 2), 0).mean()),
    }


def metrics_table(rows: dict[str, dict[str, float]], *, title: str = "") -> str:
    """A Markdown table, one row per named metrics dict."""
    lines = [f"**{title}**", ""] if title else []
    lines.append("| | n | " + " | ".join(METRICS) + " |")
    lines.append("|---|---:|" + "---:|" * len(METRICS))
    for name, m in rows.items():
        lines.append(f"| {name} | {m['n']} | " + " | ".join(f"{m[k]:.3f}" for k in METRICS) + " |")
    return "\n".join(lines)


def examples_hash(examples: Iterable[Example]) -> str:
    """A stable hash of what a model is trained on: every group's request and target."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(
            "\x1f".join((ex.api, ex.workflow_id, ex.source, str(ex.position), ex.target,
                         ex.prompt, *(c.key for c in ex.history),
                         *(f"{k}={n}" for k, n in sorted(
                             ex.personal.counts.items() if ex.personal is not None else ())),
                         repr(ex.population.to_wire()) if ex.population is not None else "")).encode()
        )
        h.update(b"\x1e")
    return h.hexdigest()


def score_in_groups(scorer: Callable[[np.ndarray], np.ndarray], groups: Groups) -> np.ndarray:
    """Scores of every row (one call on the stacked matrix)."""
    return np.asarray(scorer(groups.X), np.float64) if len(groups.X) else np.zeros(0)
