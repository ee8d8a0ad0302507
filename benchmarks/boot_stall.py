"""``/health`` and ``/livez`` while Ray starts replicas, with Ray's processes at their own
niceness and with the whole node at one:

    python -m benchmarks.boot_stall --rounds 3 --nice 19        # ~1 min a head

Each round starts one head per variant in turn (alternated: the order flips every other round),
as ``make run`` does (HAProxy, admission control, throughput-optimised Serve), with one replica
per deployment. It asks ``/health`` and ``/livez`` every 50 ms from two threads, 5 s quiet, then
for 20 s while ``serve run`` of the same config with ``min_replicas: 2`` for CandidateGenerator,
FeatureExtractor and Ranker adds three replicas (what autoscaling does under load), and stops the
head. ``ray``: as Ray starts its processes and ``make run`` runs them (daemons at 0, workers at 15,
replicas lowered to 19); ``nice<N>``: the whole node at ``--nice`` (``RayHead(node_nice=N)``).
Results: ``benchmarks/results/boot_stall.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.cluster import ROOT, RayHead, ServeApp, free_port, make_run_env, write_config
from tools.loadgen import percentile

RESULTS = Path(__file__).resolve().parent / "results" / "boot_stall.json"
ADDED = ("CandidateGenerator", "FeatureExtractor", "Ranker")
EVERY_S = 0.05
SLOW_MS = 100.0


class Prober(threading.Thread):
    """GETs ``url`` every :data:`EVERY_S` until stopped; each answer's latency (a failure counts
    as 10 s), with the moment of each over :data:`SLOW_MS`."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.ms: list[float] = []
        self.slow: list[tuple[float, float]] = []
        self.failed = 0
        self.began = time.perf_counter()
        self.halt = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self.halt.is_set():
                t = time.perf_counter()
                try:
                    ok = client.get(self.url).status_code == 200
                except httpx.HTTPError:
                    ok = False
                ms = (time.perf_counter() - t) * 1000 if ok else 10_000.0
                self.ms.append(ms)
                self.failed += not ok
                if ms > SLOW_MS:
                    self.slow.append((round(t - self.began, 2), round(ms)))
                self.halt.wait(EVERY_S)

    def summary(self) -> dict[str, Any]:
        return {"n": len(self.ms), "failed": self.failed, "p50_ms": round(percentile(self.ms, 50), 1),
                "p99_ms": round(percentile(self.ms, 99), 1), "max_ms": round(max(self.ms, default=0.0), 1),
                "over_100ms": len(self.slow), "slow": self.slow[:10]}


def probe(base: str, seconds: float, during: threading.Thread | None = None) -> dict[str, Any]:
    probers = {path: Prober(base + path) for path in ("/health", "/livez")}
    for p in probers.values():
        p.start()
    if during is not None:
        during.start()
    time.sleep(seconds)
    for p in probers.values():
        p.halt.set()
        p.join(15)
    if during is not None:
        during.join(180)
    return {path: p.summary() for path, p in probers.items()}


def one_head(node_nice: int | None, body: bytes, quiet_s: float, during_s: float) -> dict[str, Any]:
    data = tempfile.mkdtemp(prefix="boot-stall-")
    env = {**make_run_env(), "RAY_AUTH_MODE": "disabled", "OPENSESAME_DATA_DIR": data}
    with RayHead(env=env, node_nice=node_nice) as head:
        port = free_port()
        first = write_config(Path(head.temp_dir) / "serve.yaml", port=port)
        app = ServeApp(head, first).start(body)
        time.sleep(5)  # the first requests' warm-up done
        quiet = probe(app.url, quiet_s)
        more = write_config(Path(head.temp_dir) / "serve-more.yaml", port=port,
                            deployments={d: {"autoscaling_config": {"min_replicas": 2}} for d in ADDED})
        adding = threading.Thread(target=lambda: ServeApp(head, more).start(body))
        return {"quiet": quiet, "adding_replicas": probe(app.url, during_s, during=adding),
                "load_average": [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.boot_stall", description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--quiet", type=float, default=5.0, help="seconds probed before adding replicas")
    p.add_argument("--during", type=float, default=20.0, help="seconds probed from the redeploy on")
    p.add_argument("--nice", type=int, default=19, help="the whole node's niceness in the other variant")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    variants: dict[str, int | None] = {f"nice{args.nice}": args.nice, "ray": None}
    body = (ROOT / "examples" / "request.json").read_bytes()
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    for r in range(args.rounds):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for name in order:
            result = one_head(variants[name], body, args.quiet, args.during)
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
