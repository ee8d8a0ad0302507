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
            "/v1/estimates": {"post": {"requestBody": _body("lat", "lng", lat="number", lng="number"),
                                       "responses": _OK}},
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
            "/v1/customers/{customer_id}/cards": {"get": {"parameters": [_path("customer_id")],
                                                          "responses": _OK}},
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
    # so do a price estimate's, though sent in a body too: another resource's point
    estimate = spec.resolve("POST /v1/estimates", {"lat": 37.77, "lng": -122.41})
    params, missing = fill_params(_op(spec, "PUT /v1/rides/{id}/destination"),
                                  [estimate, spec.resolve("GET /v1/rides/r_1")])
    assert params == {"id": "r_1"} and missing == ["api_key", "lat", "lng"]


def test_a_field_comes_only_from_the_same_resource_and_place(spec) -> None:
    create = _op(spec, "POST /v1/rides")
    # a filter of the list (query) is no field of the new ride (body)
    assert fill_params(create, [spec.resolve("GET /v1/rides", {"status": "open"})]) == (
        {}, ["status", "customer_id"])
    # the same field of an earlier call on the same resource is
    earlier = spec.resolve("POST /v1/rides", {"status": "booked", "customer_id": "cu_1"})
    assert fill_params(create, [earlier]) == ({"status": "booked", "customer_id": "cu_1"}, [])


def test_an_id_field_takes_an_id_of_its_own_name(spec) -> None:
    create = _op(spec, "POST /v1/rides")
    # from a call on another resource, under its name
    params, missing = fill_params(create, [spec.resolve("GET /v1/customers/cu_9/cards")])
    assert params == {"customer_id": "cu_9"} and missing == ["status"]
    # the same entity's id under another name ({id} of /customers/{id}) is left out
    assert fill_params(create, [spec.resolve("GET /v1/customers/cu_9")]) == ({}, ["status", "customer_id"])


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


def test_a_path_parameter_takes_an_id_under_its_own_name_only() -> None:
    sims = parse_spec({
        "openapi": "3.0.3",
        "info": {"title": "Wireless", "version": "1"},
        "paths": {
            "/v1/Sims/{Sid}": {"get": {"parameters": [_path("Sid")], "responses": _OK},
                               "post": {"parameters": [_path("Sid")], "responses": _OK}},
            "/v1/Sims/{SimSid}/DataSessions": {"get": {"parameters": [_path("SimSid")],
                                                       "responses": _OK}},
            "/v1/Sims": {"get": {"parameters": [_query("SimSid")], "responses": _OK}},
        },
    })
    sessions = _op(sims, "GET /v1/Sims/{SimSid}/DataSessions")
    update = _op(sims, "POST /v1/Sims/{Sid}")
    # the {Sid} of /Sims/{Sid} is a SIM id, but under another name: {SimSid} is left missing
    assert fill_params(sessions, [sims.resolve("GET /v1/Sims/DE1")]) == ({}, ["SimSid"])
    assert fill_params(update, [sims.resolve("GET /v1/Sims/DE1/DataSessions")]) == ({}, ["Sid"])
    # and so is {Sid} after a filter of the list under another name
    assert fill_params(update, [sims.resolve("GET /v1/Sims", {"SimSid": "DE1"})]) == ({}, ["Sid"])
    # under its own name it is filled
    assert fill_params(sessions, [sims.resolve("GET /v1/Sims", {"SimSid": "DE1"})]) == ({"SimSid": "DE1"}, [])
    assert fill_params(update, [sims.resolve("GET /v1/Sims/DE1")]) == ({"Sid": "DE1"}, [])


def test_a_call_read_with_its_base_path_as_a_parameter_gives_no_value() -> None:
    places = parse_spec({
        "openapi": "3.0.3",
        "info": {"title": "Places", "version": "1"},
        "servers": [{"url": "https://places.example/api"}],
        "paths": {
            "/{country}": {"get": {"parameters": [_path("country")], "responses": _OK}},
            "/{country}/{region}": {"get": {"parameters": [_path("country"), _path("region")],
                                            "responses": _OK}},
            "/{country}/{region}/{district}": {"get": {
                "parameters": [_path("country"), _path("region"), _path("district")], "responses": _OK}},
            "/{apiVersion}/accounts/{id}": {"get": {
                "parameters": [_path("apiVersion"), _path("id")], "responses": _OK}},
            "/{apiVersion}/accounts/{id}/keys": {"get": {
                "parameters": [_path("apiVersion"), _path("id")], "responses": _OK}},
        },
    })
    districts = _op(places, "GET /{country}/{region}/{district}")
    shifted = places.resolve("GET /api/tz/dar")  # the base path read as the country
    assert shifted.path_params == {"country": "api", "region": "tz", "district": "dar"}
    history = [places.resolve("GET /tz"), shifted]
    # country from the call read right; region and district, one place off in the other, missing
    assert fill_params(districts, history) == ({"country": "tz"}, ["region", "district"])
    # a version parameter holds a version rightly
    keys = _op(places, "GET /{apiVersion}/accounts/{id}/keys")
    assert fill_params(keys, [places.resolve("GET /v1/accounts/ac_1")]) == (
        {"apiVersion": "v1", "id": "ac_1"}, [])


def test_a_value_the_events_hold_as_one_things_id_names_no_other_thing() -> None:
    jira = parse_spec({
        "openapi": "3.0.3",
        "info": {"title": "Jira", "version": "3"},
        "paths": {
            "/issue/{issueIdOrKey}": {"get": {"parameters": [_path("issueIdOrKey")], "responses": _OK}},
            "/issue/{issueIdOrKey}/transitions": {
                "get": {"parameters": [_path("issueIdOrKey"), _query("transitionId")],
                        "responses": _OK},
                "post": {"parameters": [_path("issueIdOrKey")],
                         "requestBody": _body("transition", transition="string"), "responses": _OK}},
            "/users/{id}": {"get": {"parameters": [_path("id")], "responses": _OK}},
            "/users/{user_id}/orders": {"get": {"parameters": [_path("user_id")], "responses": _OK}},
        },
    })
    seen = [jira.resolve("GET /issue/PROJ-123")]
    prompt = "transition PROJ-123 to Done"
    # "transition" is written before PROJ-123, but the events hold it as the key
    assert fill_params(_op(jira, "POST /issue/{issueIdOrKey}/transitions"), seen, prompt=prompt) == (
        {"issueIdOrKey": "PROJ-123"}, ["transition"])
    assert fill_params(_op(jira, "GET /issue/{issueIdOrKey}/transitions"), seen, prompt=prompt) == (
        {"issueIdOrKey": "PROJ-123"}, ["transitionId"])
    # without the events nothing says whose id it is: the words before it name it
    assert fill_params(_op(jira, "GET /issue/{issueIdOrKey}/transitions"), [], prompt=prompt)[0] == {
        "transitionId": "PROJ-123"}
    # the same thing's id under another name is still that thing's
    orders = _op(jira, "GET /users/{user_id}/orders")
    assert fill_params(orders, [jira.resolve("GET /users/42")], prompt="orders of user 42") == (
        {"user_id": "42"}, [])
