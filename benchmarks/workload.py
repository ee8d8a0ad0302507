"""The request mix every serving benchmark sends: real workflows of APIs held out from training.

Each request is one step of a real Jentic workflow: the calls made so far as concrete events
(ids filled in, sometimes behind the server's base path), the workflow's summary as the prompt,
and the spec by URL from a loopback spec server — fetched once, then served from the spec cache
("warm spec cache"). The mix is seeded and capped to a few specs so every replica's L1 cache holds
all of them, as it would for a tenant's traffic.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ranker.data import concrete_endpoint, load_spec, load_workflows, split_of

__all__ = ["Workload", "build_workload"]


@dataclass(frozen=True)
class Workload:
    """Request bodies with ``spec_url`` holding ``{base}/<name>``, and the spec files to serve."""

    bodies: tuple[dict[str, Any], ...]
    specs: dict[str, bytes]  # URL path ("/<api>.json") -> spec file bytes

    def with_base_url(self, base_url: str) -> list[dict[str, Any]]:
        return [{**b, "spec_url": base_url + b["spec_url"]} for b in self.bodies]


def build_workload(
    jentic_dir: Path, *, max_specs: int = 12, max_requests: int = 240, seed: int = 0
) -> Workload:
    workflows = [w for w in load_workflows(jentic_dir, progress=False) if split_of(w.api) == "valid"]
    if not workflows:
        raise ValueError(f"no validation workflows under {jentic_dir}")
    rng = random.Random(seed)
    apis = sorted({w.api for w in workflows})
    rng.shuffle(apis)
    chosen = set(apis[:max_specs])
    bodies: list[dict[str, Any]] = []
    specs: dict[str, bytes] = {}
    for wf in (w for w in workflows if w.api in chosen):
        name = "/" + wf.api.replace("/", "_") + ".json"
        specs.setdefault(name, wf.spec_path.read_bytes())
        spec = load_spec(wf.spec_path)
        events: list[dict[str, Any]] = []
        for i, step in enumerate(wf.steps):
            bodies.append(_body(wf.workflow_id, events, wf.prompt, name, i))
            endpoint = concrete_endpoint(spec, step, with_base=i % 2 == 1)
            events = [*events, {"endpoint": endpoint, "params": dict(step.params)}]
    rng.shuffle(bodies)
    return Workload(bodies=tuple(bodies[:max_requests]), specs=specs)


def _body(user: str, events: Sequence[dict[str, Any]], prompt: str, spec_path: str, i: int) -> dict[str, Any]:
    return {
        "user_id": f"{user}-{i}",
        "events": list(events),
        "prompt": prompt[:4000] or None,
        "spec_url": spec_path,
        "k": 5,
    }
