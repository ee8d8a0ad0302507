"""A/B of serving setups side by side: one capped head per variant, the same load alternated.

    python -m benchmarks.serving_ab --variant base --variant loop:RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0
    python -m benchmarks.serving_ab --variant base --variant new@/work/other-checkout --rounds 3

A variant is ``NAME[@CHECKOUT][:KEY=VALUE,...]``: a ``KEY`` without a dot is a variable of the head's
environment (on top of what ``make run`` sets), one with dots a path into a deployment's entry of
``serve_config.yaml`` (``Ingress.user_config.batching.max_in_flight=1``, the value read as YAML);
``@CHECKOUT`` is another checkout (with its own ``.venv``) whose code the head runs. One head runs
at a time (an idle head costs ~0.2 CPU, and with three up at once every variant read ~30% slower
than alone); each round starts every variant's head in turn (in reverse order every other round),
measures it at every level (closed loop: 1 client's p50, then throughput at more clients) and
stops it, and the medians over rounds are compared. Replicas are pinned at one per deployment
unless ``--autoscale``: a neighbour loading the CPUs would otherwise make the latency policy add
replicas to one variant and not the other. Results: ``benchmarks/results/serving_ab.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from benchmarks.cluster import ROOT, RayHead, merged, spec_server
from benchmarks.serving import SERVE_ENV, Bench, log, post, settle
from benchmarks.workload import build_workload
from core.settings import load_settings

RESULTS = Path(__file__).resolve().parent / "results" / "serving_ab.json"
PINNED = {"autoscaling_config": {"min_replicas": 1, "max_replicas": 1}}
DEPLOYMENTS = ("Ingress", "CandidateGenerator", "FeatureExtractor", "Ranker")


@dataclass
class Variant:
    name: str
    root: Path = ROOT
    env: dict[str, str] = field(default_factory=dict)
    config: dict[str, dict[str, Any]] = field(default_factory=dict)  # deployment -> overrides

    @classmethod
    def parse(cls, text: str) -> Variant:
        head, _, assignments = text.partition(":")
        name, _, root = head.partition("@")
        env: dict[str, str] = {}
        config: dict[str, dict[str, Any]] = {}
        for item in filter(None, assignments.split(",")):
            key, eq, value = item.partition("=")
            if not eq or not key:
                raise argparse.ArgumentTypeError(f"{item!r} is not KEY=VALUE (in {text!r})")
            if "." not in key:
                env[key] = value
                continue
            deployment, *path = key.split(".")
            if deployment not in DEPLOYMENTS or len(path) < 1:
                raise argparse.ArgumentTypeError(f"{key!r}: not <deployment>.<key>... of {DEPLOYMENTS}")
            node = config.setdefault(deployment, {})
            for part in path[:-1]:
                node = node.setdefault(part, {})
            node[path[-1]] = yaml.safe_load(value)
        path = Path(root).resolve() if root else ROOT
        if root and not (path / ".venv" / "bin" / "ray").is_file():
            raise argparse.ArgumentTypeError(f"{path} has no .venv with ray (run `make install` there)")
        return cls(name=name, root=path, env=env, config=config)


@contextmanager
def warm_head(
    env: Mapping[str, str], data_dir: str | Path, deployments: Mapping[str, dict[str, Any]],
    bodies: Sequence[dict[str, Any]], root: Path = ROOT,
) -> Iterator[tuple[RayHead, str]]:
    """A capped head as ``make run`` starts it (loopback spec hosts allowed, its own data dir),
    the app of ``root``'s ``serve_config.yaml`` with ``deployments``' overrides deployed on it,
    and every spec of ``bodies`` in every replica's cache; yields the head and its predict URL."""
    env = {**SERVE_ENV, "RAY_AUTH_MODE": "disabled", "OPENSESAME_ALLOW_PRIVATE_SPEC_HOSTS": "1",
           "OPENSESAME_DATA_DIR": str(data_dir), **env}
    with RayHead(env=env, root=root) as head:
        app = head.deploy(json.dumps(bodies[0]).encode(), deployments=dict(deployments))
        for body in bodies:
            post(app.url + "/predict", body)
        yield head, app.url + "/predict"


async def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = load_settings()
    workload = build_workload(settings.jentic_dir)
    bench = Bench(duration_s=args.duration, out=args.out, settle_s=args.settle)
    levels = [int(x) for x in args.levels.split(",")]
    with spec_server(workload.specs) as specs:
        bodies = workload.with_base_url(specs.base_url)
        for r in range(args.rounds):
            for v in args.variant if r % 2 == 0 else reversed(args.variant):
                overrides = {d: merged({} if args.autoscale else PINNED, v.config.get(d, {}))
                             for d in DEPLOYMENTS}
                with warm_head(v.env, Path(args.data_dir) / f"{v.name}-{r}", overrides, bodies,
                               root=v.root) as (head, url):
                    await settle(bench, url, bodies)
                    log(f"round {r}: {v.name} up ({v.root}, env {v.env or 'as make run'}, "
                        f"config {v.config or 'as is'})")
                    for level in levels:
                        await bench.measure(f"{v.name} r{r}", url, bodies, roots=head.pids,
                                            concurrency=level)
    return {"variants": {v.name: {"root": str(v.root), "env": v.env, "config": v.config}
                         for v in args.variant},
            "levels": levels, "rounds": args.rounds, "duration_s": args.duration, "settle_s": args.settle,
            "pinned": not args.autoscale, "runs": bench.results["runs"],
            "medians": medians(bench.results["runs"], [v.name for v in args.variant], levels)}


def medians(runs: list[dict[str, Any]], names: list[str], levels: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in names:
        for level in levels:
            mine = [r for r in runs if r["setup"].rsplit(" r", 1)[0] == name and r["level"] == level]
            out.setdefault(name, {})[f"{level} clients"] = {
                key: round(statistics.median(r[key] for r in mine), 2)
                for key in ("throughput_rps", "p50_ms", "p99_ms", "service_cpu_ms_per_request",
                            "calibration_ms")
                if all(r.get(key) is not None for r in mine)
            }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serving_ab", description=__doc__.splitlines()[0])
    p.add_argument("--variant", type=Variant.parse, action="append", required=True,
                   help="NAME[@CHECKOUT][:VAR=VALUE,...]; give two or more")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=8.0, help="seconds per measured point")
    p.add_argument("--levels", default="1,4,16", help="closed-loop client counts")
    p.add_argument("--settle", type=float, default=30.0,
                   help="seconds of unrecorded load on each fresh deploy (benchmarks.serving.settle)")
    p.add_argument("--autoscale", action="store_true", help="keep serve_config.yaml's autoscaling")
    p.add_argument("--data-dir", default=f"/tmp/serving-ab-{int(time.time())}")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if len(args.variant) < 2 or len({v.name for v in args.variant}) != len(args.variant):
        p.error("give at least two --variant with distinct names")
    result = asyncio.run(run(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    for name, by_level in result["medians"].items():
        for level, numbers in by_level.items():
            print(f"{name:<16} {level:>11}: " + ", ".join(f"{k} {v}" for k, v in numbers.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
