"""Admission control under a burst, in a real HAProxy: the lines ``make run`` hands Ray
(``deployments/serving/admission.py``, with its defaults) in front of a loopback
server that holds each request until the whole burst has arrived, as a busy Ingress replica
would. The overload test measures the same thing on a whole cluster for minutes
(``tests/test_overload.py``); this one fails in seconds when the limit or the refusal is gone."""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from benchmarks.cluster import free_port, wait_http
from deployments.serving.admission import (
    MAX_CONCURRENT_PER_INGRESS,
    REFUSED_BY,
    REFUSED_BY_HEADER,
    haproxy_health_check_inter,
)

haproxy = pytest.importorskip("ray.serve._private.haproxy")

BURST = 3 * MAX_CONCURRENT_PER_INGRESS


def test_a_burst_past_the_admission_limit_is_refused_by_haproxy_and_never_reaches_the_replica(
    tmp_path: Path,
) -> None:
    lock = threading.Lock()
    seen = {"now": 0, "most": 0, "total": 0}
    # Held until every request of the burst is either held here or answered: however slowly a
    # loaded machine sends the burst, none is let through by a slot freed meanwhile.
    release = threading.Event()

    class Busy(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            self.rfile.read(int(self.headers["content-length"]))
            with lock:
                seen["now"] += 1
                seen["total"] += 1
                seen["most"] = max(seen["most"], seen["now"])
            release.wait(30)
            with lock:
                seen["now"] -= 1
            self.send_response(200)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def do_GET(self) -> None:  # noqa: N802 - answered at once: the test waits for HAProxy with it
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Busy)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = free_port()
    # As Ray's template writes it: "default-server ... inter <the value> check" (test_admission.py
    # renders the template itself); the value's last line is a comment Ray's " check" ends.
    value = haproxy_health_check_inter()
    (tmp_path / "h.cfg").write_text(
        "defaults\n    mode http\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n"
        "    timeout queue 30s\n"
        f"frontend f\n    bind 127.0.0.1:{port}\n    default_backend b\n"
        f"backend b\n    default-server inter {value} check\n"
        f"    server s 127.0.0.1:{server.server_address[1]}\n")
    proc = subprocess.Popen([haproxy.get_haproxy_binary(), "-f", str(tmp_path / "h.cfg")])
    try:
        wait_http(f"http://127.0.0.1:{port}/", timeout_s=10)

        async def burst() -> list[httpx.Response]:
            limits = httpx.Limits(max_connections=BURST)
            async with httpx.AsyncClient(timeout=30, limits=limits) as c:
                calls = [asyncio.ensure_future(
                    c.post(f"http://127.0.0.1:{port}/predict", json={"user_id": f"u{i}"}))
                    for i in range(BURST)]
                # Released once the slots are full and nothing has moved for a second with all
                # but the few that may wait in HAProxy's queue (the first to find the slots full,
                # and one racing it on HAProxy's other thread) answered or held.
                deadline, last, since = time.monotonic() + 20, (-1, -1), time.monotonic()
                while time.monotonic() < deadline:
                    state = (sum(t.done() for t in calls), seen["now"])
                    if state != last:
                        last, since = state, time.monotonic()
                    elif (state[1] == MAX_CONCURRENT_PER_INGRESS and sum(state) >= BURST - 2
                          and time.monotonic() - since > 1.0):
                        break
                    await asyncio.sleep(0.02)
                release.set()
                return await asyncio.gather(*calls)

        answers = asyncio.run(burst())
    finally:
        proc.terminate()
        proc.wait(10)
        server.shutdown()
    statuses = Counter(r.status_code for r in answers)
    print("admission burst:", dict(statuses), seen)
    refused = [r for r in answers if r.status_code == 503]
    # The replica holds the limit and no more; the excess is refused, not queued behind it.
    assert seen["most"] == MAX_CONCURRENT_PER_INGRESS, (seen, statuses)
    assert set(statuses) == {200, 503} and statuses[503] >= BURST - MAX_CONCURRENT_PER_INGRESS - 2, statuses
    assert seen["total"] == statuses[200]  # a refused request never reached the replica
    for r in refused:
        assert r.headers.get("retry-after") == "1", r.headers
        assert r.headers.get(REFUSED_BY_HEADER) == REFUSED_BY, r.headers
        assert r.json()["error"]["status"] == 503
