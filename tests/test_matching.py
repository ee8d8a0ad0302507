"""Matching concrete event paths onto the spec's path templates."""

from __future__ import annotations

import pytest

from core.spec.index import parse_endpoint
from core.spec.openapi import parse_spec
from tests.specs import billing_spec, petstore_swagger2


@pytest.fixture(scope="module")
def billing():
    return parse_spec(billing_spec())


@pytest.mark.parametrize(
    ("endpoint", "template", "params"),
    [
        ("POST /v1/invoices/in_123/pay", "POST /invoices/{invoice_id}/pay", {"invoice_id": "in_123"}),
        ("POST /invoices/in_123/pay", "POST /invoices/{invoice_id}/pay", {"invoice_id": "in_123"}),
        ("GET /v1/invoices/", "GET /invoices", {}),  # trailing slash
        ("GET /invoices?status=open", "GET /invoices", {}),  # query string
        ("get /INVOICES", "GET /invoices", {}),  # method and literal case folded
        ("GET /users/me", "GET /users/me", {}),  # the literal beats the parameter
        ("GET /users/u_42", "GET /users/{user_id}", {"user_id": "u_42"}),
        ("GET /files/report.json", "GET /files/{name}.json", {"name": "report"}),
        ("PUT /v1/invoices/in%2F1/status", "PUT /invoices/{invoice_id}/status", {"invoice_id": "in/1"}),
        ("GET /invoices/{invoice_id}", "GET /invoices/{invoice_id}", {"invoice_id": "{invoice_id}"}),
    ],
)
def test_concrete_paths_match_templates(billing, endpoint, template, params) -> None:
    call = billing.resolve(endpoint)
    assert call.operation is not None, endpoint
    assert call.operation.key == template
    assert call.path_params == params


@pytest.mark.parametrize(
    "endpoint",
    [
        "GET /v2/invoices",  # not the spec's base path
        "GET /invoices/in_1/lines",  # no such template
        "PATCH /invoices/in_1",  # path exists, method does not
        "GET /",
        "GET /v1",
    ],
)
def test_unknown_paths_stay_unknown(billing, endpoint) -> None:
    assert billing.resolve(endpoint).operation is None


def test_backtracking_finds_the_template_with_the_method() -> None:
    doc = {
        "openapi": "3.0.0",
        "info": {"title": "t"},
        "paths": {
            "/a/me/x": {"get": {"responses": {}}},
            "/a/{id}/y": {"get": {"responses": {}}},
            "/a/me": {"post": {"responses": {}}},
            "/a/{id}": {"get": {"responses": {}}},
        },
    }
    spec = parse_spec(doc)
    assert spec.resolve("GET /a/me/y").operation.key == "GET /a/{id}/y"
    assert spec.resolve("GET /a/me").operation.key == "GET /a/{id}"
    assert spec.resolve("POST /a/me").operation.key == "POST /a/me"


def test_swagger_base_path(billing) -> None:
    spec = parse_spec(petstore_swagger2())
    call = spec.resolve("GET /api/v2/pets/7")
    assert call.operation.key == "GET /pets/{petId}" and call.path_params == {"petId": "7"}


@pytest.mark.parametrize("bad", ["", "GET", "/invoices", "FETCH /x", "GET invoices"])
def test_malformed_endpoints_are_refused(bad) -> None:
    with pytest.raises(ValueError):
        parse_endpoint(bad)


def test_base_path_stripped_match_beats_a_catch_all_template() -> None:
    doc = {"openapi": "3.0.0", "info": {"title": "t"}, "servers": [{"url": "/elements/api-v2"}],
           "paths": {"/{object}/{id}/{child}": {"get": {"responses": {}}},
                     "/orders": {"get": {"responses": {}}}}}
    spec = parse_spec(doc)
    assert spec.resolve("GET /elements/api-v2/orders").operation.key == "GET /orders"
    assert spec.resolve("GET /a/b/c").operation.key == "GET /{object}/{id}/{child}"
