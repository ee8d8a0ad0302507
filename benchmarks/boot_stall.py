"""``/health`` and ``/livez`` while Ray starts replicas, for setups side by side:

    python -m benchmarks.boot_stall --rounds 3                  # make run, and workers at Ray's 15
    python -m benchmarks.boot_stall --variant now --variant before@../other-checkout --nice 19

A variant is ``NAME[@CHECKOUT][:KEY=VALUE,...]`` as in :mod:`benchmarks.serving_ab` (variables
of the head's environment on top of what ``make run`` sets; another checkout's code); ``--nice N``
adds the whole node at niceness N (``RayHead(node_nice=N)``). Each round starts one head per
variant in turn (alternated: the order flips every other round), as ``make run`` does (HAProxy,
admission control, throughput-optimised Serve), with one replica per deployment. It asks
``/health`` and ``/livez`` every 50 ms from two threads, 5 s quiet, then for 20 s while ``serve
run`` of the same config with ``min_replicas: 2`` for CandidateGenerator, FeatureExtractor and
Ranker adds three replicas (what autoscaling does under load), and stops the head. Another
checkout's head gets this one's ``make run`` environment: give it its own as ``KEY=VALUE``s
(``before@../old:RAY_worker_niceness=15``). Results: ``benchmarks/results/boot_stall.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.cluster import ROOT, RayHead, ServeApp, make_run_env, write_config
from benchmarks.serving_ab import Variant
from tools.loadgen import HealthProbe

RESULTS = Path(__file__).resolve().parent / "results" / "boot_stall.json"
ADDED = ("CandidateGenerator", "FeatureExtractor", "Ranker")
EVERY_S = 0.05
SLOW_MS = 100.0


def probe(base: str, seconds: float, during: threading.Thread | None = None) -> dict[str, Any]:
    probers = {path: HealthProbe(base + path, every_s=EVERY_S, slow_ms=SLOW_MS)
               for path in ("/health", "/livez")}
    with contextlib.ExitStack() as probing:
        for p in probers.values():
            probing.enter_context(p)
        if during is not None:
            during.start()
        time.sleep(seconds)
    if during is not None:
        during.join(180)
    return {path: p.summary() for path, p in probers.items()}


def one_head(variant: Variant, node_nice: int | None, body: bytes, quiet_s: float,
             during_s: float) -> dict[str, Any]:
    data = tempfile.mkdtemp(prefix="boot-stall-")
    env = {**make_run_env(), "RAY_AUTH_MODE": "disabled", "OPENSESAME_DATA_DIR": data, **variant.env}
    with RayHead(env=env, node_nice=node_nice, root=variant.root) as head:
        app = head.deploy(body)
        time.sleep(5)  # the first requests' warm-up done
        quiet = probe(app.url, quiet_s)
        # the same app on the same port (the proxy keeps its first one), more replicas
        more = write_config(Path(head.temp_dir) / "serve-more.yaml", port=app.port,
                            base=variant.root / "serve_config.yaml",
                            deployments={d: {"autoscaling_config": {"min_replicas": 2}} for d in ADDED})
        adding = threading.Thread(target=lambda: ServeApp(head, more).start(body))
        return {"quiet": quiet, "adding_replicas": probe(app.url, during_s, during=adding),
                "load_average": [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.boot_stall", description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--quiet", type=float, default=5.0, help="seconds probed before adding replicas")
    p.add_argument("--during", type=float, default=20.0, help="seconds probed from the redeploy on")
    p.add_argument("--variant", type=Variant.parse, action="append",
                   help="NAME[@CHECKOUT][:VAR=VALUE,...] (default: now, and ray15:RAY_worker_niceness=15)")
    p.add_argument("--nice", type=int, help="add the whole node at this niceness as a variant")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    chosen = args.variant or [Variant("now"), Variant.parse("ray15:RAY_worker_niceness=15")]
    variants: dict[str, tuple[Variant, int | None]] = {v.name: (v, None) for v in chosen}
    if args.nice is not None:
        variants[f"node at {args.nice}"] = (Variant(f"node at {args.nice}"), args.nice)
    body = (ROOT / "examples" / "request.json").read_bytes()
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    for r in range(args.rounds):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for name in order:
            result = one_head(*variants[name], body, args.quiet, args.during)
            runs[name].append(result)
            during = result["adding_replicas"]
            print(f"round {r} {name}: /health max {during['/health']['max_ms']} ms, "
                  f"/livez max {during['/livez']['max_ms']} ms, over 100 ms "
                  f"{during['/health']['over_100ms']} + {during['/livez']['over_100ms']}", flush=True)
    medians = {
        name: {f"{path} {k}": statistics.median(run["adding_replicas"][path][k] for run in rs)
               for path in ("/health", "/livez") for k in ("p50_ms", "p99_ms", "max_ms", "over_100ms")}
        for name, rs in runs.items()
    }
    command = " ".join(["python -m benchmarks.boot_stall", *(argv or sys.argv[1:])])
    doc = {"command": command, "rounds": args.rounds, "medians_while_adding_replicas": medians, "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(medians, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
