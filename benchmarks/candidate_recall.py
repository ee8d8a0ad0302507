"""Candidate recall of the embedded generator on APIs held out whole, and its latency.

    python -m benchmarks.candidate_recall [--jentic-dir DIR] [--split valid] [--limit N]

For every example (history = the workflow's steps so far, prompt = its summary, target = the next
step) of the real workflows of the validation APIs:

- recall@10 / recall@30: share of examples whose target is among the first 10 / 30 candidates;
  and recall@N of the whole pool: the service's
  (:func:`~core.candidates.retrieval.candidate_limit`: 30, 50 after a history; N = 50), or
  ``--limit N`` candidates for every example;
- hit@1, hit@3, MRR of the generator's own order: the baseline the ranker has to beat;
- the same for BM25 of the prompt alone over the whole spec.

Then the same on synthetic sequences of the same APIs (kept apart), and the latency of
``generate()`` for specs of 10, 100 and 1000 operations with a cached index (median of repeats).
Writes ``benchmarks/results/candidate_recall.json`` and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.candidates.retrieval import (
    CANDIDATE_LIMIT,
    HISTORY_CANDIDATE_LIMIT,
    RetrievalGenerator,
)
from core.priors.transitions import DEFAULT_PATH, load_transitions
from core.settings import load_settings
from core.spec.index import SpecIndex
from core.vocabulary import tokenize
from ranker.data import Example, examples, load_spec, load_workflows, split_of, summary
from ranker.synth import synthesize_for_apis

RESULTS = Path(__file__).resolve().parent / "results" / "candidate_recall.json"
SIZES = (10, 100, 1000)
TARGETS = {"recall@30": 0.95, "recall@10": 0.85}


def _metrics(ranks: Sequence[int | None], *, limit: int = CANDIDATE_LIMIT) -> dict[str, float]:
    """Ranks are 1-based positions of the target, None when absent."""
    r = np.array([x if x is not None else 10**9 for x in ranks], dtype=np.int64)
    if not len(r):
        return {}
    return {
        "examples": int(len(r)),
        "recall@10": float((r <= 10).mean()),
        "recall@30": float((r <= 30).mean()),
        **({f"recall@{limit}": float((r <= limit).mean())} if limit > 30 else {}),
        "hit@1": float((r == 1).mean()),
        "hit@3": float((r <= 3).mean()),
        "hit@5": float((r <= 5).mean()),
        "mrr": float(np.where(r < 10**9, 1.0 / r, 0.0).mean()),
    }


def _bootstrap(ranks: Sequence[int | None], apis: Sequence[str], *, rounds: int = 1000,
               seed: int = 0) -> dict[str, list[float]]:
    """95% intervals of recall@10/@30 when the held-out APIs are resampled with replacement:
    with a few dozen APIs, which ones happen to be held out moves the score by this much."""
    if not ranks:
        return {}
    r = np.array([x if x is not None else 10**9 for x in ranks])
    names = sorted(set(apis))
    by_api = {a: np.flatnonzero(np.array(apis) == a) for a in names}
    rng = np.random.default_rng(seed)
    at10, at30 = [], []
    for _ in range(rounds):
        pick = np.concatenate([by_api[names[i]] for i in rng.integers(0, len(names), len(names))])
        at10.append(float((r[pick] <= 10).mean()))
        at30.append(float((r[pick] <= 30).mean()))
    return {
        "recall@10": [float(np.percentile(at10, 2.5)), float(np.percentile(at10, 97.5))],
        "recall@30": [float(np.percentile(at30, 2.5)), float(np.percentile(at30, 97.5))],
    }


def _bm25_rank(generator: RetrievalGenerator, example: Example) -> int:
    """Rank of the target when the whole spec is ordered by BM25 of the prompt alone."""
    index = generator.index_for(example.spec)
    scores = index.bm25(tokenize(example.prompt))
    target = example.spec.by_key[example.target]
    # Ties broken by spec order, as a plain BM25 search would.
    ahead = (scores > scores[target]).sum() + ((scores == scores[target])[:target]).sum()
    return int(ahead) + 1


def evaluate(
    generator: RetrievalGenerator, items: Iterable[Example], *, limit: int | None = None
) -> dict[str, Any]:
    """Recall and the generator's own order over ``items``; ``limit`` candidates each, or None:
    the service's pool for the example's history (:func:`~core.candidates.retrieval.candidate_limit`)."""
    pool = limit or HISTORY_CANDIDATE_LIMIT
    gen_ranks: list[int | None] = []
    bm25_ranks: list[int] = []
    apis: list[str] = []
    by_position: dict[str, list[int | None]] = {}
    sizes: list[int] = []
    for ex in items:
        candidates = generator.generate(ex.spec, ex.history, ex.prompt, limit=limit)
        keys = [ex.spec.operations[c.index].key for c in candidates]
        rank = keys.index(ex.target) + 1 if ex.target in keys else None
        gen_ranks.append(rank)
        bm25_ranks.append(_bm25_rank(generator, ex))
        position = f"{ex.position}" if ex.position < 3 else "3+"
        by_position.setdefault(position, []).append(rank)
        sizes.append(len(ex.spec))
        apis.append(ex.api)
    return {
        "generator": _metrics(gen_ranks, limit=pool),
        "generator_ci95_by_api_bootstrap": _bootstrap(gen_ranks, apis),
        "bm25": _metrics(bm25_ranks),
        "generator_by_position": {k: _metrics(v, limit=pool) for k, v in sorted(by_position.items())},
        "apis": None,
        "spec_operations_median": float(np.median(sizes)) if sizes else 0.0,
    }


def _spec_of_size(specs: Sequence[SpecIndex], size: int) -> SpecIndex:
    """The first ``size`` operations of the biggest specs, concatenated (distinct keys)."""
    ops: list[Any] = []
    seen: set[str] = set()
    for spec in specs:
        for op in spec.operations:
            if op.key not in seen:
                seen.add(op.key)
                ops.append(op)
            if len(ops) == size:
                return SpecIndex(operations=tuple(ops), base_paths=specs[0].base_paths,
                                 spec_hash=f"bench-{size}")
    raise ValueError(f"not enough operations for a spec of {size}")


def latency(generator: RetrievalGenerator, specs: Sequence[SpecIndex], prompt: str, *,
            repeats: int) -> dict[str, dict[str, float]]:
    out = {}
    for size in SIZES:
        spec = _spec_of_size(specs, size)
        t0 = time.perf_counter()
        generator.index_for(spec)
        build_ms = (time.perf_counter() - t0) * 1000
        # A three-call history on operations of this spec, with ids in the paths.
        with_params = [op for op in spec.operations if op.path_params][:2]
        history_ops = [spec.operations[0], *with_params]
        history = []
        for op in history_ops:
            path = op.path
            for name in op.path_params:
                path = path.replace("{" + name + "}", f"x{abs(hash(name)) % 997}")
            history.append(spec.resolve(f"{op.method} {path}", {}))
        for _ in range(5):  # warm up caches (substring matches of the prompt's words)
            generator.generate(spec, history, prompt)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            generator.generate(spec, history, prompt)
            times.append((time.perf_counter() - t0) * 1000)
        out[str(size)] = {
            "generate_ms_median": statistics.median(times),
            "generate_ms_p90": float(np.percentile(times, 90)),
            "index_build_ms": build_ms,
        }
    return out


def _table(rows: dict[str, dict[str, float]], *, limit: int = CANDIDATE_LIMIT) -> str:
    pool = [f"recall@{limit}"] if limit > 30 else []
    cols = ["examples", "recall@10", "recall@30", *pool, "hit@1", "hit@3", "mrr"]
    lines = ["| | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, m in rows.items():
        cells = [str(m.get("examples", "")) if c == "examples"
                 else f"{m[c]:.3f}" if c in m else "" for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jentic-dir", type=Path, default=None)
    parser.add_argument("--split", choices=("valid", "train"), default="valid")
    parser.add_argument("--valid-fraction", type=float, default=0.2)
    parser.add_argument("--limit", type=int, default=None,
                        help="candidates for every example (default: the service's pool, "
                             f"{CANDIDATE_LIMIT}, {HISTORY_CANDIDATE_LIMIT} after a history)")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--synthetic-per-api", type=int, default=20)
    parser.add_argument("--transitions", type=Path, default=DEFAULT_PATH)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit must be >= 1, got {args.limit}")
    pool = args.limit or HISTORY_CANDIDATE_LIMIT
    limit_text = (f"limit {args.limit}" if args.limit else
                  f"limit {CANDIDATE_LIMIT}, {HISTORY_CANDIDATE_LIMIT} after a history")

    jentic_dir = args.jentic_dir or load_settings().jentic_dir
    workflows = load_workflows(jentic_dir)
    load_stats = summary()
    held_out = [w for w in workflows
                if split_of(w.api, valid_fraction=args.valid_fraction) == args.split]
    generator = RetrievalGenerator(transitions=load_transitions(args.transitions))

    t0 = time.perf_counter()
    real = evaluate(generator, examples(held_out), limit=args.limit)
    real["apis"] = len({w.api for w in held_out})
    real["workflows"] = len(held_out)
    synthetic_wfs = synthesize_for_apis(held_out, per_api=args.synthetic_per_api)
    synthetic = evaluate(generator, examples(synthetic_wfs), limit=args.limit)
    synthetic["apis"] = len({w.api for w in synthetic_wfs})
    synthetic["workflows"] = len(synthetic_wfs)
    print(f"evaluated in {time.perf_counter() - t0:.1f}s", file=sys.stderr)

    specs = [load_spec(p) for p in sorted({w.spec_path for w in workflows})]
    biggest = sorted(specs, key=lambda s: -len(s))[:3]
    timing = latency(generator, biggest, held_out[0].prompt if held_out else "list items",
                     repeats=args.repeats)

    result = {
        "command": "python -m benchmarks.candidate_recall " + " ".join(argv or sys.argv[1:]),
        "split": args.split,
        "valid_fraction": args.valid_fraction,
        "limit": args.limit or {"no history": CANDIDATE_LIMIT, "history": HISTORY_CANDIDATE_LIMIT},
        "targets": TARGETS,
        "data": load_stats,
        "real": real,
        "synthetic": synthetic,
        "latency": timing,
        "machine": {"python": platform.python_version(), "cpus": _cpus()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")

    print(f"\n## Candidate recall, {args.split} APIs ({real['apis']} APIs, "
          f"{real['workflows']} real workflows; {limit_text})\n")
    print(_table({
        "embedded generator (real)": real["generator"],
        "BM25 of the prompt alone (real)": real["bm25"],
        "embedded generator (synthetic)": synthetic["generator"],
        "BM25 of the prompt alone (synthetic)": synthetic["bm25"],
    }, limit=pool))
    print("\nGenerator by position of the target in its workflow (real):\n")
    print(_table({f"step {k}": v for k, v in real["generator_by_position"].items()}, limit=pool))
    print("\n## generate() latency, cached index\n")
    print("| operations | median ms | p90 ms | index build ms |\n|---|---|---|---|")
    for size, t in timing.items():
        print(f"| {size} | {t['generate_ms_median']:.2f} | {t['generate_ms_p90']:.2f} | "
              f"{t['index_build_ms']:.0f} |")
    ci = real["generator_ci95_by_api_bootstrap"]
    print("\n95% interval over resampled validation APIs: " + ", ".join(
        f"{k} [{lo:.3f}, {hi:.3f}]" for k, (lo, hi) in ci.items()))
    met = {k: real["generator"][k] >= v for k, v in TARGETS.items()}
    print("\ntargets: " + ", ".join(
        f"{k} {real['generator'][k]:.3f} {'≥' if ok else '<'} {TARGETS[k]}" for k, ok in met.items()))
    print(f"wrote {args.out}")
    return 0


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


if __name__ == "__main__":
    raise SystemExit(main())
