"""Fetch a spec document over HTTP(S) without letting a caller point the service at itself.

Every TCP connection the client opens goes through :class:`_GuardedBackend`, which resolves the
host, refuses the whole host if any address is private/loopback/metadata/..., and connects to the
address it checked. Checking at connect time (rather than once before the request) covers
redirect hops and closes the DNS-rebinding window; TLS still verifies the certificate against the
host name because httpcore passes the original name as SNI.
"""

from __future__ import annotations

import asyncio
import functools
import http
import ipaddress
import logging
import socket
import ssl
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import httpcore
import httpx

from core.errors import Overloaded, SpecFetchFailed, SpecFetchTimeout, SpecHostRefused, SpecTooLarge
from core.settings import Settings

__all__ = ["SpecFetcher", "HostPolicy", "DnsResolver", "refusal_reason"]

log = logging.getLogger(__name__)

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

# Credentials live behind these: refused even when private hosts are allowed.
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, ...
        "169.254.170.2",  # AWS ECS task credentials
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "100.100.100.200",  # Alibaba Cloud
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_REFUSED_KINDS = (
    ("is_unspecified", "unspecified"),
    ("is_loopback", "loopback"),
    ("is_link_local", "link-local"),
    ("is_multicast", "multicast"),
    ("is_reserved", "reserved"),
    ("is_private", "private"),
)
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
# Content encodings are undone here, a bounded step at a time (see _Decoder), not by httpx.
_INFLATE_STEP = 64 * 1024
MAX_CONTENT_ENCODINGS = 3
_HEADERS = {
    "accept": "application/json, application/yaml;q=0.9, text/yaml;q=0.9, */*;q=0.5",
    "accept-encoding": "gzip, deflate",
    "user-agent": "opensesame-predictor (spec fetcher)",
}


def refusal_reason(address: str | IPAddress, *, allow_private: bool = False) -> str | None:
    """Why connecting to ``address`` is refused (e.g. ``"loopback"``), or None if it is allowed.

    IPv4 addresses embedded in IPv6 (``::ffff:127.0.0.1``, 6to4, NAT64) are judged by the IPv4
    address they reach, so they cannot smuggle a private address past the check.
    """
    addr = ipaddress.ip_address(address) if isinstance(address, str) else address
    if isinstance(addr, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(addr)
        if embedded is not None:
            return refusal_reason(embedded, allow_private=allow_private)
        addr = ipaddress.IPv6Address(addr.compressed.split("%", 1)[0])  # drop a scope id
    if addr in METADATA_ADDRESSES:
        return "cloud metadata"
    if allow_private:
        return None
    for attribute, kind in _REFUSED_KINDS:
        if getattr(addr, attribute):
            return kind
    return None if addr.is_global else "non-global"


def _embedded_ipv4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr.sixtofour is not None:
        return addr.sixtofour
    if addr in _NAT64:
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return None


GetAddrInfo: TypeAlias = Callable[..., list[tuple[Any, ...]]]


class DnsResolver:
    """``getaddrinfo`` in threads of its own, each look-up held to ``timeout_s``.

    A look-up cannot be cancelled: a slow name keeps its thread until the system resolver gives
    up. In the default executor those threads are the ones every ``asyncio.to_thread`` of the
    replica waits for (parsing, SQLite, ``GET /feedback``), so slow names starved them all. Here
    they use at most ``threads`` threads, and past ``max_pending`` unfinished look-ups (stuck ones
    included) new ones are refused at once instead of queueing.
    """

    def __init__(self, *, threads: int = 4, timeout_s: float = 2.0, max_pending: int | None = None,
                 getaddrinfo: GetAddrInfo = socket.getaddrinfo) -> None:
        self.timeout_s = timeout_s
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="dns")
        self._slots = threading.BoundedSemaphore(max_pending or 4 * threads)
        self._getaddrinfo = getaddrinfo
        self.timeouts = 0
        self.refused = 0

    async def lookup(self, host: str, port: int) -> list[tuple[Any, ...]]:
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            raise Overloaded("too many spec host names are being resolved; retry shortly")
        try:
            future = self._pool.submit(self._getaddrinfo, host, port, type=socket.SOCK_STREAM)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _: self._slots.release())  # when the thread is free again
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.timeout_s)
        except TimeoutError:
            self.timeouts += 1
            raise SpecFetchTimeout(
                f"resolving the spec host {host!r} took more than {self.timeout_s:g}s"
            ) from None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


@dataclass(frozen=True, slots=True)
class HostPolicy:
    """Which addresses spec hosts may resolve to.

    ``trusted_networks`` are allowed even when private (e.g. an internal spec registry); cloud
    metadata addresses are never allowed.
    """

    allow_private: bool = False
    trusted_networks: tuple[IPNetwork, ...] = ()
    resolver: DnsResolver | None = field(default=None, compare=False)  # None: the loop's default

    def refusal(self, address: IPAddress) -> str | None:
        reason = refusal_reason(address, allow_private=self.allow_private)
        if reason is None or reason == "cloud metadata":
            return reason
        plain = _embedded_ipv4(address) if isinstance(address, ipaddress.IPv6Address) else None
        if any((plain or address) in net for net in self.trusted_networks):
            return None
        return reason

    async def resolve(self, host: str, port: int) -> list[str]:
        """The addresses of ``host``, all checked; raises if any one is refused.

        Decimal, octal and hex IPv4 spellings (``2130706433``, ``0177.0.0.1``) are resolved by
        the system resolver like any name, so they are caught by checking what comes back.
        """
        try:
            if self.resolver is not None:
                infos = await self.resolver.lookup(host, port)
            else:
                infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise SpecFetchFailed(f"cannot resolve spec host {host!r}: {exc.strerror}") from None
        except UnicodeError:
            raise SpecHostRefused(f"spec host {host!r} is not a valid host name") from None
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not addresses:
            raise SpecFetchFailed(f"spec host {host!r} has no addresses")
        for raw in addresses:
            address = ipaddress.ip_address(raw)
            reason = self.refusal(address)
            if reason is not None:
                # The address and its kind go to the log only: a client must not learn what
                # internal names resolve to.
                log.warning("spec host %r refused: it resolves to %s (%s)", host, address, reason)
                # Not which kind of address it is: the client learns only what a setting can lift.
                hint = "" if reason == "cloud metadata" else (
                    " (OPENSESAME_ALLOW_PRIVATE_SPEC_HOSTS=1 lifts this, for development)")
                raise SpecHostRefused(
                    f"spec host {host!r} is refused: specs are fetched only from public "
                    f"addresses{hint}"
                )
        return addresses


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """Connects only to addresses :class:`HostPolicy` accepted, trying each in turn."""

    def __init__(self, *, policy: HostPolicy) -> None:
        self._policy = policy
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        last_error: Exception | None = None
        for address in await self._policy.resolve(host, port):
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout=timeout, local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last_error = exc
        assert last_error is not None  # resolve() returns at least one address
        raise last_error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise SpecHostRefused("unix sockets are not spec hosts")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    # Loading the CA bundle costs tens of ms; one context serves every client in the process.
    return httpx.create_ssl_context(trust_env=False)


def _guarded_transport(*, policy: HostPolicy, limits: httpx.Limits) -> httpx.AsyncHTTPTransport:
    transport = httpx.AsyncHTTPTransport(limits=limits, trust_env=False)
    if not isinstance(getattr(transport, "_pool", None), httpcore.AsyncConnectionPool):
        raise RuntimeError("this httpx version has no AsyncHTTPTransport._pool to guard")
    # httpx has no public hook for the network backend, so swap in an equivalent pool using ours.
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=_ssl_context(),
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=_GuardedBackend(policy=policy),
    )
    return transport


class SpecFetcher:
    """Downloads spec documents; one per replica, sharing one pooled keep-alive client."""

    def __init__(
        self,
        settings: Settings,
        *,
        trusted_networks: Iterable[str | IPNetwork] = (),
        max_connections: int = 20,
    ) -> None:
        self._max_bytes = settings.spec_max_bytes
        self._timeout_s = settings.spec_fetch_timeout_s
        self._max_redirects = settings.spec_max_redirects
        self.resolver = DnsResolver(threads=settings.dns_threads, timeout_s=settings.dns_timeout_s)
        self.policy = HostPolicy(
            allow_private=settings.allow_private_spec_hosts,
            trusted_networks=tuple(ipaddress.ip_network(n) for n in trusted_networks),
            resolver=self.resolver,
        )
        limits = httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_connections // 2,
            keepalive_expiry=30.0,
        )
        self._client = httpx.AsyncClient(
            transport=_guarded_transport(policy=self.policy, limits=limits),
            timeout=httpx.Timeout(self._timeout_s, connect=min(self._timeout_s, 5.0)),
            follow_redirects=False,  # each hop is followed below, within our own limits
            trust_env=False,  # an environment proxy would bypass the address checks
            headers=_HEADERS,
        )

    async def fetch(self, url: str) -> tuple[bytes, str | None]:
        """The body and content type at ``url``; raises a ``Spec*`` error saying what went wrong."""
        target = _http_url(url)
        try:
            async with asyncio.timeout(self._timeout_s):
                return await self._follow(target)
        except TimeoutError:
            raise SpecFetchTimeout(
                f"fetching the spec from {_shown(target)} took more than {self._timeout_s:g}s"
            ) from None

    async def aclose(self) -> None:
        await self._client.aclose()
        self.resolver.close()

    async def _follow(self, url: httpx.URL) -> tuple[bytes, str | None]:
        seen = {str(url)}
        for _ in range(self._max_redirects + 1):
            outcome = await self._get(url)
            if not isinstance(outcome, httpx.URL):
                return outcome
            if str(outcome) in seen:
                raise SpecFetchFailed(f"redirect loop fetching the spec: {_shown(outcome)} again")
            seen.add(str(outcome))
            url = outcome
        raise SpecFetchFailed(
            f"too many redirects fetching the spec (more than {self._max_redirects})"
        )

    async def _get(self, url: httpx.URL) -> tuple[bytes, str | None] | httpx.URL:
        """One request: the body, or the URL a redirect points to."""
        try:
            async with self._client.stream("GET", url) as response:
                if response.status_code in _REDIRECTS:
                    return _redirect_target(response)
                if not response.is_success:
                    # The status only: the reason phrase is the upstream's bytes.
                    raise SpecFetchFailed(
                        f"spec host answered {_status_text(response.status_code)} for {_shown(url)}"
                    )
                return await self._read_capped(response, url), response.headers.get("content-type")
        except httpx.TimeoutException:
            raise SpecFetchTimeout(f"the spec host {url.host!r} timed out") from None
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            raise SpecHostRefused(f"spec_url is not usable: {exc}") from None
        except httpx.HTTPError as exc:
            # httpx's messages may quote what the host sent (a non-HTTP port's banner): the
            # client gets the kind of failure, the log the details.
            log.warning("fetching a spec from %s failed: %s: %s", _shown(url), type(exc).__name__, exc)
            raise SpecFetchFailed(f"fetching the spec from {_shown(url)} failed: {_failure(exc)}") from None

    async def _read_capped(self, response: httpx.Response, url: httpx.URL) -> bytes:
        limit = self._max_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise SpecTooLarge(
                f"spec at {_shown(url)} is {int(declared)} bytes; the limit is {limit}"
            )
        too_large = f"spec at {_shown(url)} is larger than the {limit}-byte limit"
        decoder = _Decoder(_content_encodings(response), limit=limit, too_large=too_large)
        body = bytearray()
        received = 0
        # httpx would inflate each network chunk whole (a few KB of "gzip, gzip" is gigabytes):
        # the raw bytes are decoded here instead, every layer counted a bounded step at a time.
        async for raw in response.aiter_raw():
            received += len(raw)
            if received > limit:
                raise SpecTooLarge(too_large)
            for piece in decoder.decode(raw):
                body += piece
        for piece in decoder.flush():
            body += piece
        if len(body) > limit:  # no encoding: the raw count above; else each layer's count
            raise SpecTooLarge(too_large)
        return bytes(body)


def _content_encodings(response: httpx.Response) -> list[str]:
    """The encodings to undo, outermost first; unknown ones pass through, as httpx does."""
    named = [
        e.strip().lower()
        for e in response.headers.get_list("content-encoding", split_commas=True)
        if e.strip().lower() not in ("", "identity")
    ]
    if len(named) > MAX_CONTENT_ENCODINGS:
        raise SpecFetchFailed(
            f"spec host sent {len(named)} content encodings; at most {MAX_CONTENT_ENCODINGS} are decoded"
        )
    return [e for e in reversed(named) if e in ("gzip", "x-gzip", "deflate")]


class _Inflater:
    """One gzip or deflate layer, inflated at most ``_INFLATE_STEP`` bytes per step, with a cap
    on all it produces."""

    def __init__(self, encoding: str, *, limit: int, too_large: str) -> None:
        self._deflate = encoding == "deflate"
        self._zlib = zlib.decompressobj(zlib.MAX_WBITS if self._deflate else zlib.MAX_WBITS | 16)
        self._started = False
        self._limit = limit
        self._too_large = too_large
        self.produced = 0

    def steps(self, data: bytes) -> Iterator[bytes]:
        pending = data
        while not self._zlib.eof:  # bytes after the end of the stream are dropped, as httpx does
            try:
                out = self._zlib.decompress(pending, _INFLATE_STEP)
            except zlib.error as exc:
                if self._deflate and not self._started:
                    # deflate without the zlib header, as some servers send it (httpx reads it too)
                    self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
                    self._started = True
                    continue
                raise SpecFetchFailed(f"the spec could not be decoded ({exc})") from None
            self._started = True
            pending = self._zlib.unconsumed_tail
            if out:
                yield self._counted(out)
            if not pending and len(out) < _INFLATE_STEP:
                return

    def flush(self) -> bytes:
        try:
            return self._counted(self._zlib.flush())
        except zlib.error as exc:
            raise SpecFetchFailed(f"the spec could not be decoded ({exc})") from None

    def _counted(self, out: bytes) -> bytes:
        self.produced += len(out)
        if self.produced > self._limit:
            raise SpecTooLarge(self._too_large)
        return out


class _Decoder:
    """Undoes stacked content encodings; no layer may produce more than ``limit`` bytes, and
    none is handed more than ``_INFLATE_STEP`` bytes at once, so memory stays near the cap."""

    def __init__(self, encodings: list[str], *, limit: int, too_large: str) -> None:
        self._layers = [_Inflater(e, limit=limit, too_large=too_large) for e in encodings]

    def decode(self, data: bytes, start: int = 0) -> Iterator[bytes]:
        if start == len(self._layers):
            yield data
            return
        for piece in self._layers[start].steps(data):
            yield from self.decode(piece, start + 1)

    def flush(self) -> Iterator[bytes]:
        for i, layer in enumerate(self._layers):
            tail = layer.flush()
            if tail:
                yield from self.decode(tail, i + 1)


def _http_url(url: str | httpx.URL) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise SpecHostRefused(f"spec_url is not a valid URL: {exc}") from None
    if parsed.scheme not in ("http", "https"):
        scheme = parsed.scheme or "relative"
        raise SpecHostRefused(f"spec_url must be http or https, not {scheme!r}")
    if not parsed.host:
        raise SpecHostRefused("spec_url has no host")
    return parsed


def _redirect_target(response: httpx.Response) -> httpx.URL:
    location = response.headers.get("location")
    if not location:
        raise SpecFetchFailed(f"spec host sent a {response.status_code} redirect without Location")
    try:
        target = response.url.join(location)
    except httpx.InvalidURL as exc:
        raise SpecFetchFailed(f"spec host redirected to an invalid URL: {exc}") from None
    return _http_url(target)


def _status_text(status: int) -> str:
    try:
        return f"{status} {http.HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


def _failure(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.ConnectError):
        return "could not connect to the spec host"
    if isinstance(exc, httpx.RemoteProtocolError | httpx.LocalProtocolError):
        return "the spec host did not answer valid HTTP"
    if isinstance(exc, httpx.ReadError | httpx.WriteError):
        return "the connection to the spec host broke"
    return "the transfer failed"


def _shown(url: httpx.URL) -> str:
    """The URL without credentials or query string, for messages."""
    host = f"[{url.host}]" if ":" in url.host else url.host
    port = f":{url.port}" if url.port else ""
    return f"{url.scheme}://{host}{port}{url.path}"
