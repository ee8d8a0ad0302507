"""Recorded outcomes as training reads them: a prediction stored with enough context to rebuild its
features, what the user really did next, and what a store of them must offer to retraining.

The SQLite store (``deployments.serving.feedback.FeedbackReader``) is one :class:`OutcomeLog`;
retraining (``ranker.retrain``) takes any, so it never opens the store itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from core.spec.index import SpecIndex

__all__ = ["OutcomeSource", "StoredPrediction", "OutcomeLog"]

# How an outcome was learned: told to /feedback, the top prediction accepted, or read from the
# user's next request.
OutcomeSource = Literal["explicit", "accepted", "implicit"]


@dataclass(frozen=True, slots=True)
class StoredPrediction:
    prediction_id: str
    user_id: str
    spec_hash: str
    created_at: float
    model_version: str
    prompt: str | None
    k: int
    events: list[tuple[str, dict[str, Any], str | None]]
    candidates: list[tuple[int, dict[str, float], bool]]
    shown: list[tuple[str, float]]
    actual_endpoint: str | None = None
    actual_key: str | None = None
    rank: int | None = None
    source: OutcomeSource | None = None
    recorded_at: float | None = None
    personal: dict[str, int] | None = None  # as the features used it; None: a cold user (or schema 1)
    population: dict[str, Any] | None = None  # PopulationView wire as the features used it; None: none

    @property
    def history(self) -> list[tuple[str, dict[str, Any]]]:
        return [(e, p) for e, p, _ in self.events]


class OutcomeLog(Protocol):
    """Stored predictions and the specs they were made on."""

    def predictions(self, *, with_outcome: bool = True) -> Iterable[StoredPrediction]:
        """Oldest first; only those with an outcome unless ``with_outcome`` is False."""
        ...

    def spec(self, spec_hash: str) -> SpecIndex:
        """The spec a prediction was made on; raises KeyError when it is not stored."""
        ...

    def counts(self) -> dict[str, int]:
        """How many predictions, outcomes (by source) and specs there are: for the log."""
        ...
