"""What readiness, liveness and check_health answer (deployments/serving/probes.py), without a
cluster; tests/test_ops_run.py asks the running graph."""

from __future__ import annotations

import pytest

from core.scorer import HeuristicRanker
from deployments.serving.probes import check_feedback_writer, check_model_scores, not_ready_reasons

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
