"""Where the shipped ranker goes wrong on the validation APIs' real workflows.

    python -m benchmarks.ranking_errors [--model ranker/models/ranker.txt] [--examples 10] [--top 12]

Counts, for first steps (empty history) and later steps apart: right at rank 1, missed by the
generator, and wrong; each wrong step by what the top candidate was against the target (the
roles of both; for later steps, their relation to the last call). Then every step the generator
found, by how the prompt's clauses point at the target (is it the best lexical match of the next
clause the history has not reached yet?), with hit@1 of each kind. Then a few wrong steps with
their prompt, history, target and the model's pick. For reading, not for tuning: compare
settings with ``benchmarks.ranking_cv`` on the training APIs.
"""

from __future__ import annotations

import argparse
import random
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from core.candidates.retrieval import RetrievalGenerator
from core.features import FEATURE_NAMES, FeatureExtractor
from core.priors.transitions import load_transitions, normalized_segments, relation_of_segments
from core.scorer import RankerModel, default_model_path
from core.settings import load_settings
from ranker.data import examples, load_workflows, split_of

_FIRST_BEST = FEATURE_NAMES.index("clause_first_best")  # 1: best match of the next clause
_BEST_DELTA = FEATURE_NAMES.index("clause_best_delta")  # its best clause, from the history's


def clause_kind(X: np.ndarray, target: int) -> str:
    """How the prompt's clauses point at row ``target`` of a group's features."""
    first_best, delta = X[target, _FIRST_BEST], X[target, _BEST_DELTA]
    if first_best == 1:
        alone = (X[:, _FIRST_BEST] == 1).sum() == 1
        return "target is the best match of the next clause, " + ("alone" if alone else "tied with another")
    if first_best > 1:
        return "target is the best match of a later clause only"
    if np.isnan(delta):
        return "target matches no clause (or there is no prompt)"
    if delta <= 0:
        return "target best matches a clause the history already reached"
    return "target matches a clause ahead, another candidate better"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ranking_errors",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--jentic-dir", type=Path, default=None)
    parser.add_argument("--model", type=Path, default=default_model_path())
    parser.add_argument("--examples", type=int, default=10, help="wrong steps to print")
    parser.add_argument("--top", type=int, default=12, help="kinds of error to list per kind of step")
    args = parser.parse_args(argv)
    workflows = [w for w in load_workflows(args.jentic_dir or load_settings().jentic_dir,
                                           progress=False) if split_of(w.api) == "valid"]
    transitions = load_transitions()
    generator = RetrievalGenerator(transitions=transitions)
    extractor = FeatureExtractor(transitions=transitions)
    model = RankerModel.load(args.model)
    counts: Counter[str] = Counter()
    wrong: list[str] = []
    clauses: defaultdict[str, list[int]] = defaultdict(lambda: [0, 0])  # kind -> [wrong, right]
    for ex in examples(workflows):
        kind = "later" if ex.history else "first"
        counts[f"{kind}: steps"] += 1
        candidates = generator.generate(ex.spec, ex.history, ex.prompt)
        ops = [ex.spec.operations[c.index] for c in candidates]
        keys = [op.key for op in ops]
        if ex.target not in keys:
            counts[f"{kind}: generator missed the target"] += 1
            continue
        X = extractor.extract(ex.spec, ex.history, ex.prompt, candidates)
        scores = model.raw_scores(X)
        top = ops[int(np.argsort(-scores, kind="stable")[0])]
        target = ops[keys.index(ex.target)]
        clauses[clause_kind(X, keys.index(ex.target))][top is target] += 1
        if top is target:
            counts[f"{kind}: right"] += 1
            continue
        counts[f"{kind}: wrong"] += 1
        counts[f"{kind}: wrong, target {target.role} / picked {top.role}"] += 1
        last = ex.history[-1].operation if ex.history else None
        if last is not None:
            rel = [relation_of_segments(normalized_segments(last), normalized_segments(op))
                   for op in (target, top)]
            counts[f"{kind}: wrong, to the last call: target {rel[0]} / picked {rel[1]}"] += 1
        wrong.append(f"- {ex.prompt[:200]}\n  history: {[c.key for c in ex.history]}\n"
                     f"  target: {target.key}\n  picked: {top.key}")
    for kind in ("first", "later"):
        lines = sorted(((n, name) for name, n in counts.items() if name.startswith(kind)),
                       key=lambda x: ("wrong," in x[1], -x[0]))
        for n, name in lines[: 4 + args.top]:  # the totals, then the commonest kinds of error
            print(f"{n:5d}  {name}")
    for name, (n_wrong, n_right) in sorted(clauses.items(), key=lambda kv: -sum(kv[1])):
        n = n_wrong + n_right
        print(f"{n:5d}  clauses: {name}: hit@1 {n_right / n:.3f}")
    for line in random.Random(0).sample(wrong, min(args.examples, len(wrong))):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
