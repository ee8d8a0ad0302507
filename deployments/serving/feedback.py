"""The durable outcome store: what was predicted, in enough detail to rebuild its features, and
what the user really did next.

One SQLite file in WAL mode (``settings.feedback_db_path``), shared by every ingress replica of a
node and read by retraining; on several nodes its one writer is the store actor
(deployments/serving/store_actor.py), which wraps this class. No Ray import: the ingress, the
store actor, the in-process pipeline, retraining, the CLI and the benchmarks use the same class.

Writes go through one writer thread per store, fed by a queue:

- a prediction's context is *enqueued* by the request that made it (microseconds on the hot
  path) and committed up to ``linger_s`` (50 ms) later, batched with the contexts that arrive
  meanwhile, with ``synchronous=NORMAL``: a crash of the process loses at most the contexts not
  committed yet, a power loss also those of the last commits before it; they were never
  acknowledged as stored (feedback on them then gets 404). One commit per 50 ms instead of one
  per prediction: the writer thread wakes and takes the GIL from the requests far less often;
- an outcome (explicit feedback) ends the wait at once, and is acknowledged only after the
  transaction holding it has committed with ``synchronous=FULL``: what the client was told is
  stored survives a crash and a power loss (the same fsync makes the contexts before it durable).

The writer processes its queue in order, so feedback posted right after a prediction through the
same replica always finds it; through another replica it may have to wait for that replica's next
commit, which :meth:`FeedbackStore.arecord_outcome` does (briefly) before answering 404.

Implicit outcomes: every new prediction of a user first settles that user's earlier pending
predictions on the same spec, when its events show the call that followed them (see
:func:`follow_up_index`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import json
import logging
import queue
import sqlite3
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from core.errors import (
    FeedbackUnavailable,
    InvalidRequest,
    OutcomeConflict,
    PredictorError,
    UnknownPrediction,
)
from core.outcomes import OutcomeSource, StoredPrediction
from core.settings import Settings
from core.spec.index import SpecIndex, parse_endpoint
from deployments.serving.failures import failure_text
from deployments.serving.identity import owned_by
from deployments.serving.metrics import metrics
from deployments.serving.schemas import (
    FeedbackResponse,
    PredictRequest,
    PredictResponse,
    StoredPredictionResponse,
)

__all__ = [
    "ContextQueue",
    "LostPredictions",
    "FeedbackStore",
    "FeedbackWriter",
    "FeedbackReader",
    "OutcomeRow",
    "PredictionContext",
    "StoredPrediction",
    "OutcomeResult",
    "UnknownPrediction",
    "OutcomeConflict",
    "FeedbackUnavailable",
    "OutcomeSource",
    "follow_up_index",
    "resolve_operation",
    "open_store",
    "next_batch",
    "STOP",
    "stop_writer",
    "prediction_context",
    "feedback_response",
    "stored_response",
]

log = logging.getLogger(__name__)

# 1: the first release; 2: predictions.personal (the user's transitions the features were
# computed with), added to a version-1 file in place (:data:`_MIGRATIONS`); 3: erasures (users
# whose data was deleted, so every replica's personal prior forgets them too); 4:
# predictions.population (what the API's users did, as the features used it).
SCHEMA_VERSION = 4
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS specs (
        spec_hash TEXT PRIMARY KEY,
        payload BLOB NOT NULL,          -- zlib(SpecIndex.to_bytes()): features can be rebuilt
        created_at REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS predictions (
        prediction_id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL,
        spec_hash TEXT NOT NULL,
        created_at REAL NOT NULL,
        model_version TEXT NOT NULL,
        prompt TEXT,
        k INTEGER NOT NULL,
        events TEXT NOT NULL,           -- JSON [[endpoint, params, ts], ...] as received
        candidates TEXT NOT NULL,       -- JSON candidate wire tuples, in the generator's order
        shown TEXT NOT NULL,            -- JSON [[operation key, score], ...], best first
        personal TEXT,                  -- JSON {operation key: count}: the user's transitions the
                                        -- features used (core.features.UserTransitions); NULL: none
        population TEXT                 -- JSON PopulationView.to_wire() the features used; NULL: none
    )""",
    "CREATE INDEX IF NOT EXISTS predictions_by_user ON predictions (user_id, spec_hash, created_at)",
    """CREATE TABLE IF NOT EXISTS outcomes (
        prediction_id TEXT PRIMARY KEY REFERENCES predictions (prediction_id),
        actual_endpoint TEXT NOT NULL,  -- as reported (concrete or template)
        actual_key TEXT,                -- the spec operation it is; NULL if it is none of them
        rank INTEGER,                   -- 1-based position among the predictions shown, or NULL
        source TEXT NOT NULL,           -- explicit | accepted | implicit
        recorded_at REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS outcomes_by_time ON outcomes (recorded_at)",
    "CREATE INDEX IF NOT EXISTS predictions_by_time ON predictions (created_at)",
    """CREATE TABLE IF NOT EXISTS erasures (
        user_id TEXT NOT NULL,
        erased_at REAL NOT NULL
    )""",
)
# Statements that bring a file of version ``v`` (the key) to ``v + 1``.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: ("ALTER TABLE predictions ADD COLUMN personal TEXT",),
    2: (_SCHEMA[-2], _SCHEMA[-1]),
    3: ("ALTER TABLE predictions ADD COLUMN population TEXT",),
}
# How often the writer deletes what is older than the retention (and once when it starts).
_PURGE_EVERY_S = 3600.0
_BUSY_TIMEOUT_MS = 5000
_MAX_BATCH = 256
_LINGER_S = 0.05  # how long a batch of prediction contexts waits for more before its commit
# How many of a user's recent pending predictions a new request may settle implicitly.
_IMPLICIT_LOOKBACK = 5
# How long feedback for an id this replica hasn't seen waits for another replica's commit.
_UNKNOWN_RETRY_S = (0.05, 0.15, 0.3)
_MAX_LOST = 10_000
T = TypeVar("T")
# (outcome rowid, user_id, spec_hash, prompt, events JSON, actual_key, recorded_at)
OutcomeRow = tuple[int, str, str, str | None, str, str | None, float]
# Spec indexes kept decoded (implicit settlement, the prior feed): a few recent specs, not one per
# spec the store ever saw (a 5,000-operation index is tens of MB).
_MAX_CACHED_SPECS = 32


@dataclass(slots=True)
class PredictionContext:
    """What a prediction needs to be learned from later. Built on the hot path: references only,
    serialised by the writer thread."""

    prediction_id: str
    user_id: str
    spec: SpecIndex
    events: Sequence[tuple[str, dict[str, Any], str | None]]
    prompt: str | None
    k: int
    candidates: Sequence[Any]  # CandidateSet wire tuples (index, sources, destructive)
    shown: Sequence[tuple[str, float]]
    model_version: str
    created_at: float = field(default_factory=time.time)
    # the user's transitions the features were computed with (UserTransitions.to_wire()); None: none
    personal: dict[str, int] | None = None
    # what the API's users did, as the features used it (PopulationView.to_wire()); None: nothing
    population: dict[str, Any] | None = None


# Queued behind everything else, it ends a writer's thread once what came before is written.
STOP = object()


def stop_writer(q: queue.Queue[Any], thread: threading.Thread, *, timeout: float, what: str) -> bool:
    """Queue :data:`STOP` and wait up to ``timeout`` for ``thread`` to write what is queued and
    end; whether it ended."""
    try:
        q.put(STOP, timeout=timeout)
    except queue.Full:
        log.warning("%s: queue full at close; %d items not written", what, q.qsize())
    thread.join(timeout)
    return not thread.is_alive()


def next_batch(q: queue.Queue[Any], *, linger_s: float, first_wait_s: float | None = None) -> list[Any]:
    """What is queued, once the first item is in (``[]`` if none came within ``first_wait_s``):
    contexts only wait up to ``linger_s`` for more, so they are written in batches; anything else
    (an outcome, a flush, the stop) ends the wait, so it is not held back."""
    try:
        items = [q.get(timeout=first_wait_s)]
    except queue.Empty:
        return []
    deadline = time.monotonic() + linger_s
    while len(items) < _MAX_BATCH:
        remaining = deadline - time.monotonic()
        try:
            if remaining > 0 and isinstance(items[-1], PredictionContext):
                items.append(q.get(timeout=remaining))
            else:
                items.append(q.get_nowait())
        except queue.Empty:
            break
    return items


@dataclass(frozen=True, slots=True)
class OutcomeResult:
    prediction_id: str
    actual_endpoint: str
    actual_key: str | None
    rank: int | None
    source: OutcomeSource
    recorded: bool  # False: this very outcome was already stored (an idempotent repeat)


def resolve_operation(spec: SpecIndex, endpoint: str) -> str | None:
    """The spec operation ``endpoint`` is: a template key as in ``paths``, or a concrete call
    (with ids, possibly behind a base path). None when it is no operation of the spec."""
    method, path = parse_endpoint(endpoint)
    key = f"{method} {path.split('?', 1)[0]}"
    if key in spec.by_key:
        return key
    call = spec.resolve(endpoint)
    return call.operation.key if call.operation is not None else None


def _parse_ts(ts: str | None) -> dt.datetime | None:
    if not ts:
        return None
    try:
        t = dt.datetime.fromisoformat(ts)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def follow_up_index(
    previous: Sequence[tuple[str, Any, str | None]], current: Sequence[tuple[str, Any, str | None]]
) -> int | None:
    """Index in ``current`` of the call made right after the request whose events were
    ``previous``; None when ``current`` doesn't show it.

    1. Timestamps, when the last previous event and the current ones carry them: the first
       current event later than it.
    2. Otherwise by overlap: the longest suffix of ``previous`` found as a run in ``current``
       (clients send a sliding window of recent calls); the event after that run.
    3. A cold-start prediction (no previous events) is followed by the first current event.
    """
    if not current:
        return None
    if not previous:
        return 0
    last_ts = _parse_ts(previous[-1][2])
    stamps = [_parse_ts(e[2]) for e in current]
    if last_ts is not None and all(s is not None for s in stamps):
        later = [i for i, s in enumerate(stamps) if s > last_ts]  # type: ignore[operator]
        return later[0] if later else None
    prev = [e[0] for e in previous]
    cur = [e[0] for e in current]
    for m in range(min(len(prev), len(cur) - 1), 0, -1):
        tail = prev[-m:]
        for j in range(len(cur) - 1, m - 2, -1):  # latest run first
            if j + 1 < len(cur) and cur[j - m + 1 : j + 1] == tail:
                return j + 1
    return None


# -- reading -------------------------------------------------------------------------------------


def _connect(path: Path, *, read_only: bool = False) -> sqlite3.Connection:
    if read_only:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=_BUSY_TIMEOUT_MS / 1000,
                               isolation_level=None, check_same_thread=False)
    else:
        conn = sqlite3.connect(path, timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                               check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
    return conn


def _prepare(path: Path) -> None:
    """Create the file and schema if needed; refuse a file written by a newer release."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = _connect(path)
    try:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise FeedbackUnavailable(f"feedback store {path} cannot use WAL (journal mode {mode})")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise FeedbackUnavailable(
                f"feedback store {path} has schema {version}, newer than this code's {SCHEMA_VERSION}"
            )
        if version < SCHEMA_VERSION:
            conn.execute("BEGIN IMMEDIATE")
            try:
                # re-read under the write lock: another process may have migrated it meanwhile
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version == 0:  # a new file
                    for statement in _SCHEMA:
                        conn.execute(statement)
                else:
                    for v in range(version, SCHEMA_VERSION):
                        for statement in _MIGRATIONS[v]:
                            conn.execute(statement)
                        log.info("feedback store %s: schema %d -> %d", path, v, v + 1)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
    finally:
        conn.close()


_SELECT = (
    "SELECT p.prediction_id, p.user_id, p.spec_hash, p.created_at, p.model_version, p.prompt, "
    "p.k, p.events, p.candidates, p.shown, o.actual_endpoint, o.actual_key, o.rank, o.source, "
    "o.recorded_at, p.personal, p.population FROM predictions p LEFT JOIN outcomes o USING (prediction_id)"
)


def _row(row: tuple[Any, ...]) -> StoredPrediction:
    events = [(e[0], e[1], e[2] if len(e) > 2 else None) for e in json.loads(row[7])]
    return StoredPrediction(
        prediction_id=row[0], user_id=row[1], spec_hash=row[2], created_at=row[3],
        model_version=row[4], prompt=row[5], k=row[6], events=events,
        candidates=[(int(c[0]), dict(c[1]), bool(c[2])) for c in json.loads(row[8])],
        shown=[(s[0], float(s[1])) for s in json.loads(row[9])],
        actual_endpoint=row[10], actual_key=row[11], rank=row[12], source=row[13],
        recorded_at=row[14], personal=json.loads(row[15]) if row[15] else None,
        population=json.loads(row[16]) if row[16] else None,
    )


class FeedbackReader:
    """Read access for retraining, benchmarks and the CLI: no writer thread, opens lazily.

    Connections are per thread; each call is its own short read transaction.
    """

    def __init__(self, path: str | Path, *, create: bool = False) -> None:
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise FileNotFoundError(f"no feedback store at {self.path}")
        _prepare(self.path)  # creates it, or brings a file of an older schema up to date
        self._local = threading.local()
        self._specs: OrderedDict[str, SpecIndex] = OrderedDict()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = _connect(self.path)
            with self._lock:
                self._connections.append(conn)
        return conn

    def prediction(self, prediction_id: str) -> StoredPrediction | None:
        row = self._conn().execute(_SELECT + " WHERE p.prediction_id = ?", (prediction_id,)).fetchone()
        return _row(row) if row else None

    def predictions(
        self, *, with_outcome: bool = True, since: float | None = None, user_id: str | None = None
    ) -> Iterator[StoredPrediction]:
        """Stored predictions oldest first (only those with an outcome, by default)."""
        where: list[str] = []
        args: list[Any] = []
        if with_outcome:
            where.append("o.prediction_id IS NOT NULL")
        if since is not None:
            where.append("p.created_at >= ?")
            args.append(since)
        if user_id is not None:
            where.append("p.user_id = ?")
            args.append(user_id)
        sql = _SELECT + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY p.created_at"
        for row in self._conn().execute(sql, args):
            yield _row(row)

    def spec(self, spec_hash: str) -> SpecIndex:
        index = self._spec_from(self._conn(), spec_hash)
        if index is None:
            raise KeyError(f"spec {spec_hash[:12]} is not in the feedback store")
        return index

    def _spec_from(self, conn: sqlite3.Connection, spec_hash: str) -> SpecIndex | None:
        """The decoded index, from the few kept (least recently used dropped first) or the file."""
        with self._lock:
            index = self._specs.get(spec_hash)
            if index is not None:
                self._specs.move_to_end(spec_hash)
                return index
        row = conn.execute("SELECT payload FROM specs WHERE spec_hash = ?", (spec_hash,)).fetchone()
        if row is None:
            return None
        index = SpecIndex.from_bytes(zlib.decompress(row[0]))
        with self._lock:
            self._specs[spec_hash] = index
            while len(self._specs) > _MAX_CACHED_SPECS:
                self._specs.popitem(last=False)
        return index

    # -- the outcome stream the prior feeds and the population memory follow ---------------------

    def outcomes_after(self, cursor: int, limit: int) -> list[OutcomeRow]:
        """Outcomes committed after ``cursor`` (an outcome rowid: SQLite commits one writer at a
        time, so rowids arrive in commit order), oldest first, with what learning needs."""
        return [tuple(r) for r in self._conn().execute(
            "SELECT o.rowid, p.user_id, p.spec_hash, p.prompt, p.events, o.actual_key, o.recorded_at "
            "FROM outcomes o JOIN predictions p USING (prediction_id) WHERE o.rowid > ? "
            "ORDER BY o.rowid LIMIT ?", (cursor, limit))]

    def erasures_after(self, cursor: int) -> list[tuple[int, str]]:
        """Users erased after ``cursor`` (an erasure rowid): (rowid, user_id), oldest first."""
        return [(int(r[0]), str(r[1])) for r in self._conn().execute(
            "SELECT rowid, user_id FROM erasures WHERE rowid > ? ORDER BY rowid", (cursor,))]

    def cursors(self, *, replay_max: int | None = None) -> tuple[int, int]:
        """Where a new follower starts: (outcome cursor, erasure cursor). The outcome cursor
        replays the latest ``replay_max`` outcomes (None: all); erasures from now on only (those
        before are gone from the outcomes already)."""
        conn = self._conn()
        outcome = 0
        if replay_max is not None:
            row = conn.execute("SELECT rowid FROM outcomes ORDER BY rowid DESC LIMIT 1 OFFSET ?",
                               (replay_max,)).fetchone()
            outcome = int(row[0]) if row else 0
        erasure = int(conn.execute("SELECT coalesce(max(rowid), 0) FROM erasures").fetchone()[0])
        return outcome, erasure

    def spec_payload(self, spec_hash: str) -> bytes | None:
        """The stored spec index, compressed as stored (what a remote reader fetches)."""
        row = self._conn().execute("SELECT payload FROM specs WHERE spec_hash = ?", (spec_hash,)).fetchone()
        return bytes(row[0]) if row else None

    def counts(self) -> dict[str, int]:
        conn = self._conn()
        out = {"predictions": conn.execute("SELECT count(*) FROM predictions").fetchone()[0]}
        for source, n in conn.execute("SELECT source, count(*) FROM outcomes GROUP BY source"):
            out[f"outcomes_{source}"] = n
        out["outcomes"] = sum(v for k, v in out.items() if k.startswith("outcomes_"))
        out["specs"] = conn.execute("SELECT count(*) FROM specs").fetchone()[0]
        return out

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()


# -- writing -------------------------------------------------------------------------------------


class FeedbackWriter(Protocol):
    """What the Ingress records and reads through: a :class:`FeedbackStore` of its own process
    (one node), or the client of the store actor (several nodes: deployments/serving/store_actor.py)."""

    def record_prediction(self, ctx: PredictionContext) -> bool: ...

    async def arecord_outcome(self, prediction_id: str, **kw: Any) -> OutcomeResult: ...

    async def aprediction(self, prediction_id: str) -> StoredPrediction | None: ...

    async def aerase_user(self, user_id: str) -> dict[str, int]: ...

    def follow(self) -> Any: ...

    def status(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


@dataclass(slots=True)
class _Outcome:
    prediction_id: str
    actual_endpoint: str | None
    accepted: bool
    source: OutcomeSource
    future: concurrent.futures.Future[OutcomeResult]
    tenant: str | None = None  # with API keys: only this tenant's predictions


@dataclass(slots=True)
class _Flush:
    future: concurrent.futures.Future[None]


@dataclass(slots=True)
class _Task:
    """Work on the database the writer does in its own order (erasing a user, a purge)."""

    run: Callable[[sqlite3.Connection], Any]
    future: concurrent.futures.Future[Any]


class LostPredictions:
    """Predictions whose context was not stored, and why (a failed commit, a full queue): an
    outcome for one is refused as unavailable, saying why, rather than answered as unknown.
    The newest ``_MAX_LOST`` are kept; the request path and the writer both add."""

    def __init__(self) -> None:
        self._why: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, prediction_ids: Sequence[str], why: str) -> None:
        with self._lock:
            for prediction_id in prediction_ids:
                self._why[prediction_id] = why
            while len(self._why) > _MAX_LOST:
                self._why.popitem(last=False)

    def check(self, prediction_id: str) -> None:
        """Raises :class:`FeedbackUnavailable` if that prediction's context was lost."""
        why = self._why.get(prediction_id)
        if why is not None:
            raise FeedbackUnavailable(
                f"prediction {prediction_id!r} was not stored ({why}); its outcome cannot be recorded")


class ContextQueue:
    """A writer's queue of prediction contexts, for the classes that own one (the local store,
    the store actor's client): ``_queue``, ``_lost``, ``stats`` and ``_closed`` are theirs."""

    _closed: bool
    _queue: queue.Queue[Any]
    _lost: LostPredictions
    stats: dict[str, int]
    _FULL = "the feedback queue was full"  # why a context its full queue refused was lost

    def record_prediction(self, ctx: PredictionContext) -> bool:
        """Enqueue a prediction's context; never blocks. False if it was dropped."""
        if self._closed:
            return False
        try:
            self._queue.put_nowait(ctx)
        except queue.Full:
            self._drop([ctx.prediction_id], self._FULL)
            return False
        return True

    def _drop(self, prediction_ids: Sequence[str], why: str) -> None:
        """Contexts that will never be stored: counted, exported, remembered (feedback on one
        says ``why``), and logged at the 1st, 10th, 100th and every 1000th (a full queue drops
        many in a row)."""
        if not prediction_ids:
            return
        before = self.stats["dropped"]
        self.stats["dropped"] = after = before + len(prediction_ids)
        metrics().feedback.inc(len(prediction_ids), tags={"result": "dropped"})
        self._lost.add(prediction_ids, why)
        if any(before < n <= after for n in (1, 10, 100)) or before // 1000 != after // 1000:
            log.warning("feedback: %d prediction contexts dropped so far (%s)", after, why)


class FeedbackStore(FeedbackReader, ContextQueue):
    """The store a serving process writes to (see the module docstring for the guarantees).

    ``implicit_window_s``: how old a pending prediction may be for a later request of the same
    user to settle it. ``max_queue``: predictions waiting to be written beyond it are dropped
    (counted, logged), never blocking a request. ``linger_s``: how long prediction contexts wait
    for more to share their commit (an outcome or a flush never waits).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        implicit_window_s: float = 3600.0,
        max_queue: int = 10_000,
        linger_s: float = _LINGER_S,
        wait_s: float = 5.0,
        retention_days: float | None = None,
    ) -> None:
        if implicit_window_s <= 0:
            raise ValueError(f"implicit_window_s must be > 0, got {implicit_window_s}")
        if not 0 <= linger_s <= 10:
            raise ValueError(f"linger_s must be in [0, 10], got {linger_s}")
        self.linger_s = linger_s
        self.wait_s = wait_s  # how long an async caller waits for a commit before its 503
        # Predictions (prompts, user ids, params) and their outcomes older than this are deleted.
        self.retention_days = retention_days
        self._next_purge = 0.0
        super().__init__(path, create=True)
        self.implicit_window_s = implicit_window_s
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queue)
        self._known_specs: set[str] = set()
        self._closed = False
        self.stats = {"predictions": 0, "dropped": 0, "implicit": 0, "explicit": 0, "commits": 0,
                      "errors": 0, "timeouts": 0, "purged": 0, "erased": 0}
        self.last_error: str | None = None
        self.failing = False  # the last commit failed: /health reports the store degraded
        self._lost = LostPredictions()
        self._writer_conn = _connect(self.path)
        self._synchronous = ""
        self._set_synchronous("FULL")
        self._thread = threading.Thread(target=self._run, name="feedback-writer", daemon=True)
        self._thread.start()

    # -- outcomes -----------------------------------------------------------------------------

    def submit_outcome(
        self,
        prediction_id: str,
        *,
        actual_endpoint: str | None = None,
        accepted: bool = False,
        source: OutcomeSource = "explicit",
        tenant: str | None = None,
    ) -> concurrent.futures.Future[OutcomeResult]:
        """Queue an outcome; the future resolves once it is committed (or fails with
        :class:`UnknownPrediction`, :class:`OutcomeConflict`, :class:`InvalidRequest`)."""
        if (actual_endpoint is None) == (not accepted):
            raise InvalidRequest("give exactly one of actual_endpoint or accepted=true")
        future: concurrent.futures.Future[OutcomeResult] = concurrent.futures.Future()
        if self._closed:
            future.set_exception(FeedbackUnavailable("the feedback store is closed"))
            return future
        # Never waits for room: with the writer stuck, waiting would block the caller's event loop.
        self._enqueue(_Outcome(prediction_id, actual_endpoint, accepted, source, future, tenant))
        return future

    async def aerase_user(self, user_id: str) -> dict[str, int]:
        """Delete the user's predictions and outcomes, and record the erasure (every replica's
        personal prior forgets the user from it); answers once committed."""
        future: concurrent.futures.Future[dict[str, int]] = concurrent.futures.Future()
        if self._closed:
            raise FeedbackUnavailable("the feedback store is closed")
        self._enqueue(_Task(lambda conn: _erase_user(conn, user_id), future))
        result = await self._committed(future)
        self.stats["erased"] += result["predictions"]
        return result

    def purge(self, timeout: float = 30.0) -> dict[str, int]:
        """Delete now what is older than the retention (the writer also does it every hour)."""
        future: concurrent.futures.Future[dict[str, int]] = concurrent.futures.Future()
        self._enqueue(_Task(self._purge, future))
        return future.result(timeout)

    def _purge(self, conn: sqlite3.Connection) -> dict[str, int]:
        if self.retention_days is None:
            return {"predictions": 0, "outcomes": 0, "specs": 0}
        removed = _purge_before(conn, time.time() - self.retention_days * 86400)
        self._known_specs.clear()  # specs no prediction uses any more went with them
        self.stats["purged"] += removed["predictions"]
        return removed

    def _enqueue(self, item: _Outcome | _Flush | _Task) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            raise FeedbackUnavailable(
                f"the feedback writer is behind ({self._queue.qsize()} items queued); retry shortly"
            ) from None

    async def _committed(self, future: concurrent.futures.Future[T]) -> T:
        """The writer's answer, or 503 after ``wait_s``; the item stays queued and is written if
        the writer recovers (an outcome recorded twice is answered as already recorded)."""
        try:
            # shielded: a timeout must not cancel the future the writer thread will resolve
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), self.wait_s)
        except TimeoutError:
            self.stats["timeouts"] += 1
            raise FeedbackUnavailable(
                f"the feedback store did not commit within {self.wait_s:g}s (feedback_wait_s); "
                "it may still be recorded, and sending it again is safe"
            ) from None

    def record_outcome(self, prediction_id: str, *, timeout: float = 30.0, **kw: Any) -> OutcomeResult:
        return self.submit_outcome(prediction_id, **kw).result(timeout)

    async def arecord_outcome(
        self, prediction_id: str, *, unknown_retry_s: Sequence[float] = _UNKNOWN_RETRY_S, **kw: Any
    ) -> OutcomeResult:
        """Record an outcome without blocking the event loop; an id not found yet is retried
        after each of ``unknown_retry_s``, as another replica may still be committing it."""
        for delay in (*unknown_retry_s, None):
            try:
                return await self._committed(self.submit_outcome(prediction_id, **kw))
            except UnknownPrediction:
                if delay is None:
                    raise
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    def flush(self, timeout: float | None = 30.0) -> None:
        """Wait until everything queued so far is committed."""
        if self._closed:
            return
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._queue.put(_Flush(future), timeout=timeout)
        future.result(timeout)

    async def aflush(self) -> None:
        if self._closed:
            return
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._enqueue(_Flush(future))
        await self._committed(future)

    async def aprediction(self, prediction_id: str) -> StoredPrediction | None:
        """A stored prediction with its outcome, once what is queued before it is committed."""
        await self.aflush()
        return await asyncio.to_thread(self.prediction, prediction_id)

    def follow(self) -> FeedbackReader:
        """A reader of its own for a follower thread (a prior feed, the population memory)."""
        return FeedbackReader(self.path, create=True)

    def status(self) -> dict[str, Any]:
        return {
            "queued": self._queue.qsize(),
            "writer_alive": self._thread.is_alive(),
            "failing": self.failing,
            **self.stats,
            "last_error": self.last_error,
        }

    def close(self, timeout: float = 10.0) -> None:
        """Commit what is queued, stop the writer, close the connections."""
        if self._closed:
            return
        self._closed = True
        if stop_writer(self._queue, self._thread, timeout=timeout, what="feedback"):
            self._writer_conn.close()
        super().close()

    # -- the writer thread --------------------------------------------------------------------

    def _set_synchronous(self, mode: str) -> None:
        if mode != self._synchronous:
            self._writer_conn.execute(f"PRAGMA synchronous = {mode}")
            self._synchronous = mode

    def _run(self) -> None:
        while True:
            if self.retention_days is not None and time.monotonic() >= self._next_purge:
                self._next_purge = time.monotonic() + _PURGE_EVERY_S
                # in the writer's own transaction; a failure is counted like any batch's
                self._write([_Task(self._purge, concurrent.futures.Future())])
            items = next_batch(self._queue, linger_s=self.linger_s)
            stop = any(i is STOP for i in items)
            try:
                self._write([i for i in items if i is not STOP])
            except Exception as exc:  # noqa: BLE001 - the writer must outlive any one batch
                log.exception("feedback writer: unexpected failure")
                failure = FeedbackUnavailable(f"the feedback store failed: {failure_text(exc)}")
                for item in items:
                    if isinstance(item, _Outcome | _Flush | _Task) and not item.future.done():
                        item.future.set_exception(failure)
            if stop:
                return

    def _write(self, items: list[Any]) -> None:
        conn = self._writer_conn
        results: list[tuple[concurrent.futures.Future[Any], Any, BaseException | None]] = []
        try:
            # Acknowledged items are fsynced (FULL); a batch of contexts only is not (NORMAL).
            self._set_synchronous("NORMAL" if all(isinstance(i, PredictionContext) for i in items)
                                  else "FULL")
            conn.execute("BEGIN IMMEDIATE")
            for item in items:
                if isinstance(item, PredictionContext):
                    try:
                        self._insert_prediction(conn, item)
                    except (ValueError, TypeError, KeyError) as exc:  # one bad context, not the batch
                        self.stats["errors"] += 1
                        self.last_error = f"prediction {item.prediction_id}: {failure_text(exc)}"
                        log.warning("feedback store: prediction %s: %r", item.prediction_id, exc)
                elif isinstance(item, _Outcome):
                    try:
                        results.append((item.future, self._insert_outcome(conn, item), None))
                    except PredictorError as exc:
                        results.append((item.future, None, exc))
                elif isinstance(item, _Flush):
                    results.append((item.future, None, None))
                elif isinstance(item, _Task):
                    results.append((item.future, item.run(conn), None))
            conn.execute("COMMIT")
            self.stats["commits"] += 1
            if any(isinstance(i, PredictionContext) for i in items) or any(
                error is None and value is not None for _, value, error in results
            ):
                self.failing = False  # something was written (an empty commit proves nothing)
        except (sqlite3.Error, OSError) as exc:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            self.stats["errors"] += 1
            self.failing = True
            self._known_specs.clear()  # rolled back: specs this batch claimed are not stored
            self.last_error = failure_text(exc)
            for item in items:
                if isinstance(item, PredictionContext):
                    self._lost.add([item.prediction_id], f"the feedback store failed ({self.last_error})")
            log.error("feedback store %s: could not write %d items: %s", self.path, len(items), exc)
            failure = FeedbackUnavailable(f"the feedback store could not commit ({failure_text(exc)})")
            for item in items:
                if isinstance(item, _Outcome | _Flush | _Task) and not item.future.done():
                    item.future.set_exception(failure)
            return
        for future, value, error in results:
            if future.done():
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(value)

    def _insert_prediction(self, conn: sqlite3.Connection, ctx: PredictionContext) -> None:
        spec = ctx.spec
        if spec.spec_hash not in self._known_specs:
            conn.execute(
                "INSERT OR IGNORE INTO specs (spec_hash, payload, created_at) VALUES (?, ?, ?)",
                (spec.spec_hash, zlib.compress(spec.to_bytes(), 6), ctx.created_at),
            )
            self._known_specs.add(spec.spec_hash)
        events = [[e, p, ts] for e, p, ts in ctx.events]
        self._settle_implicit(conn, ctx, events)
        conn.execute(
            "INSERT OR IGNORE INTO predictions (prediction_id, user_id, spec_hash, created_at, "
            "model_version, prompt, k, events, candidates, shown, personal, population) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                ctx.prediction_id, ctx.user_id, spec.spec_hash, ctx.created_at, ctx.model_version,
                ctx.prompt, ctx.k, json.dumps(events, separators=(",", ":"), default=str),
                json.dumps([list(c) for c in ctx.candidates], separators=(",", ":")),
                json.dumps([[key, float(score)] for key, score in ctx.shown], separators=(",", ":")),
                json.dumps(ctx.personal, separators=(",", ":"), sort_keys=True) if ctx.personal else None,
                json.dumps(ctx.population, separators=(",", ":"), sort_keys=True) if ctx.population else None,
            ),
        )
        self.stats["predictions"] += 1
        metrics().feedback.inc(tags={"result": "written"})

    def _settle_implicit(
        self, conn: sqlite3.Connection, ctx: PredictionContext, events: list[list[Any]]
    ) -> None:
        """Record the outcome of this user's pending predictions that ``events`` now show."""
        if not events:
            return
        pending = conn.execute(
            "SELECT p.prediction_id, p.events, p.shown FROM predictions p "
            "LEFT JOIN outcomes o USING (prediction_id) "
            "WHERE p.user_id = ? AND p.spec_hash = ? AND p.created_at >= ? AND p.created_at <= ? "
            "AND o.prediction_id IS NULL ORDER BY p.created_at DESC LIMIT ?",
            (ctx.user_id, ctx.spec.spec_hash, ctx.created_at - self.implicit_window_s,
             ctx.created_at, _IMPLICIT_LOOKBACK),
        ).fetchall()
        current = [(e[0], e[1], e[2]) for e in events]
        for prediction_id, raw_events, raw_shown in pending:
            previous = [(e[0], e[1], e[2] if len(e) > 2 else None) for e in json.loads(raw_events)]
            i = follow_up_index(previous, current)
            if i is None:
                continue
            endpoint = current[i][0]
            key = resolve_operation(ctx.spec, endpoint)
            shown = [s[0] for s in json.loads(raw_shown)]
            conn.execute(
                "INSERT OR IGNORE INTO outcomes (prediction_id, actual_endpoint, actual_key, rank, "
                "source, recorded_at) VALUES (?, ?, ?, ?, 'implicit', ?)",
                (prediction_id, endpoint, key, shown.index(key) + 1 if key in shown else None,
                 time.time()),
            )
            self.stats["implicit"] += 1
            metrics().outcome(api=ctx.spec.title, source="implicit",
                              rank=shown.index(key) + 1 if key in shown else None)

    def _insert_outcome(self, conn: sqlite3.Connection, item: _Outcome) -> OutcomeResult:
        row = conn.execute(
            "SELECT p.spec_hash, p.shown, o.actual_endpoint, o.actual_key, o.rank, o.source, p.user_id "
            "FROM predictions p LEFT JOIN outcomes o USING (prediction_id) WHERE p.prediction_id = ?",
            (item.prediction_id,),
        ).fetchone()
        if row is not None and not owned_by(item.tenant, row[6]):
            row = None  # another tenant's prediction: as unknown as one that does not exist
        if row is None:
            self._lost.check(item.prediction_id)
            raise UnknownPrediction(f"no prediction with id {item.prediction_id!r}")
        spec_hash, raw_shown, old_endpoint, old_key, old_rank, old_source, _ = row
        shown = [s[0] for s in json.loads(raw_shown)]
        if item.accepted:
            if not shown:
                raise InvalidRequest("that prediction showed no endpoint to accept")
            endpoint, key = shown[0], shown[0]
        else:
            assert item.actual_endpoint is not None
            endpoint = item.actual_endpoint
            key = resolve_operation(self._spec_in(conn, spec_hash), endpoint)
        rank = shown.index(key) + 1 if key in shown else None
        if old_source is not None:
            same = (old_key or old_endpoint) == (key or endpoint)
            if same or item.source == "implicit":
                return OutcomeResult(item.prediction_id, old_endpoint, old_key, old_rank,
                                     old_source, recorded=False)
            if old_source != "implicit":
                raise OutcomeConflict(
                    f"prediction {item.prediction_id!r} already has the outcome "
                    f"{old_key or old_endpoint!r} ({old_source}); outcomes are not overwritten"
                )
            # An explicit outcome corrects an implicit one.
        source: OutcomeSource = "accepted" if item.accepted else item.source
        conn.execute(
            "INSERT OR REPLACE INTO outcomes (prediction_id, actual_endpoint, actual_key, rank, "
            "source, recorded_at) VALUES (?, ?, ?, ?, ?, ?)",
            (item.prediction_id, endpoint, key, rank, source, time.time()),
        )
        self.stats["explicit"] += 1
        if metrics().enabled:  # the API's title is one cached lookup; outcomes are few
            metrics().outcome(api=self._spec_in(conn, spec_hash).title, source=source, rank=rank,
                              corrects=old_source is not None, corrected_rank=old_rank)
        return OutcomeResult(item.prediction_id, endpoint, key, rank, source, recorded=True)

    def _spec_in(self, conn: sqlite3.Connection, spec_hash: str) -> SpecIndex:
        index = self._spec_from(conn, spec_hash)
        if index is None:  # written by a release that didn't store specs: nothing to resolve
            raise FeedbackUnavailable(f"spec {spec_hash[:12]} of that prediction is not stored")
        return index


def _erase_user(conn: sqlite3.Connection, user_id: str) -> dict[str, int]:
    ids = "SELECT prediction_id FROM predictions WHERE user_id = ?"
    outcomes = conn.execute(f"DELETE FROM outcomes WHERE prediction_id IN ({ids})", (user_id,)).rowcount
    predictions = conn.execute("DELETE FROM predictions WHERE user_id = ?", (user_id,)).rowcount
    conn.execute("INSERT INTO erasures (user_id, erased_at) VALUES (?, ?)", (user_id, time.time()))
    return {"predictions": predictions, "outcomes": outcomes}


def _purge_before(conn: sqlite3.Connection, cutoff: float) -> dict[str, int]:
    old = "SELECT prediction_id FROM predictions WHERE created_at < ?"
    outcomes = conn.execute(f"DELETE FROM outcomes WHERE prediction_id IN ({old})", (cutoff,)).rowcount
    predictions = conn.execute("DELETE FROM predictions WHERE created_at < ?", (cutoff,)).rowcount
    specs = conn.execute(
        "DELETE FROM specs WHERE spec_hash NOT IN (SELECT DISTINCT spec_hash FROM predictions)").rowcount
    conn.execute("DELETE FROM erasures WHERE erased_at < ?", (cutoff,))
    return {"predictions": predictions, "outcomes": outcomes, "specs": specs}


# -- glue for the ingress and the in-process pipeline --------------------------------------------


def open_store(settings: Settings) -> tuple[FeedbackStore | None, str | None]:
    """The store the settings ask for, or (None, why not). Predictions are served either way."""
    if not settings.feedback_enabled:
        return None, "disabled (feedback_enabled=false)"
    try:
        store = FeedbackStore(
            settings.feedback_db_path,
            implicit_window_s=settings.feedback_implicit_window_s,
            max_queue=settings.feedback_queue_max,
            wait_s=settings.feedback_wait_s,
            retention_days=settings.feedback_retention_days,
        )
    except (sqlite3.Error, OSError, PredictorError) as exc:
        log.error("feedback store %s unusable, outcomes will not be recorded: %s",
                  settings.feedback_db_path, exc)
        return None, f"the store could not be opened ({failure_text(exc)})"
    return store, None


def prediction_context(
    *, request: PredictRequest, response: PredictResponse, spec: SpecIndex, candidates: Sequence[Any],
    personal: Any = None, population: Any = None,
) -> PredictionContext:
    """``personal``: the :class:`core.features.UserTransitions` the features were computed with;
    ``population``: the :class:`core.priors.population.PopulationView`."""
    return PredictionContext(
        prediction_id=response.prediction_id,
        user_id=request.user_id,
        spec=spec,
        events=[(e.endpoint, e.params, e.ts) for e in request.events],
        prompt=request.prompt,
        k=request.k,
        candidates=candidates,
        shown=[(p.endpoint, p.score) for p in response.predictions],
        model_version=response.metadata.model_version,
        personal=personal.to_wire() if personal is not None else None,
        population=population.to_wire() if population is not None else None,
    )


def feedback_response(result: OutcomeResult) -> FeedbackResponse:
    return FeedbackResponse(
        prediction_id=result.prediction_id, recorded=result.recorded,
        actual_endpoint=result.actual_endpoint, operation=result.actual_key, rank=result.rank,
        source=result.source,
    )


def stored_response(stored: StoredPrediction) -> StoredPredictionResponse:
    outcome = None
    if stored.source is not None and stored.actual_endpoint is not None:
        outcome = FeedbackResponse(
            prediction_id=stored.prediction_id, recorded=True,
            actual_endpoint=stored.actual_endpoint, operation=stored.actual_key,
            rank=stored.rank, source=stored.source,
        )
    return StoredPredictionResponse(
        prediction_id=stored.prediction_id, user_id=stored.user_id,
        model_version=stored.model_version, created_at=stored.created_at,
        predictions=[{"endpoint": k, "score": s} for k, s in stored.shown], outcome=outcome,
    )
