"""What readiness, liveness and check_health answer (deployments/serving/probes.py), without a
cluster; tests/test_ops_run.py asks the running graph."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from core.scorer import HeuristicRanker
from deployments.serving.probes import (
    DownstreamHealth,
    check_feedback_writer,
    check_model_scores,
    not_ready_reasons,
)

RANKER = {"ok": True, "heuristic_reason": None}
STORE = {"writer_alive": True, "failing": False}


def reasons(**kw: object) -> list[str]:
    args = {"ranker": RANKER, "feedback": STORE, "feedback_enabled": True, "spec_cache": {"healthy": True}}
    return not_ready_reasons(**{**args, **kw})  # type: ignore[arg-type]


def test_ready_when_model_and_stores_are_fine() -> None:
    assert reasons() == []
    assert reasons(feedback=None, feedback_enabled=False) == []  # feedback off on purpose


@pytest.mark.parametrize(("kw", "expected"), [
    ({"ranker": {"ok": False}}, "the ranker does not answer"),
    ({"ranker": {"ok": True, "heuristic_reason": "model missing"}}, "no trained model loaded"),
    ({"feedback": None}, "the feedback store did not open"),
    ({"feedback": {"writer_alive": False}}, "the feedback store does not take writes"),
    ({"feedback": {"writer_alive": True, "failing": True}}, "the feedback store does not take writes"),
    ({"spec_cache": {"healthy": False}}, "the spec cache is unusable"),
])
def test_not_ready_says_why(kw: dict[str, object], expected: str) -> None:
    got = reasons(**kw)
    assert len(got) == 1 and got[0].startswith(expected), got


def test_check_health_fails_only_on_what_a_restart_repairs() -> None:
    check_feedback_writer({"writer_alive": True})
    check_feedback_writer(None)  # no store: nothing to restart for
    with pytest.raises(RuntimeError, match="writer thread died"):
        check_feedback_writer({"writer_alive": False})
    check_model_scores(HeuristicRanker())  # the degraded ranker still scores: no restart

    class Broken:
        def score_groups(self, groups: object) -> None:
            raise ValueError("model memory corrupt")

    with pytest.raises(ValueError):
        check_model_scores(Broken())


def test_health_answers_do_not_wait_on_a_busy_deployment() -> None:
    """A deployment that stops answering: /health gets the last round at once (with its age)
    instead of waiting; one round at a time is in flight, however many ask; once the deployment
    answers again, so does the next call, and an error is reported by its kind only."""
    calls = {"ranker": 0}
    busy = asyncio.Event()
    failing = False

    async def ranker() -> dict[str, Any]:
        calls["ranker"] += 1
        if busy.is_set():
            await asyncio.sleep(3600)  # a replica whose loop is taken: never answers in time
        if failing:
            raise RuntimeError("/secret/path/model.txt is gone")
        return {"ok": True, "n": calls["ranker"]}

    async def scenario() -> None:
        nonlocal failing
        health = DownstreamHealth({"ranker": ranker}, timeout_s=0.5, fresh_wait_s=0.01)
        first = await health.answers()
        assert first["ranker"] == {"ok": True, "n": 1, "answered_s_ago": 0.0}
        busy.set()
        stale = await asyncio.gather(*(health.answers() for _ in range(20)))
        assert all(a["ranker"]["n"] == 1 and a["ranker"]["answered_s_ago"] >= 0 for a in stale)
        assert calls["ranker"] == 2 and health.stale_answers == 20  # one round for twenty callers
        await asyncio.sleep(0.6)  # the stuck round ends at its timeout: ok False, the kind only
        timed_out = (await health.answers())["ranker"]  # a new round, stuck too: that one's answer
        assert timed_out["ok"] is False and timed_out["error"] == "TimeoutError", timed_out
        assert timed_out["answered_s_ago"] >= 0.5, timed_out
        busy.clear()
        await asyncio.sleep(0.6)  # the round started stuck ends
        again = await health.answers()
        assert again["ranker"]["ok"] and again["ranker"]["answered_s_ago"] == 0.0, again
        failing = True
        assert (await health.answers())["ranker"] == {"ok": False, "error": "RuntimeError",
                                                      "answered_s_ago": 0.0}

    asyncio.run(scenario())


def test_health_rounds_need_a_wait_shorter_than_the_timeout() -> None:
    with pytest.raises(ValueError, match="fresh_wait_s"):
        DownstreamHealth({}, timeout_s=1.0, fresh_wait_s=2.0)


def test_callers_waiting_on_a_round_get_that_round_when_the_next_one_has_started() -> None:
    """Callers woken by the end of a round resume one after another; one that returned and asked
    again meanwhile has started the next round. The others still get the round they waited on
    (a /health burst once got 500 "Result is not set" reading the round in flight instead)."""
    calls = 0

    async def ranker() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.001)
        return {"ok": True, "n": calls}

    async def caller(health: DownstreamHealth) -> list[int]:
        return [(await health.answers())["ranker"]["n"] for _ in range(5)]

    async def scenario() -> list[list[int]]:
        health = DownstreamHealth({"ranker": ranker}, timeout_s=0.5, fresh_wait_s=0.25)
        return await asyncio.gather(*(caller(health) for _ in range(20)))

    seen = asyncio.run(scenario())
    assert all(len(s) == 5 for s in seen) and calls > 1, (calls, seen)
