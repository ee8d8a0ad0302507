"""What usually comes next, in API-agnostic terms: role → role, method → method, and how the next
call's path relates to the last one (same resource, child, parent, sibling, unrelated).

Learned from the TRAINING split of the real workflows only, with Laplace smoothing, and stored as a
small JSON file (``ranker/models/transitions.json``), fitted by :mod:`ranker.transitions`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.settings import SHIPPED_MODELS_DIR
from core.spec.operations import Operation
from core.vocabulary import ROLES, VERSION_SEGMENT

__all__ = [
    "Transitions",
    "RELATIONS",
    "METHODS",
    "START",
    "DEFAULT_PATH",
    "relation",
    "relation_of_segments",
    "normalized_segments",
    "load_transitions",
]

FORMAT_VERSION = 1
START = "<start>"  # the "last role" of a cold start
RELATIONS = ("same", "child", "parent", "sibling", "unrelated")
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "OTHER")
DEFAULT_PATH = SHIPPED_MODELS_DIR / "transitions.json"


def normalized_segments(op: Operation) -> tuple[str, ...]:
    """Path segments with every parameter as ``{}`` and version segments dropped, lower-cased."""
    return tuple(
        "{}" if "{" in s else s.lower() for s in op.segments if not VERSION_SEGMENT.match(s)
    )


def _collection(segs: tuple[str, ...]) -> tuple[str, ...]:
    while segs and segs[-1] == "{}":
        segs = segs[:-1]
    return segs


def relation(last: Operation, nxt: Operation) -> str:
    """How ``nxt``'s path relates to ``last``'s.

    same: the same collection or item (``/invoices`` and ``/invoices/{id}``); child: deeper under
    it (``/invoices/{id}/lines``); parent: above it; sibling: sharing a leading literal segment;
    unrelated otherwise.
    """
    return relation_of_segments(normalized_segments(last), normalized_segments(nxt))


def relation_of_segments(a: tuple[str, ...], b: tuple[str, ...]) -> str:
    """:func:`relation` on :func:`normalized_segments` already computed (for vectorised callers)."""
    ca, cb = _collection(a), _collection(b)
    if ca == cb:
        return "same"
    if len(b) > len(a) and b[: len(a)] == a or len(cb) > len(ca) and cb[: len(ca)] == ca:
        return "child"
    if len(a) > len(b) and a[: len(b)] == b or len(ca) > len(cb) and ca[: len(cb)] == cb:
        return "parent"
    if ca and cb and ca[0] == cb[0]:
        return "sibling"
    return "unrelated"


def _method(method: str) -> str:
    return method if method in METHODS else "OTHER"


@dataclass(frozen=True)
class Transitions:
    """Smoothed conditional probabilities; every lookup is defined for every known label."""

    role_next: dict[str, dict[str, float]]  # last role (or START) -> next role -> P
    method_next: dict[str, dict[str, float]]  # last method (or START) -> next method -> P
    relation_given_role: dict[str, dict[str, float]]  # last role -> relation of next -> P
    relation_prior: dict[str, float]  # relation -> P(next call has it), over all transitions
    relation_base: dict[str, float]  # relation -> share of a spec's operations that have it
    role_base: dict[str, float]  # role -> share of a spec's operations with that role
    meta: dict[str, Any] = field(default_factory=dict)

    def p_role(self, last_role: str | None, role: str) -> float:
        return self.role_next.get(last_role or START, self.role_next[START]).get(role, 0.0)

    def p_method(self, last_method: str | None, method: str) -> float:
        row = self.method_next.get(_method(last_method) if last_method else START)
        return (row or self.method_next[START]).get(_method(method), 0.0)

    def p_relation(self, rel: str, last_role: str | None = None) -> float:
        row = self.relation_given_role.get(last_role or "", self.relation_prior)
        return row.get(rel, 0.0)

    def role_lift(self, last_role: str | None, role: str) -> float:
        """How much likelier ``role`` is next than its share of the spec: >1 favoured."""
        return self.p_role(last_role, role) / max(self.role_base.get(role, 0.0), 1e-3)

    def relation_lift(self, rel: str, last_role: str | None = None) -> float:
        return self.p_relation(rel, last_role) / max(self.relation_base.get(rel, 0.0), 1e-3)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": FORMAT_VERSION,
            "roles": list(ROLES),
            "relations": list(RELATIONS),
            "methods": list(METHODS),
            "role_next": self.role_next,
            "method_next": self.method_next,
            "relation_given_role": self.relation_given_role,
            "relation_prior": self.relation_prior,
            "relation_base": self.relation_base,
            "role_base": self.role_base,
            "meta": self.meta,
        }

    def save(self, path: Path | str = DEFAULT_PATH) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(_rounded(self.to_json()), indent=1, sort_keys=True) + "\n")
        return path


def _rounded(node: Any) -> Any:
    if isinstance(node, float):
        return round(node, 6)
    if isinstance(node, dict):
        return {k: _rounded(v) for k, v in node.items()}
    return node


def load_transitions(path: Path | str = DEFAULT_PATH) -> Transitions:
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path} not found; build it with `python -m ranker.transitions`"
        ) from None
    if doc.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path}: transitions format {doc.get('version')!r}, expected {FORMAT_VERSION}")
    return Transitions(
        role_next=doc["role_next"], method_next=doc["method_next"],
        relation_given_role=doc["relation_given_role"], relation_prior=doc["relation_prior"],
        relation_base=doc["relation_base"], role_base=doc["role_base"], meta=doc.get("meta", {}),
    )
