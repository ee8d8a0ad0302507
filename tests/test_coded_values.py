"""Values a request gives in words that the spec wants as codes (core/coded_values.py): enum
members, and countries, languages and currencies as ISO codes; filled only when exactly one fits
and the grounding holds (a wrong value is worse than none)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from core.coded_values import coded_fills, country_codes, language_codes
from core.params import fill_params
from core.spec.index import SpecIndex
from core.spec.openapi import MAX_ENUM_VALUES_PER_SPEC, parse_spec

_OK = {"200": {"description": "ok"}}


def _q(name: str, *enum: str, type_: str = "string", required: bool = False) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": type_}
    if enum:
        schema["enum"] = list(enum)
    return {"name": name, "in": "query", "required": required, "schema": schema}


@pytest.fixture(scope="module")
def spec() -> SpecIndex:
    return parse_spec({
        "openapi": "3.0.3",
        "info": {"title": "Coded", "version": "1"},
        "paths": {
            "/repos/{owner}/{repo}/issues": {"get": {"parameters": [
                {"name": "owner", "in": "path", "required": True, "schema": {"type": "string"}},
                {"name": "repo", "in": "path", "required": True, "schema": {"type": "string"}},
                _q("state", "open", "closed", "all"), _q("sort", "created", "updated", "comments"),
                _q("per_page", type_="integer")], "responses": _OK}},
            "/users/{username}/repos": {"get": {"parameters": [
                {"name": "username", "in": "path", "required": True, "schema": {"type": "string"}},
                _q("type", "all", "owner", "member", "user")], "responses": _OK}},
            "/hotels": {"get": {"parameters": [
                _q("country_code", required=True), _q("language"), _q("currency"), _q("country")],
                "responses": _OK}},
            "/news": {"get": {"parameters": [_q("country", "us", "gb", "fr", "de"),
                                             _q("lang", "en", "fr", "de")], "responses": _OK}},
            "/files/{id}": {"patch": {
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "requestBody": {"content": {"application/json": {"schema": {"type": "object", "properties": {
                    "State": {"type": "string", "enum": ["Created", "Available", "Deleted"]}}}}}},
                "responses": _OK}},
        },
    })


def _op(spec: SpecIndex, key: str):  # type: ignore[no-untyped-def]
    return spec.operations[spec.by_key[key]]


def test_an_enum_member_fills_its_parameter_when_the_request_names_both(spec: SpecIndex) -> None:
    issues = _op(spec, "GET /repos/{owner}/{repo}/issues")
    assert coded_fills(issues, "list the issues whose state is closed, sorted by sort updated") == {
        "state": "closed", "sort": "updated"}
    patch = _op(spec, "PATCH /files/{id}")
    assert coded_fills(patch, "Update the file, setting the state to 'Available'.") == {"State": "Available"}
    # and through fill_params, beside the path values it fills
    params, _ = fill_params(patch, [], prompt="set the state of file f_123 to available")
    assert params.get("State") == "Available"


@pytest.mark.parametrize("prompt", [
    "list the closed issues",  # the member without the parameter's name: a word of the request
    "list the issues whose state is open or closed",  # two members: which one is not certain
    "list all the issues, any state",  # "all" is a stopword, never a value
])
def test_no_enum_value_when_it_is_not_certain(spec: SpecIndex, prompt: str) -> None:
    assert "state" not in coded_fills(_op(spec, "GET /repos/{owner}/{repo}/issues"), prompt)


def test_a_word_of_the_operations_own_path_is_no_enum_value(spec: SpecIndex) -> None:
    # "user" names the resource of /users/{username}/repos, not type=user
    repos = _op(spec, "GET /users/{username}/repos")
    assert coded_fills(repos, "the repos of the user octocat, any type") == {}
    assert coded_fills(repos, "repos of octocat where type is member") == {"type": "member"}


def test_the_apis_own_name_is_no_enum_value() -> None:
    # "Lyft" names the API; ride_type's member "lyft" is given only in other words
    lyft = parse_spec({"openapi": "3.0.3", "info": {"title": "Lyft API", "version": "1"}, "paths": {
        "/rides": {"post": {"parameters": [_q("ride_type", "lyft", "lyft_line", "lyft_plus")],
                            "responses": _OK}}}})
    rides = _op(lyft, "POST /rides")
    prompt = "Request a Lyft ride of the chosen ride type"
    assert lyft.name_words == frozenset({"lyft", "api"})
    assert coded_fills(rides, prompt, api_words=lyft.name_words) == {}
    assert fill_params(rides, [], prompt=prompt, api_words=lyft.name_words)[0] == {}
    assert coded_fills(rides, "a ride of ride type lyft_line", api_words=lyft.name_words) == {
        "ride_type": "lyft_line"}
    assert coded_fills(rides, prompt) == {"ride_type": "lyft"}  # what it gave without the name


def test_countries_languages_and_currencies_by_name_fill_their_iso_codes(spec: SpecIndex) -> None:
    hotels = _op(spec, "GET /hotels")
    got = coded_fills(hotels, "hotels in France, descriptions in German, prices in EUR")
    # a bare `country` may want the name: only the enum or a code-named parameter takes a code
    assert got == {"country_code": "FR", "language": "de", "currency": "EUR"}
    news = _op(spec, "GET /news")
    assert coded_fills(news, "top news from the United Kingdom in English") == {"country": "gb", "lang": "en"}
    # a country outside the enum, or two countries: nothing
    assert coded_fills(news, "top news from Japan") == {}
    assert "country" not in coded_fills(news, "news from France and Germany")


def test_names_that_are_also_words_need_their_capital() -> None:
    assert country_codes("flights from the US to the UK") == (("US", "USA"), ("GB", "GBR"))
    assert country_codes("tell us about turkey recipes") == ()
    assert country_codes("hotels in Turkey") == (("TR", "TUR"),)
    assert country_codes("Republic of Korea") == (("KR", "KOR"),)
    assert language_codes("Spanish subtitles") == (("es", "spa"),)


def test_only_string_parameters_take_coded_values(spec: SpecIndex) -> None:
    issues = _op(spec, "GET /repos/{owner}/{repo}/issues")
    assert "per_page" not in coded_fills(issues, "per page closed")


def test_the_index_keeps_enums_across_processes_and_reads_the_older_format(spec: SpecIndex) -> None:
    again = SpecIndex.from_bytes(spec.to_bytes())
    state = next(p for p in _op(again, "GET /repos/{owner}/{repo}/issues").params if p.name == "state")
    assert state.enum == ("open", "closed", "all")
    # version 1 (what the feedback store holds from before): params without enums
    doc = json.loads(spec.to_bytes())
    doc["v"] = 1
    for op in doc["ops"]:
        op[6] = [p[:4] for p in op[6]]
    old = SpecIndex.from_bytes(json.dumps(doc).encode())
    assert all(p.enum == () for op in old.operations for p in op.params)
    assert [op.key for op in old.operations] == [op.key for op in spec.operations]


def test_enums_past_the_spec_wide_budget_are_dropped_not_refused() -> None:
    values = [f"v{i:02d}" for i in range(32)]
    n_params = MAX_ENUM_VALUES_PER_SPEC // len(values) + 5
    spec = parse_spec({
        "openapi": "3.0.3", "info": {"title": "Many", "version": "1"},
        "paths": {"/things": {"get": {"parameters": [_q(f"p{i}", *values) for i in range(n_params)],
                                      "responses": _OK}}},
    })
    kept = sum(len(p.enum) for p in spec.operations[0].params)
    assert 0 < kept <= MAX_ENUM_VALUES_PER_SPEC
    assert sum(1 for p in spec.operations[0].params if not p.enum) >= 5
