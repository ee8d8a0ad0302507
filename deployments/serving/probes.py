"""Liveness, readiness and Serve's ``check_health``: what each answers, kept apart from ``/health``.

- ``/livez``: the Ingress replica's event loop answers. Nothing else is asked, so a slow
  downstream deployment or store never gets a live replica restarted by an orchestrator.
- ``/readyz``: this replica can serve as intended: a trained model is loaded (not the heuristic
  fallback), the feedback store takes writes (opened, writer thread alive, commits succeeding) and
  the node's spec cache is usable. 503 with the reasons otherwise, so a load balancer or Kubernetes
  sends traffic elsewhere while it lasts.
- ``/health``: everything above in detail, the downstream deployments' own health included.
  Their answers come through :class:`DownstreamHealth`, which never makes ``/health`` or
  ``/readyz`` wait on a busy deployment for long: the Ingress's probes stay about as cheap as
  ``/livez`` whatever the requests are doing to the graph (issue 19).
- ``check_health`` (Serve restarts a replica that fails it): only failures a restart repairs.
  The Ingress whose feedback writer thread died (a new replica starts a new one); the Ranker whose
  model in memory no longer scores. Not the Ranker after a refused swap: the previous model keeps
  serving (deployments/serving/model_swap.py), and a restarted replica would read the same broken
  file and serve no better; readiness and ``/health`` report it instead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import numpy as np

from core.features import FEATURE_NAMES
from deployments.serving.failures import failure_text

__all__ = ["DownstreamHealth", "not_ready_reasons", "check_feedback_writer", "check_model_scores"]

log = logging.getLogger(__name__)

Asker = Callable[[], Awaitable[dict[str, Any]]]


class DownstreamHealth:
    """The downstream deployments' ``health()`` answers, asked in rounds off the caller's path.

    :meth:`answers` starts a round (unless one is in flight: a flood of ``/health`` costs the
    deployments one round at a time, not three calls each) and waits for it at most
    ``fresh_wait_s``: when the graph answers promptly, as it does unless saturated, the caller
    gets answers asked after it called. Past that it gets the last complete round at once, each
    answer with its age (``answered_s_ago``), and the round it started still completes and
    becomes the next caller's. A deployment that does not answer within ``timeout_s`` is
    reported ``ok: False`` (the exception's kind only; details in the log)."""

    def __init__(self, askers: Mapping[str, Asker], *, timeout_s: float, fresh_wait_s: float) -> None:
        if not 0 < fresh_wait_s <= timeout_s:
            raise ValueError(f"need 0 < fresh_wait_s <= timeout_s, got {fresh_wait_s} and {timeout_s}")
        self._askers = dict(askers)
        self.timeout_s, self.fresh_wait_s = timeout_s, fresh_wait_s
        self._last: dict[str, dict[str, Any]] | None = None
        self._last_at = 0.0
        self._round: asyncio.Future[dict[str, dict[str, Any]]] | None = None
        self.stale_answers = 0

    async def answers(self) -> dict[str, dict[str, Any]]:
        if self._round is None or self._round.done():
            self._round = asyncio.ensure_future(self._ask_all())
        # This caller's round: by the time it resumes, another caller may have started the next.
        current = self._round
        # The first round has nothing older to fall back on: it is waited for in full.
        wait = self.fresh_wait_s if self._last is not None else self.timeout_s + 1
        done, _ = await asyncio.wait({current}, timeout=wait)
        if done:
            return {name: {**a, "answered_s_ago": 0.0} for name, a in current.result().items()}
        self.stale_answers += 1
        if self._last is None:  # the first round has not ended even so (a starved loop)
            return {name: {"ok": False, "error": "no answer yet"} for name in self._askers}
        age = round(time.monotonic() - self._last_at, 2)
        return {name: {**a, "answered_s_ago": age} for name, a in self._last.items()}

    async def _ask_all(self) -> dict[str, dict[str, Any]]:
        asked = time.monotonic()
        results = await asyncio.gather(*(self._ask(f) for f in self._askers.values()))
        answers = dict(zip(self._askers, results, strict=True))
        self._last, self._last_at = answers, asked
        return answers

    async def _ask(self, ask: Asker) -> dict[str, Any]:
        try:
            return await asyncio.wait_for(ask(), self.timeout_s)
        except Exception as exc:  # noqa: BLE001 - any failure is reported, not raised
            log.warning("health of a deployment failed: %r", exc)
            return {"ok": False, "error": failure_text(exc)}


def not_ready_reasons(
    *, ranker: dict[str, Any], feedback: dict[str, Any] | None, feedback_enabled: bool,
    spec_cache: dict[str, Any],
) -> list[str]:
    """Why this replica is not ready (empty: ready). ``ranker``: the Ranker's ``health()``;
    ``feedback``: the store's ``status()`` (None: not open); ``spec_cache``: ``SpecStore.status()``."""
    reasons = []
    if not ranker.get("ok"):
        reasons.append("the ranker does not answer")
    elif ranker.get("heuristic_reason"):
        reasons.append("no trained model loaded (the heuristic ranker serves)")
    if feedback is None:
        if feedback_enabled:
            reasons.append("the feedback store did not open")
    elif not feedback.get("writer_alive") or feedback.get("failing"):
        reasons.append("the feedback store does not take writes")
    if not spec_cache.get("healthy", True):
        reasons.append("the spec cache is unusable (bypassed)")
    return reasons


def check_feedback_writer(status: dict[str, Any] | None) -> None:
    """For the Ingress's ``check_health``: raises if the store's writer thread is dead."""
    if status is not None and not status.get("writer_alive", True):
        raise RuntimeError("the feedback writer thread died: outcomes are no longer recorded")


def check_model_scores(model: Any) -> None:
    """For the Ranker's ``check_health``: one zero row through the model it serves (~0.1 ms)."""
    model.score_groups([np.zeros((1, len(FEATURE_NAMES)), np.float32)])
