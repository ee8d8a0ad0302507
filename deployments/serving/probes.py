"""Liveness, readiness and Serve's ``check_health``: what each answers, kept apart from ``/health``.

- ``/livez``: the Ingress replica's event loop answers. Nothing else is asked, so a slow
  downstream deployment or store never gets a live replica restarted by an orchestrator.
- ``/readyz``: this replica can serve as intended: a trained model is loaded (not the heuristic
  fallback), the feedback store takes writes (opened, writer thread alive, commits succeeding) and
  the node's spec cache is usable. 503 with the reasons otherwise, so a load balancer or Kubernetes
  sends traffic elsewhere while it lasts.
- ``check_health`` (Serve restarts a replica that fails it): only failures a restart repairs.
  The Ingress whose feedback writer thread died (a new replica starts a new one); the Ranker whose
  model in memory no longer scores. Not the Ranker after a refused swap: the previous model keeps
  serving (deployments/serving/model_swap.py), and a restarted replica would read the same broken
  file and serve no better; readiness and ``/health`` report it instead.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from core.features import FEATURE_NAMES

__all__ = ["not_ready_reasons", "check_feedback_writer", "check_model_scores"]


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
