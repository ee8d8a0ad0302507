"""fill_params: a value from the history only where it surely means the same (a wrong value is
worse than a missing one)."""

from __future__ import annotations

from typing import Any

import pytest

from core.params import fill_params
from core.spec.index import SpecIndex
from core.spec.openapi import parse_spec


def _query(name: str, type_: str = "string") -> dict[str, Any]:
    return {"name": name, "in": "query", "required": True, "schema": {"type": type_}}


def _path(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _body(*required: str, **props: str) -> dict[str, Any]:
    schema = {"type": "object", "required": list(required),
              "properties": {k: {"type": t} for k, t in props.items()}}
    return {"content": {"application/json": {"schema": schema}}}


_OK = {"200": {"description": "ok"}}


@pytest.fixture(scope="module")
def spec() -> SpecIndex:
    return parse_spec({
        "openapi": "3.0.3",
        "info": {"title": "Rides", "version": "1"},
        "paths": {
            "/v1/eta": {"get": {"parameters": [_query("lat", "number"), _query("lng", "number"),
                                               _query("api_key")], "responses": _OK}},
            "/v1/rides": {
                "get": {"parameters": [_query("status")], "responses": _OK},
                "post": {"requestBody": _body("status", "customer_id", status="string",
                                              customer_id="string"), "responses": _OK},
            },
            "/v1/rides/{id}": {"get": {"parameters": [_path("id")], "responses": _OK}},
            "/v1/rides/{id}/destination": {"put": {
                "parameters": [_path("id"), _query("api_key")],
                "requestBody": _body("lat", "lng", lat="number", lng="number"), "responses": _OK}},
            "/v1/customers/{id}": {"get": {"parameters": [_path("id")], "responses": _OK}},
            "/v1/projects": {"post": {"requestBody": _body("name", name="string"), "responses": _OK}},
            "/v1/projects/{id}/keys": {"post": {"parameters": [_path("id")], "responses": _OK}},
            "/v1beta1/{+name}": {"get": {"parameters": [_path("name")], "responses": _OK}},
            "/v1beta1/{+parent}/models": {"post": {"parameters": [_path("parent")], "responses": _OK}},
            "/media/{id}": {"get": {"parameters": [_path("id")], "responses": _OK}},
            "/media/{id}.{extension}": {"get": {"parameters": [_path("id"), _path("extension")],
                                                "responses": _OK}},
            "/jobs/{id}": {"get": {"parameters": [_path("id")], "responses": _OK}},
            "/jobs/{id}/{key}": {"get": {"parameters": [_path("id"), _path("key")], "responses": _OK}},
        },
    })


def _op(spec: SpecIndex, key: str):
    return spec.operations[spec.by_key[key]]


def test_the_pickup_point_is_not_the_new_destination(spec) -> None:
    history = [spec.resolve("GET /v1/eta?lat=37.77&lng=-122.41", {"lat": "37.77", "lng": "-122.41",
                                                                  "api_key": "k1"}),
               spec.resolve("GET /v1/rides/r_1")]
    params, missing = fill_params(_op(spec, "PUT /v1/rides/{id}/destination"), history)
    # the ride's id, and the session's credential; the ETA's coordinates stay missing
    assert params == {"id": "r_1", "api_key": "k1"}
    assert missing == ["lat", "lng"]


def test_a_field_comes_only_from_the_same_resource_and_place(spec) -> None:
    create = _op(spec, "POST /v1/rides")
    # a filter of the list (query) is no field of the new ride (body)
    assert fill_params(create, [spec.resolve("GET /v1/rides", {"status": "open"})]) == (
        {}, ["status", "customer_id"])
    # the same field of an earlier call on the same resource is
    earlier = spec.resolve("POST /v1/rides", {"status": "booked", "customer_id": "cu_1"})
    assert fill_params(create, [earlier]) == ({"status": "booked", "customer_id": "cu_1"}, [])


def test_an_id_field_takes_an_id_of_its_entity(spec) -> None:
    create = _op(spec, "POST /v1/rides")
    params, missing = fill_params(create, [spec.resolve("GET /v1/customers/cu_9")])
    assert params == {"customer_id": "cu_9"} and missing == ["status"]


def test_a_name_given_to_a_new_record_is_not_its_id(spec) -> None:
    keys = _op(spec, "POST /v1/projects/{id}/keys")
    history = [spec.resolve("POST /v1/projects", {"name": "my-project"})]
    assert fill_params(keys, history) == ({}, ["id"])


def test_ids_are_not_matched_by_a_version_segment_or_a_shared_segment(spec) -> None:
    models = _op(spec, "POST /v1beta1/{+parent}/models")
    assert fill_params(models, [spec.resolve("GET /v1beta1/datasets_1")]) == ({}, ["parent"])
    # /media/{id}.{extension}: the media id fills {id}, never {extension}
    params, missing = fill_params(_op(spec, "GET /media/{id}.{extension}"),
                                  [spec.resolve("GET /media/m_1")])
    assert params == {"id": "m_1"} and missing == ["extension"]
    # /jobs/{id}/{key}: the job's id is no key of it
    params, missing = fill_params(_op(spec, "GET /jobs/{id}/{key}"), [spec.resolve("GET /jobs/j_1")])
    assert params == {"id": "j_1"} and missing == ["key"]
