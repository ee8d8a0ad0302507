"""Resolve a request's spec (URL or inline document) to a :class:`SpecIndex`, cheaply.

Lookup order: L1 (this replica) → L2 (the node's SQLite file) → fetch and/or parse. Parsing and
SQLite run in worker threads so the replica's event loop keeps serving. Concurrent requests for
the same spec share one fetch and one parse.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

from core.errors import InvalidRequest, SpecInvalid, SpecNotCached
from core.settings import Settings
from core.spec.index import SpecIndex
from core.spec.openapi import parse_spec, spec_hash_of
from deployments.serving.messages import GraphRequest
from deployments.serving.metrics import metrics
from deployments.serving.spec_cache import SpecCacheDB, SpecL1Cache
from deployments.serving.spec_fetch import SpecFetcher

__all__ = ["SpecStore", "ParseSpec", "send_with_spec", "loop_favoured"]

# The tags of a resolution counted in opensesame_spec_cache (one count per resolve).
_HIT, _MISS = {"result": "hit"}, {"result": "miss"}

log = logging.getLogger(__name__)
T = TypeVar("T")


_parsing = 0  # parses in flight in this process's threads (counted on its event loop)
_default_interval_s = sys.getswitchinterval()


@contextmanager
def loop_favoured(interval_ms: float) -> Iterator[None]:
    """The GIL switch interval at ``interval_ms`` while a thread parses a spec, Python's default
    (5 ms) again once no parse is left. At 5 ms the event loop waited up to 5 ms for the GIL
    after each socket read or write that a parse overlapped: ``/health`` max 62-170 ms during a
    spec that expands past the caps, 18-47 ms at 0.5 ms (RELIABILITY.md). Not for good: at
    0.5 ms throughout, 16 clients got 5-19 % less throughput (Ray's own threads take the GIL
    more often). Entered and left on the event loop only."""
    global _parsing
    if _parsing == 0:
        sys.setswitchinterval(interval_ms / 1000)
    _parsing += 1
    try:
        yield
    finally:
        _parsing -= 1
        if _parsing == 0:
            sys.setswitchinterval(_default_interval_s)


class ParseSpec(Protocol):
    def __call__(
        self, document: bytes | dict[str, Any], *, content_type: str | None = None
    ) -> SpecIndex: ...


async def send_with_spec(
    send: Callable[[GraphRequest], Awaitable[T]], request: GraphRequest, index: SpecIndex
) -> T:
    """``send(request)``, once more with the index shipped if a downstream replica lacks the spec.

    The sender judged the node's L2 shared (:meth:`SpecStore.is_shared`), but a receiver may not
    read it: it runs on another node (one L2 file per node), or its own L2 is bypassed (e.g. the
    file was locked while replicas started together). Shipping costs one more round trip for a
    spec's first request on that replica; it keeps the index in L1 after.
    """
    try:
        return await send(request)
    except SpecNotCached:
        if "spec_index" in request:
            raise
        log.info("a downstream replica lacks spec %s; shipping its index", index.spec_hash[:12])
        shipped = request.copy()
        shipped["spec_index"] = index.to_bytes()
        return await send(shipped)


class SpecStore:
    """One per replica. Takes ownership of the fetcher and database it is given (see aclose)."""

    def __init__(
        self,
        settings: Settings,
        *,
        fetcher: SpecFetcher | None = None,
        db: SpecCacheDB | None = None,
        parse: ParseSpec = parse_spec,
        l1: SpecL1Cache | None = None,
    ) -> None:
        self._settings = settings
        self._fetcher = fetcher  # built on first URL: replicas resolving only hashes never need it
        self._db = db if db is not None else SpecCacheDB.from_settings(settings)
        self._parse = parse
        self._l1 = l1 if l1 is not None else SpecL1Cache.from_settings(settings)
        self._inflight: dict[tuple[str, str], asyncio.Future[Any]] = {}

    async def resolve(
        self, *, spec_url: str | None = None, spec: dict[str, Any] | None = None
    ) -> SpecIndex:
        """The index of the spec at ``spec_url`` or of the inline ``spec`` (exactly one)."""
        if (spec_url is None) == (spec is None):
            raise InvalidRequest("give exactly one of spec_url or spec")
        if spec is not None:
            if not isinstance(spec, dict):
                raise SpecInvalid("an inline spec must be a JSON object")
            return await self._resolve_document(spec)
        assert spec_url is not None
        return await self._resolve_url(spec_url)

    async def by_hash(self, spec_hash: str, *, shipped: bytes | None = None) -> SpecIndex:
        """The index another replica resolved; :class:`SpecNotCached` if this node lost it.

        ``shipped``: the index's bytes, sent along by a replica that could not share it through
        L2 (locked, full or unusable): the request is served without the node's cache.
        """
        index = self._l1.get(spec_hash)
        if index is None:
            index = await self._single_flight(("hash", spec_hash), lambda: self._from_l2(spec_hash))
        if index is None and shipped is not None:
            index = await asyncio.to_thread(SpecIndex.from_bytes, shipped)
            if index.spec_hash != spec_hash:
                raise SpecNotCached(f"spec {spec_hash[:12]} was shipped under another hash")
            self._l1.put(index)
        if index is None:
            raise SpecNotCached(
                f"spec {spec_hash[:12]} is no longer cached on this node; send the spec again"
            )
        return index

    def is_shared(self, spec_hash: str) -> bool:
        """Whether the node's other replicas can load ``spec_hash`` from L2 (else: ship it)."""
        known = self._l1.l2_file(spec_hash)
        return known is not None and known == self._db.file_identity()

    def status(self) -> dict[str, Any]:
        return {
            "healthy": self._db.healthy,  # False while L2 is bypassed: /health says degraded
            "l1": self._l1.status(),
            "l2": self._db.status(),
            "in_flight": len(self._inflight),
        }

    async def aclose(self) -> None:
        if self._fetcher is not None:
            await self._fetcher.aclose()
        await asyncio.to_thread(self._db.close)

    # -- resolution -----------------------------------------------------------------------------

    async def _resolve_document(self, spec: dict[str, Any]) -> SpecIndex:
        spec_hash = await asyncio.to_thread(spec_hash_of, spec)
        index = await self._from_l1(spec_hash)
        if index is not None:
            metrics().spec_cache.inc(tags=_HIT)
            return index
        return await self._single_flight(
            ("spec", spec_hash), lambda: self._load_or_parse(spec_hash, spec, None)
        )

    async def _resolve_url(self, url: str) -> SpecIndex:
        known = self._l1.hash_for_url(url)
        if known is not None:
            index = await self._from_l1(known)
            if index is not None:
                metrics().spec_cache.inc(tags=_HIT)
                return index
        return await self._single_flight(("url", url), lambda: self._fetch_url(url, known))

    async def _fetch_url(self, url: str, known: str | None) -> SpecIndex:
        spec_hash = known or await asyncio.to_thread(self._db.get_url, url)
        if spec_hash is not None:
            index = await self._from_l1(spec_hash) or await self._from_l2(spec_hash)
            if index is not None:
                metrics().spec_cache.inc(tags=_HIT)
                self._l1.put_url(url, spec_hash)
                return index
        body, content_type = await self._fetch(url)
        spec_hash = await asyncio.to_thread(spec_hash_of, body)
        return await self._load_or_parse(spec_hash, body, content_type, url=url)

    async def _fetch(self, url: str) -> tuple[bytes, str | None]:
        if self._fetcher is None:
            self._fetcher = SpecFetcher(self._settings)
        return await self._fetcher.fetch(url)

    async def _load_or_parse(
        self,
        spec_hash: str,
        document: bytes | dict[str, Any],
        content_type: str | None,
        *,
        url: str | None = None,
    ) -> SpecIndex:
        """From L1/L2 if this exact document was seen before (even under another URL), else parse.

        L2 writes are awaited: other replicas are about to be handed this hash and read it there.
        """
        index = await self._from_l1(spec_hash) or await self._from_l2(spec_hash)
        metrics().spec_cache.inc(tags=_MISS if index is None else _HIT)
        if index is None:
            with loop_favoured(self._settings.parse_switch_interval_ms):
                index = await asyncio.to_thread(self._parse, document, content_type=content_type)
            await asyncio.to_thread(self._share, index, url)
        elif url is not None:
            await asyncio.to_thread(self._db.put_url, url, index.spec_hash)
        if url is not None:
            self._l1.put_url(url, index.spec_hash)
        return index

    async def _from_l1(self, spec_hash: str) -> SpecIndex | None:
        """An L1 hit, written again to L2 if the L2 file it was in has since been replaced."""
        index = self._l1.get(spec_hash)
        if index is not None and self._l1.l2_file(spec_hash) != self._db.file_identity():
            await asyncio.to_thread(self._share, index, None)
        return index

    async def _from_l2(self, spec_hash: str) -> SpecIndex | None:
        return await asyncio.to_thread(self._read_l2, spec_hash)

    # -- worker-thread halves -------------------------------------------------------------------

    def _read_l2(self, spec_hash: str) -> SpecIndex | None:
        raw = self._db.get_index(spec_hash)
        if raw is None:
            return None
        try:
            index = SpecIndex.from_bytes(raw)
        except Exception as exc:  # any decoding failure is a cache miss, never a failed request
            log.warning("dropping cached spec %s that no longer decodes: %r", spec_hash[:12], exc)
            self._db.discard_index(spec_hash)
            return None
        if index.spec_hash != spec_hash:
            log.warning("dropping cached spec %s stored under the wrong hash", spec_hash[:12])
            self._db.discard_index(spec_hash)
            return None
        self._l1.put(index, l2_file=self._db.file_identity())
        return index

    def _share(self, index: SpecIndex, url: str | None) -> None:
        """Put ``index`` (and the URL it came from) in L2 and L1."""
        stored = self._db.put_index(index.spec_hash, index.to_bytes())
        if url is not None:
            self._db.put_url(url, index.spec_hash)
        self._l1.put(index, l2_file=self._db.file_identity() if stored else None)

    # -- single flight --------------------------------------------------------------------------

    async def _single_flight(
        self, key: tuple[str, str], start: Callable[[], Awaitable[T]]
    ) -> T:
        """Run ``start()`` once for all concurrent callers with the same key.

        The work runs as its own task, shielded, so one caller giving up (client disconnect)
        does not cancel it for the others. Failures reach every waiter and are not cached.
        """
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(start())
            self._inflight[key] = task
            task.add_done_callback(functools.partial(self._landed, key))
        result: T = await asyncio.shield(task)
        return result

    def _landed(self, key: tuple[str, str], task: asyncio.Future[Any]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # mark retrieved: every waiter may have gone away
