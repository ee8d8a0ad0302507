"""The operation index of one spec: what every replica needs, small enough to cache and ship."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from core.spec.matching import Match, PathMatcher, split_path
from core.spec.operations import Operation, Param
from core.vocabulary import tokenize

__all__ = ["SpecIndex", "Call", "parse_endpoint"]

# 2: a parameter carries its enum; 3: an operation, whether the spec marks it deprecated.
# Versions 1 and 2 still read (the feedback store keeps indexes), their operations not deprecated.
FORMAT_VERSION = 3
_READABLE = (1, 2, 3)
METHODS = frozenset("GET PUT POST DELETE PATCH HEAD OPTIONS TRACE".split())


@dataclass(frozen=True, slots=True)
class Call:
    """One event of the history, resolved against the spec (``operation`` None when unknown)."""

    method: str
    path: str
    operation: Operation | None
    path_params: dict[str, str]
    params: dict[str, Any]

    @property
    def key(self) -> str:
        return self.operation.key if self.operation else f"{self.method} {self.path}"


def parse_endpoint(endpoint: str) -> tuple[str, str]:
    """``"POST /v1/x?y=1"`` → ``("POST", "/v1/x?y=1")``; ValueError with the reason otherwise."""
    parts = endpoint.strip().split(None, 1)
    if len(parts) != 2:
        raise ValueError(f"endpoint must be 'METHOD /path', got {endpoint!r}")
    method, path = parts[0].upper(), parts[1].strip()
    if method not in METHODS:
        raise ValueError(f"unknown HTTP method {parts[0]!r} in {endpoint!r}")
    if not path.startswith("/"):
        raise ValueError(f"path must start with '/', got {endpoint!r}")
    return method, path


@dataclass(frozen=True)
class SpecIndex:
    operations: tuple[Operation, ...]
    base_paths: tuple[str, ...] = ()
    spec_hash: str = ""
    title: str = ""
    by_key: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_key", {op.key: i for i, op in enumerate(self.operations)})

    def __len__(self) -> int:
        return len(self.operations)

    @cached_property
    def name_words(self) -> frozenset[str]:
        """The words of the API's own name (its title): "Lyft" in a request names the API, it
        gives no value (``ride_type=lyft``)."""
        return frozenset(tokenize(self.title))

    @cached_property
    def matcher(self) -> PathMatcher:
        return PathMatcher(self.operations, self.base_paths)

    def match(self, method: str, path: str) -> Match | None:
        return self.matcher.match(method, path)

    def resolve(self, endpoint: str, params: dict[str, Any] | None = None) -> Call:
        method, path = parse_endpoint(endpoint)
        m = self.match(method, path)
        return Call(
            method=method,
            path=split_path(path) and "/" + "/".join(split_path(path)) or "/",
            operation=m.operation if m else None,
            path_params=m.path_params if m else {},
            params=dict(params or {}),
        )

    def resolve_history(self, events: Sequence[tuple[str, dict[str, Any]]]) -> list[Call]:
        return [self.resolve(endpoint, params) for endpoint, params in events]

    # -- compact serialisation for the caches and for shipping between processes --------------

    def to_bytes(self) -> bytes:
        ops = [
            [
                op.method,
                op.path,
                op.operation_id,
                op.summary,
                op.description,
                list(op.tags),
                [[p.name, p.location, p.required, p.type, list(p.enum)] for p in op.params],
                list(op.returns_ids),
                op.deprecated,
            ]
            for op in self.operations
        ]
        doc = {
            "v": FORMAT_VERSION,
            "hash": self.spec_hash,
            "title": self.title,
            "bases": list(self.base_paths),
            "ops": ops,
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> SpecIndex:
        doc = json.loads(data)
        if doc.get("v") not in _READABLE:
            raise ValueError(f"spec index format {doc.get('v')!r}, expected one of {_READABLE}")
        ops = tuple(
            Operation(
                method=m,
                path=p,
                operation_id=oid,
                summary=s,
                description=d,
                tags=tuple(t),
                params=tuple(Param(n, loc, r, ty, tuple(rest[0]) if rest else ())
                             for n, loc, r, ty, *rest in ps),
                returns_ids=tuple(ret),
                deprecated=bool(more[0]) if more else False,
            )
            for m, p, oid, s, d, t, ps, ret, *more in doc["ops"]
        )
        return cls(operations=ops, base_paths=tuple(doc["bases"]), spec_hash=doc["hash"], title=doc["title"])
