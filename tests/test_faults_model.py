"""The ranker's model file missing or corrupt when the app starts, on a real cluster: the documented
heuristic ranker serves every request and ``/health`` says degraded. (A bad model at a hot swap,
where the previous model keeps serving, is tests/test_hot_swap.py.)"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.scorer import default_model_path
from tests.faults import record, wait_for
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
def test_unusable_model_at_start_serves_the_heuristic_ranker_degraded(deploy, fault) -> None:
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
        assert ranker["degraded"] is True and ranker["model_version"].startswith("heuristic"), ranker
        assert "model" in (ranker["heuristic_reason"] or ""), ranker  # /health says why
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
            assert answer["metadata"]["model_version"].startswith("heuristic")
            preds = answer["predictions"]
            assert preds and {p["endpoint"] for p in preds} <= keys and all(p["why"] for p in preds)
            assert [p["score"] for p in preds] == sorted((p["score"] for p in preds), reverse=True)
    record(
        f"model {fault.__name__.strip('_')} at start",
        health=health["status"],
        ranker=ranker["model_version"],
        started_s=round(started_s, 1),
        latency_ms=latencies,
        reason=str(ranker["heuristic_reason"])[:160],
    )
