"""A model rollout is verified before it is served: the card's sha256 is required, the pin the
rollout wrote must match, and the file is loaded in a child process first (real files, a real
child process; the crashing file on the cluster is tests/test_faults_model.py)."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

from core.scorer import CARD_FILE, MODEL_FILE, default_model_path, file_sha256
from core.settings import load_settings
from deployments.serving.model_swap import ModelConfig, RankerSlot
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
