"""Ranking quality on APIs held out whole: BM25, the generator's order, and the trained ranker.

    python -m benchmarks.ranking [--jentic-dir DIR] [--model ranker/models/ranker.txt]
                                 [--synthetic-per-api 20] [--seed 0]

For every example of the VALIDATION APIs (real workflows, and synthetic sequences of the same
APIs, reported apart), hit@1, hit@3, hit@5, MRR and NDCG@5 of:

- ``bm25 (whole spec)``: every operation of the spec ordered by BM25 of the prompt alone;
- ``generator order``: the embedded generator's candidates (30, 50 after a history) in its own order;
- ``ranker``: the same candidates, features and shipped model as serving runs them
  (candidates → FeatureExtractor → RankerModel); a target the generator missed is a miss;
- ``heuristic fallback``: the degraded-mode ranker, on the same candidates.

Writes ``benchmarks/results/ranking.json`` and ``benchmarks/results/ranking.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.candidates.retrieval import RetrievalGenerator
from core.features import FeatureExtractor
from core.priors.transitions import load_transitions
from core.scorer import HeuristicRanker, RankerModel, default_model_path
from core.settings import load_settings
from core.vocabulary import tokenize
from ranker.data import Example, Workflow, examples, load_workflows, split_of
from ranker.evaluate import MISS, build_groups, metrics_table, ranking_metrics, ranks_from_scores
from ranker.synth import synthesize_for_apis

RESULTS = Path(__file__).resolve().parent / "results"
TARGETS = {"hit@1": 0.60, "hit@3": 0.85, "mrr": 0.70, "hit@1 vs bm25": 2.0}


@dataclass(frozen=True)
class HeldOut:
    """What every ranking benchmark scores on: the validation APIs' workflows (never trained on),
    and the generator and feature extractor built as serving builds them."""

    workflows: list[Workflow]
    generator: RetrievalGenerator
    extractor: FeatureExtractor


def held_out(jentic_dir: Path) -> HeldOut:
    transitions = load_transitions()
    return HeldOut(
        workflows=[w for w in load_workflows(jentic_dir, progress=False) if split_of(w.api) == "valid"],
        generator=RetrievalGenerator(transitions=transitions),
        extractor=FeatureExtractor(transitions=transitions),
    )


def bm25_rank(generator: RetrievalGenerator, example: Example) -> int:
    """0-based rank of the target when the whole spec is ordered by BM25 of the prompt (ties in
    spec order)."""
    scores = generator.index_for(example.spec).bm25(tokenize(example.prompt))
    target = example.spec.by_key[example.target]
    return int((scores > scores[target]).sum() + (scores[:target] == scores[target]).sum())


def run(
    *, jentic_dir: Path, model_path: Path, synthetic_per_api: int, seed: int
) -> dict[str, Any]:
    started = time.perf_counter()
    data = held_out(jentic_dir)
    workflows, generator, extractor = data.workflows, data.generator, data.extractor
    model = RankerModel.load(model_path)
    heuristic = HeuristicRanker(reason="benchmark baseline")
    sets = {
        "real": list(examples(workflows)),
        "synthetic": list(examples(synthesize_for_apis(workflows, seed=seed, per_api=synthetic_per_api))),
    }
    results: dict[str, Any] = {}
    tables = []
    for name, items in sets.items():
        if not items:
            continue
        groups = build_groups(items, generator=generator, extractor=extractor)
        rows = {
            "bm25 (whole spec)": ranking_metrics([bm25_rank(generator, e) for e in items]),
            "generator order": ranking_metrics(groups.gen_rank),
            "heuristic fallback": ranking_metrics(
                ranks_from_scores(groups, heuristic.raw_scores(groups.X))),
            "ranker": ranking_metrics(ranks_from_scores(groups, model.raw_scores(groups.X))),
        }
        results[name] = {
            "apis": len({e.api for e in items}),
            "recall": float((groups.gen_rank != MISS).mean()),  # of the pool (30, 50 after a history)
            **rows,
        }
        tables.append(metrics_table(rows, title=f"{name} workflows, validation APIs "
                                                f"({results[name]['apis']} APIs)"))
    real = results.get("real", {})
    if real:
        bm25_hit1 = real["bm25 (whole spec)"]["hit@1"]
        ranker = real["ranker"]
        results["targets"] = {
            "hit@1": {"target": TARGETS["hit@1"], "reached": ranker["hit@1"]},
            "hit@3": {"target": TARGETS["hit@3"], "reached": ranker["hit@3"]},
            "mrr": {"target": TARGETS["mrr"], "reached": ranker["mrr"]},
            "hit@1 vs bm25": {"target": TARGETS["hit@1 vs bm25"],
                              "reached": ranker["hit@1"] / bm25_hit1 if bm25_hit1 else float("inf")},
        }
    results["meta"] = {
        "model_version": model.version,
        "model": str(model_path),
        "synthetic_per_api": synthetic_per_api,
        "seed": seed,
        "machine": f"{platform.machine()}, {platform.python_version()}",
        "seconds": round(time.perf_counter() - started, 1),
        "command": "python -m benchmarks.ranking",
    }
    results["markdown"] = "\n\n".join(tables)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ranking",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--jentic-dir", type=Path, default=None)
    parser.add_argument("--model", type=Path, default=default_model_path())
    parser.add_argument("--synthetic-per-api", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    results = run(
        jentic_dir=args.jentic_dir or load_settings().jentic_dir, model_path=args.model,
        synthetic_per_api=args.synthetic_per_api, seed=args.seed,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    markdown = results.pop("markdown")
    targets = results.get("targets", {})
    lines = [markdown, "", "| target (real, held-out APIs) | wanted | reached |", "|---|---:|---:|"]
    for name, t in targets.items():
        lines.append(f"| {name} | {t['target']:.2f} | {t['reached']:.3f} |")
    text = "\n".join(lines)
    (args.out / "ranking.json").write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    (args.out / "ranking.md").write_text(
        f"`{results['meta']['command']}` — model {results['meta']['model_version']}\n\n{text}\n"
    )
    print(text)
    print(f"\nwrote {args.out / 'ranking.json'} and ranking.md "
          f"({results['meta']['seconds']}s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
