"""Parsing OpenAPI 3.0/3.1 and Swagger 2.0, JSON and YAML, $refs and cycles, bad documents."""

from __future__ import annotations

import json
import tracemalloc
from typing import Any

import pytest

from core.errors import SpecInvalid, SpecTooLarge
from core.spec.index import SpecIndex
from core.spec.openapi import (
    MAX_OPERATIONS,
    MAX_PARAMS,
    MAX_PARAMS_PER_OPERATION,
    MAX_YAML_ALIASES,
    parse_spec,
)
from tests.specs import PETSTORE_YAML, billing_spec, petstore_swagger2


def test_openapi3_operations_params_and_refs() -> None:
    spec = parse_spec(billing_spec())
    assert spec.base_paths == ("/v1",)
    assert spec.title == "Billing"
    pay = spec.operations[spec.by_key["POST /invoices/{invoice_id}/pay"]]
    assert pay.operation_id == "payInvoice"
    assert [(p.name, p.location, p.required) for p in pay.params] == [("invoice_id", "path", True)]
    assert pay.role == "action" and not pay.destructive
    create = spec.operations[spec.by_key["POST /invoices"]]
    body = {p.name: p.required for p in create.params if p.location == "body"}
    assert body == {"customer_id": True, "amount": False}
    assert create.role == "create"
    # Returned ids are found through $refs, arrays and nested objects, and the Invoice→Line→Invoice
    # cycle is survived.
    listing = spec.operations[spec.by_key["GET /invoices"]]
    assert {"id", "customer_id", "line_id"} <= set(listing.returns_ids)
    delete = spec.operations[spec.by_key["DELETE /invoices/{invoice_id}"]]
    assert delete.destructive and delete.role == "delete"


def test_swagger2_body_and_base_path() -> None:
    spec = parse_spec(petstore_swagger2())
    assert spec.base_paths == ("/api/v2",)
    add = spec.operations[spec.by_key["POST /pets"]]
    assert {(p.name, p.location, p.required) for p in add.params} == {
        ("id", "body", False),
        ("name", "body", True),
    }
    get = spec.operations[spec.by_key["GET /pets/{petId}"]]
    assert get.params[0].type == "integer" and get.role == "get"
    assert spec.operations[spec.by_key["GET /pets"]].returns_ids == ("id", "name")


@pytest.mark.parametrize("base_path", [{"a": 1}, True, 3, None])
def test_a_base_path_that_is_not_a_string_names_none(base_path) -> None:
    doc = {**petstore_swagger2(), "basePath": base_path}
    assert parse_spec(doc).base_paths == ()


def test_yaml_3_1_with_type_lists() -> None:
    spec = parse_spec(PETSTORE_YAML)
    assert set(spec.by_key) == {"GET /pets", "GET /pets/{pet_id}"}
    show = spec.operations[spec.by_key["GET /pets/{pet_id}"]]
    assert show.params[0].type == "string"


def test_json_bytes_and_dict_agree_and_hash_is_stable() -> None:
    doc = billing_spec()
    a = parse_spec(json.dumps(doc).encode())
    b = parse_spec(doc)
    assert a.operations == b.operations
    assert parse_spec(doc).spec_hash == b.spec_hash


def test_index_round_trips_through_bytes() -> None:
    spec = parse_spec(billing_spec())
    again = SpecIndex.from_bytes(spec.to_bytes())
    assert again.operations == spec.operations
    assert again.base_paths == spec.base_paths and again.spec_hash == spec.spec_hash


def test_the_specs_deprecated_flag_is_kept_and_older_indexes_still_read() -> None:
    doc = billing_spec()
    doc["paths"]["/invoices"]["get"]["deprecated"] = True
    doc["paths"]["/invoices"]["post"]["deprecated"] = "yes"  # not the boolean: not deprecated
    spec = parse_spec(doc)
    assert [op.key for op in spec.operations if op.deprecated] == ["GET /invoices"]
    assert SpecIndex.from_bytes(spec.to_bytes()).operations == spec.operations
    older = json.loads(spec.to_bytes())  # format 2: no flag after the returned ids
    older["v"] = 2
    older["ops"] = [op[:8] for op in older["ops"]]
    assert not any(op.deprecated for op in SpecIndex.from_bytes(json.dumps(older).encode()).operations)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "empty"),
        (b"{not json", "not valid JSON"),
        (b"a: [unclosed", "not valid YAML"),
        (b"[1, 2]", "object at the top level"),
        (b'{"info": {}}', "not an OpenAPI"),
        (b'{"openapi": "3.0.0", "paths": {}}', "no operations"),
        (b'{"openapi": "3.0.0"}', "no 'paths'"),
        (b"\xff\xfe\x00", "UTF-8"),
        (b"!!python/object/apply:os.system ['true']", "YAML"),
    ],
)
def test_bad_documents_are_refused_with_the_reason(raw: bytes, message: str) -> None:
    with pytest.raises(SpecInvalid, match=message):
        parse_spec(raw)


def test_yaml_alias_bomb_is_refused() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 12):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    with pytest.raises(SpecInvalid, match=f"more than {MAX_YAML_ALIASES} YAML aliases"):
        parse_spec("\n".join(lines).encode())


def test_deep_nesting_is_refused_not_crashing() -> None:
    with pytest.raises(SpecInvalid):
        parse_spec(b"[" * 100_000 + b"]" * 100_000)


def test_ref_cycles_between_path_items_terminate() -> None:
    doc = {
        "openapi": "3.0.0",
        "info": {"title": "t"},
        "paths": {
            "/a": {"$ref": "#/paths/~1b"},
            "/b": {"$ref": "#/paths/~1a"},
            "/c": {"get": {"responses": {"200": {"$ref": "#/components/responses/R"}}}},
        },
        "components": {"responses": {"R": {"$ref": "#/components/responses/R"}}},
    }
    spec = parse_spec(doc)
    assert list(spec.by_key) == ["GET /c"]


def test_every_jentic_spec_parses(jentic_dir) -> None:
    specs = sorted(jentic_dir.glob("apis/openapi/*/*/*/openapi.json"))[:40]
    assert specs, "no jentic specs found"
    for path in specs:
        assert len(parse_spec(path.read_bytes())) > 0, path


def _shared_item_spec(*, paths: int, params: int, methods: int = 5) -> bytes:
    """``paths`` path items that all ``$ref`` one item of ``methods`` operations sharing
    ``params`` parameters: a few KB that expand to paths × methods × params parameters."""
    shared: dict[str, Any] = {
        m: {"responses": {"200": {"description": "ok"}}}
        for m in ("get", "put", "post", "delete", "patch")[:methods]
    }
    shared["parameters"] = [{"name": f"p{i}", "in": "query"} for i in range(params)]
    doc: dict[str, Any] = {"openapi": "3.0.0", "info": {"title": "t"}, "paths": {"/shared": shared}}
    doc["paths"].update({f"/p{i}": {"$ref": "#/paths/~1shared"} for i in range(paths)})
    return json.dumps(doc, separators=(",", ":")).encode()


def test_shared_path_items_expanding_past_the_params_cap_are_refused_early() -> None:
    raw = _shared_item_spec(paths=500, params=200)  # 24 KB → 501,000 parameters unchecked
    assert len(raw) < 30_000
    tracemalloc.start()
    try:
        with pytest.raises(SpecTooLarge, match=f"more than {MAX_PARAMS} parameters"):
            parse_spec(raw)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Building all of it took a 38 MB peak; stopping at the cap, under 8 MB.
    assert peak < 20_000_000


def test_operations_past_the_cap_are_refused() -> None:
    raw = _shared_item_spec(paths=MAX_OPERATIONS, params=0, methods=1)  # one more: /shared
    with pytest.raises(SpecTooLarge, match=f"more than {MAX_OPERATIONS} operations"):
        parse_spec(raw)


def test_parameters_of_one_operation_past_the_cap_are_refused() -> None:
    raw = _shared_item_spec(paths=0, params=MAX_PARAMS_PER_OPERATION + 1, methods=1)
    with pytest.raises(SpecTooLarge, match=f"more than {MAX_PARAMS_PER_OPERATION} parameters"):
        parse_spec(raw)
    assert len(parse_spec(_shared_item_spec(paths=0, params=MAX_PARAMS_PER_OPERATION, methods=1))) == 1


def test_caps_are_inclusive_and_can_be_passed() -> None:
    raw = _shared_item_spec(paths=3, params=10, methods=2)  # 8 operations, 80 parameters
    assert len(parse_spec(raw, max_operations=8, max_params=80, max_params_per_operation=10)) == 8
    with pytest.raises(SpecTooLarge, match="more than 7 operations"):
        parse_spec(raw, max_operations=7)
    with pytest.raises(SpecTooLarge, match="more than 79 parameters in all"):
        parse_spec(raw, max_params=79)
    with pytest.raises(SpecTooLarge, match="more than 9 parameters"):
        parse_spec(raw, max_params_per_operation=9)


@pytest.mark.slow
def test_every_jentic_spec_is_well_under_the_caps(jentic_dir) -> None:
    specs = sorted(jentic_dir.glob("apis/openapi/*/*/*/openapi.json"))
    assert len(specs) > 200
    indexes = [parse_spec(path.read_bytes()) for path in specs]
    # Measured: at most 715 operations, 6,639 parameters, 582 on one operation.
    assert max(len(i.operations) for i in indexes) * 5 < MAX_OPERATIONS
    assert max(sum(len(o.params) for o in i.operations) for i in indexes) * 10 < MAX_PARAMS
    assert max(len(o.params) for i in indexes for o in i.operations) * 3 < MAX_PARAMS_PER_OPERATION
