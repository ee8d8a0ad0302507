"""SpecFetcher against a real loopback HTTP server, plus the address policy on its own."""

from __future__ import annotations

import asyncio
import gzip
import ipaddress
import json
import threading
import time
import tracemalloc
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from core.errors import (
    SpecFetchFailed,
    SpecFetchTimeout,
    SpecHostRefused,
    SpecTooLarge,
)
from core.settings import Settings, load_settings
from deployments.serving.spec_fetch import HostPolicy, SpecFetcher, refusal_reason

MAX_BYTES = 64 * 1024
TIMEOUT_S = 0.5  # the fetch timeout of the tests that make it fire
# Every other fetch gets a timeout a loaded CI machine cannot reach by accident (a 0.5 s one did,
# once: test_fetches_body_and_content_type timed out while the overload test's load wound down).
OK_TIMEOUT_S = 10.0
STALL_S = 5.0  # how long the stalling routes hold back; "did not wait for it" means well under
GOOD = json.dumps(
    {"openapi": "3.0.0", "info": {"title": "t", "version": "1"},
     "paths": {"/pets": {"get": {"operationId": "listPets", "responses": {"200": {}}}}}}
).encode()


BOMB_DECODED = 128 * 1024 * 1024


def _gzip(chunks: Iterator[bytes] | list[bytes], wbits: int = 31) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, wbits)
    return b"".join([*(compressor.compress(c) for c in chunks), compressor.flush()])


# "gzip, gzip": 373 bytes on the wire, 130 KB after one layer, 128 MiB after both.
GZIP_GZIP_BOMB = _gzip([_gzip(b" " * (1 << 20) for _ in range(BOMB_DECODED >> 20))])


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so connection reuse can be observed
    server: _SpecServer

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        return

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.connections += 1

    def do_GET(self) -> None:
        with self.server.lock:
            self.server.hits.append(self.path)
        route = getattr(self, "_" + self.path.strip("/").split("/")[0].replace("-", "_"), None)
        if route is None:
            self._send(404, b"no such route")
        else:
            route()

    def _send(self, status: int, body: bytes, **headers: str) -> None:
        self.send_response(status)
        named = {"Content-Type": "application/json"}
        named.update({name.replace("_", "-"): value for name, value in headers.items()})
        for name, value in named.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str, status: int = 302) -> None:
        self._send(status, b"", Location=location)

    # routes ---------------------------------------------------------------------------------
    def _good(self) -> None:
        self._send(200, GOOD)

    def _yaml(self) -> None:
        self._send(200, b"openapi: 3.0.0\n", Content_Type="application/yaml")

    def _slow(self) -> None:  # no headers until long after the fetch timeout
        self.server.release.wait(STALL_S)
        self._send(200, GOOD)

    def _trickle(self) -> None:  # every read is quick, the whole body is not
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        for _ in range(1000):
            if self.server.release.wait(0.05):
                return
            self.wfile.write(b" ")
            self.wfile.flush()

    def _huge_declared(self) -> None:  # declares too much, then stalls: only the header is quick
        self.send_response(200)
        self.send_header("Content-Length", str(MAX_BYTES + 1))
        self.end_headers()
        self.server.release.wait(STALL_S)

    def _huge_undeclared(self) -> None:  # no Content-Length: body ends when the connection closes
        self.send_response(200)
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        chunk = b"x" * 65536
        try:
            for _ in range(1024):  # 64 MiB, far more than socket buffers absorb
                self.wfile.write(chunk)
        except OSError:
            self.server.hung_up.set()  # the client stopped reading once over the cap

    def _gzip_bomb(self) -> None:  # tiny on the wire, over the cap once decoded
        self._send(200, gzip.compress(b" " * (MAX_BYTES * 4)), Content_Encoding="gzip")

    def _gzip_gzip_bomb(self) -> None:
        self._send(200, GZIP_GZIP_BOMB, Content_Encoding="gzip, gzip")

    def _gzip_gzip(self) -> None:  # a valid spec in two layers
        self._send(200, _gzip([_gzip([GOOD])]), Content_Encoding="gzip, gzip")

    def _deflate(self) -> None:  # zlib-wrapped, as the RFC says
        self._send(200, _gzip([GOOD], wbits=15), Content_Encoding="deflate")

    def _raw_deflate(self) -> None:  # no zlib header, as some servers send it
        self._send(200, _gzip([GOOD], wbits=-15), Content_Encoding="deflate")

    def _gzip_many(self) -> None:
        body = GOOD
        for _ in range(4):
            body = _gzip([body])
        self._send(200, body, Content_Encoding="gzip, gzip, gzip, gzip")

    def _gzip_corrupt(self) -> None:
        self._send(200, b"\x1f\x8b not gzip", Content_Encoding="gzip")

    def _loop(self) -> None:
        self._redirect("/loop-back")

    def _loop_back(self) -> None:
        self._redirect("/loop")

    def _chain(self) -> None:  # /chain/N redirects N times, then serves the spec
        n = int(self.path.rsplit("/", 1)[1])
        self._redirect(f"/chain/{n - 1}" if n > 1 else "/good", 301 if n % 2 else 307)

    def _relative(self) -> None:
        self._redirect("../good")

    def _to_private(self) -> None:
        self._redirect(f"http://127.0.0.2:{self.server.server_port}/good")

    def _to_metadata(self) -> None:
        self._redirect("http://169.254.169.254/latest/meta-data/")

    def _to_ftp(self) -> None:
        self._redirect("ftp://example.com/spec.json")

    def _no_location(self) -> None:
        self._send(302, b"")

    def _unavailable(self) -> None:
        self._send(503, b"down")


class _SpecServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.release = threading.Event()  # wakes stalled handlers at teardown
        self.hits: list[str] = []
        self.connections = 0
        self.hung_up = threading.Event()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.server_port}{path}"


@pytest.fixture(scope="module")
def server() -> Iterator[_SpecServer]:
    srv = _SpecServer()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.release.set()
    srv.shutdown()
    srv.server_close()


def _settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "allow_private_spec_hosts": True,  # the test server is on loopback
        "spec_max_bytes": MAX_BYTES,
        "spec_fetch_timeout_s": OK_TIMEOUT_S,
        "spec_max_redirects": 5,
    }
    values.update(overrides)
    return load_settings(environ={}, **values)


def _fetch(url: str, settings: Settings | None = None, **kwargs: Any) -> tuple[bytes, str | None]:
    async def run() -> tuple[bytes, str | None]:
        fetcher = SpecFetcher(settings or _settings(), **kwargs)
        try:
            return await fetcher.fetch(url)
        finally:
            await fetcher.aclose()

    return asyncio.run(run())


# -- end to end ---------------------------------------------------------------------------------


def test_fetches_body_and_content_type(server: _SpecServer) -> None:
    body, content_type = _fetch(server.url("/good"))
    assert body == GOOD
    assert content_type == "application/json"
    assert _fetch(server.url("/yaml"))[1] == "application/yaml"


def test_one_pooled_connection_is_reused(server: _SpecServer) -> None:
    async def run() -> None:
        fetcher = SpecFetcher(_settings())
        try:
            before = server.connections
            for _ in range(3):
                assert (await fetcher.fetch(server.url("/good")))[0] == GOOD
            assert server.connections - before == 1
        finally:
            await fetcher.aclose()

    asyncio.run(run())


def test_one_fetcher_keeps_working_after_failures(server: _SpecServer) -> None:
    """The replica's single client must not be left broken by a refusal, timeout or size cap."""

    async def run() -> None:
        fetcher = SpecFetcher(_settings(allow_private_spec_hosts=False,
                                        spec_fetch_timeout_s=TIMEOUT_S),
                              trusted_networks=["127.0.0.1/32"])
        try:
            for path, error in [("/to-private", SpecHostRefused), ("/slow", SpecFetchTimeout),
                                ("/huge-declared", SpecTooLarge), ("/missing", SpecFetchFailed)]:
                with pytest.raises(error):
                    await fetcher.fetch(server.url(path))
                assert (await fetcher.fetch(server.url("/good")))[0] == GOOD
        finally:
            await fetcher.aclose()

    asyncio.run(run())


@pytest.mark.parametrize(
    "url, match",
    [
        ("ftp://example.com/spec.json", "http or https"),
        ("file:///etc/passwd", "http or https"),
        ("/relative/path", "http or https"),
        ("http:///no-host", "no host"),
        ("http://0177.0.0.1/", "not a valid URL"),  # httpx itself rejects leading-zero octets
    ],
)
def test_refuses_unusable_urls(url: str, match: str) -> None:
    with pytest.raises(SpecHostRefused, match=match):
        _fetch(url)


@pytest.mark.parametrize("host", ["2130706433", "0x7f.0.0.1", "127.1", "localhost"])
def test_refuses_private_hosts_before_connecting(server: _SpecServer, host: str) -> None:
    hits = len(server.hits)
    with pytest.raises(SpecHostRefused, match="is refused: specs are fetched only from public") as info:
        _fetch(server.url("/good", host=host), _settings(allow_private_spec_hosts=False))
    assert "127.0.0.1" not in str(info.value) and "loopback" not in str(info.value)  # logged only
    assert len(server.hits) == hits


def test_trusted_network_allows_one_private_host_only(server: _SpecServer) -> None:
    settings = _settings(allow_private_spec_hosts=False)
    assert _fetch(server.url("/good"), settings, trusted_networks=["127.0.0.1/32"])[0] == GOOD
    hits = len(server.hits)
    with pytest.raises(SpecHostRefused, match="is refused") as info:
        _fetch(server.url("/to-private"), settings, trusted_networks=["127.0.0.1/32"])
    assert "resolves to" not in str(info.value)
    assert server.hits[hits:] == ["/to-private"]  # first hop allowed, second refused


def test_redirect_to_metadata_is_refused_even_with_private_hosts(server: _SpecServer) -> None:
    with pytest.raises(SpecHostRefused, match="is refused") as info:
        _fetch(server.url("/to-metadata"))
    assert "resolves to" not in str(info.value)


def test_follows_redirects_within_the_limit(server: _SpecServer) -> None:
    assert _fetch(server.url("/chain/5"))[0] == GOOD
    assert _fetch(server.url("/relative/x"))[0] == GOOD  # Location resolved against the URL


def test_too_many_redirects(server: _SpecServer) -> None:
    with pytest.raises(SpecFetchFailed, match="too many redirects"):
        _fetch(server.url("/chain/6"))
    with pytest.raises(SpecFetchFailed, match="too many redirects"):
        _fetch(server.url("/chain/1"), _settings(spec_max_redirects=0))


def test_redirect_loop(server: _SpecServer) -> None:
    with pytest.raises(SpecFetchFailed, match="redirect loop"):
        _fetch(server.url("/loop"))


def test_bad_redirects(server: _SpecServer) -> None:
    with pytest.raises(SpecHostRefused, match="http or https"):
        _fetch(server.url("/to-ftp"))
    with pytest.raises(SpecFetchFailed, match="without Location"):
        _fetch(server.url("/no-location"))


@pytest.mark.parametrize("path, status", [("/missing", "404"), ("/unavailable", "503")])
def test_upstream_error_status(server: _SpecServer, path: str, status: str) -> None:
    with pytest.raises(SpecFetchFailed, match=f"answered {status}") as info:
        _fetch(server.url(path))
    assert info.value.status == 502


@pytest.mark.parametrize("path", ["/slow", "/trickle"])
def test_timeouts(server: _SpecServer, path: str) -> None:
    started = time.monotonic()
    with pytest.raises(SpecFetchTimeout) as info:
        _fetch(server.url(path), _settings(spec_fetch_timeout_s=TIMEOUT_S))
    assert info.value.status == 504
    assert time.monotonic() - started < STALL_S / 2  # the timeout ended it, not the server


def test_declared_size_over_cap_fails_without_reading(server: _SpecServer) -> None:
    started = time.monotonic()
    with pytest.raises(SpecTooLarge, match=f"{MAX_BYTES + 1} bytes"):
        _fetch(server.url("/huge-declared"))
    assert time.monotonic() - started < STALL_S / 2  # did not wait for the stalled body


def test_undeclared_size_over_cap_stops_reading(server: _SpecServer) -> None:
    with pytest.raises(SpecTooLarge, match="larger than"):
        _fetch(server.url("/huge-undeclared"))
    assert server.hung_up.wait(2), "the client read the whole body instead of hanging up"


def test_decoded_size_counts(server: _SpecServer) -> None:
    with pytest.raises(SpecTooLarge):
        _fetch(server.url("/gzip-bomb"))


def test_stacked_gzip_bomb_is_refused_with_bounded_memory(server: _SpecServer) -> None:
    assert len(GZIP_GZIP_BOMB) < 4096
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(SpecTooLarge, match=f"larger than the {MAX_BYTES}-byte limit"):
            _fetch(server.url("/gzip-gzip-bomb"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.monotonic() - started < 2
    # httpx inflated the whole 128 MiB in one call (a 256 MiB peak); one step at a time it is
    # the 64 KB cap plus a few steps.
    assert peak < 8 * 1024 * 1024, peak


@pytest.mark.parametrize("path", ["/gzip-gzip", "/deflate", "/raw-deflate"])
def test_encoded_specs_are_decoded(server: _SpecServer, path: str) -> None:
    assert _fetch(server.url(path))[0] == GOOD


def test_undecodable_or_too_deeply_encoded_bodies_fail(server: _SpecServer) -> None:
    with pytest.raises(SpecFetchFailed, match="could not be decoded"):
        _fetch(server.url("/gzip-corrupt"))
    with pytest.raises(SpecFetchFailed, match="4 content encodings; at most 3"):
        _fetch(server.url("/gzip-many"))


def test_dns_failure_is_a_fetch_failure() -> None:
    with pytest.raises(SpecFetchFailed, match="cannot resolve"):
        _fetch("http://no-such-host.invalid/spec.json")


# -- address policy on its own ------------------------------------------------------------------


@pytest.mark.parametrize(
    "address, reason",
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fc00::1", "private"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("100.64.0.1", "non-global"),  # carrier-grade NAT
        ("169.254.169.254", "cloud metadata"),
        ("fd00:ec2::254", "cloud metadata"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("::ffff:169.254.169.254", "cloud metadata"),
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
        ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
        ("::ffff:8.8.8.8", None),
    ],
)
def test_refusal_reason(address: str, reason: str | None) -> None:
    assert refusal_reason(address) == reason


@pytest.mark.parametrize("address", ["127.0.0.1", "10.0.0.1", "::1", "0.0.0.0"])
def test_allow_private_allows_all_but_metadata(address: str) -> None:
    assert refusal_reason(address, allow_private=True) is None
    assert refusal_reason("169.254.169.254", allow_private=True) == "cloud metadata"
    assert refusal_reason("::ffff:169.254.169.254", allow_private=True) == "cloud metadata"


@pytest.mark.parametrize("host", ["2130706433", "0177.0.0.1", "0x7f.0.0.1", "127.1", "[::1]"])
def test_numeric_host_spellings_are_resolved_then_refused(host: str) -> None:
    policy = HostPolicy()
    with pytest.raises(SpecHostRefused, match="is refused"):
        asyncio.run(policy.resolve(host.strip("[]"), 80))
    trusting = HostPolicy(trusted_networks=(ipaddress.ip_network("127.0.0.0/8"),
                                            ipaddress.ip_network("::1/128")))
    assert asyncio.run(trusting.resolve(host.strip("[]"), 80)) in (["127.0.0.1"], ["::1"])
