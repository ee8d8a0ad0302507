"""CPU a /predict request costs, per stage, in one process: the in-process pipeline
(deployments/serving/pipeline.py) with a feedback store, the users' prior and the population
memory as served, over the workload's requests (benchmarks/workload.py) one at a time.

    python -m benchmarks.stage_cpu [--passes 10]                  # this checkout, in process
    python -m benchmarks.stage_cpu --checkout before=/path/to/other --checkout after=. --rounds 3
    python -m benchmarks.stage_cpu --profile 30                   # cProfile's top 30 (tottime)

A stage is the main thread's CPU (``time.thread_time``) inside a call, summed over a pass and
divided by its requests; stages nest (``respond`` holds ``assemble``, which holds ``why`` and
``params``). ``process`` is the CPU of all threads (the feedback writer and the feeds too). The
medians are over passes. With ``--checkout``, each checkout runs this file in a child process
with its own code on ``PYTHONPATH``, the checkouts alternated round by round, ABBA (the host
is shared: compare them in one session, as ratios to the first). ``digest`` hashes every response
but its id and timings: equal digests, equal answers. Writes ``benchmarks/results/stage_cpu.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import functools
import hashlib
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"

# (stage, module, attribute): the calls timed, by the name the pipeline calls them by. A name a
# checkout does not have is not timed there.
STAGES: tuple[tuple[str, str, str], ...] = (
    ("personal", "deployments.serving.pipeline", "user_transitions"),
    ("rank", "deployments.serving.pipeline", "score_top_k"),
    ("respond", "deployments.serving.pipeline", "respond"),
    ("after_model", "deployments.serving.respond", "after_model"),
    ("assemble", "deployments.serving.respond", "assemble_predictions"),
    ("why", "deployments.serving.respond", "explain"),
    ("params", "deployments.serving.respond", "fill_params"),
    ("build_response", "deployments.serving.respond", "build_response"),
)


# The FeatureExtractor's groups of features (its methods ``_<group>``), timed within "features".
FEATURE_GROUPS = ("lexical", "semantic", "dataflow", "request", "structure", "transitions")
# The order of the report: the pipeline's.
ORDER = ("validate", "spec", "candidates", "personal", "population", "features",
         *(f"features.{g}" for g in FEATURE_GROUPS), "rank", "respond",
         "after_model", "assemble", "why", "params", "build_response", "record", "serialize",
         "main thread", "process")


class Clock:
    """Main-thread CPU seconds per stage."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {}

    def add(self, stage: str, seconds: float) -> None:
        self.spent[stage] = self.spent.get(stage, 0.0) + seconds

    def wrap(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        if asyncio.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def timed_async(*args: Any, **kwargs: Any) -> Any:
                t = time.thread_time()
                try:
                    return await fn(*args, **kwargs)
                finally:
                    self.add(stage, time.thread_time() - t)
            return timed_async

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            t = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(stage, time.thread_time() - t)
        return timed

    def patch(self, owner: Any, name: str, stage: str) -> None:
        if hasattr(owner, name):
            setattr(owner, name, self.wrap(stage, getattr(owner, name)))


def answer(response: Any) -> bytes:
    """The response without what differs from one call to the next (its id, its timings)."""
    data = response.model_dump(mode="json")
    data.pop("prediction_id")
    data["metadata"].pop("timings_ms")
    return json.dumps(data, sort_keys=True).encode()


async def measure(passes: int, profile: int, jentic_dir: Path | None) -> dict[str, Any]:
    import importlib

    from benchmarks.workload import build_workload
    from core.settings import load_settings
    from deployments.serving.feedback import FeedbackStore
    from deployments.serving.pipeline import Pipeline
    from deployments.serving.population_store import start_population_feed
    from deployments.serving.prior_feed import start_prior_feed
    from deployments.serving.schemas import PredictRequest
    from tools.cluster import spec_server

    clock = Clock()
    for stage, module, name in STAGES:
        clock.patch(importlib.import_module(module), name, stage)
    jentic_dir = jentic_dir or load_settings().jentic_dir
    workload = build_workload(jentic_dir)
    with tempfile.TemporaryDirectory() as data_dir, spec_server(workload.specs) as server:
        settings = load_settings(allow_private_spec_hosts=True, data_dir=data_dir, jentic_dir=jentic_dir)
        bodies = workload.with_base_url(server.base_url)
        feedback = FeedbackStore(settings.feedback_db_path)
        prior_feed = start_prior_feed(settings, feedback)
        population_feed = start_population_feed(settings, feedback)
        pipeline = Pipeline(settings, feedback=feedback,
                            prior=prior_feed.prior if prior_feed else None,
                            population=population_feed.store if population_feed else None)
        c = pipeline.c
        clock.patch(c.store, "resolve", "spec")
        clock.patch(c.generator, "generate", "candidates")
        clock.patch(c.extractor, "extract", "features")
        for group in FEATURE_GROUPS:
            clock.patch(c.extractor, "_" + group, "features." + group)
        if pipeline.population is not None:
            clock.patch(pipeline.population, "view", "population")
        clock.patch(feedback, "record_prediction", "record")
        validate = clock.wrap("validate", PredictRequest.model_validate)

        async def one_pass() -> list[bytes]:
            out = []
            for body in bodies:
                response = await pipeline.predict(validate(body))
                t = time.thread_time()
                response.model_dump_json()  # what the Ingress sends
                clock.add("serialize", time.thread_time() - t)
                out.append(answer(response))
            return out

        digest = hashlib.sha256(b"".join(await one_pass())).hexdigest()  # also warms every cache
        per_pass: dict[str, list[float]] = {}
        profiler = cProfile.Profile() if profile else None
        for _ in range(passes):
            clock.spent.clear()
            main0, proc0 = time.thread_time(), time.process_time()
            if profiler:
                profiler.enable()
            if digest != hashlib.sha256(b"".join(await one_pass())).hexdigest():
                raise SystemExit("a response changed between passes: the digest means nothing")
            if profiler:
                profiler.disable()
            spent = {**clock.spent, "main thread": time.thread_time() - main0,
                     "process": time.process_time() - proc0}
            for stage, seconds in spent.items():
                per_pass.setdefault(stage, []).append(seconds * 1000 / len(bodies))
        await pipeline.aclose()
        for feed in (prior_feed, population_feed):
            if feed is not None:
                feed.stop()
        feedback.close()
    if profiler:
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(profile)
    return {"requests": len(bodies), "passes": passes, "digest": digest, "ms": per_pass}


def child(checkout: Path, passes: int, jentic_dir: Path) -> dict[str, Any]:
    """One run of this file with ``checkout``'s code (its own ``benchmarks``, ``core``, ...)."""
    argv = ["stage_cpu", "--passes", str(passes), "--jentic-dir", str(jentic_dir), "--no-write"]
    code = (f"import runpy, sys; sys.argv = {argv!r}; "
            f"runpy.run_path({str(Path(__file__).resolve())!r}, run_name='__main__')")
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    done = subprocess.run([sys.executable, "-c", code], cwd=checkout, env=env, check=True,
                          stdout=subprocess.PIPE, text=True)
    return json.loads(done.stdout.splitlines()[-1])


def medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    stages = {stage for run in runs for stage in run["ms"]}
    return {s: round(statistics.median(v for run in runs for v in run["ms"].get(s, [])), 4)
            for s in sorted(stages, key=lambda s: (ORDER + (s,)).index(s))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=10, help="passes over the workload (per run)")
    parser.add_argument("--checkout", action="append", default=[], metavar="NAME=PATH",
                        help="compare checkouts, each run in its own process (repeatable)")
    parser.add_argument("--rounds", type=int, default=2, help="alternated runs per checkout")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="print cProfile's top N functions by own time (to stderr)")
    parser.add_argument("--jentic-dir", type=Path, default=None)
    parser.add_argument("--no-write", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.checkout:
        run = asyncio.run(measure(args.passes, args.profile, args.jentic_dir))
        result: dict[str, Any] = {**run, "median_ms": medians([run])}
        if not args.no_write:
            print(json.dumps({k: result[k] for k in ("requests", "passes", "digest", "median_ms")},
                             indent=1), file=sys.stderr)
        print(json.dumps(result))
    else:
        from core.settings import load_settings

        jentic_dir = args.jentic_dir or load_settings().jentic_dir
        variants = dict(v.split("=", 1) for v in args.checkout)
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
        for r in range(args.rounds):
            # ABBA: each checkout runs first in every other round, so neither always meets
            # what the previous run left (caches, clock speed, the neighbours' load)
            for name, path in list(variants.items())[:: 1 if r % 2 == 0 else -1]:
                runs[name].append(child(Path(path).resolve(), args.passes, jentic_dir))
                print(f"round {r}: {name} done, process "
                      f"{medians(runs[name][-1:])['process']:.3f} ms/request", file=sys.stderr)
        table = {name: medians(rs) for name, rs in runs.items()}
        first = next(iter(table.values()))
        result = {
            "checkouts": variants, "rounds": args.rounds, "passes": args.passes,
            "load_average": os.getloadavg(),
            "digests": {name: sorted({r["digest"] for r in rs}) for name, rs in runs.items()},
            "median_ms": table,
            "ratio_to_first": {name: {s: round(v / first[s], 3) for s, v in t.items() if first.get(s)}
                               for name, t in table.items()},
        }
        for stage in first:
            print(f"{stage:>16}  " + "  ".join(f"{name} {t.get(stage, float('nan')):7.3f}"
                                                for name, t in table.items()))
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "stage_cpu.json").write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
