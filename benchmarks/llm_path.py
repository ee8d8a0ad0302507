"""The LLM path on APIs held out whole: what an LLM's proposals are worth to the graph's ranking.

    python -m benchmarks.llm_path [--simulate 0,0.4,0.6,0.8,1] [--llm] [--weights 0,0.15,0.3,0.5,0.7]
                                  [--max-apis N] [--jentic-dir DIR] [--model PATH]

For every step of the VALIDATION APIs' real workflows, the serving code runs: the
CandidateGenerator with an :class:`LLMGenerator` over HTTP, the FeatureExtractor, the shipped
ranker, and :func:`core.scoring.blend_llm` at each ``--weights`` value (``llm_weight``).
Rows: the generator's order with the LLM's proposals first (best first, then retrieval's: the LLM's
own ranking), and the ranker with the LLM blended in at each weight (0: the LLM only widens the
candidates); first, the ranker without an LLM.

- ``--simulate q,...``: LLMs that cannot be reached here are stood in for at the HTTP boundary
  (``httpx.MockTransport``, the real client, parser and validation): given the shortlist it was
  sent, such an LLM proposes the true next call first with probability ``q`` (when the shortlist
  holds it), otherwise five shortlisted operations that are not it, confidently (0.9 first).
  ``q`` = 1 is the best any LLM can do with this shortlist; 0 one that is always wrong.
- ``--llm``: the LLM configured by ``OPENSESAME_LLM_BASE_URL`` / ``_MODEL`` / ``_API_KEY`` (raise
  ``OPENSESAME_LLM_BUDGET_S`` for a slow one); its answers are cached in ``data_dir``, so a
  second run costs nothing. A step whose LLM call failed falls back to retrieval, as served, and
  is counted.

Writes ``benchmarks/results/llm_path.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from core.candidates.generator import CandidateGenerator
from core.candidates.retrieval import RetrievalGenerator
from core.features import FeatureExtractor
from core.priors.transitions import load_transitions
from core.scorer import RankerModel, default_model_path
from core.scoring import blend_llm
from core.settings import Settings, load_settings
from deployments.serving.llm import LLMGenerator
from ranker.data import Example, examples, load_workflows, split_of
from ranker.evaluate import MISS, metrics_table, ranking_metrics
from ranker.train import subset_apis

RESULTS = Path(__file__).resolve().parent / "results"
CONFIDENCES = (0.9, 0.5, 0.3, 0.2, 0.1)
K = 5  # proposals asked for, as a request with the default k
ORDER = "generator's order (LLM's proposals first)"


class SimulatedLLM:
    """An OpenAI chat-completions endpoint that knows the next call with probability ``q``."""

    def __init__(self, q: float) -> None:
        self.q = q
        self.example: Example | None = None  # the step being asked about

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert self.example is not None
        user = json.loads(request.content)["messages"][1]["content"]
        listed = user.split("Candidate operations (endpoint | what it does):\n", 1)[1]
        shortlist = [line[2:].split(" |", 1)[0] for line in listed.splitlines() if line.startswith("- ")]
        ex = self.example
        draw = hashlib.sha256(f"{self.q}|{ex.api}|{ex.workflow_id}|{ex.position}".encode()).digest()
        right = int.from_bytes(draw[:8], "big") / 2**64 < self.q and ex.target in shortlist
        order = ([ex.target] if right else []) + [key for key in shortlist if key != ex.target]
        predictions = [{"endpoint": key, "confidence": c, "reason": "simulated"}
                       for key, c in zip(order, CONFIDENCES, strict=False)]
        content = json.dumps({"predictions": predictions})
        return httpx.Response(200, json={"choices": [{"message": {"content": content}}]})


def rank_of(target: str, keys: list[str], scores: np.ndarray) -> int:
    """The target's 0-based rank after a stable sort by score (ties keep the generator's order)."""
    order = [keys[r] for r in np.argsort(-np.asarray(scores, np.float64), kind="stable")]
    return order.index(target) if target in order else MISS


async def evaluate(
    items: list[Example], llm: LLMGenerator | None, *, weights: list[float], model: RankerModel,
    retrieval: RetrievalGenerator, extractor: FeatureExtractor,
    before_each: Callable[[Example], None] = lambda ex: None, label: str = "",
) -> dict[str, Any]:
    generator = CandidateGenerator(retrieval=retrieval, llm=llm)
    ranks: dict[str, list[int]] = {ORDER: []}
    ranks.update({f"ranker, llm_weight {w:g}": [] for w in weights})
    fallbacks: Counter[str] = Counter()
    started = time.perf_counter()
    for n, ex in enumerate(items, 1):
        before_each(ex)
        cset = await generator.generate(ex.spec, ex.history, ex.prompt, k=K)
        if cset.fallback_reason:
            fallbacks[cset.fallback_reason] += 1
        keys = [ex.spec.operations[c.index].key for c in cset.candidates]
        # the LLM's own ranking: its proposals by confidence, then retrieval's order
        llm_scores = [c.sources.get("llm", -1.0) for c in cset.candidates]
        ranks[ORDER].append(rank_of(ex.target, keys, np.array(llm_scores)))
        X = extractor.extract(ex.spec, ex.history, ex.prompt, cset.candidates)
        [(probs, _)] = model.score_groups([X], contributions=False)
        for w in weights:
            scores, _ = blend_llm(probs, cset.candidates, w)
            ranks[f"ranker, llm_weight {w:g}"].append(rank_of(ex.target, keys, scores))
        if n % 200 == 0 or n == len(items):
            print(f"  {label}: {n}/{len(items)} steps, {time.perf_counter() - started:.0f}s",
                  file=sys.stderr, flush=True)
    return {"rows": {name: ranking_metrics(r) for name, r in ranks.items()},
            "fallbacks": dict(fallbacks)}


def simulated_generator(q: float, data_dir: Path) -> tuple[LLMGenerator, SimulatedLLM]:
    llm = SimulatedLLM(q)
    settings = load_settings({}, data_dir=str(data_dir), llm_base_url="http://simulated-llm/v1",
                             llm_model=f"simulated-q{q:g}", llm_budget_s=30.0)
    return LLMGenerator(settings, transport=httpx.MockTransport(llm)), llm


def run(
    *, jentic_dir: Path, model_path: Path, simulate: list[float], real: Settings | None,
    weights: list[float], max_apis: int | None,
) -> dict[str, Any]:
    started = time.perf_counter()
    workflows = [w for w in subset_apis(load_workflows(jentic_dir, progress=False), max_apis)
                 if split_of(w.api) == "valid"]
    items = list(examples(workflows))
    transitions = load_transitions()
    parts = {"retrieval": RetrievalGenerator(transitions=transitions),
             "extractor": FeatureExtractor(transitions=transitions), "model": RankerModel.load(model_path)}
    results: dict[str, Any] = {"llms": {}}

    async def measure() -> None:
        results["llms"]["no LLM (retrieval only)"] = await evaluate(
            items, None, weights=[0.0], label="no LLM", **parts)
        with tempfile.TemporaryDirectory() as tmp:  # simulated answers are not worth keeping
            for q in simulate:
                llm, sim = simulated_generator(q, Path(tmp))
                try:
                    results["llms"][f"simulated, right {q:.0%} of the time"] = await evaluate(
                        items, llm, weights=weights, before_each=lambda ex, s=sim: setattr(s, "example", ex),
                        label=f"simulated q={q:g}", **parts)
                finally:
                    await llm.aclose()
        if real is not None:
            llm = LLMGenerator(real)
            try:
                results["llms"][f"{real.llm_model} at {real.llm_base_url}"] = await evaluate(
                    items, llm, weights=weights, label=str(real.llm_model), **parts)
            finally:
                await llm.aclose()

    asyncio.run(measure())
    results["meta"] = {
        "steps": len(items), "apis": len({e.api for e in items}), "model_version": parts["model"].version,
        "weights": weights, "seconds": round(time.perf_counter() - started, 1),
        "command": "python -m benchmarks.llm_path" + (f" --max-apis {max_apis}" if max_apis else ""),
    }
    results["markdown"] = "\n\n".join(
        metrics_table(r["rows"], title=f"{name} (fallbacks to retrieval: {sum(r['fallbacks'].values())})")
        for name, r in results["llms"].items())
    return results


def _floats(text: str) -> list[float]:
    values = [float(v) for v in text.split(",") if v.strip()]
    if any(not 0 <= v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"values must be in [0, 1], got {text}")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.llm_path",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--jentic-dir", type=Path, default=None)
    parser.add_argument("--model", type=Path, default=default_model_path())
    parser.add_argument("--simulate", type=_floats, default=[0.0, 0.4, 0.6, 0.8, 1.0],
                        help="accuracies of simulated LLMs, comma-separated ('' for none)")
    parser.add_argument("--llm", action="store_true", help="also the LLM configured by OPENSESAME_LLM_*")
    parser.add_argument("--weights", type=_floats, default=[0.0, 0.15, 0.3, 0.5, 0.7])
    parser.add_argument("--max-apis", type=int, default=None, help="a subset of APIs (smoke runs)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    settings = load_settings()
    if args.llm and not settings.llm_enabled:
        parser.error("--llm needs OPENSESAME_LLM_BASE_URL and OPENSESAME_LLM_MODEL")
    if not (args.simulate or args.llm):
        parser.error("nothing to measure: give --simulate values or --llm")
    results = run(jentic_dir=args.jentic_dir or settings.jentic_dir, model_path=args.model,
                  simulate=args.simulate, real=settings if args.llm else None, weights=args.weights,
                  max_apis=args.max_apis)
    markdown = results.pop("markdown")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "llm_path.json").write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    meta = results["meta"]
    (args.out / "llm_path.md").write_text(
        f"`{meta['command']}` — model {meta['model_version']}, {meta['steps']} steps of "
        f"{meta['apis']} held-out APIs\n\n{markdown}\n")
    print(markdown)
    print(f"\nwrote {args.out / 'llm_path.json'} and llm_path.md ({meta['seconds']}s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
