"""Fits the transition statistics of :mod:`core.priors.transitions` from the TRAINING split of the
real workflows (Laplace-smoothed) and writes ``ranker/models/transitions.json``::

    python -m ranker.transitions [--jentic-dir DIR] [--out PATH] [--alpha 1.0]
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from core.priors.transitions import (
    DEFAULT_PATH,
    METHODS,
    RELATIONS,
    START,
    Transitions,
    _method,
    normalized_segments,
    relation,
    relation_of_segments,
)
from core.settings import load_settings
from core.spec.operations import Operation
from core.vocabulary import ROLES
from ranker.data import load_spec, load_workflows, split_of

__all__ = ["fit_transitions", "main"]


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
