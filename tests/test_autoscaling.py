"""Autoscaling on latency: the policy on plain inputs, then on a real cluster."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from deployments.serving.autoscaling import METRIC, LatencyPolicy, LatencyWindow

# -- the policy on plain inputs -------------------------------------------------------------------


@dataclass
class Ctx:
    """The fields of ray.serve.config.AutoscalingContext the policy reads."""

    p95: dict[str, float]
    current_num_replicas: int = 1
    target_num_replicas: int = 1
    capacity_adjusted_min_replicas: int = 1
    capacity_adjusted_max_replicas: int = 4
    policy_state: dict[str, Any] = field(default_factory=dict)

    @property
    def running_replicas(self) -> list[str]:
        return list(self.p95) or [f"r{i}" for i in range(self.current_num_replicas)]

    @property
    def aggregated_metrics(self) -> dict[str, dict[str, float]]:
        return {METRIC: self.p95} if self.p95 else {}


def test_scales_up_in_proportion_above_the_target() -> None:
    policy = LatencyPolicy(target_p95_ms=50)
    desired, state = policy(Ctx({"r0": 120.0}))
    assert desired == 3  # ceil(1 × 120 / 50)
    assert state["decision"] == "up" and state["p95_ms"] == 120.0
    assert policy(Ctx({"r0": 55.0}))[0] == 2  # just above: one more


def test_never_more_than_max_step_or_the_capacity() -> None:
    assert LatencyPolicy(target_p95_ms=10, max_step=2)(Ctx({"r0": 1000.0}))[0] == 3
    ctx = Ctx({"r0": 1000.0, "r1": 900.0}, current_num_replicas=2, target_num_replicas=2,
              capacity_adjusted_max_replicas=2)
    assert LatencyPolicy(target_p95_ms=10)(ctx)[0] == 2


def test_the_slowest_replica_decides() -> None:
    ctx = Ctx({"r0": 10.0, "r1": 80.0}, current_num_replicas=2, target_num_replicas=2)
    assert LatencyPolicy(target_p95_ms=50)(ctx)[0] == 4


def test_scales_down_only_well_under_the_target() -> None:
    policy = LatencyPolicy(target_p95_ms=50, downscale_below=0.5)
    two = dict(current_num_replicas=2, target_num_replicas=2)
    assert policy(Ctx({"r0": 30.0, "r1": 40.0}, **two))[0] == 2  # under, not well under: hold
    desired, state = policy(Ctx({"r0": 0.0, "r1": 20.0}, **two))
    assert desired == 1 and state["decision"] == "down"
    assert policy(Ctx({"r0": 0.0}))[0] == 1  # never below the minimum


def test_no_metrics_keeps_the_current_target() -> None:
    desired, state = LatencyPolicy(target_p95_ms=50)(Ctx({}, current_num_replicas=1, target_num_replicas=2))
    assert desired == 2 and state["decision"] == "no metrics yet"


def test_bad_kwargs_are_refused() -> None:
    with pytest.raises(ValueError, match="target_p95_ms"):
        LatencyPolicy(target_p95_ms=0)
    with pytest.raises(ValueError, match="downscale_below"):
        LatencyPolicy(target_p95_ms=10, downscale_below=1.5)


def test_latency_window_forgets() -> None:
    window = LatencyWindow(window_s=5)
    for i in range(100):
        window.observe((i + 1) / 1000, now=10.0)
    assert window.p95_ms(now=10.0) == pytest.approx(95.0)
    assert window.p95_ms(now=14.9) == pytest.approx(95.0)
    assert window.p95_ms(now=15.1) == 0.0  # idle: reports 0, so the deployment scales down
    assert window.stats() == {METRIC: 0.0}


# -- on a real cluster -------------------------------------------------------------------------

POLICY = "deployments.serving.autoscaling:LatencyPolicy"


def _replicas(app: str, deployment: str) -> int:
    from ray import serve

    status = serve.status().applications[app].deployments[deployment]
    return status.replica_states.get("RUNNING", 0)


def _controller_log_says(text: str) -> bool:
    import ray

    # ray.init on a connected driver returns the running node's context, session dir included.
    session = Path(ray.init(ignore_reinit_error=True).address_info["session_dir"])
    return any(text in p.read_text(errors="replace") for p in session.glob("logs/serve/controller_*.log"))


@pytest.mark.serve
@pytest.mark.slow
def test_a_slow_deployment_scales_up_under_load_and_back_down(serve_cluster) -> None:
    from ray import serve

    from tests.autoscaling_app import build

    # One client at a time: ~1 ongoing request, which the default policy (target 2 ongoing per
    # replica) would never scale on. Only the latency policy sees 40 ms against a 15 ms target.
    serve.run(build(work_s=0.04, target_p95_ms=15), name="autoscale", route_prefix="/autoscale")
    try:
        assert _replicas("autoscale", "Slow") == 1
        stop = threading.Event()
        answered = 0

        def load() -> None:
            nonlocal answered
            with httpx.Client(base_url=serve_cluster, timeout=10) as c:
                deadline = time.monotonic() + 60  # bounded, whatever happens
                while not stop.is_set() and time.monotonic() < deadline:
                    assert c.get("/autoscale").status_code == 200
                    answered += 1

        thread = threading.Thread(target=load, daemon=True)
        thread.start()
        try:
            _wait_for(lambda: _replicas("autoscale", "Slow") >= 2, 45, "scale up under load")
        finally:
            stop.set()
            thread.join(15)
        assert answered > 10
        _wait_for(lambda: _replicas("autoscale", "Slow") == 1, 45, "scale down once idle")
        assert _controller_log_says(f"Using custom autoscaling policy '{POLICY}'")
    finally:
        serve.delete("autoscale")


def _wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.25)
    raise AssertionError(f"did not {what} within {timeout_s}s")

