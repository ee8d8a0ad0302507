"""The population memory in the Serve graph, over HTTP on the real cluster: outcomes of three
users reach a fourth user's prediction within seconds, `why` says so, `/health` shows it."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.test_feedback import REQUEST, _deploy, serve, serve_mark


@pytest.fixture(scope="module")
def client(serve_cluster, tmp_path_factory) -> Iterator[httpx.Client]:
    _deploy(tmp_path_factory.mktemp("population-serve"))
    try:
        with httpx.Client(base_url=serve_cluster, timeout=30) as c:
            yield c
    finally:
        serve.delete("opensesame")


def _predict(client: httpx.Client, user: str) -> dict:
    r = client.post("/predict", json={**REQUEST, "user_id": user})
    assert r.status_code == 200, r.text
    return r.json()


@serve_mark
def test_what_other_users_did_reaches_a_new_user_within_seconds(client) -> None:
    def usable() -> int:
        memory = client.get("/health").json()["deployments"]["ingress"]["population"]
        return sum(api["usable"] for api in memory.get("apis", {}).values())

    before = {p["endpoint"]: p for p in _predict(client, "first")["predictions"]}
    crowd = list(before)[-1]  # what the model ranks last of the three
    assert usable() == 0
    def made_by(user: str) -> None:
        pid = _predict(client, user)["prediction_id"]
        r = client.post("/feedback", json={"prediction_id": pid, "actual_endpoint": crowd})
        assert r.status_code == 200, r.text

    made_by("a")
    made_by("b")
    time.sleep(2.5)
    assert usable() == 0  # two users: below the threshold
    made_by("c")
    deadline = time.monotonic() + 30
    while not usable():
        assert time.monotonic() < deadline, "the memory never learned the outcomes"
        time.sleep(0.2)
    after = {p["endpoint"]: p for p in _predict(client, "fresh")["predictions"]}
    assert after[crowd]["score"] > before[crowd]["score"]
    assert "people" in after[crowd]["why"], after[crowd]["why"]
