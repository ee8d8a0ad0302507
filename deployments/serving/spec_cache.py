"""Spec index caches: L1 in the replica's memory, L2 in one SQLite file shared by the node.

L2 exists so that a replica handed only a ``spec_hash`` can load the index another replica
parsed, and so that parsed specs survive restarts. It is strictly an optimisation: every failure
(corrupt or truncated file, lock held too long, disk full, directory not writable) is logged and
turned into a cache miss, a corrupt file is moved aside and rebuilt, and when the file cannot be
used at all the L2 is bypassed for a while and the service runs on L1 alone.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeAlias, TypeVar

from cachetools import TTLCache

from core.settings import Settings
from core.spec.index import SpecIndex
from deployments.serving.failures import failure_text

__all__ = ["SpecL1Cache", "SpecCacheDB", "L2File", "url_key"]

log = logging.getLogger(__name__)
T = TypeVar("T")

# 2: spec_url keyed by a digest of the URL (1 stored URLs in clear, query tokens included): a
# version-1 file is rebuilt, which drops them.
SCHEMA_VERSION = 2
_SCHEMA = (
    "DROP TABLE IF EXISTS spec_url",
    "DROP TABLE IF EXISTS spec_index",
    """CREATE TABLE spec_url (
        url_key TEXT PRIMARY KEY,   -- url_key(url): the URL itself is never stored
        spec_hash TEXT NOT NULL,
        fetched_at REAL NOT NULL
    )""",
    """CREATE TABLE spec_index (
        spec_hash TEXT PRIMARY KEY,
        payload BLOB NOT NULL,      -- zlib-compressed SpecIndex.to_bytes()
        checksum TEXT NOT NULL,     -- blake2b of the uncompressed bytes
        created_at REAL NOT NULL
    )""",
    f"PRAGMA user_version = {SCHEMA_VERSION}",
)
_CONNECTION_PRAGMAS = (
    "PRAGMA synchronous = NORMAL",  # safe with WAL; losing the last commit on power loss is fine
    "PRAGMA cache_size = -8000",  # KiB of page cache per connection
    "PRAGMA temp_store = MEMORY",
    "PRAGMA mmap_size = 67108864",
)
# Errors that will not go away by waiting: the file is moved aside and rebuilt.
_CORRUPTION = ("SQLITE_CORRUPT", "SQLITE_NOTADB")
# Consecutive failures after which L2 is bypassed, so requests stop paying the busy timeout.
_MAX_FAILURES = 3


L2File: TypeAlias = tuple[int, int] | None  # identity of the L2 file a row was written to


def url_key(url: str) -> str:
    """What the cache file keeps of a spec URL: a digest. Spec URLs carry access tokens in their
    query strings (``?token=…``); the whole URL still tells specs apart, and a copy or backup of
    the file holds no URL."""
    return hashlib.blake2b(url.encode(), digest_size=20).hexdigest()


class SpecL1Cache:
    """Per-replica, thread-safe: ``spec_hash → SpecIndex`` and ``url → spec_hash``, both TTL'd.

    Each index also remembers which L2 file it is known to be in (see
    :meth:`SpecCacheDB.file_identity`), so a replica can re-share it after L2 was rebuilt.
    """

    def __init__(
        self, *, max_entries: int, ttl_s: float, timer: Callable[[], float] = time.monotonic
    ) -> None:
        self._lock = threading.Lock()
        self._indexes: TTLCache[str, tuple[SpecIndex, L2File]] = TTLCache(
            max_entries, ttl_s, timer=timer
        )
        self._urls: TTLCache[str, str] = TTLCache(max_entries, ttl_s, timer=timer)

    @classmethod
    def from_settings(
        cls, settings: Settings, *, timer: Callable[[], float] = time.monotonic
    ) -> SpecL1Cache:
        return cls(
            max_entries=settings.spec_l1_max_entries, ttl_s=settings.spec_l1_ttl_s, timer=timer
        )

    def get(self, spec_hash: str) -> SpecIndex | None:
        with self._lock:
            entry = self._indexes.get(spec_hash)
        return entry[0] if entry else None

    def l2_file(self, spec_hash: str) -> L2File:
        with self._lock:
            entry = self._indexes.get(spec_hash)
        return entry[1] if entry else None

    def put(self, index: SpecIndex, *, l2_file: L2File = None) -> None:
        with self._lock:
            self._indexes[index.spec_hash] = (index, l2_file)

    def hash_for_url(self, url: str) -> str | None:
        with self._lock:
            return self._urls.get(url)

    def put_url(self, url: str, spec_hash: str) -> None:
        with self._lock:
            self._urls[url] = spec_hash

    def status(self) -> dict[str, int]:
        with self._lock:
            self._indexes.expire()
            self._urls.expire()
            return {"specs": len(self._indexes), "urls": len(self._urls)}


class _CorruptFile(Exception):
    """The file opened but failed its integrity check."""


class SpecCacheDB:
    """The node's L2: SQLite in WAL mode, one connection per thread, safe across processes.

    Methods block (run them with ``asyncio.to_thread``) and never raise for cache failures:
    reads return None and writes return False instead.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        url_ttl_s: float,
        index_ttl_s: float = 7 * 24 * 3600.0,
        busy_timeout_ms: int = 1000,
        first_open_wait_s: float = 10.0,
        retry_after_s: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if url_ttl_s <= 0 or index_ttl_s <= 0:
            raise ValueError(f"TTLs must be positive, got url {url_ttl_s}, index {index_ttl_s}")
        self.path = Path(path)
        self._url_ttl_s = url_ttl_s
        self._index_ttl_s = index_ttl_s
        self._busy_timeout_ms = busy_timeout_ms
        self._retry_after_s = retry_after_s
        self._clock = clock  # wall clock: rows are shared between processes and restarts
        self._lock = threading.RLock()
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._generation = 0  # bumped on every (re)open; per-thread connections follow it
        self._file_id: tuple[int, int] | None = None
        self._bypassed_until: float | None = None
        self._closed = False
        self._failures = 0
        self._writes = 0
        self._rebuilds = 0
        self._last_error: str | None = None
        with self._lock:
            # The replicas of a fresh deploy open a new file together, and SQLite answers "locked"
            # at once (no busy wait) to one switching it to WAL while another holds it. The
            # constructor can wait for that, where a request could not.
            self._open_file(wait_s=first_open_wait_s)

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> SpecCacheDB:
        kwargs.setdefault("retry_after_s", settings.spec_l2_retry_s)
        return cls(settings.spec_cache_path, url_ttl_s=settings.spec_l2_ttl_s, **kwargs)

    # -- public operations ----------------------------------------------------------------------

    def get_url(self, url: str) -> str | None:
        """The spec hash last fetched from ``url``, if fetched within the URL TTL."""

        def op(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                "SELECT spec_hash, fetched_at FROM spec_url WHERE url_key = ?", (url_key(url),)
            ).fetchone()
            if row is None or self._clock() - row[1] > self._url_ttl_s:
                return None
            return str(row[0])

        return self._run("read a spec URL", op, None, write=False)

    def put_url(self, url: str, spec_hash: str) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            conn.execute(
                "INSERT INTO spec_url (url_key, spec_hash, fetched_at) VALUES (?, ?, ?) "
                "ON CONFLICT (url_key) DO UPDATE SET spec_hash = excluded.spec_hash, "
                "fetched_at = excluded.fetched_at",
                (url_key(url), spec_hash, self._clock()),
            )
            return True

        return self._run("write a spec URL", op, False)

    def get_index(self, spec_hash: str) -> bytes | None:
        """The serialised index stored for ``spec_hash``; a row failing its checksum is dropped."""

        def op(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute(
                "SELECT payload, checksum, created_at FROM spec_index WHERE spec_hash = ?",
                (spec_hash,),
            ).fetchone()
            if row is None:
                return None
            payload, checksum, created_at = row
            try:
                raw = zlib.decompress(payload)
            except zlib.error:
                raw = None
            if raw is None or _checksum(raw) != checksum:
                log.warning("spec cache row %s failed its checksum; dropping it", spec_hash[:12])
                conn.execute("DELETE FROM spec_index WHERE spec_hash = ?", (spec_hash,))
                return None
            now = self._clock()
            if now - created_at > self._index_ttl_s / 2:  # still in use: keep it from pruning
                self._unless_busy(
                    conn, "UPDATE spec_index SET created_at = ? WHERE spec_hash = ?",
                    (now, spec_hash),
                )
            return raw

        return self._run("read a spec index", op, None, write=False)

    def put_index(self, spec_hash: str, raw: bytes) -> bool:
        """Store a serialised index; True if it is now readable by the node's other replicas."""
        payload, checksum = zlib.compress(raw, 6), _checksum(raw)

        def op(conn: sqlite3.Connection) -> bool:
            conn.execute(
                "INSERT OR REPLACE INTO spec_index (spec_hash, payload, checksum, created_at) "
                "VALUES (?, ?, ?, ?)",
                (spec_hash, payload, checksum, self._clock()),
            )
            self._writes += 1
            if self._writes % 256 == 0:
                self._prune(conn)
            return True

        return self._run("write a spec index", op, False)

    def discard_index(self, spec_hash: str) -> None:
        """Drop a row whose bytes no longer decode (e.g. written by an older index format)."""

        def op(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM spec_index WHERE spec_hash = ?", (spec_hash,))

        self._run("discard a spec index", op, None)

    def file_identity(self) -> L2File:
        """The file rows currently go to (None while bypassed); changes when L2 is rebuilt."""
        if self._closed or self._bypassed_until is not None:
            return None
        return _file_id(self.path)

    @property
    def healthy(self) -> bool:
        """Whether L2 is in use (state ok or degraded).

        The service works without L2, so /health should report this rather than fail on it.
        """
        return self._state() in ("ok", "degraded")

    def status(self) -> dict[str, Any]:
        return {
            "state": self._state(),
            "rebuilds": self._rebuilds,
            "last_error": self._last_error,
        }

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for conn in self._connections:
                conn.close()
            self._connections.clear()

    # -- connections and recovery ---------------------------------------------------------------

    def _state(self) -> str:
        with self._lock:
            if self._closed:
                return "closed"
            if self._bypassed_until is not None:
                return "bypassed"
            return "degraded" if self._failures else "ok"

    def _run(
        self, what: str, op: Callable[[sqlite3.Connection], T], default: T, *, write: bool = True
    ) -> T:
        """``op`` on this thread's connection; ``default`` on failure. Only a write that works
        clears the failure count: reads keep working under another process's write lock, and
        must not keep the writes that fail from ever bypassing L2."""
        for attempt in (1, 2):
            try:
                conn = self._connection()
                if conn is None:
                    return default
                result = op(conn)
            except (sqlite3.Error, OSError) as exc:
                if self._recover(what, exc) and attempt == 1:
                    continue
                return default
            if write:
                with self._lock:
                    self._failures = 0
            return result
        return default

    def _connection(self) -> sqlite3.Connection | None:
        with self._lock:
            if self._closed:
                return None
            if self._bypassed_until is not None:
                if time.monotonic() < self._bypassed_until or not self._open_file():
                    return None
            elif _file_id(self.path) != self._file_id:
                # Another replica moved a corrupt file aside, or the file was deleted: follow it.
                if not self._open_file():
                    return None
            generation = self._generation
        local = self._local
        if getattr(local, "generation", None) != generation:
            if getattr(local, "conn", None) is not None:
                self._forget(local.conn)
            local.conn, local.generation = None, None
            local.conn = self._connect()
            local.generation = generation
        conn: sqlite3.Connection = local.conn
        return conn

    def _connect(self) -> sqlite3.Connection:
        # Autocommit: every statement is its own short transaction, so locks are held briefly.
        # check_same_thread=False only so close() can run from any thread; each connection is
        # otherwise used by the one thread that owns it (self._local).
        conn = sqlite3.connect(
            self.path,
            timeout=self._busy_timeout_ms / 1000,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
            for pragma in _CONNECTION_PRAGMAS:
                conn.execute(pragma)
        except sqlite3.Error:
            conn.close()
            raise
        with self._lock:
            self._connections.append(conn)
        return conn

    def _forget(self, conn: sqlite3.Connection) -> None:
        with self._lock:
            if conn in self._connections:
                self._connections.remove(conn)
        conn.close()

    def _open_file(self, wait_s: float = 0.0) -> bool:
        """Start a new generation on the file at ``path``; False (and bypassed) if unusable.
        ``wait_s``: how long to keep trying while another process holds the file locked.

        Called with ``self._lock`` held.
        """
        self._generation += 1
        deadline = time.monotonic() + wait_s
        attempt = 1
        while True:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file_id = _file_id(self.path)  # the file _move_aside may move
                conn = self._connect()
                try:
                    self._prepare(conn)
                    self._file_id = _file_id(self.path)  # the file now surely exists
                finally:
                    self._forget(conn)
            except (sqlite3.Error, _CorruptFile, OSError) as exc:
                if getattr(exc, "sqlite_errorname", "") == "SQLITE_BUSY" and time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                if attempt == 1 and _is_corruption(exc) and self._move_aside(exc):
                    attempt = 2
                    continue
                self._bypass(f"cannot open {self.path}: {_describe(exc)}")
                return False
            self._bypassed_until = None
            self._failures = 0
            return True

    def _prepare(self, conn: sqlite3.Connection) -> None:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            log.warning("spec cache %s runs in %s mode, not WAL", self.path, mode)
        check = conn.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise _CorruptFile(f"integrity check failed: {check}")
        if conn.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
            self._create_schema(conn)
        self._prune(conn)

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        """A new file, or one written by another release: start it over, once, atomically."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Re-checked under the write lock: another replica may have just done it.
            if conn.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
                for statement in _SCHEMA:
                    conn.execute(statement)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _prune(self, conn: sqlite3.Connection) -> None:
        now = self._clock()
        url_cutoff, index_cutoff = now - self._url_ttl_s, now - self._index_ttl_s
        self._unless_busy(conn, "DELETE FROM spec_url WHERE fetched_at < ?", (url_cutoff,))
        self._unless_busy(conn, "DELETE FROM spec_index WHERE created_at < ?", (index_cutoff,))

    def _unless_busy(self, conn: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> None:
        """Housekeeping that can wait: another replica holding the write lock is no failure."""
        try:
            conn.execute(sql, params)
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorname", "") != "SQLITE_BUSY":
                raise
            log.debug("spec cache %s busy; skipped %s", self.path, sql.split()[0])

    def _recover(self, what: str, exc: BaseException) -> bool:
        """Handle a failed operation; True if it is worth retrying once."""
        message = f"could not {what}: {_describe(exc)}"
        with self._lock:
            self._last_error = message
            if _is_corruption(exc):
                log.warning("spec cache %s: %s", self.path, message)
                if not self._move_aside(exc):
                    self._bypass(message)
                    return False
                return self._open_file()
            if getattr(exc, "sqlite_errorname", "") == "SQLITE_CANTOPEN":
                log.warning("spec cache %s: %s; reopening", self.path, message)
                return self._open_file()
            self._failures += 1
            if self._failures >= _MAX_FAILURES:
                self._bypass(f"{self._failures} failures in a row, last: {message}")
            else:
                log.warning("spec cache %s: %s (serving without it)", self.path, message)
            return False

    def _move_aside(self, exc: BaseException) -> bool:
        """Rename the unusable file (and its WAL files) to ``*.corrupt``; False if impossible.

        Several replicas may find the same corrupt file at once: under an exclusive file lock,
        only a file that is still the one we opened is moved, so a fresh file is never lost.
        """
        aside = self.path.with_name(self.path.name + ".corrupt")
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            with open(lock_path, "a") as lock_file:
                fcntl.flock(lock_file, fcntl.LOCK_EX)
                if _file_id(self.path) != self._file_id:
                    log.info("spec cache %s was already replaced by another replica", self.path)
                    return True
                for suffix in ("", "-wal", "-shm"):
                    source = Path(f"{self.path}{suffix}")
                    target = Path(f"{aside}{suffix}")
                    if source.exists():
                        os.replace(source, target)
                    else:
                        target.unlink(missing_ok=True)
        except OSError as move_exc:
            log.warning(
                "spec cache %s is unusable (%s) and cannot be moved aside: %s",
                self.path, _describe(exc), move_exc,
            )
            return False
        log.warning(
            "spec cache %s is unusable (%s); moved it to %s and starting an empty one",
            self.path, _describe(exc), aside,
        )
        self._rebuilds += 1
        return True

    def _bypass(self, reason: str) -> None:
        log.warning(
            "spec cache L2 bypassed for %.0fs, serving from memory only: %s",
            self._retry_after_s, reason,
        )
        self._last_error = reason
        self._bypassed_until = time.monotonic() + self._retry_after_s
        self._failures = 0
        self._generation += 1  # per-thread connections to the old file are dropped on next use


def _checksum(raw: bytes) -> str:
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _is_corruption(exc: BaseException) -> bool:
    if isinstance(exc, _CorruptFile):
        return True
    name = getattr(exc, "sqlite_errorname", "") or ""
    return isinstance(exc, sqlite3.DatabaseError) and name.startswith(_CORRUPTION)


def _describe(exc: BaseException) -> str:
    return failure_text(exc)
