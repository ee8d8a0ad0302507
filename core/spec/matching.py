"""Match a concrete call (``POST /v1/invoices/in_123/pay``) onto a path template of the spec.

A trie over path segments, searched depth-first: at every segment a literal child is tried before
a templated one (``/users/me`` beats ``/users/{id}``), with backtracking, so the most literal
template that has the method wins. The spec's base paths (``/v1``) may prefix the concrete path.
Anything that matches no template stays unknown rather than being forced onto a wrong one.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import unquote

from core.spec.operations import Operation
from core.vocabulary import PATH_PARAM, path_param_names

__all__ = ["PathMatcher", "Match", "split_path"]

# No API has paths this deep; a concrete path deeper than this is unknown, not a deep recursion.
MAX_SEGMENTS = 200


@dataclass(frozen=True, slots=True)
class Match:
    operation: Operation
    path_params: dict[str, str]


@dataclass
class _Node:
    literals: dict[str, _Node] = field(default_factory=dict)
    folded: dict[str, _Node] = field(default_factory=dict)  # case-insensitive fallback
    # mixed segments: (the literal pieces around the parameters, the parameter names, child)
    patterns: list[tuple[tuple[str, ...], tuple[str, ...], _Node]] = field(default_factory=list)
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
            names = tuple(PATH_PARAM.findall(seg))
            if not names:
                child = node.literals.setdefault(seg, _Node())
                node.folded.setdefault(seg.lower(), child)
                node = child
            elif seg == "{" + names[0] + "}":
                if node.param is None:
                    node.param = (names[0], _Node())
                node = node.param[1]
            else:  # mixed segment such as "{id}.json" or "v{version}"
                pieces = tuple(PATH_PARAM.split(seg)[::2])
                for known, _, child in node.patterns:
                    if known == pieces:
                        node = child
                        break
                else:
                    child = _Node()
                    node.patterns.append((pieces, names, child))
                    node = child
        node.methods.setdefault(op.method, op)

    def match(self, method: str, path: str) -> Match | None:
        method = method.upper()
        segments = [unquote(s) for s in split_path(path)]
        if len(segments) > MAX_SEGMENTS:  # the walk recurses once per segment
            return None
        tries = [segments]
        for base in self._bases:
            if segments[: len(base)] == base:
                tries.append(segments[len(base) :])
        # With and without the base path, the more literal template wins: `/v1/orders` must not
        # land on a catch-all `/{object}/{child}` when the spec has `/orders` under base `/v1`.
        found = [m for segs in tries if (m := self._walk(self._root, segs, 0, method, ()))]
        return max(found, key=lambda m: _literal_count(m.operation), default=None)

    def _walk(
        self, node: _Node, segs: list[str], i: int, method: str, values: tuple[str, ...]
    ) -> Match | None:
        if i == len(segs):
            op = node.methods.get(method)
            # Named by the matched operation's own template: `GET /pets/{petId}` and
            # `DELETE /pets/{id}` share a trie node but not their parameter names.
            return Match(op, dict(zip(_param_names(op.path), values, strict=True))) if op else None
        seg = segs[i]
        children: list[tuple[_Node, tuple[str, ...]]] = []
        literal = node.literals.get(seg) or node.folded.get(seg.lower())
        if literal is not None:
            children.append((literal, ()))
        for pieces, _, child in node.patterns:
            split = _split_mixed(pieces, seg)
            if split is not None:
                children.append((child, tuple(split)))
        if node.param is not None:
            children.append((node.param[1], (seg,)))
        for child, bound in children:
            found = self._walk(child, segs, i + 1, method, values + bound)
            if found:
                return found
        return None


@functools.lru_cache(maxsize=8192)
def _param_names(template: str) -> tuple[str, ...]:
    """The parameter names of a path template, in the order the walk binds their values."""
    # without RFC 6570 operators ({+name} → name), as Operation.path_params names them
    return tuple(name for seg in split_path(template) for name in path_param_names(seg))


def _split_mixed(pieces: tuple[str, ...], seg: str) -> list[str] | None:
    """The parameter values of ``seg`` for a mixed template ``pieces[0]{a}pieces[1]{b}...``.

    Each value is non-empty and, like a regex of lazy groups, as short as the rest allows; but
    found in O(len(pieces) * len(seg)) steps, where such a regex backtracks in
    O(len(seg) ** params): a hostile spec's ``/{a}-{b}-{c}-{d}!`` against a call to
    ``/-----...-z`` would hold the replica's event loop for as long as it likes.
    """
    n, k = len(seg), len(pieces) - 1
    if len(pieces[0]) + len(pieces[k]) > n or not (seg.startswith(pieces[0]) and seg.endswith(pieces[k])):
        return None
    # limit[j]: the latest start of pieces[j] from which pieces[j:] (and the values between
    # them) can still complete the segment; every earlier occurrence can too.
    limit = [0] * (k + 1)
    limit[k] = n - len(pieces[k])
    for j in range(k - 1, 0, -1):
        end = limit[j + 1] - 1  # the value after pieces[j] needs at least one character
        q = seg.rfind(pieces[j], 0, end) if end >= 0 else -1
        if q < 0:
            return None
        limit[j] = q
    values, pos = [], len(pieces[0])
    for j in range(1, k + 1):
        q = limit[k] if j == k else seg.find(pieces[j], pos + 1)
        if q <= pos or q > limit[j]:
            return None
        values.append(seg[pos:q])
        pos = q + len(pieces[j])
    return values
