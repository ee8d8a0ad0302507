"""Keeps a serving replica's :class:`core.priors.personal.TransitionPrior` up to date with the
feedback store (the outcomes of every replica and process writing to the file)."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any, Protocol, Self

from core.priors.personal import TransitionPrior, previous_key
from core.settings import Settings
from core.spec.index import SpecIndex
from deployments.serving.failures import failure_text
from deployments.serving.feedback import FeedbackReader, FeedbackWriter, OutcomeRow

__all__ = ["PriorFeed", "start_prior_feed", "OutcomeFollower", "OutcomeStream"]

log = logging.getLogger(__name__)


class OutcomeStream(Protocol):
    """What a follower reads: :class:`FeedbackReader` on the file, or the store actor's reader."""

    def outcomes_after(self, cursor: int, limit: int) -> list[OutcomeRow]: ...

    def erasures_after(self, cursor: int) -> list[tuple[int, str]]: ...

    def cursors(self, *, replay_max: int | None = None) -> tuple[int, int]: ...

    def spec(self, spec_hash: str) -> SpecIndex: ...

    def close(self) -> None: ...


class OutcomeFollower:
    """A thread that learns from a feedback store what its replicas and processes commit:
    :meth:`poll_once` (a subclass's) until up to date, then again every ``interval_s``. A failure
    is kept in ``last_error`` and retried on the next tick, never stopping the serving."""

    name = "outcome-follower"

    def __init__(self, source: str | Path | OutcomeStream, *, interval_s: float = 1.0) -> None:
        """``source``: the feedback store's file, or a reader of it (the store actor's, on a
        node without the file: deployments/serving/store_actor.py)."""
        self.reader: OutcomeStream = (FeedbackReader(source, create=True)
                                      if isinstance(source, str | Path) else source)
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None

    def poll_once(self) -> int:
        """Learns (a batch of) what was committed since the last look; returns rows read."""
        raise NotImplementedError

    def start(self) -> Self:
        def loop() -> None:
            while not self._stop.is_set():
                try:
                    while self.poll_once() and not self._stop.is_set():
                        pass
                    self.last_error = None
                except Exception as exc:  # noqa: BLE001 - keep serving; retried next tick
                    self.last_error = failure_text(exc)
                    log.warning("%s: could not read outcomes: %s", self.name, exc)
                self._stop.wait(self.interval_s)

        self._thread = threading.Thread(target=loop, name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.reader.close()


class PriorFeed(OutcomeFollower):
    """Keeps a :class:`TransitionPrior` up to date with a feedback store: a thread reads the
    outcomes committed since its last look (by rowid: SQLite commits writes one at a time, so
    rowids arrive in commit order) — those of every replica and process writing to the file."""

    name = "prior-feed"

    def __init__(self, prior: TransitionPrior, source: str | Path | OutcomeStream, *,
                 interval_s: float = 1.0, replay_max: int | None = None) -> None:
        super().__init__(source, interval_s=interval_s)
        self.prior = prior
        # At start only the latest ``replay_max`` outcomes are replayed: the work and memory of
        # a restart must not grow with everything ever recorded (retention bounds the rest).
        # Erasures: those recorded from now on (those before are already gone from the outcomes).
        # Asked at the first poll, in the thread: a store actor that does not answer yet must
        # not fail the replica's start.
        self.replay_max = replay_max
        self.cursor = self.erasure_cursor = -1

    def poll_once(self, limit: int = 5000) -> int:
        if self.cursor < 0:
            self.cursor, self.erasure_cursor = self.reader.cursors(replay_max=self.replay_max)
        for rowid, user_id in self.reader.erasures_after(self.erasure_cursor):
            self.erasure_cursor = rowid
            self.prior.forget(user_id)
        rows = self.reader.outcomes_after(self.cursor, limit)
        for rowid, user_id, spec_hash, _prompt, events, actual_key, _at in rows:
            self.cursor = rowid
            try:
                spec = self.reader.spec(spec_hash)
            except KeyError:
                continue
            self.prior.observe(user_id, spec_hash, previous_key(spec, json.loads(events)), actual_key)
        return len(rows)

    def status(self) -> dict[str, Any]:
        return {**self.prior.status(), "cursor": self.cursor, "last_error": self.last_error}


def start_prior_feed(settings: Settings, store: FeedbackWriter | None) -> PriorFeed | None:
    """The serving replica's prior, following the feedback store; None when switched off (no
    ``personal_prior_feature`` and ``personal_prior_weight`` 0) or when no outcomes are recorded."""
    if store is None or not (settings.personal_prior_feature or settings.personal_prior_weight > 0):
        return None
    prior = TransitionPrior(weight=settings.personal_prior_weight)
    return PriorFeed(prior, store.follow(), replay_max=settings.personal_prior_replay_max).start()
