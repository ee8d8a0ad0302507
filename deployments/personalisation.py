"""A per-user (or per-tenant) transition prior learned from recorded outcomes: a feature of the
ranker, and optionally a blend after it.

For a user, on a spec, after a call ``a`` (the operation of their last event; ``<start>`` for a
cold start), the prior counts how often each operation ``b`` followed ``a`` in that user's
recorded outcomes, ``n(a→b)``, of ``n(a)``.

As a feature (``personal_prior_feature``, on by default): those counts go down the graph with the
request (:class:`ranker.features.UserTransitions`, only the context of this request's last call)
and become the ranker's ``user_p_next = n(a→b)/n(a)``, ``user_n_context = n(a)`` and
``user_count_next = n(a→b)`` (zeros for a cold user); the model, trained with simulated
returning users (:mod:`ranker.personal`), decides how far to trust them. They are stored with the
prediction, so retraining rebuilds exactly the features that were served.

As a blend after the model (``personal_prior_weight`` > 0; 0 by default), the served score is
the mixture

    p'(b) = (1 - λ) · p(b) + λ · q(b),   q(b) = n(a→b) / n(a),   λ = weight · n(a) / (n(a) + shrink)

so the prior speaks up only as the user's own history of ``a`` grows. Both are measured by
``python -m benchmarks.personalisation``.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter, OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from deployments.spec.index import Call, SpecIndex
from ranker.features import COLD, UserTransitions

__all__ = ["TransitionPrior", "PriorFeed", "START", "previous_key",
           "start_prior_feed", "user_transitions", "previous_of"]

log = logging.getLogger(__name__)

START = "<start>"
UNKNOWN = "<unknown>"
Scope = Literal["user", "tenant"]


def previous_key(spec: SpecIndex, events: Sequence[Any]) -> str:
    """The operation of the last event (what a transition starts from)."""
    if not events:
        return START
    call = spec.resolve(events[-1][0])
    return call.operation.key if call.operation is not None else UNKNOWN


def previous_of(history: Sequence[Call]) -> str:
    """:func:`previous_key` of an already resolved history."""
    if not history:
        return START
    return history[-1].operation.key if history[-1].operation is not None else UNKNOWN


class TransitionPrior:
    """Transition counts per (user or tenant, spec, previous operation), bounded in memory
    (least recently updated contexts are forgotten first). Thread-safe."""

    def __init__(
        self, *, weight: float, shrink: float = 3.0, scope: Scope = "user", max_contexts: int = 200_000
    ) -> None:
        if not 0 <= weight <= 1:
            raise ValueError(f"weight must be in [0, 1], got {weight}")
        if shrink <= 0:
            raise ValueError(f"shrink must be > 0, got {shrink}")
        self.weight = weight
        self.shrink = shrink
        self.scope = scope
        self.max_contexts = max_contexts
        self._counts: OrderedDict[tuple[str, str, str], Counter[str]] = OrderedDict()
        self._lock = threading.Lock()
        self.observed = 0

    def _key(self, user_id: str, spec_hash: str, prev: str) -> tuple[str, str, str]:
        return (user_id if self.scope == "user" else "", spec_hash, prev)

    def observe(self, user_id: str, spec_hash: str, prev: str, actual_key: str | None) -> None:
        if actual_key is None:
            return
        key = self._key(user_id, spec_hash, prev)
        with self._lock:
            counts = self._counts.pop(key, None) or Counter()
            counts[actual_key] += 1
            self._counts[key] = counts
            if len(self._counts) > self.max_contexts:
                self._counts.popitem(last=False)
            self.observed += 1

    def transitions(self, user_id: str, spec_hash: str, prev: str) -> UserTransitions:
        """What the user did after ``prev`` so far (a copy; empty when nothing is recorded)."""
        with self._lock:
            counts = self._counts.get(self._key(user_id, spec_hash, prev))
            return UserTransitions(dict(counts)) if counts else COLD

    def blend(
        self, user_id: str, spec_hash: str, prev: str, keys: Sequence[str], probs: np.ndarray
    ) -> np.ndarray:
        """``probs`` of the candidates ``keys`` mixed with the prior (unchanged without one)."""
        return self.mix(user_id, spec_hash, prev, keys, probs)[0]

    def mix(
        self, user_id: str, spec_hash: str, prev: str, keys: Sequence[str], probs: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(the blend, the prior's part ``λ·q`` of it); (``probs``, None) without a prior."""
        if self.weight == 0:
            return probs, None
        with self._lock:
            counts = self._counts.get(self._key(user_id, spec_hash, prev))
            if not counts:
                return probs, None
            n = sum(counts.values())
            q = np.array([counts.get(k, 0) / n for k in keys], np.float64)
        lam = self.weight * n / (n + self.shrink)
        part = lam * q
        return (1 - lam) * np.asarray(probs, np.float64) + part, part

    def status(self) -> dict[str, object]:
        return {"weight": self.weight, "scope": self.scope, "contexts": len(self._counts),
                "observed": self.observed}


class PriorFeed:
    """Keeps a :class:`TransitionPrior` up to date with a feedback store: a thread reads the
    outcomes committed since its last look (by rowid: SQLite commits writes one at a time, so
    rowids arrive in commit order) — those of every replica and process writing to the file."""

    def __init__(self, prior: TransitionPrior, path: str | Path, *, interval_s: float = 1.0) -> None:
        from deployments.feedback import FeedbackReader

        self.prior = prior
        self.reader = FeedbackReader(path, create=True)
        self.interval_s = interval_s
        self.cursor = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None

    def poll_once(self, limit: int = 5000) -> int:
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

    def start(self) -> PriorFeed:
        def loop() -> None:
            while not self._stop.is_set():
                try:
                    while self.poll_once() and not self._stop.is_set():
                        pass
                    self.last_error = None
                except Exception as exc:  # noqa: BLE001 - keep serving; retried next tick
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    log.warning("personal prior: could not read outcomes: %s", exc)
                self._stop.wait(self.interval_s)

        self._thread = threading.Thread(target=loop, name="prior-feed", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.reader.close()

    def status(self) -> dict[str, Any]:
        return {**self.prior.status(), "cursor": self.cursor, "last_error": self.last_error}


def user_transitions(
    prior: TransitionPrior | None, *, user_id: str, spec: SpecIndex, events: Sequence[Any]
) -> UserTransitions | None:
    """The feature input of one request: the user's transitions after its last event's call."""
    if prior is None:
        return None
    return prior.transitions(user_id, spec.spec_hash, previous_key(spec, events))


def start_prior_feed(settings: Any, store: Any) -> PriorFeed | None:
    """The serving replica's prior, following the feedback store; None when switched off (no
    ``personal_prior_feature`` and ``personal_prior_weight`` 0) or when no outcomes are recorded."""
    if store is None or not (settings.personal_prior_feature or settings.personal_prior_weight > 0):
        return None
    prior = TransitionPrior(weight=settings.personal_prior_weight)
    return PriorFeed(prior, store.path).start()
