"""One client against all: the live app on a real cluster, through real HTTP, with a real slow spec
host on loopback. A client flooding slow-spec requests must not make another client's requests
fail or slow down; Serve's client-set timeout headers must not keep a request past the deadline;
slow DNS look-ups must not take the threads the Ingress's other work needs.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from core.errors import Overloaded, SpecFetchTimeout
from deployments.serving.admission import CLIENT_SHARE_REFUSED_BY
from deployments.serving.spec_fetch import DnsResolver
from tests.faults import HEALTH_MAX_MS, record
from tests.spec_server import SpecServer, spec_server
from tests.specs import billing_spec
from tools.loadgen import HealthProbe

APP = "fairness"
SLOW_S = 3.0  # the slow spec host's delay: longer than the request deadline below
REQUEST_TIMEOUT_S = 1.5
SHARE = 4
FLOOD_CLIENTS = 48  # more than the Ingress's 32 slots: without a share they are all the flooder's
FLOOD_ROUTES = 20000
NORMAL_REQUESTS = 150
P99_RATIO_MAX = 6.0
# As `make run` deploys it (HAProxy refusing a client past its share at the edge): what held in
# every run on the shared machine (RELIABILITY.md).
MAKE_RUN_P99_RATIO_MAX = 6.0
MAKE_RUN_HEALTH_MAX_MS = HEALTH_MAX_MS
# Issue 19's bounds: held in 8 of 8 runs where nothing but the test loaded the machine (load
# average 1.4-5.3 at the run's end, RELIABILITY.md); with others' work on both CPUs the replicas
# (nice 15-19) wait for a CPU and only the bounds above held. In a whole `make test` the 100 ms
# bound failed twice at a load of 3.2 and 5.4 (one or two probes of HAProxy's own check at
# 104-286 ms, everything else in bounds): they are asserted where the load is at most one per
# CPU, and recorded in every run.
QUIET_P99_RATIO_MAX = 2.0
QUIET_HEALTH_MAX_MS = 100.0
QUIET_LOAD_MAX = 1 * (os.cpu_count() or 1)


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


# -- DNS: a bounded executor with a real timeout (no cluster) ------------------------------------


def test_slow_dns_lookups_time_out_and_leave_to_thread_free() -> None:
    """60 look-ups of a name whose resolver never answers in time: each ends by its timeout (or is
    refused at once past the pending cap), and ``asyncio.to_thread`` work meanwhile runs at once.
    With the loop's default executor those look-ups would hold its threads (min(32, cpus + 4) = 6
    here) and the to_thread call would wait for them."""
    release = threading.Event()

    def black_holed(host: str, port: int, **_: Any) -> list[tuple[Any, ...]]:
        release.wait(30)  # a name server that never answers: the thread is held
        return socket.getaddrinfo("127.0.0.1", port, type=socket.SOCK_STREAM)

    resolver = DnsResolver(threads=2, timeout_s=0.3, max_pending=8, getaddrinfo=black_holed)

    async def scenario() -> tuple[list[BaseException | Any], float, float]:
        started = time.perf_counter()
        lookups = [asyncio.ensure_future(resolver.lookup("slow.example", 80)) for _ in range(60)]
        await asyncio.sleep(0.05)
        t = time.perf_counter()
        await asyncio.to_thread(sum, range(10))
        to_thread_s = time.perf_counter() - t
        results = await asyncio.gather(*lookups, return_exceptions=True)
        return results, to_thread_s, time.perf_counter() - started

    try:
        results, to_thread_s, total_s = asyncio.run(scenario())
    finally:
        release.set()
        resolver.close()
    timeouts = [r for r in results if isinstance(r, SpecFetchTimeout)]
    refused = [r for r in results if isinstance(r, Overloaded)]
    assert len(timeouts) == 8 and len(refused) == 52, results  # 8 pending at most, the rest at once
    assert "took more than 0.3s" in str(timeouts[0])
    assert total_s < 1.0, total_s
    assert to_thread_s < 0.1, to_thread_s


def test_a_fast_name_resolves_through_the_bounded_resolver() -> None:
    resolver = DnsResolver(threads=1, timeout_s=2.0)
    try:
        infos = asyncio.run(resolver.lookup("localhost", 80))
    finally:
        resolver.close()
    assert {info[4][0] for info in infos} & {"127.0.0.1", "::1"}


# -- the share's refusals ------------------------------------------------------------------------


def test_a_client_past_its_share_is_refused_and_others_keep_theirs() -> None:
    """Past its share a client is refused at once, holding nothing; another client keeps its own
    share; a finished request frees its place, and no entry is kept per client gone."""
    from core.errors import ClientOverShare
    from deployments.serving.fairness import ClientShares

    shares = ClientShares(2)
    with shares.hold("a"), shares.hold("a"):
        with shares.hold("b"):
            pass
        for _ in range(20):
            with pytest.raises(ClientOverShare, match="client_max_concurrent = 2"):
                with shares.hold("a"):
                    pass
    assert shares.status() == {"limit": 2, "clients": 0, "refused": 20}
    with shares.hold("a"):
        pass


# -- on the cluster ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def specs() -> Iterator[SpecServer]:
    with spec_server() as server:
        server.add("/spec.json", json.dumps(billing_spec()).encode())
        # One URL per slow request: a cached or in-flight spec would not be slow.
        for i in range(FLOOD_ROUTES):
            server.add(f"/slow/{i}.json", json.dumps(billing_spec()).encode(), delay_s=SLOW_S)
        yield server


@pytest.fixture(scope="module")
def app(serve_cluster, specs, tmp_path_factory) -> Iterator[str]:
    from ray import serve

    from graph import build_app

    settings = {
        "allow_private_spec_hosts": True,  # the spec host is on loopback
        "data_dir": str(tmp_path_factory.mktemp("fairness-data")),
        "spec_fetch_timeout_s": 5.0,
        "request_timeout_s": REQUEST_TIMEOUT_S,
        "client_max_concurrent": SHARE,
    }
    serve.run(build_app({"settings": settings}), name=APP, route_prefix="/fair")
    try:
        yield serve_cluster + "/fair"
    finally:
        serve.delete(APP)


def _body(user: str, spec_url: str) -> dict[str, Any]:
    return {"user_id": user, "prompt": "pay the invoice", "spec_url": spec_url,
            "events": [{"endpoint": "GET /v1/invoices/in_1"}]}


def test_serve_timeout_headers_from_the_client_are_ignored(app: str, specs: SpecServer) -> None:
    """``x-request-timeout-seconds: 0`` disables Serve's timeout and ``x-request-disconnect-disabled``
    its cancellation; the request still ends at the Ingress's deadline, with a 504 naming it."""
    headers = {"x-request-timeout-seconds": "0", "x-request-disconnect-disabled": "?1"}
    with httpx.Client(timeout=30) as c:
        t = time.perf_counter()
        r = c.post(app + "/predict", json=_body("h", specs.url("/slow/0.json")), headers=headers)
        took = time.perf_counter() - t
    assert r.status_code == 504, r.text
    assert "request_timeout_s" in r.json()["error"]["message"]
    assert took < REQUEST_TIMEOUT_S + 1.0, took


def _flood(url: str, slow_base: str, clients: int, ready: Any, stop: Any, counts: Any) -> None:
    """The flooder, in a process of its own: ``clients`` threads post a new slow spec URL each,
    back to back, honouring ``Retry-After`` on a 429 (a slow-request flood, not a request-rate
    one, which is HAProxy admission's). Its own process so that its threads do not hold the GIL
    the measuring client needs: what is measured is the service, not the test's interpreter.
    At the lowest CPU priority, as the replicas run (``admission.lower_priority``): on a real
    network the flooder's CPU is not the service's; here it would otherwise outrank the replicas."""
    os.nice(19 - os.nice(0))
    ready.set()  # the interpreter has started (its imports are not the attack)
    tally: dict[str, int] = {}
    lock = threading.Lock()
    counter = iter(range(1, FLOOD_ROUTES))

    def one() -> None:
        with httpx.Client(timeout=30) as fc:
            while not stop.is_set():
                with lock:
                    i = next(counter, 0)
                try:
                    r = fc.post(url, json=_body("flooder", f"{slow_base}/slow/{i}.json"))
                    by = r.headers.get("x-refused-by")  # HAProxy's refusals say so
                    key = f"{r.status_code} {by}" if by else str(r.status_code)
                    retry_after = float(r.headers["retry-after"]) if r.status_code == 429 else 0.0
                except httpx.HTTPError as exc:
                    key, retry_after = type(exc).__name__, 0.0
                with lock:
                    tally[key] = tally.get(key, 0) + 1
                if retry_after:
                    stop.wait(retry_after)

    threads = [threading.Thread(target=one) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    counts.put(tally)


def _flood_against(base: str, floor_url: str, specs: SpecServer) -> dict[str, Any]:
    """The normal client's 150 requests on a quiet service, then 150 more while the flooder (a
    process of its own) floods; ``/health``, ``/livez`` and ``floor_url`` asked every 0.1 s
    throughout the flood. What was measured, as recorded."""
    normal_url = specs.url("/spec.json")
    with httpx.Client(timeout=30) as c:
        for _ in range(5):  # warm: the spec is cached, the graph has run
            assert c.post(base + "/predict", json=_body("normal", normal_url)).status_code == 200

        failures: list[str] = []

        def normal_run(n: int) -> tuple[list[float], list[int]]:
            latencies, statuses = [], []
            for _ in range(n):
                t = time.perf_counter()
                r = c.post(base + "/predict", json=_body("normal", normal_url))
                latencies.append(time.perf_counter() - t)
                statuses.append(r.status_code)
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text[:200]}")
            return latencies, statuses

        quiet, quiet_statuses = normal_run(NORMAL_REQUESTS)
        assert set(quiet_statuses) == {200}

        spawn = multiprocessing.get_context("spawn")
        ready, stop, counts = spawn.Event(), spawn.Event(), spawn.Queue()
        flooder = spawn.Process(target=_flood, args=(base + "/predict", specs.base_url, FLOOD_CLIENTS,
                                                      ready, stop, counts), daemon=True)
        flooder.start()
        try:
            assert ready.wait(60), "the flooding process did not start"
            # /livez: the Ingress alone; the floor: the edge alone, no replica.
            with (HealthProbe(base + "/health") as health, HealthProbe(base + "/livez") as livez,
                  HealthProbe(floor_url) as floor):
                time.sleep(SLOW_S + 2)  # the flood is in full swing: slots held by slow fetches
                loud, loud_statuses = normal_run(NORMAL_REQUESTS)
        finally:
            stop.set()
            flood: dict[str, int] = counts.get(timeout=60)
            flooder.join(30)

    ms = lambda s: round(s * 1000, 1)  # noqa: E731
    return {
        "quiet_p50_ms": ms(statistics.median(quiet)), "quiet_p99_ms": ms(_p99(quiet)),
        "flood_p50_ms": ms(statistics.median(loud)), "flood_p99_ms": ms(_p99(loud)),
        "p99_ratio": round(_p99(loud) / _p99(quiet), 2),
        "normal_ok": loud_statuses.count(200) / len(loud_statuses),
        "normal_statuses": {s: loud_statuses.count(s) for s in set(loud_statuses)},
        "flooder": flood, "health": health.summary(), "health_failed": health.failed,
        "livez": livez.summary(), "floor": floor.summary(), "normal_failures": failures[:3],
        "load_average": os.getloadavg(),
    }


def test_one_client_flooding_slow_specs_does_not_fail_or_slow_another(app: str, specs: SpecServer) -> None:
    report = _flood_against(app, app.removesuffix("/fair") + "/-/healthz", specs)  # Serve's proxy
    print("fairness:", json.dumps(report))
    record("one client's slow-spec flood against another", **report)
    assert report["flooder"].get("429", 0) > 0, report  # the flooder did hit its share (the Ingress's)
    assert report["normal_ok"] >= 0.99, report
    # The target is 2x the quiet p99, measured and recorded (RELIABILITY.md: 1.3-5.1x, median
    # 2.4x, at load average 0-15 with other engineers' work); a timed test on a shared
    # 2-CPU machine holds 6x. The missing share fails the success rate above (52 % ok) and this
    # by far (90x).
    assert report["p99_ratio"] <= P99_RATIO_MAX, report
    assert report["health_failed"] == 0 and report["health"]["max_ms"] < HEALTH_MAX_MS, report


def test_the_spec_fetcher_resolves_through_the_bounded_resolver() -> None:
    """The fetcher's look-ups go through its DnsResolver (so a slow name is cut at dns_timeout_s
    and holds none of the loop's default threads), not through loop.getaddrinfo."""
    from core.settings import load_settings
    from deployments.serving.spec_fetch import SpecFetcher

    release = threading.Event()

    def black_holed(host: str, port: int, **_: Any) -> list[tuple[Any, ...]]:
        release.wait(30)
        return []

    async def fetch() -> tuple[BaseException | None, float]:
        fetcher = SpecFetcher(load_settings(dns_timeout_s=0.3, spec_fetch_timeout_s=5))
        fetcher.resolver._getaddrinfo = black_holed  # a name server that never answers
        t = time.perf_counter()
        try:
            await fetcher.fetch("http://specs.example.com/openapi.json")
        except Exception as exc:  # noqa: BLE001 - the error is the result
            return exc, time.perf_counter() - t
        finally:
            await fetcher.aclose()
        return None, time.perf_counter() - t

    try:
        error, took = asyncio.run(fetch())
    finally:
        release.set()
    assert isinstance(error, SpecFetchTimeout) and "resolving the spec host" in str(error), error
    assert took < 1.5, took


# -- as `make run` deploys it: HAProxy with admission control, throughput-optimised Serve -------


@pytest.fixture(scope="module")
def make_run_app(specs: SpecServer, tmp_path_factory) -> Iterator[str]:
    from benchmarks.cluster import RayHead, make_run_env

    env = {
        **make_run_env(client_share=SHARE),
        "RAY_AUTH_MODE": "disabled",
        "OPENSESAME_ALLOW_PRIVATE_SPEC_HOSTS": "1",  # the spec host is on loopback
        "OPENSESAME_DATA_DIR": str(tmp_path_factory.mktemp("fairness-make-run")),
        "OPENSESAME_SPEC_FETCH_TIMEOUT_S": "5",
        "OPENSESAME_REQUEST_TIMEOUT_S": str(REQUEST_TIMEOUT_S),
        "OPENSESAME_CLIENT_MAX_CONCURRENT": str(SHARE),
    }
    with RayHead(env=env) as head:
        yield head.deploy(json.dumps(_body("normal", specs.url("/spec.json"))).encode()).url


@pytest.mark.serve
@pytest.mark.slow
@pytest.mark.faults
def test_one_client_flooding_slow_specs_as_make_run_deploys_it(make_run_app: str, specs: SpecServer) -> None:
    report = _flood_against(make_run_app, make_run_app + "/-/healthz", specs)  # HAProxy's own
    print("fairness (make run):", json.dumps(report))
    record("one client's slow-spec flood against another, as make run deploys it", **report)
    # HAProxy refuses the flooder's excess itself (admission.client_share_lines): none of it
    # reaches the Ingress, whose own share then never has to refuse.
    assert report["flooder"].get(f"429 {CLIENT_SHARE_REFUSED_BY}", 0) > 0, report
    assert "429" not in report["flooder"], report
    assert report["normal_ok"] >= 0.99, report
    assert report["p99_ratio"] <= MAKE_RUN_P99_RATIO_MAX, report
    assert report["health_failed"] == 0 and report["health"]["max_ms"] < MAKE_RUN_HEALTH_MAX_MS, report
    if report["load_average"][0] <= QUIET_LOAD_MAX:
        assert report["p99_ratio"] <= QUIET_P99_RATIO_MAX, report
        assert report["health"]["max_ms"] < QUIET_HEALTH_MAX_MS, report
