"""Keeps a serving replica's :class:`core.priors.personal.TransitionPrior` up to date with the
feedback store (the outcomes of every replica and process writing to the file)."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any, Self

from core.priors.personal import TransitionPrior, previous_key
from core.settings import Settings
from deployments.serving.failures import failure_text
from deployments.serving.feedback import FeedbackReader, FeedbackStore

__all__ = ["PriorFeed", "start_prior_feed", "OutcomeFollower"]

log = logging.getLogger(__name__)


class OutcomeFollower:
    """A thread that learns from a feedback store what its replicas and processes commit:
    :meth:`poll_once` (a subclass's) until up to date, then again every ``interval_s``. A failure
    is kept in ``last_error`` and retried on the next tick, never stopping the serving."""

    name = "outcome-follower"

    def __init__(self, path: str | Path, *, interval_s: float = 1.0) -> None:
        self.reader = FeedbackReader(path, create=True)
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

    def __init__(self, prior: TransitionPrior, path: str | Path, *, interval_s: float = 1.0,
                 replay_max: int | None = None) -> None:
        super().__init__(path, interval_s=interval_s)
        self.prior = prior
        # At start only the latest ``replay_max`` outcomes are replayed: the work and memory of
        # a restart must not grow with everything ever recorded (retention bounds the rest).
        self.cursor = self._replay_from(replay_max) if replay_max is not None else 0
        # Erasures recorded from now on (those before are already gone from the outcomes).
        self.erasure_cursor = int(self.reader._conn().execute(
            "SELECT coalesce(max(rowid), 0) FROM erasures").fetchone()[0])

    def _replay_from(self, replay_max: int) -> int:
        row = self.reader._conn().execute(
            "SELECT rowid FROM outcomes ORDER BY rowid DESC LIMIT 1 OFFSET ?", (replay_max,)).fetchone()
        return int(row[0]) if row else 0

    def poll_once(self, limit: int = 5000) -> int:
        for rowid, user_id in self.reader._conn().execute(
                "SELECT rowid, user_id FROM erasures WHERE rowid > ? ORDER BY rowid",
                (self.erasure_cursor,)).fetchall():
            self.erasure_cursor = rowid
            self.prior.forget(user_id)
        rows = self.reader._conn().execute(
            "SELECT o.rowid, p.user_id, p.spec_hash, p.events, o.actual_key FROM outcomes o "
            "JOIN predictions p USING (prediction_id) WHERE o.rowid > ? ORDER BY o.rowid LIMIT ?",
            (self.cursor, limit),
        ).fetchall()
        for rowid, user_id, spec_hash, events, actual_key in rows:
            self.cursor = rowid
            try:
                spec = self.reader.spec(spec_hash)
            except KeyError:
                continue
            self.prior.observe(user_id, spec_hash, previous_key(spec, json.loads(events)), actual_key)
        return len(rows)

    def status(self) -> dict[str, Any]:
        return {**self.prior.status(), "cursor": self.cursor, "last_error": self.last_error}


def start_prior_feed(settings: Settings, store: FeedbackStore | None) -> PriorFeed | None:
    """The serving replica's prior, following the feedback store; None when switched off (no
    ``personal_prior_feature`` and ``personal_prior_weight`` 0) or when no outcomes are recorded."""
    if store is None or not (settings.personal_prior_feature or settings.personal_prior_weight > 0):
        return None
    prior = TransitionPrior(weight=settings.personal_prior_weight)
    return PriorFeed(prior, store.path, replay_max=settings.personal_prior_replay_max).start()
