"""The load generator of this project: the benchmark's, the fault tests' and the CLI's.

Open and closed loops (:func:`open_loop`, :func:`closed_loop`) speak just enough HTTP/1.1
(keep-alive, Content-Length or chunked answers) over asyncio streams to cost the machine far less
per request than a general client would: on a 2-CPU node the load generator shares the CPUs with
the service it measures. Bodies are encoded once, up front. Every run is bounded: it stops by
itself after its duration plus a drain timeout. :class:`NodeSampler` measures the node meanwhile
(CPU, RSS and PSS of process trees).

:func:`run_load` is the simple one: ``clients`` threads with httpx posting back to back until a
request count, a duration or a stop event ends the run; every non-200 answer and every transport
error counts as an error (``python -m tools.cli bench``, the hot-swap test).

    python -m tools.loadgen http://127.0.0.1:8000/predict --bodies bodies.json \
        --closed 16 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import json
import math
import multiprocessing
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np

__all__ = [
    "Sample",
    "RunResult",
    "NodeSampler",
    "closed_loop",
    "open_loop",
    "probe",
    "HealthProbe",
    "summarize",
    "percentile",
    "CLIENT_OVERFLOW",
    "process_tree",
    "tree_memory_mb",
    "LoadResult",
    "run_load",
]


# A request the load generator itself dropped: more than max_connections already in flight.
CLIENT_OVERFLOW = "client: max_connections in flight"


@dataclass(slots=True)
class Sample:
    sent: float  # seconds since the run started
    latency_s: float
    status: int  # 0: no HTTP answer (connection error, timeout)
    retry_after: float = 0.0  # the answer's Retry-After, seconds (0: none)
    who: str = ""  # 5xx: who answered (an X-Refused-By header, else the start of the body); 0: why
    # Open loop: how far behind its schedule this client sent it (its event loop was held up, or
    # catching up on what came due meanwhile); such a request's latency is partly the client's.
    late_s: float = 0.0


@dataclass
class RunResult:
    mode: str  # "closed" | "open"
    level: float  # concurrency or requests per second
    duration_s: float
    samples: list[Sample] = field(repr=False)
    node: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        out = {
            "mode": self.mode,
            "level": self.level,
            **summarize(self.samples, self.duration_s),
            **self.node,
            **self.extra,
        }
        if out.get("service_cpu_pct") is not None and out["ok"]:
            # CPU-ms of the service per answered request (503s cost little and are not counted).
            out["service_cpu_ms_per_request"] = round(
                out["service_cpu_pct"] * 10 * self.duration_s / out["ok"], 2
            )
        return out


class HealthProbe:
    """GETs ``url`` (``/health``, ``/livez``) every ``every_s`` from a thread of its own while
    something else runs (an attack, a deploy): each answer's latency in ms; a failed or non-200
    answer counts as ``timeout_s``, and the moments of answers over ``slow_ms`` are kept. For
    probing from an asyncio client, :func:`probe`."""

    def __init__(self, url: str, *, every_s: float = 0.1, timeout_s: float = 10.0,
                 slow_ms: float = 100.0) -> None:
        self.url, self.every_s, self.timeout_s, self.slow_ms = url, every_s, timeout_s, slow_ms
        self.ms: list[float] = []
        self.slow: list[tuple[float, float]] = []  # (s since the probe started, ms)
        self.failed = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(self.timeout_s + 5)

    def _run(self) -> None:
        began = time.perf_counter()
        with httpx.Client(timeout=self.timeout_s) as client:
            while not self._stop.is_set():
                t = time.perf_counter()
                try:
                    r = client.get(self.url)
                    ok, why = r.status_code == 200, f"{r.status_code} {r.text[:200]}"
                except httpx.HTTPError as exc:
                    ok, why = False, f"{type(exc).__name__}: {exc}"
                if not ok and len(self.failures) < 3:
                    self.failures.append(why)
                self.ms.append((time.perf_counter() - t) * 1000 if ok else self.timeout_s * 1000)
                self.failed += not ok
                if self.ms[-1] > self.slow_ms:
                    self.slow.append((round(t - began, 2), round(self.ms[-1])))
                self._stop.wait(self.every_s)

    def summary(self) -> dict[str, Any]:
        def pct(q: float) -> float:
            return round(percentile(self.ms, q), 1) if self.ms else 0.0

        return {"n": len(self.ms), "failed": self.failed, "failures": self.failures,
                "p50_ms": pct(50), "p99_ms": pct(99), "max_ms": round(max(self.ms, default=0.0), 1),
                "over_100ms": len(self.slow), "slow": self.slow[:20]}


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of unsorted values; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def summarize(samples: Sequence[Sample], duration_s: float) -> dict[str, Any]:
    ok = [s.latency_s * 1000 for s in samples if 200 <= s.status < 300]
    shed = [s for s in samples if s.status == 503]
    errors = [s for s in samples if not (200 <= s.status < 300) and s.status != 503]
    n = len(samples)
    ms = lambda v: round(v, 2) if not math.isnan(v) else None  # noqa: E731
    return {
        "requests": n,
        "ok": len(ok),
        "throughput_rps": round(len(ok) / duration_s, 1) if duration_s > 0 else None,
        "p50_ms": ms(percentile(ok, 50)),
        "p95_ms": ms(percentile(ok, 95)),
        "p99_ms": ms(percentile(ok, 99)),
        "max_ms": ms(max(ok)) if ok else None,
        "rate_503": round(len(shed) / n, 4) if n else 0.0,
        "p99_503_ms": ms(percentile([s.latency_s * 1000 for s in shed], 99)),
        "retry_after_on_503": round(sum(bool(s.retry_after) for s in shed) / len(shed), 3) if shed else None,
        "error_rate": round(len(errors) / n, 4) if n else 0.0,
        "error_statuses": sorted({s.status for s in errors}),
        "503_from": dict(Counter(s.who for s in shed)),
        "errors_from": dict(Counter(s.who or str(s.status) for s in errors)),
    }


# -- the client's own pauses --------------------------------------------------------------------


class _Collections:
    """While runs measure, the objects that existed before them are left out of the garbage
    collector's full collections (``gc.freeze``), and the collections that still happen are timed.

    By the overload test of a full ``make test`` the pytest process holds ~380,000 objects, and a
    full collection of them took ~0.3 s (measured once, RELIABILITY.md "Overload"): the event
    loop stops that long, then sends at once what came due meanwhile (see ``Sample.late_s``). A
    run's own objects are still collected (up to ~40 ms at 2x overload). Runs side by side (a load
    and its floor probe) share one freeze."""

    def __init__(self) -> None:
        self.pauses: list[float] = []  # seconds, every collection since the first run began
        self._began = 0.0
        self._runs = 0

    def _timed(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        else:
            self.pauses.append(time.perf_counter() - self._began)

    @contextlib.contextmanager
    def frozen(self, extra: dict[str, Any] | None = None) -> Iterator[None]:
        """``extra["client_gc_max_ms"]``: the longest this client stopped to collect meanwhile."""
        if self._runs == 0:
            gc.freeze()
            gc.callbacks.append(self._timed)
        self._runs += 1
        first = len(self.pauses)
        try:
            yield
        finally:
            if extra is not None:
                extra["client_gc_max_ms"] = round(max(self.pauses[first:], default=0.0) * 1000, 1)
            self._runs -= 1
            if self._runs == 0:
                gc.callbacks.remove(self._timed)
                gc.unfreeze()
                self.pauses.clear()


_COLLECTIONS = _Collections()


# -- a minimal HTTP/1.1 client -------------------------------------------------------------------


class _Connection:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes) -> tuple[int, float, bytes]:
        """Send a pre-encoded request; (status, Retry-After seconds or 0, who answered a 5xx: its
        X-Refused-By header, else the start of its body). Reconnects once if the server closed an
        idle keep-alive connection."""
        for attempt in (0, 1):
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            assert self.reader is not None
            try:
                self.writer.write(raw)
                return await self._read_response(self.reader)
            except (ConnectionError, asyncio.IncompleteReadError):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    async def _read_response(self, reader: asyncio.StreamReader) -> tuple[int, float, bytes]:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length, chunked, retry_after, close, refused_by = 0, False, 0.0, False, b""
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
            elif name == "retry-after":
                retry_after = float(value.strip() or 0) or 0.001  # seconds; present even if 0
            elif name == "connection" and "close" in value.lower():
                close = True
            elif name == "x-refused-by":
                refused_by = b"refused-by:" + value.strip().encode("latin-1")
        body = b""
        if chunked:
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                chunk = await reader.readexactly(size + 2)
                body = body or chunk[:80]
                if size == 0:
                    break
        elif length:
            body = (await reader.readexactly(length))[:80]
        if close:
            self.close()
        return status, retry_after, (refused_by or body) if status >= 500 else b""

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def encode_requests(url: str, bodies: Sequence[dict[str, Any]]) -> tuple[str, int, list[bytes]]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    out = []
    for body in bodies:
        data = json.dumps(body, separators=(",", ":")).encode()
        out.append(
            (
                f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
            ).encode()
            + data
        )
    return host, port, out


async def _one(conn: _Connection, raw: bytes, t0: float, timeout_s: float) -> Sample:
    start = time.perf_counter()
    try:
        status, retry_after, body = await asyncio.wait_for(conn.request(raw), timeout_s)
    except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
        conn.close()
        return Sample(sent=start - t0, latency_s=time.perf_counter() - start, status=0,
                      who=f"no answer: {type(exc).__name__}")
    end = time.perf_counter()
    who = ""
    if status >= 500:
        # HAProxy's admission control says so; our error envelope is JSON; Serve's own refusals
        # are plain text.
        if body.startswith(b"refused-by:"):
            who = body.decode("latin-1", "replace")
        else:
            who = "service" if body.startswith(b'{"error"') else body[:40].decode("latin-1", "replace")
    return Sample(sent=start - t0, latency_s=end - start, status=status, retry_after=retry_after, who=who)


def _backoff_s(sample: Sample, stop: float) -> float:
    """A well-behaved client waits out a 503's Retry-After (bounded by the run's end)."""
    if sample.status != 503 or not sample.retry_after:
        return 0.0
    return max(0.0, min(sample.retry_after, stop - time.perf_counter()))


async def closed_loop(
    url: str,
    bodies: Sequence[dict[str, Any]],
    *,
    concurrency: int,
    duration_s: float,
    warmup_s: float = 1.0,
    timeout_s: float = 30.0,
    seed: int = 0,
    backoff: bool = True,
) -> RunResult:
    """``concurrency`` clients, each sending its next request as soon as the last one answered
    (after the Retry-After of a 503, as the API asks, unless ``backoff`` is off)."""
    host, port, raws = encode_requests(url, bodies)
    t0 = time.perf_counter()
    stop = t0 + warmup_s + duration_s
    samples: list[Sample] = []

    async def client(i: int) -> None:
        rng = random.Random(seed * 1000 + i)
        conn = _Connection(host, port)
        try:
            while time.perf_counter() < stop:
                s = await _one(conn, raws[rng.randrange(len(raws))], t0, timeout_s)
                if s.sent >= warmup_s:
                    samples.append(s)
                if backoff:
                    await asyncio.sleep(_backoff_s(s, stop))
        finally:
            conn.close()

    extra: dict[str, Any] = {}
    with _COLLECTIONS.frozen(extra):
        await asyncio.gather(*(client(i) for i in range(concurrency)))
    return RunResult("closed", concurrency, duration_s, samples, extra=extra)


async def open_loop(
    url: str,
    bodies: Sequence[dict[str, Any]],
    *,
    rate: float,
    duration_s: float,
    warmup_s: float = 1.0,
    timeout_s: float = 30.0,
    max_connections: int = 512,
    seed: int = 0,
) -> RunResult:
    """Requests at a fixed rate (Poisson arrivals), whatever the answers' latency: the load a
    population of independent users puts on the service. Beyond ``max_connections`` in flight a
    request is counted as a client-side failure (status 0) rather than delayed."""
    host, port, raws = encode_requests(url, bodies)
    rng = random.Random(seed)
    idle: list[_Connection] = []
    in_flight = 0
    samples: list[Sample] = []
    tasks: set[asyncio.Task[None]] = set()
    t0 = time.perf_counter()
    end = warmup_s + duration_s

    async def send(raw: bytes, due: float) -> None:
        nonlocal in_flight
        conn = idle.pop() if idle else _Connection(host, port)
        in_flight += 1
        try:
            s = await _one(conn, raw, t0, timeout_s)
        finally:
            in_flight -= 1
        s.sent, s.late_s = due, max(0.0, s.sent - due)
        if due >= warmup_s:
            samples.append(s)
        idle.append(conn)

    extra: dict[str, Any] = {}
    due = 0.0
    with _COLLECTIONS.frozen(extra):
        while due < end:
            due += rng.expovariate(rate)
            delay = t0 + due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if in_flight >= max_connections:
                if due >= warmup_s:
                    samples.append(Sample(sent=due, latency_s=0.0, status=0, who=CLIENT_OVERFLOW))
                continue
            task = asyncio.create_task(send(raws[rng.randrange(len(raws))], due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_s + 1)
    for t in list(tasks):
        t.cancel()
    for conn in idle:
        conn.close()
    return RunResult("open", rate, duration_s, samples, extra=extra)


async def probe(
    url: str, *, interval_s: float, duration_s: float, warmup_s: float = 1.0, timeout_s: float = 30.0
) -> list[Sample]:
    """GET ``url`` every ``interval_s`` on one keep-alive connection, beside a load: the latency of
    an answer that costs the server nothing (e.g. HAProxy's own ``/-/healthz``) is the floor that
    the machine's scheduling and this client put under every other measurement of the run."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    raw = f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    conn = _Connection(host, port)
    samples: list[Sample] = []
    t0 = time.perf_counter()
    with contextlib.closing(conn), _COLLECTIONS.frozen():
        while (now := time.perf_counter() - t0) < warmup_s + duration_s:
            s = await _one(conn, raw, t0, timeout_s)
            if now >= warmup_s:
                samples.append(s)
            await asyncio.sleep(max(0.0, interval_s - s.latency_s))
    return samples


# -- the node: CPU and memory ------------------------------------------------------------------


class NodeSampler:
    """Samples, every ``interval_s``, the memory of a set of process trees (RSS and PSS summed over
    every process under the given roots), and measures the node's CPU use over the run
    (/proc/stat, all processes, so other work on the machine counts too).

    The sampling runs in a child process of its own: walking /proc every half second in the load
    generator's process (a thread, holding the GIL) delayed its event loop and showed up as
    latency of the service (tens of ms at p99, tests/test_overload.py)."""

    def __init__(self, roots: Callable[[], Iterable[int]], interval_s: float = 0.5) -> None:
        self.roots = roots  # pids whose process trees make up "the node"
        self.interval_s = interval_s
        self.peak_rss_mb = 0.0
        self.peak_pss_mb = 0.0
        self._cpu0: tuple[int, int] | None = None
        self._tree_cpu0: dict[int, int] = {}
        self._proc: Any = None
        self._stop: Any = None
        self._peaks: Any = None

    async def __aenter__(self) -> NodeSampler:
        self._cpu0 = _cpu_times()
        self._tree_cpu0 = tree_cpu_ticks(list(self.roots()))
        ctx = multiprocessing.get_context("fork")
        self._stop = ctx.Event()
        self._peaks = ctx.Array("d", 2)
        self._proc = ctx.Process(
            target=_sample_peaks, args=(self.roots, self.interval_s, self._peaks, self._stop), daemon=True
        )
        self._proc.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._proc is not None
        self._stop.set()
        await asyncio.to_thread(self._proc.join, 10)
        if self._proc.is_alive():
            self._proc.kill()
        self.peak_rss_mb = max(self.peak_rss_mb, self._peaks[0])
        self.peak_pss_mb = max(self.peak_pss_mb, self._peaks[1])
        self.sample()

    def sample(self) -> None:
        rss, pss = tree_memory_mb(list(self.roots()))
        self.peak_rss_mb = max(self.peak_rss_mb, rss)
        self.peak_pss_mb = max(self.peak_pss_mb, pss)

    def result(self) -> dict[str, float]:
        busy0, total0 = self._cpu0 or (0, 0)
        busy1, total1 = _cpu_times()
        cpus = os.cpu_count() or 1
        seconds = (total1 - total0) / cpus / _TICKS
        return {
            "node_cpu_pct": round(100 * cpus * (busy1 - busy0) / max(1, total1 - total0), 1),
            # The service's own CPU (its process trees), unlike node_cpu_pct not polluted by
            # whatever else runs on the machine: the cost per request is this over the requests.
            "service_cpu_pct": round(
                100 * _cpu_since(self._tree_cpu0, tree_cpu_ticks(list(self.roots()))) / max(seconds, 1e-9), 1
            ),
            "node_peak_rss_mb": round(self.peak_rss_mb, 1),
            "node_peak_pss_mb": round(self.peak_pss_mb, 1),
        }


_TICKS = os.sysconf("SC_CLK_TCK")


def _sample_peaks(roots: Callable[[], Iterable[int]], interval_s: float, peaks: Any, stop: Any) -> None:
    """NodeSampler's child process: peak RSS and PSS of the trees into ``peaks`` until ``stop``."""
    while True:
        rss, pss = tree_memory_mb(list(roots()))
        peaks[0], peaks[1] = max(peaks[0], rss), max(peaks[1], pss)
        if stop.wait(interval_s):
            return


def tree_cpu_ticks(roots: Sequence[int]) -> dict[int, int]:
    """User + system CPU clock ticks of every live process under ``roots``, by pid."""
    ticks: dict[int, int] = {}
    for pid in process_tree(roots):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks[pid] = int(fields[11]) + int(fields[12])
        except (OSError, ValueError, IndexError):
            continue
    return ticks


def _cpu_since(before: dict[int, int], after: dict[int, int]) -> float:
    """CPU seconds the processes alive at the end spent since ``before``, per pid: a replica
    that stops during the run (autoscaled down) takes its whole CPU time out of a plain sum,
    which made the service's CPU negative; its time in the run is lost instead (an undercount)."""
    return sum(t - before.get(pid, 0) for pid, t in after.items()) / _TICKS


def _cpu_times() -> tuple[int, int]:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def process_tree(roots: Sequence[int]) -> set[int]:
    kids = _children()
    seen: set[int] = set()
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            todo.extend(kids.get(pid, ()))
    return seen


def tree_memory_mb(roots: Sequence[int]) -> tuple[float, float]:
    rss = pss = 0
    for pid in process_tree(list(roots)):
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1])
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1])
        except OSError:
            continue
    return rss / 1024, pss / 1024


# -- closed loop with threads (CLI, hot-swap test) ---------------------------------------------

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


# -- command line ------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("url")
    p.add_argument("--bodies", type=Path, required=True, help="JSON list of request bodies")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--closed", type=int, metavar="CONCURRENCY")
    mode.add_argument("--open", type=float, metavar="RATE")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=1.0)
    args = p.parse_args(argv)
    bodies = json.loads(args.bodies.read_text())
    if args.closed:
        run = closed_loop(
            args.url, bodies, concurrency=args.closed, duration_s=args.duration, warmup_s=args.warmup
        )
    else:
        run = open_loop(args.url, bodies, rate=args.open, duration_s=args.duration, warmup_s=args.warmup)
    print(json.dumps(asyncio.run(run).summary()))


if __name__ == "__main__":
    main()
