"""The spec caches (L1 in memory, L2 in SQLite) and SpecStore on top of them.

The L2 cases break the file on purpose — garbage, truncation, a held lock, a full disk, a
directory that cannot hold it — and check that requests still succeed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from core.errors import InvalidRequest, SpecFetchFailed, SpecNotCached
from core.settings import PROJECT_ROOT, Settings, load_settings
from core.spec.index import SpecIndex
from core.spec.openapi import parse_spec
from deployments.serving.spec_cache import SpecCacheDB, SpecL1Cache
from deployments.serving.spec_store import SpecStore, send_with_spec
from tests.spec_server import SpecServer, spec_server
from tests.specs import billing_spec, petstore_swagger2

T = TypeVar("T")
URL_TTL_S = 100.0
L1_TTL_S = 10.0


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


class Clock:
    """A hand-moved clock for TTLCache timers and SpecCacheDB."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class CountingParse:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(
        self, document: bytes | dict[str, Any], *, content_type: str | None = None
    ) -> SpecIndex:
        self.calls += 1
        return parse_spec(document, content_type=content_type)


@pytest.fixture(scope="module")
def server() -> Iterator[SpecServer]:
    with spec_server() as srv:
        yield srv


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(
        environ={}, data_dir=tmp_path, allow_private_spec_hosts=True, spec_fetch_timeout_s=2.0,
        spec_l1_ttl_s=L1_TTL_S, spec_l2_ttl_s=URL_TTL_S,
    )


def _db(path: Path, clock: Clock | None = None, **kwargs: Any) -> SpecCacheDB:
    return SpecCacheDB(path, url_ttl_s=URL_TTL_S, clock=clock or Clock(), **kwargs)


def _store(
    settings: Settings, *, parse: CountingParse | None = None, l1_clock: Clock | None = None,
    db: SpecCacheDB | None = None,
) -> SpecStore:
    l1 = SpecL1Cache(max_entries=8, ttl_s=L1_TTL_S, timer=l1_clock or Clock())
    return SpecStore(settings, db=db, l1=l1, parse=parse or CountingParse())


def _json(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


def _fill(db: SpecCacheDB, rows: int) -> None:
    for i in range(rows):
        assert db.put_index(f"h{i}", os.urandom(3000))


# -- L1 -----------------------------------------------------------------------------------------


def test_l1_entries_expire_after_ttl() -> None:
    clock = Clock()
    l1 = SpecL1Cache(max_entries=4, ttl_s=L1_TTL_S, timer=clock)
    index = parse_spec(billing_spec())
    l1.put(index)
    l1.put_url("https://x/spec", index.spec_hash)
    clock.now += L1_TTL_S - 1
    assert l1.get(index.spec_hash) is index
    assert l1.hash_for_url("https://x/spec") == index.spec_hash
    clock.now += 2
    assert l1.get(index.spec_hash) is None
    assert l1.hash_for_url("https://x/spec") is None
    assert l1.status() == {"specs": 0, "urls": 0}


def test_l1_is_bounded() -> None:
    l1 = SpecL1Cache(max_entries=1, ttl_s=L1_TTL_S)
    a, b = parse_spec(billing_spec()), parse_spec(petstore_swagger2())
    l1.put(a)
    l1.put(b)
    assert l1.get(a.spec_hash) is None and l1.get(b.spec_hash) is b


# -- L2 -----------------------------------------------------------------------------------------


def test_l2_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "cache" / "specs.sqlite"  # the directory does not exist yet
    db = _db(path)
    assert db.put_index("abc", b"index bytes" * 100)
    assert db.put_url("https://x/spec", "abc")
    db.close()
    again = _db(path)
    assert again.get_index("abc") == b"index bytes" * 100
    assert again.get_url("https://x/spec") == "abc"
    assert again.get_index("other") is None
    assert again.healthy and again.status()["state"] == "ok"


def test_l2_url_rows_expire(tmp_path: Path) -> None:
    clock = Clock()
    db = _db(tmp_path / "c.sqlite", clock)
    db.put_url("https://x/spec", "abc")
    clock.now += URL_TTL_S - 1
    assert db.get_url("https://x/spec") == "abc"
    clock.now += 2
    assert db.get_url("https://x/spec") is None
    db.put_url("https://x/spec", "def")  # refetched
    assert db.get_url("https://x/spec") == "def"


def test_l2_is_shared_with_other_processes(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    db = _db(path)  # open before the other process writes, like a running replica
    code = (
        "import sys; from deployments.serving.spec_cache import SpecCacheDB; "
        "db = SpecCacheDB(sys.argv[1], url_ttl_s=100); "
        "assert db.put_index('from-child', b'payload'); assert db.put_url('u', 'from-child')"
    )
    subprocess.run([sys.executable, "-c", code, str(path)], cwd=PROJECT_ROOT, check=True)
    assert db.get_index("from-child") == b"payload"
    assert db.get_url("u") == "from-child"


def test_garbage_file_is_moved_aside_and_rebuilt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "c.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with caplog.at_level(logging.WARNING):
        db = _db(path)
    assert "moved it to" in caplog.text and "SQLITE_NOTADB" in caplog.text
    assert (tmp_path / "c.sqlite.corrupt").read_bytes().startswith(b"this is not")
    assert db.healthy and db.put_index("abc", b"x") and db.get_index("abc") == b"x"
    assert db.status()["rebuilds"] == 1


def test_truncated_file_is_rebuilt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "c.sqlite"
    db = _db(path)
    _fill(db, 100)
    db.close()  # checkpoints the WAL into the main file
    os.truncate(path, path.stat().st_size // 2)
    with caplog.at_level(logging.WARNING):
        db = _db(path)
    assert "moved it to" in caplog.text
    assert db.healthy and db.get_index("h1") is None
    assert db.put_index("abc", b"x") and db.get_index("abc") == b"x"


def test_corruption_found_mid_operation_is_repaired(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    writer = _db(path)
    _fill(writer, 100)
    writer.close()
    db = _db(path)
    assert db.get_index("h3") is not None
    with open(path, "r+b") as f:  # wreck every page but the header
        f.seek(4096)
        f.write(b"\xff" * (path.stat().st_size - 4096))
    results: list[Any] = []

    def in_new_thread() -> None:  # a fresh connection, so nothing is served from a page cache
        results.append(db.get_index("h50"))
        results.append(db.put_index("new", b"x"))

    thread = threading.Thread(target=in_new_thread)
    thread.start()
    thread.join()
    assert results == [None, True]
    assert db.status()["rebuilds"] == 1
    assert db.get_index("new") == b"x"  # the first thread follows the rebuilt file


def test_row_with_bad_checksum_is_dropped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "c.sqlite"
    db = _db(path)
    db.put_index("abc", b"x" * 1000)
    db.put_index("def", b"y" * 1000)
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE spec_index SET checksum = 'bad' WHERE spec_hash = 'abc'")
    with caplog.at_level(logging.WARNING):
        assert db.get_index("abc") is None
    assert "failed its checksum" in caplog.text
    with sqlite3.connect(path) as raw:
        assert raw.execute("SELECT spec_hash FROM spec_index").fetchall() == [("def",)]
    assert db.get_index("def") == b"y" * 1000 and db.healthy


def test_lock_held_too_long_is_a_miss_then_a_bypass(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    db = _db(path, busy_timeout_ms=20, retry_after_s=0.0)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another replica stuck in a write transaction
    try:
        assert db.put_index("abc", b"x") is False
        assert db.status()["state"] == "degraded" and "SQLITE_BUSY" in db.status()["last_error"]
        # Reads still work under another's write lock; they must not clear the failed writes'
        # count, or a write-locked L2 is never bypassed and every new spec pays the busy timeout.
        for _ in range(2):
            assert db.get_url("https://x/spec") is None
            assert db.put_index("abc", b"x") is False
        assert db.status()["state"] == "bypassed"
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert db.put_index("abc", b"x") is True  # retried once the lock is gone
    assert db.healthy and db.get_index("abc") == b"x"


def test_a_new_file_locked_while_replicas_start_is_waited_for(tmp_path: Path) -> None:
    # A fresh deploy: another replica holds the new file's write lock while it creates the schema.
    path = tmp_path / "c.sqlite"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.3, lambda: (other.execute("ROLLBACK"), other.close()))
    release.start()
    try:
        db = _db(path, busy_timeout_ms=20, first_open_wait_s=5.0)
    finally:
        release.join()
    assert db.status()["state"] == "ok"  # not bypassed for retry_after_s from the start
    assert db.put_index("abc", b"x") and db.get_index("abc") == b"x"


def test_full_disk_fails_the_write_not_the_caller(tmp_path: Path) -> None:
    db = _db(tmp_path / "c.sqlite")
    conn = db._connection()  # this thread's connection; max_page_count stands in for a full disk
    assert conn is not None
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")
    assert db.put_index("big", os.urandom(200_000)) is False
    assert "SQLITE_FULL" in db.status()["last_error"]
    assert db.get_index("big") is None  # reads still work


def test_unusable_directory_bypasses_l2(tmp_path: Path) -> None:
    # A file where the directory should be: unusable even for root (CI runs as root, so a
    # read-only directory would prove nothing).
    (tmp_path / "file").write_text("")
    db = _db(tmp_path / "file" / "c.sqlite")
    assert db.status()["state"] == "bypassed" and not db.healthy
    assert db.put_index("abc", b"x") is False and db.get_index("abc") is None
    assert db.file_identity() is None


def test_deleted_directory_is_recreated(tmp_path: Path) -> None:
    path = tmp_path / "cache" / "c.sqlite"
    db = _db(path)
    db.put_index("abc", b"x")
    for leftover in path.parent.iterdir():
        leftover.unlink()
    path.parent.rmdir()
    assert db.get_index("abc") is None  # gone with the file, not an error
    assert db.put_index("abc", b"y") and db.get_index("abc") == b"y"
    assert path.exists()


# -- SpecStore ----------------------------------------------------------------------------------


def test_inline_spec_is_parsed_once_and_shared_with_other_replicas(settings: Settings) -> None:
    async def scenario() -> None:
        parse_a, parse_b = CountingParse(), CountingParse()
        ingress, other = _store(settings, parse=parse_a), _store(settings, parse=parse_b)
        index = await ingress.resolve(spec=billing_spec())
        assert await ingress.resolve(spec=billing_spec()) is index  # L1
        assert parse_a.calls == 1
        shared = await other.by_hash(index.spec_hash)  # from L2, as a downstream replica would
        assert shared.spec_hash == index.spec_hash and shared.operations == index.operations
        assert (await other.resolve(spec=billing_spec())).spec_hash == index.spec_hash
        assert parse_b.calls == 0
        await ingress.aclose()
        await other.aclose()

    run(scenario())


def test_the_loop_gets_the_gil_back_sooner_while_a_spec_is_parsed(settings: Settings) -> None:
    # Each parse records the switch interval it ran under; the second is refused mid-parse.
    seen: list[float] = []
    started, release = threading.Event(), threading.Event()

    def parse(document: bytes | dict[str, Any], *, content_type: str | None = None) -> SpecIndex:
        seen.append(sys.getswitchinterval())
        if document["info"]["title"] == "slow":  # type: ignore[index]
            started.set()
            release.wait(5)
        else:
            raise ValueError("not a spec")
        return parse_spec(document, content_type=content_type)

    default = sys.getswitchinterval()

    async def scenario() -> None:
        store = _store(settings, parse=parse)  # type: ignore[arg-type]
        slow = asyncio.ensure_future(store.resolve(spec={**billing_spec(), "info": {"title": "slow"}}))
        await asyncio.to_thread(started.wait, 5)
        with pytest.raises(ValueError):
            await store.resolve(spec={**billing_spec(), "info": {"title": "bad"}})
        assert sys.getswitchinterval() == pytest.approx(0.0005)  # the slow one still parses
        release.set()
        await slow
        await store.aclose()

    run(scenario())
    assert seen == [pytest.approx(settings.parse_switch_interval_ms / 1000)] * 2
    assert sys.getswitchinterval() == default  # back to Python's once no parse is left


def test_a_replica_on_another_node_gets_the_index_shipped(settings: Settings, tmp_path: Path) -> None:
    """The Ingress's L2 holds the spec, the downstream's (another node's file) does not: the
    request is sent once more with the index, and the downstream keeps it in L1 after."""

    async def scenario() -> None:
        ingress = _store(settings)
        other_node = load_settings(environ={}, data_dir=tmp_path / "other-node")
        downstream = _store(other_node, db=SpecCacheDB.from_settings(other_node))
        index = await ingress.resolve(spec=billing_spec())
        assert ingress.is_shared(index.spec_hash)  # as far as the Ingress can tell
        sent: list[dict[str, Any]] = []

        async def send(request: dict[str, Any]) -> SpecIndex:
            sent.append(request)
            return await downstream.by_hash(request["spec_hash"], shipped=request.get("spec_index"))

        request = {"spec_hash": index.spec_hash}
        got = await send_with_spec(send, request, index)
        assert got.operations == index.operations
        assert [("spec_index" in r) for r in sent] == [False, True]
        assert "spec_index" not in request  # the caller's request is left as it was
        sent.clear()
        assert (await send_with_spec(send, request, index)).spec_hash == index.spec_hash
        assert [("spec_index" in r) for r in sent] == [False]  # from the downstream's L1 now
        await ingress.aclose()
        await downstream.aclose()

    run(scenario())


def test_a_shipped_index_that_still_fails_is_not_sent_again(settings: Settings) -> None:
    async def scenario() -> None:
        index = parse_spec(billing_spec())
        calls = 0

        async def send(request: dict[str, Any]) -> None:
            nonlocal calls
            calls += 1
            raise SpecNotCached("gone")

        with pytest.raises(SpecNotCached):
            await send_with_spec(send, {"spec_hash": index.spec_hash}, index)
        assert calls == 2

    run(scenario())


def test_unknown_hash_is_not_cached(settings: Settings) -> None:
    async def scenario() -> None:
        store = _store(settings)
        with pytest.raises(SpecNotCached) as info:
            await store.by_hash("0" * 64)
        assert info.value.status == 503
        await store.aclose()

    run(scenario())


def test_resolve_needs_exactly_one_source(settings: Settings) -> None:
    store = _store(settings)
    with pytest.raises(InvalidRequest):
        run(store.resolve())
    with pytest.raises(InvalidRequest):
        run(store.resolve(spec_url="http://x/", spec={}))


def test_concurrent_requests_share_one_fetch(server: SpecServer, settings: Settings) -> None:
    url = server.add("/slow-spec.json", _json(billing_spec()), delay_s=0.2)

    async def scenario() -> None:
        parse = CountingParse()
        store = _store(settings, parse=parse)
        indexes = await asyncio.gather(*(store.resolve(spec_url=url) for _ in range(10)))
        assert len({id(i) for i in indexes}) == 1
        assert server.hits["/slow-spec.json"] == 1 and parse.calls == 1
        await store.aclose()

    run(scenario())


def test_a_failed_fetch_reaches_every_waiter_and_is_not_cached(
    server: SpecServer, settings: Settings
) -> None:
    url = server.add("/down", b"{}", status=500, delay_s=0.1)

    async def scenario() -> None:
        store = _store(settings)
        results = await asyncio.gather(
            *(store.resolve(spec_url=url) for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(r, SpecFetchFailed) for r in results), results
        assert server.hits["/down"] == 1
        with pytest.raises(SpecFetchFailed, match="answered 500"):
            await store.resolve(spec_url=url)
        assert server.hits["/down"] == 2
        assert store.status()["in_flight"] == 0
        await store.aclose()

    run(scenario())


def test_url_ttls_and_refetch_of_an_unchanged_spec(server: SpecServer, settings: Settings) -> None:
    url = server.add("/spec.json", _json(billing_spec()))

    async def scenario() -> None:
        l1_clock, l2_clock, parse = Clock(), Clock(), CountingParse()
        store = _store(settings, parse=parse, l1_clock=l1_clock,
                       db=_db(settings.spec_cache_path, l2_clock))
        first = await store.resolve(spec_url=url)
        l1_clock.now += L1_TTL_S + 1  # L1 forgot; the L2 URL row is still fresh
        assert (await store.resolve(spec_url=url)).spec_hash == first.spec_hash
        assert server.hits["/spec.json"] == 1
        l1_clock.now += L1_TTL_S + 1
        l2_clock.now += URL_TTL_S + 1  # now both forgot the URL: fetch again
        assert (await store.resolve(spec_url=url)).spec_hash == first.spec_hash
        assert server.hits["/spec.json"] == 2
        assert parse.calls == 1  # same bytes, same hash: the index came from L2
        await store.aclose()

    run(scenario())


def test_restarted_replica_serves_a_url_without_fetching(
    server: SpecServer, settings: Settings
) -> None:
    url = server.add("/spec.yaml", b"openapi: 3.0.0\npaths: {/a: {get: {}}}\n",
                     content_type="application/yaml")

    async def scenario() -> str:
        store = _store(settings)
        index = await store.resolve(spec_url=url)
        await store.aclose()
        return index.spec_hash

    spec_hash = run(scenario())
    parse = CountingParse()
    restarted = _store(settings, parse=parse)
    assert run(restarted.resolve(spec_url=url)).spec_hash == spec_hash
    assert server.hits["/spec.yaml"] == 1 and parse.calls == 0


def test_garbage_cache_file_does_not_fail_requests(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    settings.spec_cache_path.write_bytes(os.urandom(10_000))
    with caplog.at_level(logging.WARNING):
        store = _store(settings)
        index = run(store.resolve(spec=billing_spec()))
    assert "moved it to" in caplog.text
    assert run(_store(settings).by_hash(index.spec_hash)).spec_hash == index.spec_hash


def test_unusable_l2_leaves_l1_working(settings: Settings, tmp_path: Path) -> None:
    (tmp_path / "not-a-dir").write_text("")
    db = _db(tmp_path / "not-a-dir" / "c.sqlite")
    parse = CountingParse()

    async def scenario() -> None:
        store = _store(settings, parse=parse, db=db)
        index = await store.resolve(spec=billing_spec())
        assert await store.resolve(spec=billing_spec()) is index
        assert await store.by_hash(index.spec_hash) is index
        assert store.status()["l2"]["state"] == "bypassed"
        assert store.status()["healthy"] is False  # what makes /health say degraded
        await store.aclose()

    run(scenario())
    assert parse.calls == 1


def test_l1_hit_is_written_again_after_l2_was_rebuilt(settings: Settings) -> None:
    async def scenario() -> None:
        ingress = _store(settings)
        index = await ingress.resolve(spec=billing_spec())
        for suffix in ("", "-wal", "-shm"):  # another replica replaced the file
            Path(f"{settings.spec_cache_path}{suffix}").unlink(missing_ok=True)
        other = _store(settings)
        with pytest.raises(SpecNotCached):
            await other.by_hash(index.spec_hash)
        assert await ingress.resolve(spec=billing_spec()) is index  # L1 hit, shared again
        assert (await other.by_hash(index.spec_hash)).spec_hash == index.spec_hash
        await ingress.aclose()
        await other.aclose()

    run(scenario())


def test_undecodable_l2_row_is_a_miss(settings: Settings) -> None:
    async def scenario() -> None:
        store = _store(settings)
        db = SpecCacheDB.from_settings(settings)
        db.put_index("f" * 64, b"written by some older release")
        with pytest.raises(SpecNotCached):
            await store.by_hash("f" * 64)
        assert db.get_index("f" * 64) is None  # dropped, not retried forever
        await store.aclose()

    run(scenario())
