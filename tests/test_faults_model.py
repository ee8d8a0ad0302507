"""The ranker's model file missing or corrupt when the app starts, on a real cluster: the shipped
model serves every request (the documented heuristic ranker when that fails too:
tests/test_hostile_model.py) and ``/health`` says degraded and why. (A bad model at a hot swap,
where the previous model keeps serving, is tests/test_hot_swap.py.)"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.scorer import CARD_FILE, MODEL_FILE, default_model_path, file_sha256
from tests.faults import record, replicas, wait_for
from tests.specs import billing_spec

pytestmark = [pytest.mark.serve, pytest.mark.slow, pytest.mark.faults]

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

APP = "model-faults"


def _missing(root: Path) -> Path:
    return root / "no-such-dir" / "ranker.txt"


def _corrupt_trees(root: Path) -> Path:
    shipped = default_model_path()
    target = root / "corrupt"
    shutil.copytree(shipped.parent if shipped.is_file() else shipped, target)
    model = target / "ranker.txt"
    text = model.read_text()
    model.write_text(text[: len(text) // 2])  # a copy cut short, as by a full disk or a crash
    return model


def _corrupt_card(root: Path) -> Path:
    shipped = default_model_path()
    target = root / "bad-card"
    shutil.copytree(shipped.parent if shipped.is_file() else shipped, target)
    (target / "model_card.json").write_text('{"format": ')
    return target / "ranker.txt"


@pytest.fixture(scope="module")
def deploy(serve_cluster, tmp_path_factory) -> Iterator[Any]:
    from graph import build_app

    root = tmp_path_factory.mktemp("model-faults")

    def run(model_path: Path) -> str:
        settings = {"data_dir": str(root / "var"), "model_path": str(model_path)}
        serve.run(build_app({"settings": settings}), name=APP, route_prefix="/model-faults")
        return serve_cluster + "/model-faults"

    try:
        yield run, root
    finally:
        serve.delete(APP)


@pytest.mark.parametrize(
    "fault", [_missing, _corrupt_trees, _corrupt_card], ids=["missing", "truncated", "bad-card"]
)
def test_unusable_model_at_start_serves_the_shipped_model_degraded(deploy, fault) -> None:
    run, root = deploy
    t0 = time.monotonic()
    url = run(fault(root))
    with httpx.Client(base_url=url, timeout=30) as client:
        health = wait_for(
            lambda: (r := client.get("/health")).status_code == 200 and r.json(), 60, "health answers"
        )
        started_s = time.monotonic() - t0
        assert health["status"] == "degraded", health
        ranker = health["deployments"]["ranker"]
        shipped = json.loads((default_model_path().parent / CARD_FILE).read_text())["version"]
        assert ranker["degraded"] is True and ranker["model_version"] == shipped, ranker
        assert "refused at start" in (ranker["model_refused_at_start"] or ""), ranker  # /health says why
        assert str(root) not in json.dumps(health), health  # ... without where the files are
        spec = billing_spec()
        keys = {f"{m.upper()} {p}" for p, item in spec["paths"].items() for m in item if m != "parameters"}
        latencies = []
        for prompt in ("get this invoice paid", "list invoices", "create an invoice"):
            t1 = time.monotonic()
            r = client.post(
                "/predict",
                json={
                    "user_id": "u",
                    "spec": spec,
                    "prompt": prompt,
                    "events": [{"endpoint": "GET /v1/invoices/in_1"}],
                },
            )
            latencies.append(round((time.monotonic() - t1) * 1000))
            assert r.status_code == 200, r.text
            answer = r.json()
            assert answer["metadata"]["model_version"] == shipped
            preds = answer["predictions"]
            assert preds and {p["endpoint"] for p in preds} <= keys and all(p["why"] for p in preds)
            assert [p["score"] for p in preds] == sorted((p["score"] for p in preds), reverse=True)
    record(
        f"model {fault.__name__.strip('_')} at start",
        health=health["status"],
        ranker=ranker["model_version"],
        started_s=round(started_s, 1),
        latency_ms=latencies,
        reason=str(ranker["model_refused_at_start"])[:160],
    )


# -- a model file that crashes the process loading it ---------------------------------------------


def crashing_model(root: Path) -> Path:
    """The shipped model with one child index of its first tree out of range, and a card that
    describes it (features and sha256 match): it passes every check but LightGBM's own, and
    LightGBM aborts the process parsing it (SIGABRT, "terminate called without an active
    exception")."""
    shipped = default_model_path()
    target = root / "crashing"
    shutil.copytree(shipped.parent if shipped.is_file() else shipped, target)
    model = target / MODEL_FILE
    text = model.read_text()
    # The first tree's first child index, whatever model is shipped, made to point far outside it.
    first = re.search(r"^left_child=(-?\d+)", text, re.M)
    assert first is not None
    model.write_text(text[:first.start(1)] + "300000000" + text[first.end(1):])
    card = json.loads((target / CARD_FILE).read_text())
    card["data"]["model_sha256"] = file_sha256(model)
    card["version"] = "crashing"
    (target / CARD_FILE).write_text(json.dumps(card))
    return target


def test_a_model_that_crashes_its_loader_is_refused_and_the_old_one_serves(serve_cluster, tmp_path) -> None:
    """Rolled out to a running Ranker (its user_config), the crashing file is loaded in a child
    process first: the child dies, the swap is refused naming why, the shipped model keeps
    serving and the Ranker replica is the same one throughout (loaded in the replica, the file
    killed it, and every replacement read the same user_config)."""
    from deployments.candidate_generator import CandidateGeneratorDeployment
    from deployments.feature_extractor import FeatureExtractorDeployment
    from deployments.ingress import Ingress
    from deployments.ranking import RankerDeployment

    app_name = "model-crash"
    model = crashing_model(tmp_path)
    s = {"data_dir": str(tmp_path / "var")}
    ranker = RankerDeployment.options(user_config={"model_path": str(model)}).bind(s)
    graph = Ingress.bind(CandidateGeneratorDeployment.bind(s), FeatureExtractorDeployment.bind(s), ranker, s)
    t0 = time.monotonic()
    serve.run(graph, name=app_name, route_prefix="/model-crash")
    url = serve_cluster + "/model-crash"
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            ranker_health = wait_for(
                lambda: (r := client.get("/health")).status_code == 200
                and (h := r.json()["deployments"]["ranker"]).get("swap_error") and h, 120, "swap refused")
            refused_s = time.monotonic() - t0
            before = replicas(app_name)
            answers = [client.post("/predict", json={
                "user_id": "u", "spec": billing_spec(), "prompt": "pay the invoice",
                "events": [{"endpoint": "GET /v1/invoices/in_1"}]}) for _ in range(5)]
            time.sleep(5)  # a crash loop would have replaced the replica by now (health period 2 s)
            after = replicas(app_name)
            text = client.get("/health").text
    finally:
        serve.delete(app_name)
    record("model that crashes its loader, at a swap", refused_s=round(refused_s, 1),
           swap_error=ranker_health["swap_error"][:160])
    assert "crashed the process that loaded it (SIGABRT)" in ranker_health["swap_error"], ranker_health
    assert ranker_health["model_version"] == json.loads(
        (default_model_path().parent / CARD_FILE).read_text())["version"]
    assert all(a.status_code == 200 for a in answers), [a.text[:200] for a in answers]
    assert before == after and before.get("Ranker"), (before, after)
    assert str(tmp_path) not in text  # /health names the model, not where it lies
