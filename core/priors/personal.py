"""A per-user (or per-tenant) transition prior learned from recorded outcomes: a feature of the
ranker, and optionally a blend after it.

For a user, on a spec, after a call ``a`` (the operation of their last event; ``<start>`` for a
cold start), the prior counts how often each operation ``b`` followed ``a`` in that user's
recorded outcomes, ``n(a→b)``, of ``n(a)``.

As a feature (``personal_prior_feature``, on by default): those counts go down the graph with the
request (:class:`core.features.UserTransitions`, only the context of this request's last call)
and become the ranker's ``user_p_next = n(a→b)/n(a)``, ``user_n_context = n(a)`` and
``user_count_next = n(a→b)`` (zeros for a cold user); the model, trained with simulated
returning users (:mod:`ranker.returning_users`), decides how far to trust them. They are stored with the
prediction, so retraining rebuilds exactly the features that were served.

As a blend after the model (``personal_prior_weight`` > 0; 0 by default), the served score is
the mixture

    p'(b) = (1 - λ) · p(b) + λ · q(b),   q(b) = n(a→b) / n(a),   λ = weight · n(a) / (n(a) + shrink)

so the prior speaks up only as the user's own history of ``a`` grows. Both are measured by
``python -m benchmarks.personalisation``.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, OrderedDict
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from core.features import COLD, UserTransitions
from core.spec.index import Call, SpecIndex

__all__ = ["TransitionPrior", "START", "previous_key", "user_transitions", "previous_of"]

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

    def forget(self, user_id: str) -> int:
        """Drop what was learned from ``user_id`` alone (their data was erased); the number of
        contexts dropped. With ``scope="tenant"`` counts are shared and nothing is per user."""
        if self.scope != "user":
            return 0
        with self._lock:
            keys = [k for k in self._counts if k[0] == user_id]
            for key in keys:
                del self._counts[key]
        return len(keys)

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


def user_transitions(
    prior: TransitionPrior | None, *, user_id: str, spec: SpecIndex, events: Sequence[Any]
) -> UserTransitions | None:
    """The feature input of one request: the user's transitions after its last event's call."""
    if prior is None:
        return None
    return prior.transitions(user_id, spec.spec_hash, previous_key(spec, events))
