"""What a person sees for a body the service cannot read, and for a ``ts`` that is no timestamp: the
error envelope of the Ingress on a plain FastAPI app (no Ray), through a real ASGI client."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import ValidationError

from deployments.serving.http_errors import install_error_handlers
from deployments.serving.schemas import Event, PredictRequest

app = FastAPI()
install_error_handlers(app)


@app.post("/predict")
async def predict(body: PredictRequest) -> dict[str, int]:
    return {"events": len(body.events)}


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(app)


def _message(r) -> str:  # type: ignore[no-untyped-def]
    assert r.status_code == 422, r.text
    return str(r.json()["error"]["message"])


def test_a_body_without_json_content_type_says_so(client: TestClient) -> None:
    body = '{"events": [], "spec_url": "https://example.com/openapi.json"}'
    message = _message(client.post("/predict", content=body, headers={"content-type": "text/plain"}))
    assert "content-type: application/json" in message and "'text/plain'" in message
    message = _message(client.post("/predict", content=body.encode(), headers={"content-type": ""}))
    assert "content-type: application/json" in message


def test_broken_json_names_the_line_and_column(client: TestClient) -> None:
    body = b'{\n  "events": [],\n  "prompt": nope\n}'
    message = _message(client.post("/predict", content=body, headers={"content-type": "application/json"}))
    assert "not valid JSON" in message and "line 3, column 13" in message, message


@pytest.mark.parametrize("ts", ["yesterday", "2026-13-40", "12:00 tomorrow", True, "1" * 80, -5, 1e13])
def test_ts_must_be_a_timestamp(client: TestClient, ts: object) -> None:
    body = {"events": [{"endpoint": "GET /v1/x", "ts": ts}], "spec_url": "https://example.com/o.json",
            "user_id": "u-1"}
    assert "ts" in _message(client.post("/predict", json=body))


def test_ts_takes_iso_8601_and_epoch_seconds() -> None:
    assert Event(endpoint="GET /x", ts="2026-12-04T10:00:00Z").ts == "2026-12-04T10:00:00Z"
    assert Event(endpoint="GET /x", ts="2026-12-04").ts == "2026-12-04"
    assert Event(endpoint="GET /x", ts=0).ts == "1970-01-01T00:00:00+00:00"
    assert Event(endpoint="GET /x", ts="1764842400.5").ts == "2025-12-04T10:00:00.500000+00:00"
    assert Event(endpoint="GET /x").ts is None
    with pytest.raises(ValidationError, match="ISO 8601"):
        Event(endpoint="GET /x", ts="yesterday")
