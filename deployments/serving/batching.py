"""Batching that follows the load: nothing waits when the service is idle, batches grow with load.

On a 2-CPU node a Serve handle call costs more CPU than a request's features and scores, so
batching has to happen where the calls are made, not only where they arrive:

* :class:`Coalescer` (in the ingress) gathers the requests of concurrent clients into one call
  down the graph. A request arriving while no batch is in flight leaves at once, alone; requests
  arriving while ``max_in_flight`` batches are out wait for the next one, so under load a batch
  holds what arrived during one round trip (up to ``max_batch_size``): one handle call per stage
  for many requests.
* ``@serve.batch`` (in FeatureExtractor and Ranker) then merges calls that reach a replica together
  (several ingress replicas, several batches in flight) into one vectorised computation.
  Ray's ``@serve.batch`` waits ``batch_wait_timeout_s`` after every first item, even on an idle
  replica, and forms the next batch while the previous one still runs (the concurrency limit is
  applied after the batch is formed). :class:`AdaptiveWait` therefore sets the wait to 0 while
  the replica is idle and to the configured wait only while a batch is running, when waiting
  costs no latency.

Sizes and waits are ``user_config``, validated here and refused with a clear message.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deployments.serving.metrics import metrics

__all__ = [
    "BatchConfig",
    "CoalescerConfig",
    "IngressConfig",
    "apply_batch_config",
    "AdaptiveWait",
    "Coalescer",
    "BatchStats",
]

T = TypeVar("T")
R = TypeVar("R")


class BatchConfig(BaseModel):
    """``@serve.batch`` knobs of a receiving deployment: calls merged per batch, and how long a
    batch may wait for more calls while the replica is busy (never while it is idle)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_batch_size: int = Field(16, ge=1, le=256)
    batch_wait_timeout_s: float = Field(0.0, ge=0.0, le=0.1)


class CoalescerConfig(BaseModel):
    """The ingress's batching of requests into calls down the graph."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_batch_size: int = Field(16, ge=1, le=256)
    batch_wait_timeout_s: float = Field(0.0, ge=0.0, le=0.1)
    max_in_flight: int = Field(3, ge=1, le=64)


class IngressConfig(BaseModel):
    """The Ingress's ``user_config``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    batching: CoalescerConfig = CoalescerConfig()

    @classmethod
    def from_user_config(cls, user_config: dict[str, Any] | None) -> IngressConfig:
        return _validated(cls, user_config, "Ingress")


def _validated(model: type[BaseModel], user_config: dict[str, Any] | None, what: str) -> Any:
    try:
        return model.model_validate(user_config or {})
    except ValidationError as exc:
        raise ValueError(f"invalid {what} user_config: {exc}") from None


def apply_batch_config(
    method: Any, user_config: dict[str, Any] | None, wait: AdaptiveWait | None = None
) -> BatchConfig:
    """Validate ``user_config`` and set it on a ``@serve.batch`` method; a bad value is refused."""
    config: BatchConfig = _validated(BatchConfig, user_config, "batching")
    method.set_max_batch_size(config.max_batch_size)
    if wait is not None:
        wait.configure(method, config.batch_wait_timeout_s)
    else:
        method.set_batch_wait_timeout_s(config.batch_wait_timeout_s)
    return config


class BatchStats:
    """Sizes of the last batches, for /health and the benchmark."""

    def __init__(self, keep: int = 2000) -> None:
        self.sizes: deque[int] = deque(maxlen=keep)
        self.batches = 0
        self.items = 0

    def record(self, size: int) -> None:
        metrics().batch(size)
        self.sizes.append(size)
        self.batches += 1
        self.items += size

    def summary(self) -> dict[str, Any]:
        sizes = sorted(self.sizes)
        return {
            "batches": self.batches,
            "items": self.items,
            "mean": round(sum(sizes) / len(sizes), 2) if sizes else None,
            "p50": sizes[len(sizes) // 2] if sizes else None,
            "max": sizes[-1] if sizes else None,
        }


class AdaptiveWait:
    """Gives a ``@serve.batch`` method its wait only while a batch of it is running.

    Call :meth:`before_call` right before calling the batched method, and wrap the batch body
    in :meth:`running`. Ray reads the wait when a batch's first call arrives, so an idle replica
    starts the batch at once; a busy one gathers for up to the configured wait.
    """

    def __init__(self) -> None:
        self.wait_s = 0.0
        self.busy = 0
        self._method: Any = None

    def configure(self, method: Any, wait_s: float) -> None:
        self._method, self.wait_s = method, wait_s
        method.set_batch_wait_timeout_s(0.0)

    def before_call(self) -> None:
        if self._method is not None:
            self._method.set_batch_wait_timeout_s(self.wait_s if self.busy else 0.0)

    def running(self) -> _Running:
        return _Running(self)


class _Running:
    def __init__(self, wait: AdaptiveWait) -> None:
        self.wait = wait

    def __enter__(self) -> None:
        self.wait.busy += 1

    def __exit__(self, *exc: object) -> None:
        self.wait.busy -= 1


class Coalescer(Generic[T, R]):
    """Turns concurrent ``await coalescer(item)`` calls into ``send(list_of_items)`` calls.

    ``send`` must return one result per item, in order; an exception in an item's place is raised
    to that item's caller only, and if ``send`` raises, every caller of the batch gets it.
    Batches leave in arrival order; a batch leaves when a slot is free (at
    most ``max_in_flight`` out at once) — at once if nothing else is out, else after up to
    ``batch_wait_timeout_s`` or as soon as it is full.
    """

    def __init__(self, send: Callable[[list[T]], Awaitable[Sequence[R]]],
                 config: CoalescerConfig | None = None) -> None:
        self.send = send
        self.config = config or CoalescerConfig()
        self.stats = BatchStats()
        self._queue: deque[tuple[T, asyncio.Future[R]]] = deque()
        self._in_flight = 0
        self._scheduled: asyncio.Handle | asyncio.TimerHandle | None = None
        self._first_queued_at = 0.0

    def configure(self, user_config: dict[str, Any] | None) -> CoalescerConfig:
        self.config = _validated(CoalescerConfig, user_config, "ingress batching")
        return self.config

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def __call__(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        if not self._queue:
            self._first_queued_at = time.monotonic()
        self._queue.append((item, future))
        self._schedule()
        return await future

    def _schedule(self) -> None:
        full = len(self._queue) >= self.config.max_batch_size
        if full and isinstance(self._scheduled, asyncio.TimerHandle):
            self._scheduled.cancel()  # a full batch does not wait out the timer
            self._scheduled = None
        if self._scheduled is not None or not self._queue:
            return
        if self._in_flight >= self.config.max_in_flight:
            return
        loop = asyncio.get_running_loop()
        wait = self.config.batch_wait_timeout_s if self._in_flight else 0.0
        remaining = wait - (time.monotonic() - self._first_queued_at)
        if remaining > 0 and len(self._queue) < self.config.max_batch_size:
            self._scheduled = loop.call_later(remaining, self._flush)
        else:
            # call_soon, not now: callers arriving in the same loop iteration share the batch.
            self._scheduled = loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = None
        while self._queue and self._in_flight < self.config.max_in_flight:
            n = min(len(self._queue), self.config.max_batch_size)
            batch = [self._queue.popleft() for _ in range(n)]
            self._in_flight += 1
            self.stats.record(n)
            asyncio.ensure_future(self._run(batch))
            if self._queue:
                self._first_queued_at = time.monotonic()
                if self.config.batch_wait_timeout_s and len(self._queue) < self.config.max_batch_size:
                    break  # let the rest gather for up to the wait (see _schedule)
        self._schedule()

    async def _run(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self.send([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"batch of {len(batch)} got {len(results)} results")
        except BaseException as exc:  # noqa: BLE001 - every caller of the batch hears of it
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
        else:
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)
        finally:
            self._in_flight -= 1
            self._schedule()
