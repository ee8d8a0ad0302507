"""Workflow data: step resolution, dropped workflows, the split, examples and id dataflow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ranker import data
from ranker.data import (
    concrete_endpoint,
    examples,
    load_spec,
    load_workflows,
    split_of,
    stopping_apis,
    summary,
)
from ranker.synth import synthesize

SPEC = {
    "openapi": "3.0.0",
    "info": {"title": "Shop", "version": "1"},
    "servers": [{"url": "https://api.shop.test/v1"}],
    "paths": {
        "/customers": {
            "get": {"operationId": "listCustomers", "summary": "List customers",
                    "responses": {"200": {"description": "ok", "content": {"application/json": {
                        "schema": {"type": "array", "items": {
                            "type": "object", "properties": {"id": {"type": "string"}}}}}}}}},
            "post": {"operationId": "createCustomer", "summary": "Create a customer",
                     "responses": {"201": {"description": "ok"}}},
        },
        "/customers/{customer_id}": {
            "get": {"operationId": "getCustomer", "summary": "Get a customer",
                    "parameters": [{"name": "customer_id", "in": "path", "required": True}],
                    "responses": {"200": {"description": "ok"}}},
            "delete": {"operationId": "deleteCustomer", "summary": "Delete a customer",
                       "parameters": [{"name": "customer_id", "in": "path", "required": True}],
                       "responses": {"204": {"description": "gone"}}},
        },
        "/customers/{customer_id}/orders": {
            "post": {"operationId": "CreateOrder", "summary": "Create an order for a customer",
                     "parameters": [{"name": "customer_id", "in": "path", "required": True}],
                     "responses": {"201": {"description": "ok"}}},
        },
        "/dup": {"get": {"operationId": "twin", "responses": {"200": {"description": "ok"}}}},
        "/dup2": {"get": {"operationId": "twin", "responses": {"200": {"description": "ok"}}}},
    },
}


def _step(step_id: str, **kwargs: object) -> dict[str, object]:
    return {"stepId": step_id, **kwargs}


WORKFLOWS = {
    "arazzo": "1.0.1",
    "sourceDescriptions": [
        {"name": "shop", "url": "./apis/openapi/shop.test/main/1/openapi.json", "type": "openapi"}
    ],
    "workflows": [
        {
            "workflowId": "order-for-customer",
            "summary": "Find a customer and place an order for them.",
            "steps": [
                _step("find", operationId="listCustomers",
                      parameters=[{"name": "Authorization", "in": "header", "value": "$inputs.key"},
                                  {"name": "email", "in": "query", "value": "$inputs.email"}],
                      outputs={"customer_id": "$response.body#/0/id"}),
                # An operationPath step, in the {$sourceDescriptions...} form.
                _step("show", operationPath="{$sourceDescriptions.shop.url}#/paths/"
                      "~1customers~1{customer_id}/get",
                      parameters=[{"name": "customer_id", "in": "path",
                                   "value": "$steps.find.outputs.customer_id"}]),
                # A lower-case operationId that only matches case-insensitively.
                _step("order", operationId="createorder",
                      parameters=[{"name": "customer_id", "in": "path",
                                   "value": "$steps.find.outputs.customer_id"}],
                      requestBody={"contentType": "application/json",
                                   "payload": {"sku": "A-1", "customer": "$steps.show.outputs.id"}}),
                # An alternative to the step above (same stepId): dropped.
                _step("order", operationId="createCustomer"),
            ],
        },
        {
            "workflowId": "path-form",
            "description": "Create a customer then look at them.",
            "steps": [
                _step("make", operationPath="shop#/paths/~1customers/post",
                      outputs={"id": "$response.body#/id"}),
                _step("look", operationId="getCustomer",
                      parameters=[{"name": "customer_id", "in": "path",
                                   "value": "$steps.make.outputs.id"}]),
            ],
        },
        {"workflowId": "unknown-op", "summary": "x",
         "steps": [_step("a", operationId="listCustomers"), _step("b", operationId="nope")]},
        {"workflowId": "ambiguous", "summary": "x",
         "steps": [_step("a", operationId="listCustomers"), _step("b", operationId="twin")]},
        {"workflowId": "one-step", "summary": "x", "steps": [_step("a", operationId="getCustomer")]},
    ],
}


@pytest.fixture()
def jentic_dir(tmp_path: Path) -> Path:
    spec_dir = tmp_path / "apis" / "openapi" / "shop.test" / "main" / "1"
    spec_dir.mkdir(parents=True)
    (spec_dir / "openapi.json").write_text(json.dumps(SPEC))
    wf_dir = tmp_path / "workflows" / "shop.test"
    wf_dir.mkdir(parents=True)
    (wf_dir / "workflows.arazzo.json").write_text(json.dumps(WORKFLOWS))
    return tmp_path


def test_steps_resolve_by_operation_id_and_operation_path(jentic_dir: Path) -> None:
    workflows = {w.workflow_id: w for w in load_workflows(jentic_dir, progress=False)}
    assert set(workflows) == {"order-for-customer", "path-form"}
    order = workflows["order-for-customer"]
    assert [s.key for s in order.steps] == [
        "GET /customers", "GET /customers/{customer_id}", "POST /customers/{customer_id}/orders",
    ]
    assert order.prompt == "Find a customer and place an order for them."
    assert [s.key for s in workflows["path-form"].steps] == [
        "POST /customers", "GET /customers/{customer_id}",
    ]
    assert workflows["path-form"].prompt == "Create a customer then look at them."  # description


def test_unresolvable_workflows_are_dropped_and_counted(jentic_dir: Path) -> None:
    load_workflows(jentic_dir, progress=False)
    counts = summary()
    assert counts["workflows_total"] == 5 and counts["workflows_kept"] == 2
    assert counts["dropped_unknown_operation_id"] == 1
    assert counts["dropped_ambiguous_operation_id"] == 1
    assert counts["dropped_fewer_than_2_steps"] == 1
    assert counts["steps_duplicate_alternatives_dropped"] == 1
    assert counts["steps_kept"] == 5


def test_ids_flow_from_step_to_step_with_the_same_concrete_value(jentic_dir: Path) -> None:
    order = next(w for w in load_workflows(jentic_dir, progress=False)
                 if w.workflow_id == "order-for-customer")
    find, show, place = order.steps
    assert "Authorization" not in find.params and set(find.params) == {"email"}
    assert show.path_params["customer_id"] == place.path_params["customer_id"]
    assert show.uses_steps == (0,) and place.uses_steps == (0, 1)
    assert place.params["sku"] == "A-1"
    # Deterministic: reading the data again gives the same ids.
    again = next(w for w in load_workflows(jentic_dir, progress=False)
                 if w.workflow_id == "order-for-customer")
    assert again == order


def test_examples_one_per_step_with_history_resolved_as_serving_would(jentic_dir: Path) -> None:
    workflows = load_workflows(jentic_dir, progress=False)
    found = list(examples(workflows))
    assert len(found) == sum(len(w.steps) for w in workflows) == 5
    first, second, third = found[:3]
    assert first.history == () and first.target == "GET /customers"
    assert [c.key for c in third.history] == ["GET /customers", "GET /customers/{customer_id}"]
    customer_id = workflows[0].steps[1].path_params["customer_id"]
    assert third.history[1].path_params == {"customer_id": customer_id}
    assert third.target == "POST /customers/{customer_id}/orders" and third.source == "real"
    spec = load_spec(workflows[0].spec_path)
    step = workflows[0].steps[1]
    with_base = concrete_endpoint(spec, step, with_base=True)
    assert with_base == f"GET /v1/customers/{customer_id}"
    assert spec.resolve(with_base).key == step.key


def test_split_is_by_api_stable_and_roughly_the_fraction() -> None:
    names = [f"api{i}.example.com" for i in range(2000)]
    splits = [split_of(n) for n in names]
    assert splits == [split_of(n) for n in names]  # deterministic (hashlib, not hash())
    assert 0.15 < splits.count("valid") / len(names) < 0.25
    assert split_of("stripe.com", valid_fraction=0.0) == "train"
    assert split_of("stripe.com", valid_fraction=1.0) == "valid"
    with pytest.raises(ValueError, match="valid_fraction"):
        split_of("x", valid_fraction=1.5)


def test_stopping_apis_are_a_stable_share_of_the_training_apis() -> None:
    train = [n for n in (f"api{i}.example.com" for i in range(1000)) if split_of(n) == "train"]
    held = stopping_apis(train)
    assert held == stopping_apis(reversed(train))  # by the names, not their order
    assert held < set(train) and len(held) == round(0.2 * len(train))
    assert stopping_apis(["a", "b"], fraction=0.9) in ({"a"}, {"b"})  # never all of them
    assert len(stopping_apis(["a", "b", "c"], fraction=0.01)) == 1  # never none
    with pytest.raises(ValueError, match="at least 2 training APIs"):
        stopping_apis(["a"])
    with pytest.raises(ValueError, match="fraction"):
        stopping_apis(train, fraction=1.0)


def test_synthetic_sequences_follow_dataflow_and_are_deterministic(jentic_dir: Path) -> None:
    path = jentic_dir / "apis/openapi/shop.test/main/1/openapi.json"
    spec = load_spec(path)
    one = synthesize(spec, api="shop.test", spec_path=path, seed=3)
    assert one == synthesize(spec, api="shop.test", spec_path=path, seed=3)
    assert one and all(w.source == "synthetic" and len(w.steps) >= 2 for w in one)
    keys = {tuple(s.key for s in w.steps) for w in one}
    assert ("GET /customers", "GET /customers/{customer_id}") in keys  # list -> get
    assert ("POST /customers", "POST /customers/{customer_id}/orders") in keys  # create -> child
    for w in one:
        assert not any(spec.operations[spec.by_key[s.key]].destructive for s in w.steps)
        last_summary = spec.operations[spec.by_key[w.steps[-1].key]].summary
        assert last_summary.lower() not in w.prompt.lower()
        if w.steps[0].key == "GET /customers" and len(w.steps) > 1:
            assert w.steps[1].uses_steps == (0,)
    found = list(examples(one))
    assert all(e.source == "synthetic" for e in found)


def test_real_jentic_workflows_load() -> None:
    from core.settings import load_settings

    root = load_settings().jentic_dir
    if not (root / "workflows").is_dir():
        pytest.skip(f"no jentic data at {root}")
    doc = json.loads((root / "workflows/1password.local~connect/workflows.arazzo.json").read_text())
    workflows = data.parse_workflow_document(doc, api="1password.local~connect", root=root)
    assert len(workflows) >= 3
    first = workflows[0]
    assert [s.key for s in first.steps][:2] == ["GET /vaults", "GET /vaults/{vaultUuid}/items"]
