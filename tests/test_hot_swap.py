"""Moving the running Ranker to another model: the plain swap logic and the registry, then the
whole loop on the real cluster — retrain with ``--apply``, a broken model refused, a rollback —
while a load generator runs over HTTP and counts every failed request."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from benchmarks.cluster import wait_http
from core.features import FEATURE_NAMES
from core.scorer import CARD_FILE, MODEL_FILE, RankerModel, default_model_path
from core.settings import PROJECT_ROOT, load_settings
from deployments.serving.model_swap import ModelConfig, RankerSlot, split_model_config
from ranker.registry import ModelRegistry, RegistryError
from tests.specs import billing_spec
from tests.test_train import _tiny_jentic
from tools.loadgen import run_load
from tools.rollout import apply_config, live_config, write_live_config


def _copy_model(dst: Path, version: str) -> Path:
    """The shipped model under another version name (same trees)."""
    dst.mkdir(parents=True)
    shutil.copy2(default_model_path(), dst / MODEL_FILE)
    card = json.loads((default_model_path().parent / CARD_FILE).read_text())
    card["version"] = version
    (dst / CARD_FILE).write_text(json.dumps(card))
    return dst


def _broken_model(dst: Path) -> Path:
    _copy_model(dst, "broken")
    (dst / MODEL_FILE).write_text("tree\nnot a model\n")
    return dst


# -- the swap on a plain object ------------------------------------------------------------------


def test_slot_swaps_and_refuses_a_broken_model(tmp_path) -> None:
    slot = RankerSlot(load_settings(data_dir=str(tmp_path)))
    shipped = slot.ranker.version
    rows = [np.zeros((3, len(FEATURE_NAMES)), np.float32)]

    async def scenario() -> None:
        # batches keep running on the event loop while the new model loads in a thread
        async def batches() -> int:
            done = 0
            for _ in range(50):
                ranker = slot.ranker
                await asyncio.to_thread(ranker.score_groups, rows)
                done += 1
            return done

        load = asyncio.create_task(batches())
        assert await slot.apply(ModelConfig(model_path=_copy_model(tmp_path / "b", "version-b")))
        assert await load == 50
        assert (slot.ranker.version, slot.previous_version, slot.swaps) == ("version-b", shipped, 1)
        assert not await slot.apply(ModelConfig(model_path=tmp_path / "b" / MODEL_FILE))  # same model
        assert not await slot.apply(ModelConfig(model_path=_broken_model(tmp_path / "bad")))
        assert slot.ranker.version == "version-b" and "still serving version-b" in slot.last_error
        assert not await slot.apply(ModelConfig(model_path=tmp_path / "missing"))
        assert slot.ranker.version == "version-b"
        assert await slot.apply(ModelConfig())  # back to the settings' model
        assert slot.ranker.version == shipped and slot.last_error is None

    asyncio.run(scenario())


def test_model_user_config_is_validated() -> None:
    model, rest = split_model_config({"model_path": "/m", "max_batch_size": 8})
    assert model.model_path == Path("/m") and rest == {"max_batch_size": 8}
    for bad in ({"model_path": ["not", "a", "path"]}, {"model_path": "/m", "model_version": "v1"},
                {"model_version": "../escape"}):
        with pytest.raises(ValueError, match="invalid model user_config"):
            split_model_config(bad)


def test_slot_takes_a_registry_version(tmp_path) -> None:
    settings = load_settings(data_dir=str(tmp_path))
    registry = ModelRegistry(settings.model_registry_dir)
    version = registry.add(_copy_model(tmp_path / "v", "registry-v1"))
    slot = RankerSlot(settings)
    assert asyncio.run(slot.apply(ModelConfig(model_version=version)))
    assert slot.ranker.version == "registry-v1"


def test_registry_promote_rollback(tmp_path) -> None:
    registry = ModelRegistry(tmp_path / "models")
    assert registry.current() is None
    a = registry.add(_copy_model(tmp_path / "a", "va"))
    b = registry.add(_copy_model(tmp_path / "b", "vb"))
    with pytest.raises(RegistryError, match="immutable"):
        registry.add(tmp_path / "a")
    registry.promote(a, reason="first")
    registry.promote(b, reason="better")
    assert registry.current() == "vb" and registry.versions() == ["va", "vb"]
    assert RankerModel.load(registry.current_path()).version == "vb"
    assert registry.rollback(reason="oops") == "va"
    assert registry.rollback() is None  # back to the shipped model
    with pytest.raises(RegistryError, match="nothing to roll back"):
        registry.rollback()
    assert [e["action"] for e in registry.state()["events"]] == ["promote", "promote", "rollback", "rollback"]


def test_live_config_only_touches_the_rankers_user_config() -> None:
    base = yaml.safe_load((PROJECT_ROOT / "serve_config.yaml").read_text())
    live = live_config(base, model_path=Path("/models/v1"))
    ranker = next(d for d in live["applications"][0]["deployments"] if d["name"] == "Ranker")
    assert ranker["user_config"]["model_path"] == "/models/v1"
    ranker["user_config"].pop("model_path")
    assert live == base
    assert live_config(live, model_path=None) == base


# -- on the real cluster, under load -------------------------------------------------------------

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

BODIES = [
    {
        "user_id": f"load-{i}",
        "events": [{"endpoint": "GET /v1/invoices"},
                   {"endpoint": f"PUT /v1/invoices/in_{i}/status", "params": {"status": "DRAFT"}}],
        "prompt": "get this invoice paid",
        "spec": billing_spec(),
        "k": 3,
    }
    for i in range(8)
]


@pytest.fixture(scope="module")
def declarative_app(serve_cluster, tmp_path_factory) -> Iterator[dict]:
    """The app deployed from a config file, as `make run` deploys it: only then does a
    ``user_config`` change reconfigure replicas in place."""
    root = tmp_path_factory.mktemp("hot-swap")
    base = yaml.safe_load((PROJECT_ROOT / "serve_config.yaml").read_text())
    base["applications"][0]["args"] = {"settings": {"data_dir": str(root / "var")}}
    base_path = root / "serve_config.yaml"
    base_path.write_text(yaml.safe_dump(base))
    address = ray.get_runtime_context().gcs_address
    apply_config(write_live_config(base_path, root / "live.yaml", model_path=None), address=address)
    wait_http(serve_cluster + "/predict", timeout_s=180, data=json.dumps(BODIES[0]).encode())
    try:
        yield {"url": serve_cluster, "address": address, "root": root, "base": base_path}
    finally:
        serve.delete("opensesame")


@pytest.mark.serve
@pytest.mark.slow
def test_hot_swap_retrain_bad_model_and_rollback_under_load(declarative_app, jentic_dir) -> None:
    app = declarative_app
    url, root = app["url"], app["root"]
    models = root / "models"
    shipped = RankerModel.load().version
    rollout = ["--apply", "--address", app["address"], "--serve-config", str(app["base"]), "--url", url]
    tiny = root / "jentic"
    _tiny_jentic(jentic_dir, tiny)

    stop = threading.Event()
    outcome: dict = {}
    loader = threading.Thread(
        target=lambda: outcome.setdefault(
            "load", run_load(url, BODIES, clients=2, stop=stop, duration_s=400)),
        daemon=True,
    )
    loader.start()
    try:
        time.sleep(2)
        # 1. one command: retrain (tiny data, so the gate is loosened), promote, roll out, wait
        run = subprocess.run(
            [sys.executable, "-m", "tools.retrain", "--jentic-dir", str(tiny), "--models-dir", str(models),
             "--feedback", str(root / "var" / "feedback.sqlite"), "--synthetic-per-api", "3",
             "--num-boost-round", "30", "--early-stopping", "10", "--tolerance", "1", "--json", *rollout],
            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        retrained = json.loads(run.stdout)["version"]
        assert retrained != shipped
        time.sleep(2)

        # 2. a broken model: refused, the retrained one keeps serving, /health says why
        live = write_live_config(app["base"], root / "bad.yaml", model_path=_broken_model(root / "broken"))
        apply_config(live, address=app["address"])
        import httpx

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ranker = httpx.get(url + "/health", timeout=10).json()["deployments"]["ranker"]
            if ranker.get("swap_error"):
                break
            time.sleep(0.25)
        assert ranker["model_version"] == retrained and "broken" in ranker["swap_error"], ranker
        assert ranker["degraded"] is True
        time.sleep(2)

        # 3. roll back in one command: the shipped model again
        run = subprocess.run(
            [sys.executable, "-m", "tools.retrain", "rollback", "--models-dir", str(models), "--json",
             *rollout],
            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        assert json.loads(run.stdout)["current"] is None
        time.sleep(2)
    finally:
        stop.set()
        loader.join(60)
    load = outcome["load"]
    summary = load.summary()
    print("load during the swaps:", json.dumps(summary))
    assert load.error_count == 0, summary
    assert load.requests > 50, summary
    # the versions answered, in time order: shipped, then the retrained one, then shipped again
    # (answers are timed at the client: one that left the ranker just before a swap may arrive
    # a moment after one that left just after it)
    assert {v for _, v in load.versions} == {shipped, retrained}
    first, last = (min(t for t, v in load.versions if v == retrained),
                   max(t for t, v in load.versions if v == retrained))
    assert load.versions[0][1] == shipped and load.versions[-1][1] == shipped
    assert all(t < first + 0.5 or t > last - 0.5 for t, v in load.versions if v == shipped)
    health = httpx.get(url + "/health", timeout=10).json()["deployments"]["ranker"]
    assert health["swap_error"] is None and health["swaps"] == 2
