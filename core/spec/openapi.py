"""Parse an OpenAPI 3.0/3.1 or Swagger 2.0 document (JSON or YAML) into a :class:`SpecIndex`.

Only local ``$ref``s are followed, lazily and with a visit budget, so reference cycles and
exponential "ref bombs" cost bounded work. YAML is loaded with a safe loader that also caps
aliases (the "billion laughs" attack builds a huge tree out of a few shared nodes).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import yaml

from core.errors import SpecInvalid, SpecTooLarge
from core.spec.index import SpecIndex
from core.spec.operations import Operation, Param
from core.vocabulary import is_id_name

__all__ = ["parse_spec", "load_document", "spec_hash_of"]

HTTP_METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
MAX_YAML_ALIASES = 100
MAX_REF_CHAIN = 32
MAX_SCHEMA_VISITS = 200  # per operation and per walk: bounds work on cyclic or huge schemas
# What a parsed spec may become. Path items and parameter lists shared by $ref let a small
# document expand into millions of parameters, so these are counted while expanding. The largest
# of the 290 Jentic specs has 715 operations, 6,639 parameters, 582 on one operation.
MAX_OPERATIONS = 5_000
MAX_PARAMS = 100_000
MAX_PARAMS_PER_OPERATION = 2_000
# A parameter's enum is kept when short enough to match a request's words against; past the
# spec-wide budget further enums are dropped (they only help fill params), never refused.
MAX_ENUM_VALUES = 32
MAX_ENUM_VALUE_CHARS = 40
MAX_ENUM_VALUES_PER_SPEC = 20_000
SUMMARY_CHARS = 200
DESCRIPTION_CHARS = 400


def spec_hash_of(document: bytes | dict[str, Any]) -> str:
    if isinstance(document, dict):
        document = json.dumps(document, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(document).hexdigest()


def load_document(raw: bytes, *, content_type: str | None = None) -> dict[str, Any]:
    """JSON or YAML bytes → a mapping, or :class:`SpecInvalid` saying why not."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise SpecInvalid("spec is not UTF-8 text") from None
    stripped = text.lstrip()
    if not stripped:
        raise SpecInvalid("spec is empty")
    try:
        if stripped[0] in "{[" or (content_type or "").endswith("json"):
            doc = json.loads(text)
        else:
            doc = yaml.load(text, Loader=_BoundedSafeLoader)  # noqa: S506 - a SafeLoader subclass
    except json.JSONDecodeError as exc:
        raise SpecInvalid(f"spec is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    except yaml.YAMLError as exc:
        raise SpecInvalid(f"spec is not valid YAML: {_yaml_problem(exc)}") from None
    except RecursionError:
        raise SpecInvalid("spec is nested too deeply") from None
    if not isinstance(doc, dict):
        raise SpecInvalid("spec must be a JSON/YAML object at the top level")
    return doc


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """What is wrong and where ("expected ',' or ']' … (line 2, column 1)"): a parser error's first
    line is its context ("while parsing a flow sequence"), which says neither."""
    problem, mark = getattr(exc, "problem", None), getattr(exc, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return f"{problem or str(exc).splitlines()[0]}{where}"


class _BoundedSafeLoader(yaml.SafeLoader):
    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_YAML_ALIASES:
                raise SpecInvalid(f"spec uses more than {MAX_YAML_ALIASES} YAML aliases")
        return super().compose_node(parent, index)


def parse_spec(
    document: bytes | dict[str, Any],
    *,
    content_type: str | None = None,
    max_operations: int = MAX_OPERATIONS,
    max_params: int = MAX_PARAMS,
    max_params_per_operation: int = MAX_PARAMS_PER_OPERATION,
) -> SpecIndex:
    """Build the operation index of a spec. Raises :class:`SpecInvalid` with the reason, or
    :class:`SpecTooLarge` naming the cap as soon as the expanding spec goes over one."""
    spec_hash = spec_hash_of(document)
    doc = document if isinstance(document, dict) else load_document(document, content_type=content_type)
    version = str(doc.get("openapi") or doc.get("swagger") or "")
    if not (version.startswith("3.") or version.startswith("2.")):
        raise SpecInvalid("not an OpenAPI 3.x or Swagger 2.0 document (no 'openapi'/'swagger' version)")
    paths = doc.get("paths")
    if not isinstance(paths, dict):
        raise SpecInvalid("spec has no 'paths' object")
    refs = _Refs(doc)
    swagger2 = version.startswith("2.")
    caps = _Caps(
        operations=max_operations, params=max_params, params_per_operation=max_params_per_operation
    )
    operations = list(_operations(paths, refs, caps, swagger2=swagger2))
    if not operations:
        raise SpecInvalid("spec declares no operations")
    info = _dict(doc.get("info"))
    return SpecIndex(
        operations=tuple(operations),
        base_paths=_base_paths(doc, swagger2=swagger2),
        spec_hash=spec_hash,
        title=str(info.get("title") or ""),
    )


class _Caps:
    """Counts operations and parameters as they are built; raises once one goes over its cap."""

    def __init__(self, *, operations: int, params: int, params_per_operation: int) -> None:
        self.max_operations = operations
        self.max_params = params
        self.max_params_per_operation = params_per_operation
        self.operations = 0
        self.params = 0
        self.enum_values_left = MAX_ENUM_VALUES_PER_SPEC

    def enum(self, schema: Any) -> tuple[str, ...]:
        """The string values ``schema`` enumerates, within the caps (else none)."""
        values = schema.get("enum") if isinstance(schema, dict) else None
        if not isinstance(values, list) or not 0 < len(values) <= MAX_ENUM_VALUES:
            return ()
        kept = tuple(v for v in values if isinstance(v, str) and 0 < len(v) <= MAX_ENUM_VALUE_CHARS)
        if len(kept) > self.enum_values_left:
            return ()
        self.enum_values_left -= len(kept)
        return kept

    def add_operation(self) -> None:
        self.operations += 1
        if self.operations > self.max_operations:
            raise SpecTooLarge(f"spec has more than {self.max_operations} operations (the cap)")

    def check_operation_params(self, count: int) -> None:
        if count > self.max_params_per_operation:
            raise SpecTooLarge(
                f"a spec operation has more than {self.max_params_per_operation} parameters (the cap)"
            )

    def add_params(self, count: int) -> None:
        self.params += count
        if self.params > self.max_params:
            raise SpecTooLarge(f"spec has more than {self.max_params} parameters in all (the cap)")


class _Refs:
    """Lazy resolver of local JSON-pointer ``$ref``s."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc

    def deref(self, node: Any) -> Any:
        seen: set[str] = set()
        while isinstance(node, dict) and isinstance(node.get("$ref"), str):
            ref = node["$ref"]
            if ref in seen or len(seen) >= MAX_REF_CHAIN or not ref.startswith("#"):
                return {}  # a cycle or an external ref: treat as an unknown schema
            seen.add(ref)
            node = self._pointer(ref[1:])
        return node

    def _pointer(self, pointer: str) -> Any:
        node: Any = self.doc
        for part in pointer.split("/")[1:]:
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict):
                node = node.get(part)
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                return {}
        return node


def _base_paths(doc: dict[str, Any], *, swagger2: bool) -> tuple[str, ...]:
    if swagger2:
        base = doc.get("basePath")
        urls = [base] if isinstance(base, str) else []  # anything else names no base path
    else:
        servers = _list(doc.get("servers"))
        urls = []
        for server in servers:
            if isinstance(server, dict) and isinstance(server.get("url"), str):
                url = server["url"]
                variables = server.get("variables")
                for name, var in (variables.items() if isinstance(variables, dict) else ()):
                    if isinstance(var, dict) and "default" in var:
                        url = url.replace("{" + str(name) + "}", str(var["default"]))
                urls.append(url)
    bases = []
    for url in urls:
        try:
            path = urlsplit(url).path if "://" in url else url
        except ValueError:  # e.g. "http://[": not a server this spec can be matched under
            continue
        path = "/" + path.strip("/")
        if path != "/" and "{" not in path and path not in bases:
            bases.append(path)
    return tuple(bases)


def _operations(
    paths: dict[str, Any], refs: _Refs, caps: _Caps, *, swagger2: bool
) -> Iterator[Operation]:
    for path, item in paths.items():
        item = refs.deref(item)
        if not isinstance(path, str) or not path.startswith("/") or not isinstance(item, dict):
            continue
        shared = _list(item.get("parameters"))
        for method in HTTP_METHODS:
            op = refs.deref(item.get(method))
            if not isinstance(op, dict):
                continue
            caps.add_operation()
            own = _list(op.get("parameters"))
            params = _params([*shared, *own], refs, caps)
            if not swagger2:
                params.update(_body_params(op.get("requestBody"), refs, caps))
            caps.check_operation_params(len(params))
            caps.add_params(len(params))
            tags = _list(op.get("tags"))
            yield Operation(
                method=method,
                path=path,
                operation_id=_str(op.get("operationId")) or None,
                summary=_str(op.get("summary"))[:SUMMARY_CHARS],
                description=_str(op.get("description"))[:DESCRIPTION_CHARS],
                tags=tuple(str(t) for t in tags if isinstance(t, str | int)),
                params=tuple(params.values()),
                returns_ids=_returned_ids(op.get("responses"), refs, swagger2=swagger2),
                deprecated=op.get("deprecated") is True,
            )


def _str(value: Any) -> str:
    return " ".join(value.split()) if isinstance(value, str) else ""


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _params(raw: list[Any], refs: _Refs, caps: _Caps) -> dict[tuple[str, str], Param]:
    """Path-level then operation-level parameters; a later one with the same (name, in) wins."""
    params: dict[tuple[str, str], Param] = {}
    for p in raw:
        caps.check_operation_params(len(params))
        p = refs.deref(p)
        if not isinstance(p, dict) or not isinstance(p.get("name"), str):
            continue
        location = str(p.get("in") or "query")
        if location == "body":  # Swagger 2.0 body: its schema's properties are the parameters
            params.update(_schema_params(p.get("schema"), refs, caps))
            continue
        schema = refs.deref(p.get("schema")) if isinstance(p.get("schema"), dict) else p
        params[(p["name"], location)] = Param(
            name=p["name"],
            location=location,
            required=bool(p.get("required")) or location == "path",
            type=_type(schema),
            enum=caps.enum(schema),
        )
    return params


def _body_params(body: Any, refs: _Refs, caps: _Caps) -> dict[tuple[str, str], Param]:
    body = refs.deref(body)
    if not isinstance(body, dict) or not isinstance(body.get("content"), dict):
        return {}
    content = body["content"]
    media = next((m for m in content if "json" in str(m)), None) or next(iter(content), None)
    entry = refs.deref(content.get(media)) if media else None
    return _schema_params(entry.get("schema") if isinstance(entry, dict) else None, refs, caps)


def _schema_params(schema: Any, refs: _Refs, caps: _Caps) -> dict[tuple[str, str], Param]:
    props, required = _properties(schema, refs, budget=[MAX_SCHEMA_VISITS])
    return {
        (name, "body"): Param(name=name, location="body", required=name in required, type=_type(s),
                              enum=caps.enum(s))
        for name, s in props.items()
    }


def _properties(schema: Any, refs: _Refs, *, budget: list[int]) -> tuple[dict[str, Any], set[str]]:
    """Top-level properties of an object schema, merging allOf/anyOf/oneOf."""
    schema = refs.deref(schema)
    budget[0] -= 1
    if not isinstance(schema, dict) or budget[0] < 0:
        return {}, set()
    props: dict[str, Any] = {}
    required: set[str] = set()
    if isinstance(schema.get("properties"), dict):
        props.update({str(k): refs.deref(v) for k, v in schema["properties"].items()})  # YAML: 1:
    if isinstance(schema.get("required"), list):
        required.update(r for r in schema["required"] if isinstance(r, str))
    for combinator in ("allOf", "anyOf", "oneOf"):
        subs = schema.get(combinator)
        for sub in subs if isinstance(subs, list) else ():
            p, r = _properties(sub, refs, budget=budget)
            props.update(p)
            if combinator == "allOf":
                required |= r
    return props, required


def _type(schema: Any) -> str | None:
    if not isinstance(schema, dict):
        return None
    t = schema.get("type")
    if isinstance(t, list):  # 3.1: ["string", "null"]
        t = next((x for x in t if x != "null"), None)
    return str(t) if t else None


def _returned_ids(responses: Any, refs: _Refs, *, swagger2: bool) -> tuple[str, ...]:
    """Id-like field names of the success response body, looking through arrays and wrappers."""
    responses = refs.deref(responses)
    if not isinstance(responses, dict):
        return ()
    found: list[str] = []
    budget = [MAX_SCHEMA_VISITS]
    for status, response in responses.items():
        if not str(status).startswith("2"):
            continue
        response = refs.deref(response)
        if not isinstance(response, dict):
            continue
        if swagger2:
            schemas = [response.get("schema")]
        else:
            content = _dict(response.get("content"))
            schemas = [
                refs.deref(v).get("schema")
                for k, v in content.items()
                if "json" in str(k) and isinstance(refs.deref(v), dict)
            ]
        for schema in schemas:
            _collect_ids(schema, refs, found, depth=0, budget=budget)
    return tuple(dict.fromkeys(found))


def _collect_ids(schema: Any, refs: _Refs, found: list[str], *, depth: int, budget: list[int]) -> None:
    schema = refs.deref(schema)
    if not isinstance(schema, dict) or depth > 3 or budget[0] <= 0:
        return
    budget[0] -= 1
    if isinstance(schema.get("items"), dict):
        _collect_ids(schema["items"], refs, found, depth=depth, budget=budget)
    props, _ = _properties(schema, refs, budget=budget)
    for name, sub in props.items():
        if is_id_name(name) and _type(sub) in (None, "string", "integer", "number"):
            found.append(name)
        elif isinstance(sub, dict) and depth < 3:
            _collect_ids(sub, refs, found, depth=depth + 1, budget=budget)
