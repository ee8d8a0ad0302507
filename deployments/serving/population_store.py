"""The population memory (:mod:`core.priors.population`) kept by the service: a SQLite file in the
data dir, shared by every replica and process on the node, surviving restarts.

Each replica holds a mirror of the file in a :class:`PopulationMemory` and, every second, in one
write transaction of the file: reads what other replicas wrote since its last look, adds the
outcomes the feedback store committed since the file's cursor (explicit and implicit, of every
replica) and writes the counts they changed, with the new cursor. Whichever replica gets there
first does the work, exactly once: the cursor moves in the same commit as the counts.

Only aggregates are kept: per (API, context, next operation) a decayed total, and per
contributor a salted digest with its capped weight (for the cap and the distinct-user count).
A user erased from the feedback store (``DELETE /users/{id}``) is removed from every count on the
next look, their share of each total with them.
"""

from __future__ import annotations

import json
import logging
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.priors.population import (
    Cell,
    PopulationConfig,
    PopulationMemory,
    PopulationView,
    api_key,
    observation,
    user_digest,
)
from core.settings import Settings
from core.spec.index import Call, SpecIndex
from deployments.serving.failures import failure_text
from deployments.serving.feedback import FeedbackWriter
from deployments.serving.prior_feed import OutcomeFollower, OutcomeStream

__all__ = ["PopulationStore", "PopulationFeed", "PopulationChanges", "PopulationMirror", "MirrorFeed",
           "apply_changes", "population_config", "start_population_feed", "has_tenants"]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS cells (
        api TEXT NOT NULL, kind TEXT NOT NULL, context TEXT NOT NULL, next TEXT NOT NULL,
        total REAL NOT NULL,            -- decayed, capped transitions, as of t
        t REAL NOT NULL,
        seq INTEGER NOT NULL,           -- the commit that last changed it
        PRIMARY KEY (api, kind, context, next))""",
    "CREATE INDEX IF NOT EXISTS cells_by_seq ON cells (seq)",
    """CREATE TABLE IF NOT EXISTS contributors (
        api TEXT NOT NULL, kind TEXT NOT NULL, context TEXT NOT NULL, next TEXT NOT NULL,
        user TEXT NOT NULL,             -- salted digest of the user_id, never the id
        weight REAL NOT NULL,           -- capped at population_user_cap; 0: forgotten
        t REAL NOT NULL,
        seq INTEGER NOT NULL,
        PRIMARY KEY (api, kind, context, next, user))""",
    "CREATE INDEX IF NOT EXISTS contributors_by_seq ON contributors (seq)",
    "CREATE TABLE IF NOT EXISTS cleared (api TEXT PRIMARY KEY, seq INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)
_BUSY_TIMEOUT_MS = 5000
_FORGET_EVERY_S = 600.0


def population_config(settings: Settings) -> PopulationConfig:
    return PopulationConfig(min_users=settings.population_min_users,
                            half_life_s=settings.population_half_life_days * 86400.0,
                            user_cap=settings.population_user_cap)


@dataclass(frozen=True, slots=True)
class PopulationChanges:
    """The rows of the file changed after a commit, and the commit they bring a mirror to."""

    cleared: list[str]
    cells: list[tuple[str, str, str, str, float, float]]
    contributors: list[tuple[str, str, str, str, str, float, float]]
    seq: int


def apply_changes(memory: PopulationMemory, changes: PopulationChanges) -> int:
    """Brings ``memory`` up to ``changes``; returns the commit it mirrors now."""
    for api in changes.cleared:
        memory.clear(api)
    changed: dict[tuple[tuple[str, str, str], str], Cell] = {}
    for api, kind, ctx, nxt, total, t in changes.cells:
        key = ((api, kind, ctx), nxt)
        old = memory.cell(*key)
        changed[key] = Cell(total=total, t=t, users=dict(old.users) if old else {})
    for api, kind, ctx, nxt, user, weight, t in changes.contributors:
        key = ((api, kind, ctx), nxt)
        cell = changed.get(key)
        if cell is None:
            old = memory.cell(*key)
            cell = changed[key] = (Cell(total=old.total, t=old.t, users=dict(old.users))
                                   if old is not None else Cell())
        if weight > 0:
            cell.users[user] = (weight, t)
        else:
            cell.users.pop(user, None)
    for (context, nxt), cell in changed.items():
        memory.set_cell(context, nxt, cell)
    return changes.seq


def _tenant_of(user_id: str, tenants: bool) -> str:
    return user_id.split("/", 1)[0] if tenants and "/" in user_id else ""


class PopulationStore:
    """The memory's file and this process's mirror of it. Thread-safe."""

    def __init__(
        self, path: str | Path, *, config: PopulationConfig | None = None, tenants: bool = False
    ) -> None:
        """``tenants``: the service has API keys, so a user id is ``tenant/user``
        (:func:`deployments.serving.identity.scoped_user`) and each tenant has its own memory."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tenants = tenants
        self.memory = PopulationMemory(config)
        self._conn = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                     check_same_thread=False)
        self._conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._lock = threading.Lock()  # one transaction at a time on this connection
        self.seq = 0  # the last commit mirrored
        self.ingested = 0
        self._last_forget = 0.0
        with self._lock:
            self._transaction(self._create)
            self.salt = self._meta("salt") or ""
            self._refresh()

    # -- the file -------------------------------------------------------------------------------

    def _transaction(self, work: Any) -> Any:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            out = work()
            self._conn.execute("COMMIT")
            return out
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise

    def _create(self) -> None:
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"population store {self.path} has schema {version}, newer than "
                               f"this code's {SCHEMA_VERSION}")
        for statement in _SCHEMA:
            self._conn.execute(statement)
        self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        self._conn.execute("INSERT OR IGNORE INTO meta VALUES ('salt', ?)", (secrets.token_hex(16),))
        self._conn.execute("INSERT OR IGNORE INTO meta VALUES ('cursor', '0')")
        self._conn.execute("INSERT OR IGNORE INTO meta VALUES ('seq', '0')")

    def _meta(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _set_meta(self, key: str, value: object) -> None:
        self._conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, str(value)))

    def _refresh(self) -> None:
        """Mirror what was committed since the last look (by any process)."""
        self.seq = apply_changes(self.memory, self._changes(self.seq))

    def _changes(self, since: int) -> PopulationChanges:
        c = self._conn
        return PopulationChanges(
            cleared=[api for api, _seq in c.execute("SELECT api, seq FROM cleared WHERE seq > ?", (since,))],
            cells=c.execute("SELECT api, kind, context, next, total, t FROM cells WHERE seq > ?",
                            (since,)).fetchall(),
            contributors=c.execute("SELECT api, kind, context, next, user, weight, t FROM contributors "
                                   "WHERE seq > ?", (since,)).fetchall(),
            seq=int(self._meta("seq") or 0),
        )

    def changes(self, since: int) -> PopulationChanges:
        """What was committed after commit ``since``: for a mirror of the memory elsewhere
        (:class:`PopulationMirror`, on a node without the file)."""
        with self._lock:
            return self._changes(since)

    # -- learning from the feedback store --------------------------------------------------------

    def ingest(self, reader: OutcomeStream, *, limit: int = 2000, now: float | None = None) -> int:
        """Adds the outcomes committed to the feedback store since the file's cursor; returns how
        many were read (0: up to date)."""
        with self._lock:
            return int(self._transaction(lambda: self._ingest(reader, limit, now)))

    def _ingest(self, reader: OutcomeStream, limit: int, now: float | None) -> int:
        self._refresh()
        cursor = int(self._meta("cursor") or 0)
        rows = reader.outcomes_after(cursor, limit)
        seq = self.seq + 1
        touched: dict[tuple[tuple[str, str, str], str], set[str]] = {}
        for rowid, user_id, spec_hash, prompt, events, actual_key, recorded_at in rows:
            cursor = rowid
            try:
                spec = reader.spec(spec_hash)
            except KeyError:
                continue
            history = spec.resolve_history([(e[0], e[1]) for e in json.loads(events)])
            obs = observation(spec, history, prompt, actual_key, user=user_digest(user_id, self.salt),
                              t=recorded_at, tenant=self.tenant_of(user_id))
            if obs is None:
                continue
            for key, nxt, _cell in self.memory.observe(obs):
                touched.setdefault((key, nxt), set()).add(obs.user)
        clock = time.time() if now is None else now
        erased = int(self._meta("erased") or 0)
        for rowid, user_id in reader.erasures_after(erased):
            erased = rowid
            digest = user_digest(user_id, self.salt)
            for key, nxt, _cell in self.memory.erase(digest, clock):
                touched.setdefault((key, nxt), set()).add(digest)
        if clock - self._last_forget > _FORGET_EVERY_S:
            self._last_forget = clock
            for key, nxt, digest, _cell in self.memory.forget_faded(clock):
                touched.setdefault((key, nxt), set()).add(digest)
        if not rows and not touched and erased == int(self._meta("erased") or 0):
            return 0
        self._write(touched, seq)
        self._set_meta("cursor", cursor)
        self._set_meta("erased", erased)
        self._set_meta("seq", seq)
        self.seq = seq
        self.ingested += len(rows)
        return len(rows)

    def _write(self, touched: dict[tuple[tuple[str, str, str], str], set[str]], seq: int) -> None:
        cells, users = [], []
        for (key, nxt), digests in touched.items():
            cell = self.memory.cell(key, nxt)
            if cell is None:
                continue
            cells.append((*key, nxt, cell.total, cell.t, seq))
            for d in digests:
                w, t = cell.users.get(d, (0.0, cell.t))
                users.append((*key, nxt, d, w, t, seq))
        self._conn.executemany("INSERT OR REPLACE INTO cells VALUES (?, ?, ?, ?, ?, ?, ?)", cells)
        self._conn.executemany("INSERT OR REPLACE INTO contributors VALUES (?, ?, ?, ?, ?, ?, ?, ?)", users)
        self._conn.execute("DELETE FROM contributors WHERE weight = 0 AND seq < ?", (seq - 1000,))

    # -- serving --------------------------------------------------------------------------------

    def tenant_of(self, user_id: str) -> str:
        return _tenant_of(user_id, self.tenants)

    def view(self, spec: SpecIndex, history: list[Call], prompt: str | None, *, user_id: str = "",
             now: float | None = None) -> PopulationView:
        """What the API's users (of ``user_id``'s tenant) did in this request's situation (only
        counts enough users made)."""
        return self.memory.view(api_key(spec, self.tenant_of(user_id)), history, prompt,
                                now=time.time() if now is None else now)

    def clear(self, api: str) -> int:
        """Forgets everything learned for ``api`` (an :func:`api_key`), in every replica within a
        second; returns the counts removed."""
        def work() -> int:
            seq = int(self._meta("seq") or 0) + 1
            n = self._conn.execute("DELETE FROM cells WHERE api = ?", (api,)).rowcount
            self._conn.execute("DELETE FROM contributors WHERE api = ?", (api,))
            self._conn.execute("INSERT OR REPLACE INTO cleared VALUES (?, ?)", (api, seq))
            self._set_meta("seq", seq)
            return int(n)

        with self._lock:
            n = self._transaction(work)
            self._refresh()
            return int(n)

    def apis(self) -> dict[str, dict[str, int]]:
        """Per API, its counts and those with enough users to be used."""
        return self.memory.status()

    def status(self) -> dict[str, Any]:
        return {"seq": self.seq, "ingested": self.ingested,
                "min_users": self.memory.config.min_users, "apis": self.apis()}

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class PopulationFeed(OutcomeFollower):
    """Keeps a :class:`PopulationStore` learning from a feedback store, in a thread."""

    name = "population-feed"

    def __init__(self, store: PopulationStore, feedback: str | Path | OutcomeStream, *,
                 interval_s: float = 1.0) -> None:
        super().__init__(feedback, interval_s=interval_s)
        self.store = store

    def poll_once(self) -> int:
        return self.store.ingest(self.reader)

    def sync(self) -> int:
        """Everything committed so far (returns outcomes read)."""
        total = 0
        while n := self.poll_once():
            total += n
        return total

    def stop(self) -> None:
        super().stop()
        self.store.close()

    def status(self) -> dict[str, Any]:
        return {**self.store.status(), "last_error": self.last_error}


class PopulationMirror:
    """The memory as another node sees it: no file, only what :meth:`PopulationStore.changes`
    of the one that has it says (deployments/serving/store_actor.py, several nodes)."""

    def __init__(self, *, config: PopulationConfig | None = None, tenants: bool = False) -> None:
        self.memory = PopulationMemory(config)
        self.tenants = tenants
        self.seq = 0
        self._lock = threading.Lock()

    def apply(self, changes: PopulationChanges) -> int:
        with self._lock:
            before, self.seq = self.seq, apply_changes(self.memory, changes)
        return self.seq - before

    def view(self, spec: SpecIndex, history: list[Call], prompt: str | None, *, user_id: str = "",
             now: float | None = None) -> PopulationView:
        return self.memory.view(api_key(spec, _tenant_of(user_id, self.tenants)), history, prompt,
                                now=time.time() if now is None else now)

    def status(self) -> dict[str, Any]:
        return {"seq": self.seq, "min_users": self.memory.config.min_users, "apis": self.memory.status()}


class MirrorFeed:
    """Keeps a :class:`PopulationMirror` up to date, in a thread: every ``interval_s``, the
    changes ``fetch(seq)`` returns (a failure is kept in ``last_error`` and retried)."""

    def __init__(self, mirror: PopulationMirror, fetch: Callable[[int], PopulationChanges], *,
                 interval_s: float = 1.0) -> None:
        self.store = mirror
        self.fetch = fetch
        self.interval_s = interval_s
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="population-mirror", daemon=True)

    def start(self) -> MirrorFeed:
        self._thread.start()
        return self

    def sync(self) -> int:
        return self.store.apply(self.fetch(self.store.seq))

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync()
                self.last_error = None
            except Exception as exc:  # noqa: BLE001 - keep serving; retried next tick
                self.last_error = failure_text(exc)
                log.warning("population mirror: %s", self.last_error)
            self._stop.wait(self.interval_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def status(self) -> dict[str, Any]:
        return {**self.store.status(), "last_error": self.last_error}


def start_population_feed(settings: Settings, feedback: FeedbackWriter | None) -> PopulationFeed | None:
    """The replica's population memory, learning from the feedback store; None when switched
    off or when no outcomes are recorded."""
    if feedback is None or not settings.population_enabled:
        return None
    store = PopulationStore(settings.population_db_path, config=population_config(settings),
                            tenants=has_tenants(settings))
    return PopulationFeed(store, feedback.follow()).start()


def has_tenants(settings: Settings) -> bool:
    """API keys are on: a user id is ``tenant/user``, each tenant with a memory of its own."""
    return settings.api_keys is not None or settings.api_keys_file is not None
