"""The load generator on real processes and a real HTTP server on loopback (no cluster needed):
the node sampler, and what a run says of the client's own stops."""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tools.loadgen import HealthProbe, NodeSampler, open_loop, probe, tree_cpu_ticks

BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < {s}: pass\n"


def test_a_process_that_stops_during_a_run_does_not_make_the_service_cpu_negative() -> None:
    # Like a replica autoscaled down in the middle of a level: it burned CPU before the run and
    # exits in it; a survivor burns CPU in the run and is still there at the end.
    leaver = subprocess.Popen([sys.executable, "-c", BURN.format(s=0.6) + "input()"],
                              stdin=subprocess.PIPE, text=True)
    survivor = None
    try:
        while _cpu_s(leaver.pid) < 0.5:
            time.sleep(0.01)

        async def run() -> dict[str, float]:
            nonlocal survivor
            async with NodeSampler(lambda: [os.getpid()], interval_s=0.1) as sampler:
                leaver.communicate("\n", timeout=10)
                survivor = subprocess.Popen([sys.executable, "-c", BURN.format(s=0.3) + "input()"],
                                            stdin=subprocess.PIPE, text=True)
                while _cpu_s(survivor.pid) < 0.25:
                    await asyncio.sleep(0.01)
            return sampler.result()

        result = asyncio.run(run())
        assert result["service_cpu_pct"] > 0
    finally:
        for p in (leaver, survivor):
            if p is not None and p.poll() is None:
                p.kill()


def _cpu_s(pid: int) -> float:
    return tree_cpu_ticks([pid])[pid] / os.sysconf("SC_CLK_TCK")


class _Refuses(BaseHTTPRequestHandler):
    """Answers every POST at once as HAProxy's admission control does: 503, Retry-After."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the load generator's connections expect

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(503)
        self.send_header("Retry-After", "1")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # what came due during a stop connects at once


@pytest.fixture(scope="module")
def refusing_url() -> Iterator[str]:
    httpd = _Server(("127.0.0.1", 0), _Refuses)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/predict"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_requests_that_came_due_while_the_client_stopped_are_marked_late(refusing_url: str) -> None:
    stall_s = 0.3

    async def run() -> tuple[list, float, float]:
        async def stop_the_loop() -> tuple[float, float]:
            await asyncio.sleep(0.6)
            began = time.perf_counter()
            time.sleep(stall_s)  # blocks the event loop, as a long collection or a lost CPU does
            return began, time.perf_counter()

        t_start = time.perf_counter()
        load, (began, ended) = await asyncio.gather(
            open_loop(refusing_url, [{"q": 1}], rate=200, duration_s=1.0, warmup_s=0.1), stop_the_loop()
        )
        return load.samples, began - t_start, ended - t_start

    samples, began, ended = asyncio.run(run())
    assert samples and all(s.status == 503 for s in samples)
    # Due in the first half of the stop: none could be sent before it ended, half of it later.
    during = [s for s in samples if began < s.sent < began + stall_s / 2]
    assert during and all(s.late_s > ended - began - stall_s / 2 - 0.01 for s in during), during[:3]


def test_runs_side_by_side_share_one_freeze_of_the_heap_and_time_the_collections(refusing_url: str) -> None:
    async def run() -> tuple[dict, list, int]:
        async def collect_midway() -> int:
            await asyncio.sleep(0.3)
            frozen = gc.get_freeze_count()  # the objects of before the run: out of collections
            gc.collect()
            return frozen

        load, floor, frozen = await asyncio.gather(
            open_loop(refusing_url, [{"q": 1}], rate=50, duration_s=0.5, warmup_s=0.1),
            probe(refusing_url, interval_s=0.05, duration_s=0.8, warmup_s=0.1),
            collect_midway(),
        )
        return load.extra, floor, frozen

    extra, floor, frozen = asyncio.run(run())
    assert frozen > 1000 and floor
    assert extra["client_gc_max_ms"] > 0  # the collection in the middle of the load, timed
    # The load ended first; the heap stayed frozen for the probe, and is thawed when both are done.
    assert gc.get_freeze_count() == 0 and not any("_timed" in repr(cb) for cb in gc.callbacks)


def test_the_health_probe_counts_failures_and_slow_answers() -> None:
    """Answers 200, then one slow 200 (0.25 s), then 503s: the probe's summary says which."""
    answers = iter([(200, 0.0), (200, 0.25)])

    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            status, wait = next(answers, (503, 0.0))
            time.sleep(wait)
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with HealthProbe(f"http://127.0.0.1:{server.server_address[1]}/health", every_s=0.01,
                         timeout_s=5.0, slow_ms=200) as health:
            while len(health.ms) < 4:
                time.sleep(0.01)
    finally:
        server.shutdown()
    summary = health.summary()
    assert summary["n"] >= 4 and summary["failed"] == summary["n"] - 2, summary
    assert summary["failures"][0].startswith("503"), summary
    assert summary["max_ms"] == 5000.0  # a failed answer counts as the timeout
    slow = [ms for _, ms in health.slow]
    assert 250 <= slow[0] < 5000 and slow[1:] == [5000] * (len(slow) - 1), health.slow
