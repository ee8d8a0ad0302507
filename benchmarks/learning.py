"""Does the service learn an API's flows from its users? (:mod:`core.priors.population`)

    python -m benchmarks.learning                 # validation APIs, both protocols
    python -m benchmarks.learning --max-apis 10   # a quick look

Everything goes through the in-process pipeline (``deployments/serving/pipeline.py``: the same
stages, model and :func:`respond` as the Serve graph) with the serving stores on real files in a
temporary data dir: every used step is ``predict`` then an explicit outcome committed to the
feedback store; the population store learns from it as a replica does (its feed's ``poll_once``
after each session — in service a thread polls every second).

On the validation APIs (the split of :func:`ranker.data.split_of`, never trained on), the real
workflows of each API are cut in two halves by a hash of their id:

1. **the other half first**: the scored half is scored by fresh users (``predict`` only, k 20:
   hit@1, hit@3 and MRR of the call made next), then the used half is run, each workflow by its
   own user, and the scored half is scored again after 10, 25, 50 and 100 % of it — the
   learning curve. The scored steps whose transition (last call → next) some user of the used
   half made are reported apart, and those where enough distinct users made it to be used.
2. **the same flows by other users**: every workflow run by 5 users, then scored for a 6th.

"without the memory" is the same model with the memory switched off (its features zero), which
the 0 % point must match. The memory lookup is timed on every scored request. Writes
``benchmarks/results/learning.{json,md}`` (each protocol alone: ``learning_<protocol>_min<N>.{json,md}``).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import platform
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.personalisation import _spec_document
from core.priors.population import contexts, operation_id
from core.progress import Progress
from core.settings import load_settings
from ranker.data import Workflow, concrete_endpoint, load_spec, load_workflows, split_of
from ranker.evaluate import MISS, metrics_table, ranking_metrics

RESULTS = Path(__file__).resolve().parent / "results"
CURVE = (0.0, 0.10, 0.25, 0.50, 1.0)
K = 20


def _half(workflow_id: str) -> str:
    return "used" if hashlib.sha256(workflow_id.encode()).digest()[0] % 2 else "scored"


class Bench:
    """The pipeline with a feedback store and a population store in ``data_dir``."""

    def __init__(self, data_dir: Path, *, model: Path | None, min_users: int, prompt: bool = True) -> None:
        from deployments.serving.components import build_components
        from deployments.serving.feedback import FeedbackStore
        from deployments.serving.pipeline import Pipeline
        from deployments.serving.population_store import PopulationFeed, PopulationStore, population_config

        overrides: dict[str, Any] = {"data_dir": str(data_dir), "population_min_users": min_users}
        if model is not None:
            overrides["model_path"] = str(model)
        self.settings = load_settings(**overrides)
        self.components = build_components(self.settings)
        if self.components.ranker.degraded:
            # serving falls back to the heuristic; a measure of what the model learned must not
            raise SystemExit(f"the model could not be loaded (serving would fall back to "
                             f"{self.components.ranker.version}): see the warning above")
        self.feedback = FeedbackStore(self.settings.feedback_db_path)
        self.population = PopulationStore(self.settings.population_db_path,
                                          config=population_config(self.settings))
        self.feed = PopulationFeed(self.population, self.feedback.path)
        self.recording = Pipeline(self.settings, components=self.components, feedback=self.feedback,
                                  population=self.population)
        self.scoring = Pipeline(self.settings, components=self.components, population=self.population)
        self.blind = Pipeline(self.settings, components=self.components)  # without the memory
        self.documents: dict[Path, dict[str, Any]] = {}
        self.prompt = prompt  # False: every request without one (users rarely type one per call)
        self.lookup_ms: list[float] = []
        self._view = self.population.view

        def timed_view(*a: Any, **kw: Any) -> Any:
            t = time.perf_counter()
            try:
                return self._view(*a, **kw)
            finally:
                self.lookup_ms.append((time.perf_counter() - t) * 1000)

        self.population.view = timed_view  # type: ignore[method-assign]

    async def run(self, wf: Workflow, user: str, *, record: bool, pipeline: Any = None) -> list[int]:
        """Every step of ``wf`` by ``user``: the rank of the call made (MISS if not shown);
        with ``record``, each answered with its outcome."""
        from deployments.serving.schemas import PredictRequest

        spec = load_spec(wf.spec_path)
        doc = self.documents.setdefault(wf.spec_path, _spec_document(wf.spec_path))
        pipeline = pipeline or (self.recording if record else self.scoring)
        events: list[dict[str, Any]] = []
        ranks = []
        for step in wf.steps:
            request = PredictRequest(user_id=user, events=events[-20:], spec=doc, k=K,
                                     prompt=(wf.prompt or None) if self.prompt else None)
            response = await pipeline.predict(request)
            shown = [p.endpoint for p in response.predictions]
            ranks.append(shown.index(step.key) if step.key in shown else MISS)
            actual = concrete_endpoint(spec, step)
            if record:
                await self.feedback.arecord_outcome(response.prediction_id, actual_endpoint=actual)
            events.append({"endpoint": actual, "params": dict(step.params)})
        if record:
            self.feed.sync()
        return ranks

    async def aclose(self) -> None:
        self.feed.stop()
        self.feedback.close()
        await self.components.aclose()


def _transitions(wf: Workflow) -> list[tuple[str, str]]:
    """(context, next) of each step, as the memory names them."""
    spec = load_spec(wf.spec_path)
    out, history = [], []
    for step in wf.steps:
        out.append((contexts(history)[0], operation_id(spec.operations[spec.by_key[step.key]])))
        history.append(spec.resolve(concrete_endpoint(spec, step), dict(step.params)))
    return out


def _metrics(ranks: Sequence[int]) -> dict[str, float]:
    return ranking_metrics(np.array(ranks, int))


async def other_half(workflows: list[Workflow], bench: Bench, *, min_users: int) -> dict[str, Any]:
    by_api: dict[str, dict[str, list[Workflow]]] = defaultdict(lambda: {"used": [], "scored": []})
    for w in workflows:
        by_api[w.api][_half(w.workflow_id)].append(w)
    used = [w for api in sorted(by_api) for w in by_api[api]["used"]]
    scored = [w for api in sorted(by_api) for w in by_api[api]["scored"]]
    # interleave APIs, as traffic would be: the n-th workflow of every API, then the next
    order = sorted(used, key=lambda w: (sorted(by_api[w.api]["used"], key=lambda x: x.workflow_id).index(w),
                                        w.api))
    made: dict[tuple[str, str, str], set[str]] = defaultdict(set)  # (api, ctx, next) -> users
    for w in order:
        for t in _transitions(w):
            made[(w.api, *t)].add(w.workflow_id)
    seen_by = [len(made.get((w.api, *t), ())) for w in scored for t in _transitions(w)]
    some = np.array([n >= 1 for n in seen_by])
    enough = np.array([n >= min_users for n in seen_by])

    async def score(pipeline: Any = None) -> np.ndarray:
        ranks: list[int] = []
        for i, w in enumerate(scored):
            ranks += await bench.run(w, f"fresh-{len(bench.lookup_ms)}-{i}", record=False, pipeline=pipeline)
        return np.array(ranks, int)

    curve: dict[str, Any] = {}
    blind = await score(bench.blind)
    done = 0
    with Progress("other half: used and scored", len(order)) as bar:
        for share in CURVE:
            upto = round(share * len(order))
            for w in order[done:upto]:
                await bench.run(w, f"used-{w.workflow_id}", record=True)
                bar.update()
            done = upto
            ranks = await score()
            curve[f"{round(share * 100)}%"] = {
                "used": upto, "all": _metrics(ranks),
                "transition made before": _metrics(ranks[some]) if some.any() else None,
                f"made by >= {min_users} users": _metrics(ranks[enough]) if enough.any() else None,
            }
    return {"apis": len(by_api), "used_workflows": len(used), "scored_workflows": len(scored),
            "scored_steps": len(seen_by), "steps_transition_made_before": int(some.sum()),
            f"steps_made_by_>={min_users}_users": int(enough.sum()),
            "without_memory": _metrics(blind), "curve": curve}


async def same_flows(workflows: list[Workflow], bench: Bench, *, users: int) -> dict[str, Any]:
    before: list[int] = []
    for w in workflows:
        before += await bench.run(w, f"first-{w.workflow_id}", record=False)
    with Progress(f"same flows: each by {users} users", users * len(workflows)) as bar:
        for u in range(users):
            for w in workflows:
                await bench.run(w, f"same-{u}-{w.workflow_id}", record=True)
                bar.update()
    after: list[int] = []
    for w in workflows:
        after += await bench.run(w, f"sixth-{w.workflow_id}", record=False)
    return {"workflows": len(workflows), "users_before": users, "steps": len(after),
            "before": _metrics(before), "after": _metrics(after)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.learning",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="default: the model in service")
    parser.add_argument("--max-apis", type=int, default=None)
    parser.add_argument("--min-users", type=int, default=None,
                        help="distinct-user threshold (default: the setting, 3)")
    parser.add_argument("--same-flow-users", type=int, default=5)
    parser.add_argument("--protocol", choices=("both", "other half", "same flows"), default="both")
    parser.add_argument("--no-prompt", action="store_true", help="requests without the workflow's prompt")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    settings = load_settings()
    min_users = args.min_users or settings.population_min_users
    workflows = [w for w in load_workflows(settings.jentic_dir, progress=False)
                 if split_of(w.api) == "valid" and w.steps]
    if args.max_apis:
        keep = set(sorted({w.api for w in workflows})[: args.max_apis])
        workflows = [w for w in workflows if w.api in keep]
    command = " ".join(["python -m benchmarks.learning", *(sys.argv[1:] if argv is None else argv)])
    results: dict[str, Any] = {"command": command, "min_users": min_users, "prompt": not args.no_prompt}

    async def go() -> None:
        for name, protocol in (("other half", other_half), ("same flows", same_flows)):
            if args.protocol not in ("both", name):
                continue
            with tempfile.TemporaryDirectory() as tmp:
                bench = Bench(Path(tmp), model=args.model, min_users=min_users, prompt=not args.no_prompt)
                results.setdefault("model", bench.components.ranker.version)
                try:
                    if protocol is other_half:
                        results[name] = await other_half(workflows, bench, min_users=min_users)
                    else:
                        results[name] = await same_flows(workflows, bench, users=args.same_flow_users)
                    ms = np.array(bench.lookup_ms)
                    results[name]["lookup_ms"] = {"n": len(ms), "p50": float(np.percentile(ms, 50)),
                                                  "p99": float(np.percentile(ms, 99))}
                finally:
                    await bench.aclose()

    asyncio.run(go())
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["machine"] = {"python": platform.python_version(), "cpus": __import__("os").cpu_count()}
    title = f"validation APIs, model {results['model']}, min_users {min_users}"
    tables = []
    oh = results.get("other half")
    if oh is not None:
        rows = {"scored half, without the memory": oh["without_memory"]}
        for share, point in oh["curve"].items():
            rows[f"scored half after {share} of the other half"] = point["all"]
        made = oh[f"steps_made_by_>={min_users}_users"]
        subset = {}
        for share, point in oh["curve"].items():
            for part in ("transition made before", f"made by >= {min_users} users"):
                if point[part] is not None:
                    subset[f"{part}, after {share}"] = point[part]
        tables += [metrics_table(rows, title=f"the other half ({oh['apis']} APIs): " + title),
                   metrics_table(subset, title="the scored steps whose transition users of the other half "
                                 f"made ({oh['steps_transition_made_before']} of {oh['scored_steps']}; "
                                 f"{made} by >= {min_users} users)")]
    sf = results.get("same flows")
    if sf is not None:
        same = {"each flow, first user (no traffic)": sf["before"],
                f"each flow, after {args.same_flow_users} other users": sf["after"]}
        tables.append(metrics_table(same, title="the same flows by other users: " + title))
    lookup = "\n".join(
        f"- memory lookup, {name}: p50 {ms['p50']:.3f} ms, p99 {ms['p99']:.3f} ms over {ms['n']}"
        for name, ms in ((n, results[n]["lookup_ms"]) for n in ("other half", "same flows") if n in results))
    text = "\n\n".join(tables) + "\n\n" + lookup
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "learning" if args.protocol == "both" and min_users == settings.population_min_users else \
        f"learning_{args.protocol.replace(' ', '_')}_min{min_users}"
    stem += "_no_prompt" if args.no_prompt else ""
    (args.out / f"{stem}.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / f"{stem}.md").write_text(
        "# Learning each API's flows from its users\n\n"
        f"`{results['command']}` ({results['seconds']}s; in-process pipeline, serving stores on real "
        "files)\n\n" + text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
