"""A model is verified before it is served, at a rollout and when a replica starts: the card's
sha256 is required, the pin the rollout wrote must match, and the file is loaded in a child
process first (real files, a real child process, a real Serve app; the crashing file at a swap on
the cluster is tests/test_faults_model.py)."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from core.scorer import CARD_FILE, MODEL_FILE, default_model_path, file_sha256
from core.settings import load_settings
from deployments.serving.model_swap import ModelConfig, RankerSlot
from tests.faults import record, replicas, wait_for
from tests.specs import billing_spec
from tests.test_faults_model import crashing_model
from tools.rollout import live_config, write_live_config


def _copy(root: Path, name: str, *, sha: bool = True) -> Path:
    target = root / name
    shutil.copytree(default_model_path().parent, target)
    card = json.loads((target / CARD_FILE).read_text())
    card["version"] = name
    if not sha:
        del card["data"]["model_sha256"]
    (target / CARD_FILE).write_text(json.dumps(card))
    return target


def test_a_swap_needs_the_cards_sha256_and_the_rollouts_pin(tmp_path: Path) -> None:
    slot = RankerSlot(load_settings(data_dir=str(tmp_path)))
    shipped = slot.ranker.version

    async def scenario() -> None:
        assert not await slot.apply(ModelConfig(model_path=_copy(tmp_path, "no-sha", sha=False)))
        assert "no model_sha256" in (slot.last_error or ""), slot.last_error
        good = _copy(tmp_path, "good")
        assert not await slot.apply(ModelConfig(model_path=good, model_sha256="0" * 64))
        assert "not the one rolled out" in (slot.last_error or ""), slot.last_error
        assert slot.ranker.version == shipped
        pin = file_sha256(good / MODEL_FILE)
        assert await slot.apply(ModelConfig(model_path=good, model_sha256=pin))
        assert slot.ranker.version == "good" and slot.last_error is None
        assert not await slot.apply(ModelConfig(model_path=crashing_model(tmp_path)))
        assert "crashed the process that loaded it (SIGABRT)" in (slot.last_error or "")
        assert slot.ranker.version == "good"
        assert str(tmp_path) not in json.dumps(slot.status())  # /health: no paths

    asyncio.run(scenario())


def test_the_rollout_pins_the_files_sha256(tmp_path: Path) -> None:
    model = _copy(tmp_path, "v2")
    base = {"applications": [{"name": "opensesame", "deployments": [{"name": "Ranker"}]}]}
    (tmp_path / "base.yaml").write_text(json.dumps(base))
    import yaml

    live = yaml.safe_load(write_live_config(tmp_path / "base.yaml", tmp_path / "live.yaml",
                                            model_path=model).read_text())
    user_config = live["applications"][0]["deployments"][0]["user_config"]
    assert user_config["model_sha256"] == file_sha256(model / MODEL_FILE)
    assert "model_sha256" not in live_config(live, model_path=None)["applications"][0][
        "deployments"][0]["user_config"]


def _shipped_version() -> str:
    return str(json.loads((default_model_path().parent / CARD_FILE).read_text())["version"])


def test_a_replica_starting_with_a_crashing_model_serves_the_shipped_one(tmp_path: Path) -> None:
    """The settings name a model that kills LightGBM: checked in a child, it is refused, the
    shipped model (checked the same way) serves, and the slot says why; bytes that passed once
    are not checked again (the second slot finds the shipped model's mark), refused ones are."""
    settings = load_settings(data_dir=str(tmp_path / "var"), model_path=str(crashing_model(tmp_path)))
    slot = RankerSlot(settings)
    assert slot.ranker.version == _shipped_version() and not slot.ranker.degraded
    assert "crashed the process that loaded it (SIGABRT)" in (slot.refused_at_start or "")
    status = slot.status()
    assert status["model_refused_at_start"].startswith("model crashing/ranker.txt refused at start")
    assert slot.degraded and str(tmp_path) not in json.dumps(status)
    marks = list((tmp_path / "var" / "verified-models").iterdir())
    assert [m.name.split("-")[0] for m in marks] == [file_sha256(default_model_path())]
    again = RankerSlot(settings)  # the crashing file is checked (and refused) again, the shipped one not
    assert again.ranker.version == _shipped_version() and "SIGABRT" in (again.refused_at_start or "")
    # The configured model refused at start is not tried again by reconfigure (empty user_config).
    assert not asyncio.run(again.apply(ModelConfig())) and again.last_error is None


def test_a_replica_whose_models_are_all_refused_serves_the_heuristic(tmp_path: Path, monkeypatch) -> None:
    import deployments.serving.model_swap as model_swap

    crashing = crashing_model(tmp_path)
    monkeypatch.setattr(model_swap, "default_model_path", lambda: crashing / MODEL_FILE)
    slot = RankerSlot(load_settings(data_dir=str(tmp_path / "var"), model_path=str(crashing)))
    assert slot.ranker.degraded and slot.path is None
    assert "SIGABRT" in (slot.status()["heuristic_reason"] or "")


# -- on the cluster ------------------------------------------------------------------------------


@pytest.fixture
def crashing_app(serve_cluster, tmp_path) -> Iterator[tuple[str, float]]:
    from ray import serve

    from graph import build_app

    settings = {"data_dir": str(tmp_path / "var"), "model_path": str(crashing_model(tmp_path))}
    t0 = time.monotonic()
    serve.run(build_app({"settings": settings}), name="model-start", route_prefix="/model-start")
    try:
        yield serve_cluster + "/model-start", time.monotonic() - t0
    finally:
        serve.delete("model-start")


def test_the_app_starts_and_answers_with_a_model_that_crashes_lightgbm(crashing_app) -> None:
    """A real Serve app whose settings name the crashing model: it reaches RUNNING, answers with
    the shipped model, ``/health`` says why, and the Ranker replica is the same one seconds later
    (loaded in the replica, the file killed it at its first health check, and every replacement
    read the same settings: the app never came up)."""
    url, deployed_s = crashing_app
    with httpx.Client(base_url=url, timeout=30) as client:
        ranker = wait_for(lambda: (r := client.get("/health")).status_code == 200
                          and r.json()["deployments"]["ranker"], 60, "health answers")
        before = replicas("model-start")
        answers = [client.post("/predict", json={
            "user_id": "u", "spec": billing_spec(), "prompt": "pay the invoice",
            "events": [{"endpoint": "GET /v1/invoices/in_1"}]}) for _ in range(5)]
        time.sleep(5)  # a crash loop would have replaced the replica by now (health period 2 s)
        after = replicas("model-start")
        health = client.get("/health").json()
    record("model that crashes its loader, at start", deployed_s=round(deployed_s, 1),
           start_check_s=ranker["start_check_s"], refused=ranker["model_refused_at_start"][:160])
    assert ranker["model_version"] == _shipped_version(), ranker
    assert "crashed the process that loaded it (SIGABRT)" in ranker["model_refused_at_start"], ranker
    assert health["status"] == "degraded" and health["deployments"]["ranker"]["degraded"], health
    assert all(a.status_code == 200 for a in answers), [a.text[:200] for a in answers]
    assert {a.json()["metadata"]["model_version"] for a in answers} == {_shipped_version()}
    assert before == after and before.get("Ranker"), (before, after)
    ready = httpx.get(url + "/readyz", timeout=30)  # a trained model serves: still ready
    assert ready.status_code == 200, ready.text
