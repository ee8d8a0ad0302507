"""What usually comes next, in API-agnostic terms: role → role, method → method, and how the next
call's path relates to the last one (same resource, child, parent, sibling, unrelated).

Learned from the TRAINING split of the real workflows only, with Laplace smoothing, and stored as a
small JSON file (``ranker/models/transitions.json``). Run ``python -m ranker.transitions`` to
rebuild it.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deployments.spec.operations import ROLES, VERSION_SEGMENT, Operation

__all__ = [
    "Transitions",
    "RELATIONS",
    "METHODS",
    "START",
    "DEFAULT_PATH",
    "relation",
    "relation_of_segments",
    "normalized_segments",
    "fit_transitions",
    "load_transitions",
]

FORMAT_VERSION = 1
START = "<start>"  # the "last role" of a cold start
RELATIONS = ("same", "child", "parent", "sibling", "unrelated")
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "OTHER")
DEFAULT_PATH = Path(__file__).resolve().parent / "models" / "transitions.json"
_VERSION_SEGMENT = VERSION_SEGMENT


def normalized_segments(op: Operation) -> tuple[str, ...]:
    """Path segments with every parameter as ``{}`` and version segments dropped, lower-cased."""
    return tuple(
        "{}" if "{" in s else s.lower() for s in op.segments if not _VERSION_SEGMENT.match(s)
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


_relation_segs = relation_of_segments  # the old private name, kept for callers not yet moved


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


def _smoothed(
    counts: Mapping[str, float], labels: Iterable[str], alpha: float
) -> dict[str, float]:
    labels = list(labels)
    total = sum(counts.get(label, 0.0) for label in labels) + alpha * len(labels)
    return {label: (counts.get(label, 0.0) + alpha) / total for label in labels}


def fit_transitions(workflows: Iterable[Any], *, alpha: float = 1.0, split: str | None = "train",
                    valid_fraction: float = 0.2) -> Transitions:
    """Count transitions of ``ranker.data.Workflow``s (real ones of ``split`` only, unless
    ``split`` is None) and smooth them."""
    from ranker.data import load_spec, split_of

    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    roles_from = (START, *ROLES)
    role_c: dict[str, Counter[str]] = {r: Counter() for r in roles_from}
    method_c: dict[str, Counter[str]] = {m: Counter() for m in (START, *METHODS)}
    rel_c: dict[str, Counter[str]] = {r: Counter() for r in ROLES}
    rel_all: Counter[str] = Counter()
    # Fractional counts (expected shares per step), hence float counters.
    rel_base: dict[str, float] = dict.fromkeys(RELATIONS, 0.0)
    role_base: dict[str, float] = dict.fromkeys(ROLES, 0.0)
    apis: set[str] = set()
    n_workflows = 0
    specs_seen: dict[Path, tuple[list[tuple[str, ...]], Counter[str]]] = {}
    for wf in workflows:
        if wf.source != "real":
            continue
        if split is not None and split_of(wf.api, valid_fraction=valid_fraction) != split:
            continue
        spec = load_spec(wf.spec_path)
        if wf.spec_path not in specs_seen:
            specs_seen[wf.spec_path] = (
                [normalized_segments(op) for op in spec.operations],
                Counter(op.role for op in spec.operations),
            )
        all_segs, roles_here = specs_seen[wf.spec_path]
        apis.add(wf.api)
        n_workflows += 1
        ops = [spec.operations[spec.by_key[s.key]] for s in wf.steps]
        last: Operation | None = None
        for op in ops:
            role_c[last.role if last else START][op.role] += 1
            method_c[_method(last.method) if last else START][_method(op.method)] += 1
            # Base rates: what a uniform pick among the spec's operations would look like.
            for role, count in roles_here.items():
                role_base[role] += count / len(spec)
            if last is not None:
                rel = relation(last, op)
                rel_c[last.role][rel] += 1
                rel_all[rel] += 1
                a = normalized_segments(last)
                for segs in all_segs:
                    rel_base[relation_of_segments(a, segs)] += 1 / len(all_segs)
            last = op
    if not n_workflows:
        raise ValueError("no workflows to learn transitions from (wrong split or empty input)")
    return Transitions(
        role_next={r: _smoothed(c, ROLES, alpha) for r, c in role_c.items()},
        method_next={m: _smoothed(c, METHODS, alpha) for m, c in method_c.items()},
        relation_given_role={r: _smoothed(c, RELATIONS, alpha) for r, c in rel_c.items()},
        relation_prior=_smoothed(rel_all, RELATIONS, alpha),
        relation_base=_smoothed(rel_base, RELATIONS, alpha),
        role_base=_smoothed(role_base, ROLES, alpha),
        meta={"split": split, "valid_fraction": valid_fraction, "alpha": alpha,
              "apis": len(apis), "workflows": n_workflows,
              "transitions": sum(rel_all.values()),
              "steps": sum(sum(c.values()) for c in role_c.values())},
    )


def main(argv: list[str] | None = None) -> int:
    import argparse

    from deployments.settings import load_settings
    from ranker.data import load_workflows

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jentic-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=DEFAULT_PATH)
    parser.add_argument("--alpha", type=float, default=1.0)
    args = parser.parse_args(argv)
    jentic_dir = args.jentic_dir or load_settings().jentic_dir
    transitions = fit_transitions(load_workflows(jentic_dir), alpha=args.alpha)
    path = transitions.save(args.out)
    print(f"wrote {path} ({path.stat().st_size} bytes): {transitions.meta}", file=sys.stderr)
    for last in (START, *ROLES):
        row = transitions.role_next[last]
        top = sorted(row.items(), key=lambda kv: -kv[1])[:3]
        print(f"  {last:>8} -> " + ", ".join(f"{r} {p:.2f}" for r, p in top), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
