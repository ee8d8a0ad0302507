"""Anyone could be anyone: with API keys, each key is a tenant and a tenant's users, predictions
and outcomes are its own. The live app on a real cluster, through real HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from core.errors import Unauthorized
from core.settings import load_settings
from deployments.serving.identity import ApiKeys, key_line
from tests.specs import billing_spec

APP = "identity"
ACME = "tok-acme-0123456789abcdef"
GLOBEX = "tok-globex-0123456789abcdef"


def test_keys_from_a_file_are_digests_and_checked(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# tenant sha256\n{key_line('acme', ACME)}\n")
    assert ACME not in keys_file.read_text()
    keys = ApiKeys.from_settings(load_settings(api_keys_file=str(keys_file), api_keys=f"globex={GLOBEX}"))
    assert keys is not None and len(keys) == 2
    assert keys.tenant(f"Bearer {ACME}") == "acme" and keys.tenant(f"bearer {GLOBEX}") == "globex"
    for bad in (None, "", ACME, f"Basic {ACME}", "Bearer nope", f"Bearer {ACME}x"):
        with pytest.raises(Unauthorized):
            keys.tenant(bad)
    keys_file.write_text("acme not-a-digest\n")
    with pytest.raises(ValueError, match="line 1"):
        ApiKeys.from_settings(load_settings(api_keys_file=str(keys_file)))
    with pytest.raises(ValueError, match="cannot be read"):
        ApiKeys.from_settings(load_settings(api_keys_file=str(tmp_path / "missing")))
    assert ApiKeys.from_settings(load_settings()) is None  # no keys: as before


@pytest.fixture(scope="module")
def app(serve_cluster, tmp_path_factory) -> Iterator[str]:
    from ray import serve

    from graph import build_app

    settings = {"data_dir": str(tmp_path_factory.mktemp("identity-data")),
                "api_keys": f"acme={ACME},globex={GLOBEX}"}
    serve.run(build_app({"settings": settings}), name=APP, route_prefix="/identity")
    try:
        yield serve_cluster + "/identity"
    finally:
        serve.delete(APP)


def _predict(c: httpx.Client, token: str | None, user: str = "victim") -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return c.post("/predict", headers=headers, json={
        "user_id": user, "spec": billing_spec(), "prompt": "pay the invoice",
        "events": [{"endpoint": "GET /v1/invoices/in_1"}]})


def test_without_a_valid_key_every_route_is_401(app: str) -> None:
    with httpx.Client(base_url=app, timeout=30) as c:
        for token in (None, "wrong-token-0123456789"):
            r = _predict(c, token)
            assert r.status_code == 401, r.text
            assert "API key" in r.json()["error"]["message"]
        assert c.post("/feedback", json={"prediction_id": "p", "accepted": True}).status_code == 401
        assert c.get("/feedback/p").status_code == 401
        assert c.delete("/users/victim").status_code == 401


def test_one_tenant_cannot_touch_anothers_users_or_predictions(app: str) -> None:
    acme = {"authorization": f"Bearer {ACME}"}
    globex = {"authorization": f"Bearer {GLOBEX}"}
    with httpx.Client(base_url=app, timeout=30) as c:
        theirs = _predict(c, ACME).json()["prediction_id"]
        mine = _predict(c, GLOBEX).json()["prediction_id"]  # the same user_id, another tenant
        outcome = {"prediction_id": theirs, "actual_endpoint": "POST /v1/invoices"}
        # globex cannot settle, read or erase acme's "victim"
        r = c.post("/feedback", headers=globex, json=outcome)
        assert r.status_code == 404, r.text
        assert c.get(f"/feedback/{theirs}", headers=globex).status_code == 404
        erased = c.delete("/users/victim", headers=globex).json()
        assert erased["predictions"] == 1  # its own victim only
        assert c.get(f"/feedback/{mine}", headers=globex).status_code == 404
        # acme's prediction is intact and takes acme's outcome
        assert c.get(f"/feedback/{theirs}", headers=acme).status_code == 200
        r = c.post("/feedback", headers=acme, json=outcome)
        assert r.status_code == 200 and r.json()["recorded"], r.text
        stored = c.get(f"/feedback/{theirs}", headers=acme).json()
        print("stored:", json.dumps({k: stored[k] for k in ("user_id",)}))
        assert stored["user_id"] == "acme/victim"


