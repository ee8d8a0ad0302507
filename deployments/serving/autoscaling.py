"""Autoscaling on latency: each deployment reports the p95 of its own processing latency over a
sliding window, and :class:`LatencyPolicy` scales it up above its target and down well under it.

Serve's default policy scales on queued and ongoing requests, which says nothing about whether a
deployment meets its latency. Here every replica keeps a :class:`LatencyWindow` and returns it from
``record_autoscaling_stats()``; Serve averages that over ``look_back_period_s`` per replica and
hands it to the policy each control-loop tick. The window forgets: an idle replica reports 0, so a
deployment scales back down once the load has gone.

Targets are per deployment, in ``serve_config.yaml``::

    autoscaling_config:
      min_replicas: 1
      max_replicas: 2          # the node budget (tests/test_config_budget.py)
      policy:
        policy_function: deployments.serving.autoscaling:LatencyPolicy
        policy_kwargs: {target_p95_ms: 30}

The policy returns the raw desired count; Serve applies the up/downscale delays and
``min_replicas``/``max_replicas``, and the policy itself never asks beyond the capacity-adjusted
maximum. The module is pickled to the Serve controller: standard library imports only.
"""

from __future__ import annotations

import math
import time
from collections import deque
from typing import Any

__all__ = ["LatencyPolicy", "LatencyWindow", "METRIC"]

METRIC = "p95_latency_ms"


class LatencyWindow:
    """Latencies of the last ``window_s`` seconds; :meth:`stats` gives their p95 (0 when empty)."""

    def __init__(self, window_s: float = 5.0, max_samples: int = 20_000) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self.window_s = window_s
        self._samples: deque[tuple[float, float]] = deque(maxlen=max_samples)

    def observe(self, latency_s: float, now: float | None = None) -> None:
        self._samples.append((time.monotonic() if now is None else now, latency_s * 1000))

    def p95_ms(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        while self._samples and self._samples[0][0] < now - self.window_s:
            self._samples.popleft()
        if not self._samples:
            return 0.0
        values = sorted(v for _, v in self._samples)
        return values[min(len(values) - 1, math.ceil(0.95 * len(values)) - 1)]

    def stats(self) -> dict[str, float]:
        """What ``record_autoscaling_stats`` returns."""
        return {METRIC: self.p95_ms()}


class LatencyPolicy:
    """Desired replicas from the slowest replica's windowed p95 against ``target_p95_ms``.

    Above the target: ``ceil(running × p95 / target)``, at least one more, at most ``max_step``
    more per decision. Under ``downscale_below × target``: one fewer. In between: unchanged.
    A deployment whose replicas have not reported yet keeps its current target.
    """

    def __init__(
        self,
        target_p95_ms: float,
        *,
        downscale_below: float = 0.5,
        max_step: int = 2,
        metric: str = METRIC,
    ) -> None:
        if not target_p95_ms > 0:
            raise ValueError(f"target_p95_ms must be > 0, got {target_p95_ms}")
        if not 0 < downscale_below < 1:
            raise ValueError(f"downscale_below must be in (0, 1), got {downscale_below}")
        if max_step < 1:
            raise ValueError(f"max_step must be >= 1, got {max_step}")
        self.target_p95_ms = float(target_p95_ms)
        self.downscale_below = downscale_below
        self.max_step = max_step
        self.metric = metric

    def __call__(self, ctx: Any) -> tuple[int, dict[str, Any]]:
        state = dict(ctx.policy_state or {})
        per_replica = (ctx.aggregated_metrics or {}).get(self.metric, {})
        values = [per_replica[r] for r in ctx.running_replicas if r in per_replica]
        current = ctx.target_num_replicas
        if not values:
            state.update(p95_ms=None, decision="no metrics yet")
            return current, state
        p95 = max(values)
        running = max(1, ctx.current_num_replicas)
        if p95 > self.target_p95_ms:
            wanted = max(running + 1, math.ceil(running * p95 / self.target_p95_ms))
            desired = min(wanted, running + self.max_step)
            decision = "up"
        elif p95 < self.downscale_below * self.target_p95_ms:
            desired, decision = running - 1, "down"
        else:
            desired, decision = running, "hold"
        desired = max(ctx.capacity_adjusted_min_replicas, min(desired, ctx.capacity_adjusted_max_replicas))
        state.update(p95_ms=round(p95, 2), target_p95_ms=self.target_p95_ms, decision=decision,
                     desired=desired)
        return desired, state
