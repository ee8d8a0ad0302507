"""The whole graph on a real Ray cluster, through real HTTP, with specs from a loopback server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.spec_server import SpecServer, spec_server
from tests.specs import PETSTORE_YAML, billing_spec, petstore_swagger2

pytestmark = pytest.mark.serve

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

SPEC_CAP = 300_000


@pytest.fixture(scope="module")
def specs() -> Iterator[SpecServer]:
    with spec_server() as server:
        yield server


@pytest.fixture(scope="module")
def service(serve_cluster, tmp_path_factory, specs) -> Iterator[str]:
    from graph import build_app

    settings = {
        "allow_private_spec_hosts": True,  # the spec server is on loopback
        "data_dir": str(tmp_path_factory.mktemp("serve-data")),
        "spec_max_bytes": SPEC_CAP,
        "spec_fetch_timeout_s": 1.5,
    }
    serve.run(build_app({"settings": settings}), name="opensesame", route_prefix="/")
    try:
        yield serve_cluster
    finally:
        serve.delete("opensesame")


@pytest.fixture(scope="module")
def client(service) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service, timeout=30) as c:
        yield c


def _request(spec_url: str, **kw) -> dict:
    body = {
        "user_id": "u-42",
        "events": [
            {"endpoint": "GET /v1/invoices", "params": {}},
            {"endpoint": "PUT /v1/invoices/in_123/status", "params": {"status": "DRAFT"}},
        ],
        "prompt": "get this invoice paid",
        "spec_url": spec_url,
        "k": 3,
    }
    body.update(kw)
    return body


def _check_predictions(answer: dict, operations: set[str], k: int) -> None:
    preds = answer["predictions"]
    assert 0 < len(preds) <= k
    assert len({p["endpoint"] for p in preds}) == len(preds)
    assert all(p["endpoint"] in operations for p in preds)
    scores = [p["score"] for p in preds]
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert scores == sorted(scores, reverse=True)
    assert all(p["why"] for p in preds)
    assert answer["prediction_id"] and answer["metadata"]["model_version"]


def _keys(doc: dict) -> set[str]:
    return {f"{m.upper()} {p}" for p, item in doc["paths"].items() for m in item if m != "parameters"}


def test_predict_valid_request(client, specs) -> None:
    url = specs.add("/billing.json", json.dumps(billing_spec()).encode())
    r = client.post("/predict", json=_request(url))
    assert r.status_code == 200, r.text
    answer = r.json()
    _check_predictions(answer, _keys(billing_spec()), k=3)
    assert answer["metadata"]["generator"] == "retrieval"
    assert answer["metadata"]["cold_start"] is False
    assert set(answer["metadata"]["timings_ms"]) >= {"spec", "candidates", "features", "rank", "total"}
    pay = [p for p in answer["predictions"] if p["endpoint"] == "POST /invoices/{invoice_id}/pay"]
    assert pay and pay[0]["params"] == {"invoice_id": "in_123"}
    # The spec is fetched once, then served from the cache.
    assert client.post("/predict", json=_request(url)).status_code == 200
    assert specs.hits["/billing.json"] == 1


def test_cold_start_with_inline_spec(client) -> None:
    r = client.post("/predict", json={"user_id": "u", "spec": billing_spec(), "prompt": "list invoices"})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["metadata"]["cold_start"] is True
    _check_predictions(answer, _keys(billing_spec()), k=5)


def test_swagger2_and_yaml_specs(client, specs) -> None:
    swagger = specs.add("/petstore.json", json.dumps(petstore_swagger2()).encode())
    r = client.post(
        "/predict",
        json={
            "user_id": "u",
            "spec_url": swagger,
            "prompt": "find a pet",
            "events": [{"endpoint": "GET /api/v2/pets"}],
        },
    )
    assert r.status_code == 200, r.text
    _check_predictions(r.json(), _keys(petstore_swagger2()), k=5)
    yml = specs.add("/pets.yaml", PETSTORE_YAML, content_type="application/yaml")
    r = client.post("/predict", json={"user_id": "u", "spec_url": yml, "prompt": "show one pet"})
    assert r.status_code == 200, r.text
    _check_predictions(r.json(), _keys(yaml.safe_load(PETSTORE_YAML)), k=5)


def test_big_real_spec(client, specs, jentic_dir: Path) -> None:
    path = max(
        (p for p in jentic_dir.glob("apis/openapi/*/*/*/openapi.json") if p.stat().st_size < SPEC_CAP),
        key=lambda p: len(json.loads(p.read_bytes()).get("paths", {})),
    )
    doc = json.loads(path.read_bytes())
    keys = {
        f"{m.upper()} {p}"
        for p, item in doc["paths"].items()
        for m in item
        if m in ("get", "put", "post", "delete", "patch", "head", "options", "trace")
    }
    assert len(keys) >= 100
    url = specs.add("/big.json", path.read_bytes())
    first = sorted(k for k in keys if k.startswith("GET ") and "{" not in k)[0]
    r = client.post(
        "/predict",
        json={
            "user_id": "u",
            "spec_url": url,
            "k": 10,
            "events": [{"endpoint": first}],
            "prompt": "what next",
        },
    )
    assert r.status_code == 200, r.text
    _check_predictions(r.json(), keys, k=10)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"events": [], "spec": {"openapi": "3.0.0"}}, "user_id"),
        ({"user_id": "u"}, "exactly one of"),
        ({"user_id": "u", "spec": {}, "spec_url": "http://x/y"}, "exactly one of"),
        ({"user_id": "u", "spec_url": "ftp://x/y"}, "http"),
        ({"user_id": "u", "spec": {}, "k": 0}, "k"),
        ({"user_id": "u", "spec": {}, "k": 21}, "k"),
        ({"user_id": "u", "spec": {}, "events": [{"endpoint": "FETCH /x"}]}, "method"),
        ({"user_id": "u", "spec": {}, "surprise": 1}, "surprise"),
    ],
)
def test_invalid_requests_get_422(client, body, fragment) -> None:
    r = client.post("/predict", json=body)
    assert r.status_code == 422, r.text
    assert fragment in r.json()["error"]["message"] + json.dumps(r.json()["error"].get("details"))


def test_malformed_json_gets_422(client) -> None:
    r = client.post("/predict", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 422


def test_unparsable_spec_gets_422(client, specs) -> None:
    url = specs.add("/broken.json", b"{ this is not json")
    r = client.post("/predict", json=_request(url))
    assert r.status_code == 422 and "JSON" in r.json()["error"]["message"]
    r = client.post("/predict", json={"user_id": "u", "spec": {"openapi": "3.0.0", "paths": {}}})
    assert r.status_code == 422 and "no operations" in r.json()["error"]["message"]


def test_spec_over_the_cap_gets_413(client, specs) -> None:
    url = specs.add("/huge.json", b" " * (SPEC_CAP + 1) + b"{}")
    r = client.post("/predict", json=_request(url))
    assert r.status_code == 413, r.text


def test_request_body_over_the_cap_gets_413(client) -> None:
    r = client.post(
        "/predict",
        content=b"{" + b" " * (SPEC_CAP + 2 * 1024 * 1024) + b"}",
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413, r.text


def test_spec_host_error_gets_502(client, specs) -> None:
    url = specs.add("/gone.json", b"oops", status=500)
    r = client.post("/predict", json=_request(url))
    assert r.status_code == 502, r.text
    r = client.post("/predict", json=_request(specs.url("/never-added.json")))
    assert r.status_code == 502, r.text


def test_slow_spec_host_gets_504(client, specs) -> None:
    url = specs.add("/slow.json", json.dumps(billing_spec()).encode(), delay_s=3.0)
    r = client.post("/predict", json=_request(url))
    assert r.status_code == 504, r.text


def test_health(client) -> None:
    r = client.get("/health")
    assert r.status_code == 200, r.text
    health = r.json()
    assert health["status"] in ("ok", "degraded")
    assert set(health["deployments"]) == {"ingress", "candidate_generator", "feature_extractor", "ranker"}
    assert all(d["ok"] for d in health["deployments"].values()), health


def test_python_handle_gives_the_same_answer_as_http(client, specs) -> None:
    from deployments.serving.schemas import PredictRequest

    url = specs.add("/billing-handle.json", json.dumps(billing_spec()).encode())
    body = _request(url)
    over_http = client.post("/predict", json=body).json()
    handle = serve.get_app_handle("opensesame")
    via_handle = handle.predict.remote(PredictRequest.model_validate(body)).result()
    strip = lambda a: [(p["endpoint"], p["params"], p["score"]) for p in a["predictions"]]  # noqa: E731
    assert strip(via_handle.model_dump()) == strip(over_http)
