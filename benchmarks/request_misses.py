"""Why the service misses what users type, on the validation APIs: every miss put in one group of
cause, with how many of them BM25 over the whole spec ranks right.

    python -m benchmarks.request_misses [--model ranker/models/ranker.txt] [--list CAUSE]

Two families of :mod:`benchmarks.requests`, ranked as the service ranks them (generator →
FeatureExtractor → model):

- ``direct, one call``, missed at rank 1. The cause is the first rule that holds, read on the
  feature rows of the target and of the service's first candidate: the generator never produced
  the target; the destructive rule held it back; a count was asked; the service's first has the
  target's path with another method; the target needs an id the request does not give (the
  workflow's user had it from its inputs) while the first is callable now, its collection or a
  parent, or another call, or both need an id and only the target's is of a thing the request
  names; else another operation of the same role, or of another role.
- ``workflow``, missed at rank 3: the generator never produced the target; the service's first is
  a later step of the same workflow (taking an output of the target's step, or not); it repeats a
  call already made; it is no step of the workflow, the target being a read that finds a later
  step's id (:func:`ranker.requests.found_ids`) or another call. Then the same misses again, by
  how the summary's clauses point at the target (:func:`benchmarks.ranking_errors.clause_kind`).

For reading, not for tuning: the groups say where a change could gain, the seeds' spread
(docs/accuracy.md) says whether it did. ``--list CAUSE`` prints the asks of the groups whose name
starts with CAUSE.
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.ranking import bm25_rank, held_out
from benchmarks.ranking_errors import clause_kind
from benchmarks.requests import families
from core.candidates.retrieval import RetrievalGenerator
from core.features import FEATURE_NAMES, FeatureExtractor
from core.priors.transitions import relation
from core.scorer import RankerModel, default_model_path
from core.settings import load_settings
from core.spec.operations import Operation
from ranker.data import Example, Workflow
from ranker.requests import found_ids

__all__ = ["Ranked", "rank_asks", "direct_cause", "workflow_cause", "clauses", "tally", "main"]

COMMAND = "python -m benchmarks.request_misses"
_COLUMN = {name: i for i, name in enumerate(FEATURE_NAMES)}
_READS = ("list", "search", "get")

Scorer = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Ranked:
    """One ask as the service ranked it: the generator's candidates, their feature rows, the order
    of the scores (stable: ties keep the generator's order, as serving does)."""

    example: Example
    ops: tuple[Operation, ...]
    X: np.ndarray
    order: np.ndarray
    bm25_first: bool

    @property
    def target(self) -> int | None:
        """The target's index among the candidates; None when the generator missed it."""
        keys = [op.key for op in self.ops]
        return keys.index(self.example.target) if self.example.target in keys else None

    @property
    def rank(self) -> int | None:
        """The target's 0-based rank; None when the generator missed it."""
        t = self.target
        return None if t is None else int(np.flatnonzero(self.order == t)[0])

    @property
    def first(self) -> int:
        return int(self.order[0])

    def value(self, feature: str, candidate: int) -> float:
        return float(self.X[candidate, _COLUMN[feature]])

    def missed(self, k: int) -> bool:
        rank = self.rank
        return rank is None or rank >= k


def rank_asks(items: Sequence[Example], *, generator: RetrievalGenerator,
              extractor: FeatureExtractor, score: Scorer) -> list[Ranked]:
    """Every ask ranked as :func:`benchmarks.requests.evaluate` ranks it."""
    out = []
    for ex in items:
        candidates = generator.generate(ex.spec, ex.history, ex.prompt)
        X = extractor.extract(ex.spec, ex.history, ex.prompt, candidates, ex.personal, ex.population)
        scores = np.asarray(score(X), np.float64) if len(candidates) else np.zeros(0)
        out.append(Ranked(example=ex, ops=tuple(ex.spec.operations[c.index] for c in candidates),
                          X=X, order=np.argsort(-scores, kind="stable"),
                          bm25_first=bm25_rank(generator, ex) == 0))
    return out


NEEDS_ID = "the target needs an id the request does not give"


def direct_cause(r: Ranked) -> str:
    """Why a direct ask missed at rank 1 (the first rule that holds; see the module's doc)."""
    t, o = r.target, r.first
    if t is None:
        return "the generator never produced the target"
    target, first = r.ops[t], r.ops[o]
    if r.value("destructive_without_intent", t) > 0:
        return "the destructive rule held the target back"
    if r.value("count_asked", t) > 0:
        return "a count was asked"
    if target.path == first.path:
        return "the service's first has the target's path, another method"
    if r.value("callable_now", t) == 0 and r.value("callable_now", o) == 1:
        if relation(target, first) in ("same", "parent"):
            return f"{NEEDS_ID}; the first, callable now, is its collection or a parent"
        return f"{NEEDS_ID}; the first is another call, callable now"
    if (r.value("callable_now", t) == 0 and r.value("callable_now", o) == 0
            and r.value("needs_named_id", t) > r.value("needs_named_id", o)):
        return f"{NEEDS_ID}; both need one, only the target's is of a thing the request names"
    if target.role == first.role:
        return f"another operation of the same role ({target.role})"
    return "another operation of another role"


def workflow_cause(r: Ranked, wf: Workflow) -> str:
    """Why a workflow step missed (see the module's doc)."""
    if r.target is None:
        return "the generator never produced the target"
    ex = r.example
    first = r.ops[r.first].key
    later = [k for k in range(ex.position + 1, len(wf.steps)) if wf.steps[k].key == first]
    if later:
        step = wf.steps[later[0]]
        fed = ex.position in step.uses_steps or any(j == ex.position for _n, j in step.from_steps)
        return ("the service's first is a later step of the workflow, "
                + ("which takes an output of the target's" if fed else "not fed by the target's"))
    if first in {c.key for c in ex.history}:
        return "the service's first repeats a call already made"
    spec = ex.spec
    finds = any(ex.position in found_ids(spec, wf, k).values() for k in range(len(wf.steps)))
    target = spec.operations[spec.by_key[ex.target]]
    nowhere = "the service's first is no step of the workflow; the target is"
    if finds and target.method == "GET" and target.role in _READS:
        return f"{nowhere} a read finding a later step's id"
    return f"{nowhere} another call"


def tally(ranked: Sequence[Ranked], cause: Callable[[Ranked], str], *, k: int) -> dict[str, tuple[int, int]]:
    """Cause → (asks missed at rank ``k``, of them those BM25 ranks first), commonest first."""
    missed = [r for r in ranked if r.missed(k)]
    n = Counter(cause(r) for r in missed)
    bm25 = Counter(cause(r) for r in missed if r.bm25_first)
    return {c: (n[c], bm25[c]) for c, _ in n.most_common()}


def _table(title: str, ranked: Sequence[Ranked], cause: Callable[[Ranked], str], k: int,
           *, every: bool = False) -> str:
    """The misses at ``k`` by cause; with ``every`` (a cause every ask has, right or not) also
    the asks of each cause and their hit@k."""
    counts = tally(ranked, cause, k=k)
    hits = sum(not r.missed(k) for r in ranked)
    missed = sum(n for n, _b in counts.values())
    lines = [f"**{title}: {len(ranked)} asks, {hits} right at {k}, {missed} missed**", ""]
    if not every:
        lines += ["| cause | missed | of them, BM25 first |", "|---|---:|---:|"]
        lines += [f"| {c} | {n} | {b} |" for c, (n, b) in counts.items()]
        return "\n".join(lines)
    asks = Counter(cause(r) for r in ranked)
    lines += [f"| cause | missed | of them, BM25 first | asks | hit@{k} |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {c} | {n} | {b} | {asks[c]} | {1 - n / asks[c]:.2f} |" for c, (n, b) in counts.items()]
    return "\n".join(lines)


def clauses(r: Ranked) -> str:
    """How the summary's clauses point at the target (the generator's miss apart)."""
    return "the generator never produced the target" if r.target is None else clause_kind(r.X, r.target)


def _describe(r: Ranked) -> str:
    ex = r.example
    top = ", ".join(f"{r.ops[i].key} ({r.ops[i].role})" for i in r.order[:3])
    return (f"- [{ex.api}] rank {r.rank}: {ex.prompt[:160]!r}\n  history: {[c.key for c in ex.history]}\n"
            f"  target: {ex.target}\n  service: {top}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("--jentic-dir", type=Path, default=None)
    parser.add_argument("--model", type=Path, default=default_model_path())
    parser.add_argument("--list", default=None, metavar="CAUSE",
                        help="also print the asks of the causes starting with CAUSE")
    args = parser.parse_args(argv)
    data = held_out(args.jentic_dir or load_settings().jentic_dir)
    model = RankerModel.load(args.model)
    by_id = {(w.api, w.workflow_id): w for w in data.workflows}
    asks = families(data.workflows)
    direct = rank_asks(asks["direct, one call"], generator=data.generator,
                       extractor=data.extractor, score=model.raw_scores)
    steps = rank_asks(asks["workflow"], generator=data.generator, extractor=data.extractor,
                      score=model.raw_scores)

    def step_cause(r: Ranked) -> str:
        return workflow_cause(r, by_id[(r.example.api, r.example.workflow_id)])

    print(f"`{COMMAND}` — model {model.version}\n")
    print(_table("direct, one call", direct, direct_cause, 1) + "\n")
    print(_table("workflow", steps, step_cause, 3) + "\n")
    print(_table("workflow, by the summary's clauses", steps, clauses, 3, every=True))
    if args.list:
        for ranked, cause, k in ((direct, direct_cause, 1), (steps, step_cause, 3),
                                     (steps, clauses, 3)):
            for r in ranked:
                if r.missed(k) and cause(r).startswith(args.list):
                    print(_describe(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
