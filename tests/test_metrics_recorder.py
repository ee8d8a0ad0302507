"""The metrics recorder (deployments/serving/metrics.py) sums counters and keeps gauges' last value
per series before it calls Ray, and observes every histogram value: what Ray is given adds up to
exactly what the code recorded. (That the counts reach a Prometheus scrape of a running graph is
tests/test_ops_run.py's.) Stand-ins for Ray's metric objects note the calls they get."""

from __future__ import annotations

from typing import Any

import pytest

from deployments.serving.metrics import Metrics, _Deferred, _Recorder


class RayMetric:
    """Takes the calls of ray.util.metrics' Counter, Gauge and Histogram, with its checks."""

    def __init__(self, on_call: Any = None) -> None:
        self.calls: list[tuple[str, float, dict[str, str] | None]] = []
        self.on_call = on_call

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        if value <= 0:
            raise ValueError(f"value must be >0, got {value}")  # as Ray's Counter.inc
        self._call("inc", value, tags)

    def set(self, value: float, tags: dict[str, str] | None = None) -> None:
        self._call("set", value, tags)

    def observe(self, value: float, tags: dict[str, str] | None = None) -> None:
        self._call("observe", value, tags)

    def _call(self, kind: str, value: float, tags: dict[str, str] | None) -> None:
        self.calls.append((kind, value, tags))
        if self.on_call:
            self.on_call()

    def total(self, **tags: str) -> float:
        return sum(v for k, v, t in self.calls if k == "inc" and (t or {}) == tags)


def recorder() -> _Recorder:
    return _Recorder(start=False)  # flushed by the test, not by a thread


def test_counters_are_summed_per_series_and_stay_exact() -> None:
    r, requests, batched = recorder(), RayMetric(), RayMetric()
    for i in range(1000):
        r.add("inc", requests, 1.0, {"route": "/predict", "status": "200" if i % 10 else "503"})
        r.add("inc", batched, 1 + i % 7, None)
    r.add("inc", requests, 1.0, {"status": "200", "route": "/predict"})  # same series, other order
    made = r.flush()
    assert requests.total(route="/predict", status="200") == 901
    assert requests.total(route="/predict", status="503") == 100
    assert batched.total() == sum(1 + i % 7 for i in range(1000))
    # One Ray call per series (a tag dict in another order counts apart, still exactly).
    assert made == len(requests.calls) + len(batched.calls) == 4


def test_a_gauge_gets_the_last_value_per_series() -> None:
    r, model, breaker = recorder(), RayMetric(), RayMetric()
    r.add("set", model, 1, {"version": "a"})
    r.add("set", breaker, 0.0, None)
    r.add("set", model, 0, {"version": "a"})
    r.add("set", model, 1, {"version": "b"})
    r.add("set", breaker, 1.0, None)
    r.flush()
    assert sorted(model.calls, key=str) == [("set", 0, {"version": "a"}), ("set", 1, {"version": "b"})]
    assert breaker.calls == [("set", 1.0, None)]


def test_every_histogram_value_is_observed_in_order() -> None:
    r, stage_ms = recorder(), RayMetric()
    values = [(float(i), "rank" if i % 3 else "spec") for i in range(50)]
    for v, stage in values:
        r.add("observe", stage_ms, v, {"stage": stage})
    assert r.flush() == 50
    for stage in ("rank", "spec"):
        seen = [v for _, v, t in stage_ms.calls if t == {"stage": stage}]
        assert seen == [v for v, s in values if s == stage]


def test_a_record_made_while_the_recorder_calls_ray_is_not_lost() -> None:
    r = recorder()
    late = RayMetric()
    early = RayMetric(on_call=lambda: r.add("inc", late, 1.0, None))  # a request meanwhile
    r.add("inc", early, 1.0, None)
    r.flush()
    assert (early.total(), late.total()) == (1, 0)
    r.flush()
    assert (early.total(), late.total()) == (1, 1)


def test_a_failing_record_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    r, bad, good = recorder(), RayMetric(), RayMetric()
    r.add("inc", bad, 0, None)  # Ray refuses an increment of 0
    r.add("inc", good, 2, None)
    r.add("observe", good, 5.0, None)
    assert r.flush() == 2
    assert good.calls == [("inc", 2, None), ("observe", 5.0, None)]
    assert "a record failed" in caplog.text


def test_the_hooks_go_through_the_recorder() -> None:
    """Metrics' hooks (what the code calls) reach Ray only when the recorder flushes."""
    r = recorder()
    m = Metrics(enabled=False)  # no Ray: hooks routed by hand to stand-ins through the recorder
    m.enabled, m.recorder = True, r
    stand_ins = {}
    for name in ("batch_size", "batched_requests", "stage_ms", "outcomes", "outcome_hits"):
        stand_ins[name] = RayMetric()
        setattr(m, name, _Deferred(stand_ins[name], r))
    m.batch(4)
    m.batch(2)
    m.stages({"spec": 1.0, "rank": 3.0})
    m.outcome(api="Billing", source="explicit", rank=1)
    m.outcome(api="Billing", source="explicit", rank=3)
    assert all(not s.calls for s in stand_ins.values())
    r.flush()
    assert stand_ins["batched_requests"].calls == [("inc", 6, None)]
    assert [v for _, v, _ in stand_ins["batch_size"].calls] == [4, 2]
    assert stand_ins["outcomes"].total(api="Billing", source="explicit") == 2
    assert stand_ins["outcome_hits"].total(api="Billing", k="1") == 1
    assert stand_ins["outcome_hits"].total(api="Billing", k="3") == 2

