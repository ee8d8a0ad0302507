"""Match a concrete call (``POST /v1/invoices/in_123/pay``) onto a path template of the spec.

A trie over path segments, searched depth-first: at every segment a literal child is tried before
a templated one (``/users/me`` beats ``/users/{id}``), with backtracking, so the most literal
template that has the method wins. The spec's base paths (``/v1``) may prefix the concrete path.
Anything that matches no template stays unknown rather than being forced onto a wrong one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import unquote

from deployments.spec.operations import Operation

__all__ = ["PathMatcher", "Match", "split_path"]

_PARAM = re.compile(r"\{([^{}]+)\}")


@dataclass(frozen=True, slots=True)
class Match:
    operation: Operation
    path_params: dict[str, str]


@dataclass
class _Node:
    literals: dict[str, _Node] = field(default_factory=dict)
    folded: dict[str, _Node] = field(default_factory=dict)  # case-insensitive fallback
    patterns: list[tuple[re.Pattern[str], tuple[str, ...], _Node]] = field(default_factory=list)
    param: tuple[str, _Node] | None = None
    methods: dict[str, Operation] = field(default_factory=dict)


def _literal_count(op: Operation) -> int:
    return sum(1 for s in op.segments if "{" not in s)


def split_path(path: str) -> list[str]:
    path = path.split("?", 1)[0].split("#", 1)[0]
    return [s for s in path.split("/") if s]


class PathMatcher:
    def __init__(self, operations: Iterable[Operation], base_paths: Iterable[str] = ()) -> None:
        self._root = _Node()
        self._bases = [split_path(b) for b in base_paths if split_path(b)]
        for op in operations:
            self._insert(op)

    def _insert(self, op: Operation) -> None:
        node = self._root
        for seg in split_path(op.path):
            names = tuple(_PARAM.findall(seg))
            if not names:
                child = node.literals.setdefault(seg, _Node())
                node.folded.setdefault(seg.lower(), child)
                node = child
            elif seg == "{" + names[0] + "}":
                if node.param is None:
                    node.param = (names[0], _Node())
                node = node.param[1]
            else:  # mixed segment such as "{id}.json" or "v{version}"
                regex = re.compile(
                    "^" + _PARAM.sub("(.+?)", re.escape(seg).replace(r"\{", "{").replace(r"\}", "}")) + "$"
                )
                for pattern, _, child in node.patterns:
                    if pattern.pattern == regex.pattern:
                        node = child
                        break
                else:
                    child = _Node()
                    node.patterns.append((regex, names, child))
                    node = child
        node.methods.setdefault(op.method, op)

    def match(self, method: str, path: str) -> Match | None:
        method = method.upper()
        segments = [unquote(s) for s in split_path(path)]
        tries = [segments]
        for base in self._bases:
            if segments[: len(base)] == base:
                tries.append(segments[len(base) :])
        # With and without the base path, the more literal template wins: `/v1/orders` must not
        # land on a catch-all `/{object}/{child}` when the spec has `/orders` under base `/v1`.
        found = [m for segs in tries if (m := self._walk(self._root, segs, 0, method, {}))]
        return max(found, key=lambda m: _literal_count(m.operation), default=None)

    def _walk(
        self, node: _Node, segs: list[str], i: int, method: str, params: dict[str, str]
    ) -> Match | None:
        if i == len(segs):
            op = node.methods.get(method)
            return Match(op, dict(params)) if op else None
        seg = segs[i]
        children: list[tuple[_Node, dict[str, str]]] = []
        literal = node.literals.get(seg) or node.folded.get(seg.lower())
        if literal is not None:
            children.append((literal, {}))
        for pattern, names, child in node.patterns:
            m = pattern.match(seg)
            if m:
                children.append((child, dict(zip(names, m.groups(), strict=True))))
        if node.param is not None:
            children.append((node.param[1], {node.param[0]: seg}))
        for child, bound in children:
            found = self._walk(child, segs, i + 1, method, {**params, **bound})
            if found:
                return found
        return None
