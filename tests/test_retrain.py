"""``python -m tools.retrain`` on a tiny slice of the data plus feedback recorded through the real
pipeline and store: the retrained model ranks first what it was taught, a model trained without
that feedback does not, and the gate refuses a model worse on held-out APIs."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from core.settings import PROJECT_ROOT, load_settings
from deployments.serving.feedback import FeedbackStore
from deployments.serving.pipeline import Pipeline
from deployments.serving.schemas import PredictRequest
from ranker.registry import ModelRegistry
from ranker.retrain import RetrainConfig, gate
from tests.specs import billing_spec
from tests.test_train import _tiny_jentic

TAUGHT = "POST /invoices/{invoice_id}/pay"


def _case(i: int, user: str = "u") -> PredictRequest:
    return PredictRequest(
        user_id=f"{user}{i}", spec=billing_spec(), prompt="get this invoice paid", k=3,
        events=[{"endpoint": "GET /v1/invoices"},
                {"endpoint": f"PUT /v1/invoices/in_{i}/status", "params": {"status": "DRAFT"}}],
    )


async def _top(settings, request: PredictRequest) -> list[str]:
    pipeline = Pipeline(settings)
    try:
        return [p.endpoint for p in (await pipeline.predict(request)).predictions]
    finally:
        await pipeline.aclose()


async def _teach(data_dir: Path, n: int) -> Path:
    """n users, each paying the invoice right after setting its status, told to /feedback."""
    settings = load_settings(data_dir=str(data_dir))
    store = FeedbackStore(settings.feedback_db_path)
    pipeline = Pipeline(settings, feedback=store)
    try:
        for i in range(n):
            answer = await pipeline.predict(_case(i))
            await store.arecord_outcome(answer.prediction_id, actual_endpoint=f"POST /v1/invoices/in_{i}/pay")
    finally:
        await pipeline.aclose()
        store.close()
    return settings.feedback_db_path


def _retrain(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tools.retrain", "--synthetic-per-api", "3",
                           "--num-boost-round", "30", "--early-stopping", "10", "--log-period", "10",
                           "--json", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)


def test_gate() -> None:
    base = {"hit@1": 0.60, "mrr": 0.70}
    ok, why = gate(base, {"hit@1": 0.598, "mrr": 0.71}, tolerance=0.005)
    assert ok and why == ("within the tolerance of 0.005 on held-out APIs: "
                          "hit@1 0.598 vs 0.600, mrr 0.710 vs 0.700")
    assert gate(base, {"hit@1": 0.61, "mrr": 0.70})[1].startswith("not worse on held-out APIs: hit@1 0.610")
    ok, why = gate(base, {"hit@1": 0.58, "mrr": 0.71}, tolerance=0.005)
    assert not ok and "hit@1 0.580 < 0.600" in why
    assert gate(None, {"hit@1": 0.1, "mrr": 0.1})[0]


@pytest.mark.parametrize("field, value, message", [
    ("feedback_weight", -1.0, "feedback_weight must be finite and >= 0, got -1.0"),
    ("holdout_fraction", 1.0, "holdout_fraction must be in [0, 1), got 1.0"),
    ("tolerance", -0.1, "tolerance must be >= 0, got -0.1"),
    ("synthetic_weight", 2.0, "synthetic_weight must be in [0, 1], got 2.0"),
])
def test_config_is_validated_on_construction(tmp_path, field, value, message) -> None:
    with pytest.raises(ValueError) as exc:
        RetrainConfig(models_dir=tmp_path, **{field: value})
    assert str(exc.value) == message


@pytest.mark.slow
def test_retrain_learns_a_taught_case_and_the_gate_refuses_a_worse_model(jentic_dir, tmp_path) -> None:
    tiny = tmp_path / "jentic"
    _tiny_jentic(jentic_dir, tiny)
    db = asyncio.run(_teach(tmp_path / "var", 40))
    models = tmp_path / "models"
    shipped = asyncio.run(_top(load_settings(data_dir=str(tmp_path / "q")), _case(999, "new")))
    assert shipped[0] != TAUGHT  # the case is worth teaching

    # The tiny base is far worse than the shipped model on held-out APIs: the gate says no.
    refused = _retrain("--jentic-dir", str(tiny), "--feedback", str(db), "--models-dir", str(models))
    assert refused.returncode == 3, refused.stderr[-3000:]
    summary = json.loads(refused.stdout)
    assert not summary["passed"] and "worse on held-out APIs" in summary["reason"]
    assert ModelRegistry(models).versions() == []
    assert "| real, held-out APIs: retrained |" in refused.stderr  # the validation table (stderr w/ --json)

    # Loosened (the tiny base can't match the shipped model), with and without the feedback.
    taught = _retrain("--jentic-dir", str(tiny), "--feedback", str(db), "--models-dir", str(models),
                      "--tolerance", "1")
    assert taught.returncode == 0, taught.stderr[-3000:]
    taught_summary = json.loads(taught.stdout)
    assert taught_summary["feedback"]["train"] == 32 and taught_summary["feedback"]["holdout"] == 8
    assert "[3/7]" in taught.stderr and "feedback features [" in taught.stderr  # progress
    untaught = _retrain("--jentic-dir", str(tiny), "--feedback", str(tmp_path / "none.sqlite"),
                        "--models-dir", str(models), "--tolerance", "1", "--no-promote")
    assert untaught.returncode == 0, untaught.stderr[-3000:]

    registry = ModelRegistry(models)
    assert registry.current() == taught_summary["version"]
    versions = {"taught": taught_summary["version"], "untaught": json.loads(untaught.stdout)["version"]}
    assert sorted(registry.versions()) == sorted(versions.values())
    ranked = {
        name: asyncio.run(_top(load_settings(data_dir=str(tmp_path / name), model_path=str(registry.path(v))),
                               _case(1000, "new")))
        for name, v in versions.items()
    }
    assert ranked["taught"][0] == TAUGHT, ranked
    assert ranked["untaught"][0] != TAUGHT, ranked
    held_out = taught_summary["metrics"]["feedback, held out (latest): retrained"]
    assert held_out["hit@1"] == 1.0  # the 8 latest outcomes, never trained on
