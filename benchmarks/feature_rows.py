"""A digest of what the model sees and says on every real step of both splits: the candidates and
their sources, the feature rows, the scores, and the top 5's ``why`` and params.

    python -m benchmarks.feature_rows [--jentic-dir DIR]

Two checkouts that print the same digest compute the same thing, bit for bit; a change meant to
move no behaviour (a refactor) must leave it as it is. Writes ``benchmarks/results/feature_rows.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np

from core.candidates.retrieval import RetrievalGenerator
from core.explain import explain
from core.features import FeatureExtractor
from core.params import fill_params
from core.priors.transitions import load_transitions
from core.scorer import RankerModel, default_model_path
from core.settings import load_settings
from ranker.data import examples, load_workflows

RESULTS = Path(__file__).resolve().parent / "results"


def digest(jentic_dir: Path) -> dict[str, object]:
    started = time.perf_counter()
    transitions = load_transitions()
    generator = RetrievalGenerator(transitions=transitions)
    extractor = FeatureExtractor(transitions=transitions)
    model = RankerModel.load(default_model_path())
    workflows = [w for w in load_workflows(jentic_dir, progress=False) if w.source == "real"]
    rows = hashlib.sha256()  # feature rows and scores only
    everything = hashlib.sha256()
    steps = 0
    for ex in examples(workflows):
        candidates = generator.generate(ex.spec, ex.history, ex.prompt)
        x = extractor.extract(ex.spec, ex.history, ex.prompt, candidates, ex.personal)
        [(probs, contribs)] = model.score_groups([x], contributions=True)
        rows.update(x.tobytes())
        rows.update(probs.tobytes())
        said = []
        for r in np.argsort(-probs, kind="stable")[:5]:
            op = ex.spec.operations[candidates[r].index]
            said.append((op.key, explain(op, x[r], contribs[r], history=ex.history, prompt=ex.prompt),
                         fill_params(op, ex.history, prompt=ex.prompt, api_words=ex.spec.name_words)))
        keys = [(ex.spec.operations[c.index].key, sorted(c.sources.items())) for c in candidates]
        everything.update(repr((keys, said)).encode())
        everything.update(x.tobytes())
        everything.update(probs.tobytes())
        steps += 1
    return {"steps": steps, "feature_rows_and_scores": rows.hexdigest(),
            "everything": everything.hexdigest(), "seconds": round(time.perf_counter() - started, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jentic-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    result = digest(args.jentic_dir or load_settings().jentic_dir)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "feature_rows.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
