"""The feedback store on several nodes: one Ray actor, the only writer of the SQLite file, placed
on the node that holds the data; the Ingress replicas of every node call it.

With ``feedback_store = "actor"`` (``OPENSESAME_FEEDBACK_STORE=actor``) each Ingress replica gets
(or, the first one, creates) the named, detached actor :data:`ACTOR_NAME`. Its only placement
constraint is the custom resource :data:`DATA_RESOURCE`, which only the node with the volume
announces (``ray start --resources '{"opensesame_data": 1}'``, as configs/rayservice.yaml's head). The
actor wraps the plain :class:`~deployments.serving.feedback.FeedbackStore` (its writer thread, WAL,
retention, erasures) and answers reads; the Ingress talks to it through :class:`StoreClient`:

- prediction contexts stay off the request path as with the local store: ``record_prediction``
  enqueues; a sender thread ships what arrived within ``linger_s`` in one actor call (a spec's
  index only the first time). A batch the actor does not take (unreachable, restarting, timed
  out) is kept and sent again, the newest ``feedback_queue_max`` of them; what the replica's
  queue or that bound drops, and what a replica stopped while the actor was unreachable still
  held, is counted and logged, and feedback on such an id answers 503 saying so. A context the
  actor took is in its writer's queue: committed within its linger, lost only if the actor's
  process dies first (as with the local writer). A retried batch the actor had already taken is
  written once (prediction ids are keys).
- an outcome first waits until this replica's earlier contexts are with the actor, then is
  recorded by it and acknowledged once committed with a full sync, as locally. An id the actor
  has not seen waits up to 2 s for another replica's context before its 404. Every call has a
  deadline (``feedback_wait_s`` plus a second): an actor that cannot be reached, is not placed
  yet or does not answer gives :class:`FeedbackUnavailable` (503 with the reason); sending the
  outcome again is safe (an identical repeat is answered as already recorded).
- the prior feeds of every node follow the outcomes through :class:`RemoteReader`, the actor's
  view of the outcome stream (rowid cursors, as on the file). The population memory is learned
  by the actor itself into its file (one writer there too); each replica mirrors its changes
  (:func:`open_population`).

The actor is detached: it outlives Serve redeploys and replicas and ends with the cluster (or
``ray kill``); Ray restarts it (same node, same file) if its process dies.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import zlib
from collections import OrderedDict
from collections.abc import Awaitable
from dataclasses import fields
from typing import Any

from core.errors import (
    FeedbackUnavailable,
    InvalidRequest,
    OutcomeConflict,
    PredictorError,
    UnknownPrediction,
)
from core.outcomes import StoredPrediction
from core.settings import Settings, load_settings
from core.spec.index import SpecIndex
from deployments.serving.failures import failure_text
from deployments.serving.feedback import (
    STOP,
    ContextQueue,
    FeedbackStore,
    FeedbackWriter,
    LostPredictions,
    OutcomeResult,
    OutcomeRow,
    PredictionContext,
    next_batch,
    open_store,
    stop_writer,
)
from deployments.serving.metrics import enable as enable_metrics
from deployments.serving.population_store import (
    MirrorFeed,
    PopulationChanges,
    PopulationFeed,
    PopulationMirror,
    PopulationStore,
    has_tenants,
    population_config,
    start_population_feed,
)

__all__ = ["ACTOR_NAME", "NAMESPACE", "DATA_RESOURCE", "FeedbackStoreActor", "StoreClient",
           "RemoteReader", "store_actor", "open_feedback", "open_population"]

log = logging.getLogger(__name__)

ACTOR_NAME = "opensesame-feedback-store"
NAMESPACE = "opensesame"
DATA_RESOURCE = "opensesame_data"
_LINGER_S = 0.05
_RETRY_EVERY_S = 0.5  # a batch the actor did not take is sent again this often
# An outcome for an id the actor has not seen waits this long (in steps) before its 404: the
# context may still be on its way from another replica (up to a linger, or a retry after the
# actor was unreachable).
_UNKNOWN_RETRY_S = (0.05, 0.15, 0.3, 0.5, 1.0)
_MAX_SPECS = 32  # decoded spec indexes kept by the actor and by each reader
# The errors an outcome answer may carry back, rebuilt on the caller's side by name.
_ERRORS: dict[str, type[PredictorError]] = {
    e.__name__: e for e in (FeedbackUnavailable, UnknownPrediction, OutcomeConflict, InvalidRequest)
}
_CONTEXT_FIELDS = tuple(f.name for f in fields(PredictionContext) if f.name != "spec")


class _SpecCache:
    """A few decoded spec indexes, least recently used dropped first."""

    def __init__(self) -> None:
        self._specs: OrderedDict[str, SpecIndex] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, spec_hash: str) -> SpecIndex | None:
        with self._lock:
            index = self._specs.get(spec_hash)
            if index is not None:
                self._specs.move_to_end(spec_hash)
            return index

    def put(self, index: SpecIndex) -> SpecIndex:
        with self._lock:
            self._specs[index.spec_hash] = index
            while len(self._specs) > _MAX_SPECS:
                self._specs.popitem(last=False)
        return index


class FeedbackStoreActor:
    """The actor's class (``ray.remote`` is applied by :func:`store_actor`): a thin wrapper over
    :class:`FeedbackStore`. Answers carry errors as values (:func:`_answer`) so the caller raises
    the service's own exception, not Ray's wrapper of it."""

    def __init__(self, settings: dict[str, Any]) -> None:
        s = load_settings(**settings)
        enable_metrics(s.metrics)  # outcomes and contexts written are counted where they are written
        self.store = FeedbackStore(
            s.feedback_db_path, implicit_window_s=s.feedback_implicit_window_s,
            max_queue=s.feedback_queue_max, wait_s=s.feedback_wait_s,
            retention_days=s.feedback_retention_days,
        )
        self._specs = _SpecCache()
        # The population memory, learned here from the outcomes as they are committed: its file
        # has one writer too, and every node's replicas mirror it (population_changes).
        self.population = (PopulationFeed(PopulationStore(s.population_db_path, config=population_config(s),
                                                          tenants=has_tenants(s)),
                                          self.store.follow()).start()
                           if s.population_enabled else None)
        log.info("feedback store actor on %s", s.feedback_db_path)

    def _spec(self, spec_hash: str, payloads: dict[str, bytes]) -> SpecIndex | None:
        index = self._specs.get(spec_hash)
        if index is not None:
            return index
        if spec_hash in payloads:
            return self._specs.put(SpecIndex.from_bytes(payloads[spec_hash]))
        try:
            return self._specs.put(self.store.spec(spec_hash))  # stored by an earlier batch
        except KeyError:
            return None

    def record_predictions(
        self, payloads: dict[str, bytes], contexts: list[tuple[str, dict[str, Any]]]
    ) -> dict[str, list[str]]:
        """Enqueues the contexts for the writer. Returns the spec hashes it has no index of (sent
        again with them) and the prediction ids its full queue dropped."""
        unknown: list[str] = []
        dropped: list[str] = []
        for spec_hash, wire in contexts:
            spec = self._spec(spec_hash, payloads)
            if spec is None:
                if spec_hash not in unknown:
                    unknown.append(spec_hash)
                continue
            if not self.store.record_prediction(PredictionContext(spec=spec, **wire)):
                dropped.append(wire["prediction_id"])
        return {"unknown_specs": unknown, "dropped": dropped}

    async def record_outcome(self, prediction_id: str, kw: dict[str, Any]) -> tuple[Any, ...]:
        return await _answer(self.store.arecord_outcome(prediction_id, unknown_retry_s=_UNKNOWN_RETRY_S,
                                                        **kw))

    async def prediction(self, prediction_id: str) -> tuple[Any, ...]:
        return await _answer(self.store.aprediction(prediction_id))

    async def erase_user(self, user_id: str) -> tuple[Any, ...]:
        return await _answer(self.store.aerase_user(user_id))

    def status(self) -> dict[str, Any]:
        return self.store.status()

    async def population_changes(self, since: int) -> PopulationChanges | None:
        """What the population memory committed after commit ``since`` (None: switched off)."""
        if self.population is None:
            return None
        return await asyncio.to_thread(self.population.store.changes, since)

    # The outcome stream (FeedbackReader's), read in a thread: a batch can be thousands of rows.

    async def outcomes_after(self, cursor: int, limit: int) -> list[OutcomeRow]:
        return await asyncio.to_thread(self.store.outcomes_after, cursor, limit)

    async def erasures_after(self, cursor: int) -> list[tuple[int, str]]:
        return await asyncio.to_thread(self.store.erasures_after, cursor)

    async def cursors(self, replay_max: int | None) -> tuple[int, int]:
        return await asyncio.to_thread(self.store.cursors, replay_max=replay_max)

    async def spec_payload(self, spec_hash: str) -> bytes | None:
        return await asyncio.to_thread(self.store.spec_payload, spec_hash)


async def _answer(work: Awaitable[Any]) -> tuple[Any, ...]:
    try:
        return ("ok", await work)
    except PredictorError as exc:
        if type(exc).__name__ not in _ERRORS:
            raise
        return ("error", type(exc).__name__, str(exc))


def _unwrap(answer: tuple[Any, ...]) -> Any:
    if answer[0] == "ok":
        return answer[1]
    raise _ERRORS[answer[1]](answer[2])


def store_actor(settings: dict[str, Any]) -> Any:
    """The store actor of this cluster, started (on the node with :data:`DATA_RESOURCE`) by the
    first caller. ``settings``: the app's overrides; the actor reads its paths from them."""
    import ray  # only in a replica: the rest of the module is plain

    remote: Any = ray.remote(FeedbackStoreActor)
    return remote.options(
        name=ACTOR_NAME, namespace=NAMESPACE, get_if_exists=True, lifetime="detached",
        num_cpus=0, resources={DATA_RESOURCE: 0.001}, max_restarts=-1, max_task_retries=0,
    ).remote(settings)


class _Flush:
    __slots__ = ("future",)

    def __init__(self) -> None:
        self.future: concurrent.futures.Future[None] = concurrent.futures.Future()


class StoreClient(ContextQueue):
    """An Ingress replica's side of the store actor (a :class:`FeedbackWriter`)."""

    _FULL = "the replica's queue to the store actor was full"

    def __init__(self, actor: Any, *, wait_s: float = 5.0, max_queue: int = 10_000,
                 linger_s: float = _LINGER_S) -> None:
        self.actor = actor
        self.wait_s = wait_s
        self.max_queue = max_queue
        self.linger_s = linger_s
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queue)
        self._retry: list[PredictionContext] = []  # a batch the actor did not take (sender only)
        self._sent_specs: set[str] = set()
        # Predictions whose context this replica dropped: feedback on them says so (503).
        self._lost = LostPredictions()
        self.stats = {"predictions": 0, "dropped": 0, "batches": 0, "send_errors": 0, "timeouts": 0}
        self.failing = False  # the actor did not take the last batch: readiness says so
        self.last_error: str | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="feedback-sender", daemon=True)
        self._thread.start()

    # -- calls with a deadline ----------------------------------------------------------------

    async def _call(self, ref: Any) -> Any:
        from ray.exceptions import RayError

        deadline = self.wait_s + 1.0  # the actor's own wait for its commit, and the hop
        try:
            return _unwrap(await asyncio.wait_for(ref, deadline))
        except TimeoutError:
            self.stats["timeouts"] += 1
            raise FeedbackUnavailable(
                f"the feedback store actor did not answer within {deadline:g}s (not placed yet: no "
                f"node with the {DATA_RESOURCE} resource? busy?); it may still be recorded, and "
                "sending it again is safe") from None
        except RayError as exc:
            raise FeedbackUnavailable(
                f"the feedback store actor cannot be reached ({failure_text(exc)}); retry shortly"
            ) from None

    async def _sent(self) -> None:
        """Until this replica's contexts queued so far are with the actor (503 if it won't take
        them)."""
        if self._closed:
            raise FeedbackUnavailable("the feedback store client is closed")
        flush = _Flush()
        try:
            self._queue.put_nowait(flush)
        except queue.Full:
            raise FeedbackUnavailable(
                "the replica's queue to the feedback store is full; retry shortly") from None
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(flush.future)), self.wait_s + 1.0)
        except TimeoutError:
            self.stats["timeouts"] += 1
            raise FeedbackUnavailable("the feedback store actor did not take this replica's predictions "
                                      "in time; retry shortly") from None

    async def arecord_outcome(self, prediction_id: str, **kw: Any) -> OutcomeResult:
        if (kw.get("actual_endpoint") is None) == (not kw.get("accepted")):
            raise InvalidRequest("give exactly one of actual_endpoint or accepted=true")
        await self._sent()
        self._lost.check(prediction_id)
        result: OutcomeResult = await self._call(self.actor.record_outcome.remote(prediction_id, kw))
        return result

    async def aprediction(self, prediction_id: str) -> StoredPrediction | None:
        await self._sent()
        stored: StoredPrediction | None = await self._call(self.actor.prediction.remote(prediction_id))
        return stored

    async def aerase_user(self, user_id: str) -> dict[str, int]:
        await self._sent()
        erased: dict[str, int] = await self._call(self.actor.erase_user.remote(user_id))
        return erased

    def follow(self) -> RemoteReader:
        return RemoteReader(self.actor, timeout_s=self.wait_s + 1.0)

    def status(self) -> dict[str, Any]:
        return {"store": "actor", "queued": self._queue.qsize() + len(self._retry),
                "writer_alive": self._thread.is_alive(), "failing": self.failing, **self.stats,
                "last_error": self.last_error}

    def close(self, timeout: float = 10.0) -> None:
        """Send what is queued (for up to ``timeout``), stop the sender. The actor stays."""
        if self._closed:
            return
        self._closed = True
        stop_writer(self._queue, self._thread, timeout=timeout, what="feedback sender")

    # -- the sender thread --------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            items = next_batch(self._queue, linger_s=self.linger_s,
                               first_wait_s=_RETRY_EVERY_S if self._retry else None)
            contexts = [*self._retry, *(i for i in items if isinstance(i, PredictionContext))]
            try:
                taken = self._send(contexts)
            except Exception as exc:  # noqa: BLE001 - the sender must outlive any one batch
                log.exception("feedback sender: unexpected failure")
                self.last_error, taken = failure_text(exc), False
            for item in items:
                if isinstance(item, _Flush):
                    if taken:
                        item.future.set_result(None)
                    else:
                        item.future.set_exception(FeedbackUnavailable(
                            f"the feedback store actor is unavailable ({self.last_error}); retry shortly"))
            if any(i is STOP for i in items):
                if self._retry:
                    self._drop([c.prediction_id for c in self._retry],
                               "the replica stopped before the store actor took them")
                return

    def _send(self, contexts: list[PredictionContext]) -> bool:
        """Ships ``contexts`` in one call; True once the actor took them. Not taken: kept (the
        newest ``max_queue``) for the next try."""
        if not contexts:
            return True
        import ray

        try:
            answer = self._ship(contexts)
            unknown = set(answer["unknown_specs"])
            if unknown:  # the actor has no index of these (a new file): once more, with them
                self._sent_specs -= unknown
                answer = self._ship([c for c in contexts if c.spec.spec_hash in unknown])
        except (ray.exceptions.RayError, TimeoutError) as exc:
            self.stats["send_errors"] += 1
            self.failing, self.last_error = True, failure_text(exc)
            keep = contexts[-self.max_queue:]
            self._drop([c.prediction_id for c in contexts[: len(contexts) - len(keep)]],
                       f"the store actor was unavailable ({self.last_error})")
            if not self._retry:
                log.warning("feedback: the store actor did not take %d contexts (%s); retrying",
                            len(contexts), self.last_error)
            self._retry = keep
            return False
        self._retry = []
        self.failing = False
        self.stats["batches"] += 1
        self.stats["predictions"] += len(contexts) - len(answer["dropped"])
        if answer["dropped"]:
            self._drop(list(answer["dropped"]), "the store actor's queue was full")
        return True

    def _ship(self, contexts: list[PredictionContext]) -> dict[str, list[str]]:
        import ray

        payloads: dict[str, bytes] = {}
        wire = []
        for ctx in contexts:
            spec_hash = ctx.spec.spec_hash
            if spec_hash not in self._sent_specs and spec_hash not in payloads:
                payloads[spec_hash] = ctx.spec.to_bytes()
            wire.append((spec_hash, {name: getattr(ctx, name) for name in _CONTEXT_FIELDS}))
        answer: dict[str, list[str]] = ray.get(self.actor.record_predictions.remote(payloads, wire),
                                               timeout=self.wait_s)
        self._sent_specs |= set(payloads) - set(answer["unknown_specs"])
        return answer


class RemoteReader:
    """The outcome stream through the store actor, for a follower thread on any node (the
    :class:`~deployments.serving.prior_feed.OutcomeStream` of a :class:`FeedbackReader`)."""

    def __init__(self, actor: Any, *, timeout_s: float = 6.0) -> None:
        self.actor = actor
        self.timeout_s = timeout_s
        self._specs = _SpecCache()

    def _get(self, ref: Any) -> Any:
        import ray

        return ray.get(ref, timeout=self.timeout_s)

    def outcomes_after(self, cursor: int, limit: int) -> list[OutcomeRow]:
        rows: list[OutcomeRow] = self._get(self.actor.outcomes_after.remote(cursor, limit))
        return rows

    def erasures_after(self, cursor: int) -> list[tuple[int, str]]:
        rows: list[tuple[int, str]] = self._get(self.actor.erasures_after.remote(cursor))
        return rows

    def cursors(self, *, replay_max: int | None = None) -> tuple[int, int]:
        at: tuple[int, int] = self._get(self.actor.cursors.remote(replay_max))
        return at

    def spec(self, spec_hash: str) -> SpecIndex:
        index = self._specs.get(spec_hash)
        if index is None:
            payload = self._get(self.actor.spec_payload.remote(spec_hash))
            if payload is None:
                raise KeyError(f"spec {spec_hash[:12]} is not in the feedback store")
            index = self._specs.put(SpecIndex.from_bytes(zlib.decompress(payload)))
        return index

    def close(self) -> None:
        pass


def open_population(
    settings: Settings, feedback: FeedbackWriter | None
) -> PopulationFeed | MirrorFeed | None:
    """The replica's population memory: learned from this node's file (``local``), or a mirror
    of the one the store actor keeps (``actor``); None when off or no outcomes are recorded."""
    if not isinstance(feedback, StoreClient):
        return start_population_feed(settings, feedback)
    if not settings.population_enabled:
        return None
    import ray

    actor, timeout_s = feedback.actor, feedback.wait_s + 1.0

    def fetch(since: int) -> PopulationChanges:
        changes: PopulationChanges | None = ray.get(actor.population_changes.remote(since), timeout=timeout_s)
        if changes is None:
            raise FeedbackUnavailable("the store actor keeps no population memory (population_enabled "
                                      "is false there)")
        return changes

    mirror = PopulationMirror(config=population_config(settings), tenants=has_tenants(settings))
    return MirrorFeed(mirror, fetch).start()


def open_feedback(settings: Settings, overrides: dict[str, Any] | None = None
                  ) -> tuple[FeedbackWriter | None, str | None]:
    """What the Ingress records outcomes through, or (None, why not): its own writer of the
    node's file, or the client of the store actor (``feedback_store = "actor"``). ``overrides``:
    the app's settings arguments, passed on to the actor."""
    if not settings.feedback_enabled or settings.feedback_store == "local":
        return open_store(settings)
    try:
        actor = store_actor(overrides or {})
    except Exception as exc:  # noqa: BLE001 - predictions are served either way
        log.error("feedback store actor unusable, outcomes will not be recorded: %s", exc)
        return None, f"the store actor could not be started ({failure_text(exc)})"
    return StoreClient(actor, wait_s=settings.feedback_wait_s, max_queue=settings.feedback_queue_max), None
