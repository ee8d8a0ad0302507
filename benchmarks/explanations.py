"""What ``why`` costs and says: the leaf table (:mod:`core.saabas`) against LightGBM's TreeSHAP.

    python -m benchmarks.explanations [--groups 400] [--k 5]

On steps of real workflows of the VALIDATION APIs, the shipped model ranks the embedded
generator's candidates and both methods explain each request's top ``k`` rows, as the Ranker does.
Reports the median time per request of each (in turn, side by side), how often they agree on the
feature with the largest positive contribution, and how often the ``why`` sentence is the same
(and shares its first reason). Writes ``benchmarks/results/explanations.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from core.candidates.retrieval import RetrievalGenerator
from core.explain import explain
from core.features import FEATURE_NAMES, FeatureExtractor
from core.priors.transitions import load_transitions
from core.scorer import RankerModel, default_model_path
from core.settings import load_settings
from ranker.data import examples, load_workflows, split_of

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.explanations",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--jentic-dir", type=Path, default=None)
    parser.add_argument("--model", type=Path, default=default_model_path())
    parser.add_argument("--groups", type=int, default=400, help="validation steps to explain")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    jentic_dir = args.jentic_dir or load_settings().jentic_dir
    workflows = [w for w in load_workflows(jentic_dir, progress=False) if split_of(w.api) == "valid"]
    transitions = load_transitions()
    generator = RetrievalGenerator(transitions=transitions)
    extractor = FeatureExtractor(transitions=transitions)
    model = RankerModel.load(args.model).ensure_loaded()
    booster = model.booster

    def treeshap(X: np.ndarray) -> np.ndarray:
        return np.asarray(booster.predict(X, pred_contrib=True, num_threads=1), np.float64)

    times: dict[str, list[float]] = {"leaf table": [], "treeshap": []}
    same_top = same_sentence = same_first = rows = 0
    steps = list(examples(workflows))[: args.groups]
    for n, ex in enumerate(steps, 1):
        cands = generator.generate(ex.spec, ex.history, ex.prompt)
        X = extractor.extract(ex.spec, ex.history, ex.prompt, cands)
        top = np.argsort(-model.raw_scores(X), kind="stable")[: args.k]
        Xk = np.ascontiguousarray(X[top], np.float32)
        out = {}
        for name, fn in (("leaf table", model.contributions), ("treeshap", treeshap)):
            t0 = time.perf_counter()
            out[name] = fn(Xk)
            times[name].append((time.perf_counter() - t0) * 1000)
        a, b = out["leaf table"][:, : len(FEATURE_NAMES)], out["treeshap"][:, : len(FEATURE_NAMES)]
        same_top += int((np.argmax(a, 1) == np.argmax(b, 1)).sum())
        for i, row in enumerate(top):
            op = ex.spec.operations[cands[row].index]
            says = [explain(op, X[row], c[i], history=ex.history, prompt=ex.prompt)
                    for c in (out["leaf table"], out["treeshap"])]
            same_sentence += says[0] == says[1]
            same_first += says[0].split(";")[0] == says[1].split(";")[0]
            rows += 1
        if n % 100 == 0:
            print(f"  {n}/{len(steps)} steps", file=sys.stderr, flush=True)

    med = {name: statistics.median(t) for name, t in times.items()}
    results = {
        "command": " ".join(["python -m benchmarks.explanations", *(argv or sys.argv[1:])]),
        "model_version": model.version,
        "steps": len(steps),
        "rows_explained": rows,
        "median_ms_per_request": {k: round(v, 3) for k, v in med.items()},
        "treeshap_over_leaf_table": round(med["treeshap"] / med["leaf table"], 1),
        "same_top_feature": round(same_top / rows, 3),
        "same_first_reason": round(same_first / rows, 3),
        "same_sentence": round(same_sentence / rows, 3),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "explanations.json").write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
