"""A bounded closed-loop load generator over HTTP: ``clients`` threads, each posting one request
after another until a request count, a duration or a stop event ends the run.

Used by ``python -m deployments.cli bench`` and by the hot-swap test, which counts every non-200
answer and every transport error as an error.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

__all__ = ["LoadResult", "run_load"]


@dataclass
class LoadResult:
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)  # a sample of what went wrong
    versions: list[tuple[float, str]] = field(default_factory=list)  # (t, model_version) of 200s

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    @property
    def error_count(self) -> int:
        return sum(n for s, n in self.statuses.items() if s != "200")

    def summary(self) -> dict[str, Any]:
        lat = np.array(self.latencies_ms) if self.latencies_ms else np.zeros(1)
        return {
            "requests": self.requests,
            "errors": self.error_count,
            "statuses": dict(self.statuses),
            "seconds": round(self.seconds, 3),
            "throughput_rps": round(self.requests / self.seconds, 2) if self.seconds else 0.0,
            "latency_ms": {f"p{q}": round(float(np.percentile(lat, q)), 2) for q in (50, 90, 95, 99)}
            | {"max": round(float(lat.max()), 2)},
            "error_samples": self.errors[:5],
        }


def run_load(
    url: str,
    bodies: Sequence[dict[str, Any]],
    *,
    clients: int = 4,
    requests: int | None = None,
    duration_s: float | None = None,
    stop: threading.Event | None = None,
    timeout_s: float = 30.0,
    on_request: Callable[[], None] | None = None,
) -> LoadResult:
    """POST ``bodies`` (round robin) to ``url`` + ``/predict`` until ``requests`` are done,
    ``duration_s`` has passed or ``stop`` is set, whichever comes first."""
    if not bodies:
        raise ValueError("no request bodies to send")
    if requests is None and duration_s is None and stop is None:
        raise ValueError("give requests, duration_s or stop: the load must be bounded")
    result = LoadResult()
    lock = threading.Lock()
    counter = itertools.count()
    stop = stop or threading.Event()
    start = time.perf_counter()
    deadline = start + duration_s if duration_s is not None else None

    def client_loop() -> None:
        with httpx.Client(base_url=url, timeout=timeout_s) as http:
            while not stop.is_set():
                n = next(counter)
                if requests is not None and n >= requests:
                    return
                if deadline is not None and time.perf_counter() >= deadline:
                    return
                t0 = time.perf_counter()
                try:
                    r = http.post("/predict", json=bodies[n % len(bodies)])
                    status = str(r.status_code)
                    version = r.json()["metadata"]["model_version"] if r.status_code == 200 else None
                    problem = None if r.status_code == 200 else f"{r.status_code}: {r.text[:300]}"
                except (httpx.HTTPError, ValueError, KeyError) as exc:
                    status, version, problem = type(exc).__name__, None, f"{type(exc).__name__}: {exc}"
                t1 = time.perf_counter()
                with lock:
                    result.statuses[status] += 1
                    if problem is None:
                        result.latencies_ms.append((t1 - t0) * 1000)
                        result.versions.append((t1 - start, version or ""))
                    elif len(result.errors) < 50:
                        result.errors.append(problem)
                if on_request is not None:
                    on_request()

    threads = [threading.Thread(target=client_loop, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result.seconds = time.perf_counter() - start
    result.versions.sort()
    return result
