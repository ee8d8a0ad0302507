"""Small hand-written specs shared by the tests (the real ones come from ../shared/data/jentic)."""

from __future__ import annotations

from typing import Any


def billing_spec(*, base: str = "https://api.example.com/v1") -> dict[str, Any]:
    """An OpenAPI 3.0 spec with $refs, a base path, literal-vs-param paths and a destructive op."""
    invoice_ref = {"$ref": "#/components/schemas/Invoice"}
    return {
        "openapi": "3.0.3",
        "info": {"title": "Billing", "version": "1"},
        "servers": [{"url": base}],
        "paths": {
            "/invoices": {
                "get": {
                    "operationId": "listInvoices",
                    "summary": "List invoices",
                    "responses": {
                        "200": {
                            "description": "ok",
                            "content": {
                                "application/json": {"schema": {"type": "array", "items": invoice_ref}}
                            },
                        }
                    },
                },
                "post": {
                    "operationId": "createInvoice",
                    "summary": "Create an invoice",
                    "requestBody": {"$ref": "#/components/requestBodies/NewInvoice"},
                    "responses": {
                        "201": {"description": "ok", "content": {"application/json": {"schema": invoice_ref}}}
                    },
                },
            },
            "/invoices/{invoice_id}": {
                "parameters": [{"$ref": "#/components/parameters/InvoiceId"}],
                "get": {
                    "operationId": "getInvoice",
                    "summary": "Retrieve an invoice",
                    "responses": {
                        "200": {"description": "ok", "content": {"application/json": {"schema": invoice_ref}}}
                    },
                },
                "delete": {
                    "operationId": "deleteInvoice",
                    "summary": "Delete a draft invoice",
                    "responses": {"204": {"description": "gone"}},
                },
            },
            "/invoices/{invoice_id}/pay": {
                "parameters": [{"$ref": "#/components/parameters/InvoiceId"}],
                "post": {
                    "operationId": "payInvoice",
                    "summary": "Pay an invoice",
                    "responses": {"200": {"description": "ok"}},
                },
            },
            "/invoices/{invoice_id}/status": {
                "parameters": [{"$ref": "#/components/parameters/InvoiceId"}],
                "put": {
                    "operationId": "setInvoiceStatus",
                    "summary": "Set the invoice status",
                    "responses": {"200": {"description": "ok"}},
                },
            },
            "/users/me": {
                "get": {
                    "operationId": "getMe",
                    "summary": "The current user",
                    "responses": {"200": {"description": "ok"}},
                }
            },
            "/users/{user_id}": {
                "get": {
                    "operationId": "getUser",
                    "summary": "Get a user",
                    "parameters": [
                        {"name": "user_id", "in": "path", "required": True, "schema": {"type": "string"}}
                    ],
                    "responses": {"200": {"description": "ok"}},
                }
            },
            "/files/{name}.json": {
                "get": {
                    "operationId": "getFileJson",
                    "summary": "A file",
                    "responses": {"200": {"description": "ok"}},
                }
            },
        },
        "components": {
            "parameters": {
                "InvoiceId": {
                    "name": "invoice_id",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string"},
                }
            },
            "requestBodies": {
                "NewInvoice": {
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["customer_id"],
                                "properties": {
                                    "customer_id": {"type": "string"},
                                    "amount": {"type": "integer"},
                                },
                            }
                        }
                    }
                }
            },
            "schemas": {
                "Invoice": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string"},
                        "customer_id": {"type": "string"},
                        "lines": {"type": "array", "items": {"$ref": "#/components/schemas/Line"}},
                        "parent": {"$ref": "#/components/schemas/Invoice"},  # a cycle
                    },
                },
                "Line": {
                    "type": "object",
                    "properties": {
                        "line_id": {"type": "string"},
                        "invoice": {"$ref": "#/components/schemas/Invoice"},
                    },
                },
            },
        },
    }


def petstore_swagger2() -> dict[str, Any]:
    pet = {"$ref": "#/definitions/Pet"}
    return {
        "swagger": "2.0",
        "info": {"title": "Petstore", "version": "1"},
        "basePath": "/api/v2",
        "paths": {
            "/pets": {
                "get": {
                    "operationId": "findPets",
                    "summary": "Find pets",
                    "parameters": [{"name": "tag", "in": "query", "type": "string"}],
                    "responses": {"200": {"description": "ok", "schema": {"type": "array", "items": pet}}},
                },
                "post": {
                    "operationId": "addPet",
                    "summary": "Add a pet",
                    "parameters": [{"name": "body", "in": "body", "required": True, "schema": pet}],
                    "responses": {"200": {"description": "ok", "schema": pet}},
                },
            },
            "/pets/{petId}": {
                "get": {
                    "operationId": "getPetById",
                    "summary": "Find pet by ID",
                    "parameters": [{"name": "petId", "in": "path", "required": True, "type": "integer"}],
                    "responses": {"200": {"description": "ok", "schema": pet}},
                },
            },
        },
        "definitions": {
            "Pet": {
                "type": "object",
                "required": ["name"],
                "properties": {"id": {"type": "integer"}, "name": {"type": "string"}},
            }
        },
    }


PETSTORE_YAML = b"""
openapi: 3.1.0
info: {title: Pets YAML, version: "1"}
paths:
  /pets:
    get:
      operationId: listPets
      summary: List all pets
      responses:
        "200":
          description: ok
          content:
            application/json:
              schema: {type: array, items: {$ref: "#/components/schemas/Pet"}}
  /pets/{pet_id}:
    get:
      operationId: showPet
      parameters:
        - {name: pet_id, in: path, required: true, schema: {type: [string, "null"]}}
      responses:
        "200": {description: ok}
components:
  schemas:
    Pet: {type: object, properties: {id: {type: integer}, name: {type: string}}}
"""


def yaml_alias_bomb(*, levels: int = 9, fanout: int = 12) -> bytes:
    """"Billion laughs" in a valid spec: ``levels`` anchors each listing the previous one
    ``fanout`` times (``fanout ** levels`` nodes once expanded), beside one real path, so that
    only the alias cap refuses it (levels × fanout aliases: 108 by default, over the cap of 100)."""
    names = "abcdefghijklmnopqrstuvwxyz"[: levels + 1]
    lines = ["openapi: 3.0.0", "info: {title: bomb, version: '1'}",
             "paths: {/a: {get: {responses: {'200': {description: ok}}}}}",
             f"{names[0]}: &{names[0]} [{','.join(['x'] * fanout)}]"]
    lines += [f"{c}: &{c} [{','.join(['*' + p] * fanout)}]" for p, c in zip(names, names[1:], strict=False)]
    return ("\n".join(lines) + "\n").encode()
