"""Plausible call sequences synthesised from any spec, with no workflow data needed.

Patterns that real API users follow, walked over the spec's own paths with the dataflow of ids
between calls (an id a list/search/create call hands over is the id the next call's path takes):

- list → get → update (or an action on the item),
- create → get, or create → add a sub-resource,
- search → detail,
- get a parent → list (or create) its children.

Each sequence is a :class:`ranker.data.Workflow` with ``source="synthetic"``, so evaluation can keep
it apart from real workflows. Its prompt is made from the role verbs and resource nouns of the
steps, never the target's own summary, so the prompt doesn't hand the answer over verbatim.
Deterministic for a given spec and seed.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from core.spec.index import SpecIndex
from core.spec.operations import Operation
from core.vocabulary import path_param_names, tokenize
from ranker.data import Step, Workflow, load_spec, synthetic_id

__all__ = ["synthesize", "synthesize_for_apis", "PATTERNS"]

PATTERNS = ("list_get_update", "create_get", "create_child", "search_detail", "parent_children")
_GENERIC = frozenset("id uuid key name code number slug token item".split())
_VERBS = {
    "list": ("list", "browse", "see all"),
    "search": ("search for", "find", "look up"),
    "get": ("view", "look at", "check", "retrieve"),
    "create": ("create", "add", "set up"),
    "update": ("update", "change", "edit"),
    "delete": ("delete", "remove"),
    "action": ("run", "trigger"),
}


def _norm(op: Operation) -> tuple[str, ...]:
    return tuple("{}" if "{" in s else s for s in op.segments)


def _item_of(collection: tuple[str, ...]) -> tuple[str, ...]:
    return (*collection, "{}")


class _Graph:
    """The spec's operations by normalised path, to find an item's collection, children, ..."""

    def __init__(self, spec: SpecIndex) -> None:
        self.spec = spec
        self.by_path: dict[tuple[str, ...], list[Operation]] = {}
        for op in spec.operations:
            self.by_path.setdefault(_norm(op), []).append(op)

    def ops(self, path: tuple[str, ...], *roles: str, destructive: bool = False) -> list[Operation]:
        return [
            op for op in self.by_path.get(path, ())
            if (not roles or op.role in roles) and (destructive or not op.destructive)
        ]

    def children(self, item: tuple[str, ...], *roles: str) -> list[Operation]:
        return [
            op for path, ops in self.by_path.items()
            if len(path) == len(item) + 1 and path[: len(item)] == item and path[-1] != "{}"
            for op in ops if op.role in roles and not op.destructive
        ]

    def actions(self, item: tuple[str, ...]) -> list[Operation]:
        return [
            op for path, ops in self.by_path.items()
            if len(path) == len(item) + 1 and path[: len(item)] == item
            for op in ops if op.role == "action" and not op.destructive
        ]


def _patterns(graph: _Graph) -> Iterator[tuple[str, list[Operation]]]:
    """Every instance of every pattern in the spec, in spec order."""
    for path in list(graph.by_path):
        if path and path[-1] == "{}":
            continue
        collection, item = path, _item_of(path)
        lists = graph.ops(collection, "list")
        creates = graph.ops(collection, "create")
        gets = graph.ops(item, "get")
        updates = graph.ops(item, "update") + graph.actions(item)
        for lst in lists:
            for get in gets:
                for upd in updates[:3]:
                    yield "list_get_update", [lst, get, upd]
                yield "list_get_update", [lst, get]
        for create in creates:
            for get in gets:
                yield "create_get", [create, get]
            for child in graph.children(item, "create", "update", "action")[:4]:
                yield "create_child", [create, child]
        for get in gets:
            for child in graph.children(item, "list", "create")[:4]:
                yield "parent_children", [get, child]
    for search in (op for op in graph.spec.operations if op.role == "search" and not op.destructive):
        # What the search finds: its noun, and the specific ids its results carry.
        found = {_noun(search).replace(" ", "_")} | {
            e for e in (_entity(r) for r in search.returns_ids) if e and e not in _GENERIC
        }
        for op in graph.spec.operations:
            if op.role == "get" and op.path_params and _entity_of_param(op) in found:
                yield "search_detail", [search, op]


def _entity(name: str) -> str:
    words = tokenize(name, keep_stopwords=True)
    return "_".join(words[:-1]) if len(words) > 1 and words[-1] == "id" else "_".join(words)


def _entity_of_param(op: Operation) -> str:
    """The thing the last path parameter of ``op`` names (``/persons/{id}`` → person)."""
    previous = ""
    entity = ""
    for seg in op.segments:
        names = path_param_names(seg)
        if not names:
            previous = seg
            continue
        words = tokenize(names[-1], keep_stopwords=True)
        entity = "_".join(words[:-1]) if len(words) > 1 and words[-1] == "id" else (
            "_".join(tokenize(previous, keep_stopwords=True)) if words in (["id"], []) else "_".join(words)
        )
    return entity


def _noun(op: Operation) -> str:
    resource = op.resource
    if resource in ("search", "query", "find", "lookup", ""):
        literals = [s for s in op.literal_segments if s.lower() not in ("search", "query", "find")]
        resource = literals[-1] if literals else "item"
    return " ".join(tokenize(resource, keep_stopwords=True)) or "item"


def _plural(noun: str) -> str:
    if noun.endswith(("s", "x", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2:-1] not in ("a", "e", "i", "o", "u"):
        return noun[:-1] + "ies"
    return noun + "s"


def _prompt(ops: Sequence[Operation], rng: random.Random) -> str:
    """A request in a user's words: role verbs and resource nouns, no operation summary."""
    phrases = []
    for i, op in enumerate(ops):
        verb = rng.choice(_VERBS.get(op.role, ("use",)))
        if op.role == "action" and op.segments:
            verb = " ".join(tokenize(op.segments[-1], keep_stopwords=True)) or verb
        noun = _noun(op)
        if i > 0 and noun == _noun(ops[i - 1]):
            noun = rng.choice(("it", f"that {noun}", f"the {noun}"))
        elif op.role in ("list", "search"):
            noun = _plural(noun)
        else:
            article = "an" if noun[:1] in "aeiou" else "a"
            noun = f"its {noun}" if i > 0 and op.path_params else f"{article} {noun}"
        phrases.append(f"{verb} {noun}")
    if len(phrases) == 1:
        text = phrases[0]
    else:
        text = ", ".join(phrases[:-1]) + rng.choice((" and then ", ", then ", " and ")) + phrases[-1]
    return text[0].upper() + text[1:] + "."


def _steps(api: str, workflow_id: str, ops: Sequence[Operation]) -> tuple[Step, ...]:
    """Concrete steps: an id handed over by an earlier call keeps its value in later paths."""
    values: dict[tuple[str, ...], tuple[str, int | None]] = {}  # path prefix -> (value, producer)
    first_use: dict[tuple[str, ...], int] = {}  # path prefix -> first step whose path had it
    steps: list[Step] = []
    for i, op in enumerate(ops):
        norm = _norm(op)
        path_params: dict[str, str] = {}
        uses: set[int] = set()
        for depth, segment in enumerate(op.segments):
            for k, name in enumerate(path_param_names(segment)):
                prefix = (*norm[: depth + 1], str(k))
                if prefix not in values:
                    producer = _producer(ops[:i], norm[:depth])
                    values[prefix] = (synthetic_id(api, workflow_id, "/".join(prefix)), producer)
                value, producer = values[prefix]
                if producer is not None:
                    uses.add(producer)
                elif prefix in first_use:
                    uses.add(first_use[prefix])  # the same id as an earlier call's
                first_use.setdefault(prefix, i)
                path_params[name] = value
        params = {
            p.name: synthetic_id(api, workflow_id, i, p.name)
            for p in op.params if p.required and p.location in ("query", "body")
        }
        steps.append(Step(key=op.key, path_params=path_params, params=params,
                          uses_steps=tuple(sorted(uses))))
    return tuple(steps)


def _producer(earlier: Sequence[Operation], collection: tuple[str, ...]) -> int | None:
    """The latest earlier step that hands over ids of ``collection`` (list/search/create it)."""
    for j in range(len(earlier) - 1, -1, -1):
        op = earlier[j]
        if _norm(op) == collection and op.role in ("list", "search", "create"):
            return j
        if op.role == "search" and collection:
            wanted = "_".join(tokenize(collection[-1], keep_stopwords=True))
            if wanted in {_entity(r) for r in op.returns_ids} | {_noun(op).replace(" ", "_")}:
                return j
    return None


def synthesize(
    spec: SpecIndex,
    *,
    api: str,
    spec_path: Path | str,
    seed: int = 0,
    max_workflows: int = 20,
) -> list[Workflow]:
    """Up to ``max_workflows`` synthetic workflows of ``spec``, spread over the patterns."""
    if max_workflows < 0:
        raise ValueError(f"max_workflows must be >= 0, got {max_workflows}")
    rng = random.Random(f"{seed}|{api}|{spec.spec_hash}")
    by_pattern: dict[str, list[list[Operation]]] = {}
    seen: set[tuple[str, ...]] = set()
    for name, ops in _patterns(_Graph(spec)):
        keys = tuple(op.key for op in ops)
        if keys not in seen and len(set(keys)) == len(keys):
            seen.add(keys)
            by_pattern.setdefault(name, []).append(ops)
    for instances in by_pattern.values():
        rng.shuffle(instances)
    chosen: list[tuple[str, list[Operation]]] = []
    # Round-robin over patterns so one abundant pattern doesn't crowd the others out.
    while len(chosen) < max_workflows and any(by_pattern.values()):
        for name in PATTERNS:
            if by_pattern.get(name) and len(chosen) < max_workflows:
                chosen.append((name, by_pattern[name].pop()))
    out = []
    for k, (name, ops) in enumerate(chosen):
        workflow_id = f"synthetic-{name}-{k}"
        out.append(Workflow(
            api=api, workflow_id=workflow_id, prompt=_prompt(ops, rng), spec_path=Path(spec_path),
            steps=_steps(api, workflow_id, ops), source="synthetic",
        ))
    return out


def synthesize_for_apis(
    workflows: Iterable[Workflow], *, seed: int = 0, per_api: int = 20
) -> list[Workflow]:
    """Synthetic workflows for every API (and spec) the given workflows use."""
    specs: dict[str, Path] = {}
    for wf in workflows:
        specs.setdefault(wf.api, wf.spec_path)
    out: list[Workflow] = []
    for api, path in sorted(specs.items()):
        out.extend(synthesize(load_spec(path), api=api, spec_path=path, seed=seed,
                              max_workflows=per_api))
    return out
