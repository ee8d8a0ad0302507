"""Requests as users type them, built from the workflows' own data without inventing answers.

- ``direct``: one step asked for on its own: the step's ``description`` as the prompt, no
  history, target = that step's call. With ``values``, the request also carries the values of
  the step's path and id parameters (from the workflow's ``$inputs``, and the ids earlier steps
  found), each after the words that name it ("… (project 8f3a01bc22)"), as a user writes
  "pay invoice in_77".
- ``find_id``: a step needs an id that an earlier step's output gives (``$steps.x.outputs``) and
  nobody has yet: the later step's description (with its known values) as the prompt, the
  history before the earlier step, target = the earlier step's call, the read that finds it.
  An id the earlier step was itself given is no find (:func:`found_ids`).
- ``as typed`` (:func:`as_typed`): a direct ask cut to what a user types: the description's
  first sentence without its parentheses or what follows a comma, in lower case, at most
  :data:`TYPED_WORDS` words ("Retrieves full details of a specific client, including their
  name." → "retrieves full details of a specific client").
- ``find_id_named``: a find-id ask that also names the thing the way the read looks it up: the
  value the read takes from the workflow's inputs for a parameter that names things (a ``q``,
  ``query``, ``search``, ``name``, ``title``, ``email`` … of type string, no enum: what the user
  knows of it instead of its id, as in "who directed Heat?"), after that parameter's words.
  Only the reads that take such an input make one.

The values are the ones :mod:`ranker.data` gives the steps, so a filled parameter can be checked
against the value the step really passed.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import Literal

from core.spec.index import SpecIndex
from core.spec.operations import Operation
from core.vocabulary import (
    LOOKUP_WORDS,
    is_id_name,
    is_version_entity,
    name_key,
    param_entity,
    tokenize,
)
from ranker.data import Example, RequestKind, Step, Workflow, history_of, load_spec

__all__ = ["RequestKind", "request_examples", "known_values", "found_ids", "needs_found_id",
           "naming_values", "as_typed", "MAX_VALUES", "TYPED_WORDS"]

MAX_VALUES = 3
TYPED_WORDS = 8
_SENTENCE_END = re.compile(r"(?<=[.!?])\s")
_PARENTHESES = re.compile(r"\([^)]*\)")
_FINDING_ROLES = ("list", "search", "get")


def known_values(spec: SpecIndex, step: Step, *, with_found: bool = False) -> dict[str, str]:
    """The values the user gives for ``step``: its path parameters and id-named parameters that
    come from the workflow's inputs, and with ``with_found`` those an earlier step's output gave
    (a user asking for this one call who has the id: "delete the message 1234567"); at most
    :data:`MAX_VALUES`."""
    op = spec.operations[spec.by_key[step.key]]
    names = [*step.from_inputs, *(n for n, _j in step.from_steps if with_found)]
    out: dict[str, str] = {}
    for name in names:
        value = _value(op, step, name)
        if value and (name in op.path_params or is_id_name(name)) and len(out) < MAX_VALUES:
            out[name] = value
    return out


def naming_values(spec: SpecIndex, step: Step) -> dict[str, str]:
    """The values ``step`` takes from the workflow's inputs for parameters that name a thing
    (:data:`LOOKUP_WORDS`, of type string without an enum; not path or id parameters): what
    the user knows of the thing the step finds; at most :data:`MAX_VALUES`."""
    op = spec.operations[spec.by_key[step.key]]
    declared = {p.name: p for p in op.params}
    out: dict[str, str] = {}
    for name in step.from_inputs:
        param = declared.get(name)
        words = tokenize(name, keep_stopwords=True)
        value = step.params.get(name)
        if (param is None or name in op.path_params or is_id_name(name) or not value or not words
                or words[-1] not in LOOKUP_WORDS or param.type not in (None, "string")
                or param.enum or len(out) == MAX_VALUES):
            continue
        out[name] = value
    return out


def as_typed(description: str, *, max_words: int = TYPED_WORDS) -> str:
    """``description`` as a user types the ask: its first sentence without parentheses or what
    follows a comma, in lower case, at most ``max_words`` words. Workflow descriptions are
    written sentences; what users type is short and plain, and a ranker must not need the rest."""
    first = _SENTENCE_END.split(description.strip(), maxsplit=1)[0]
    first = _PARENTHESES.sub(" ", first).split(",")[0]
    return " ".join(first.rstrip(".!? ").split()[:max_words]).lower()


def _value(op: Operation, step: Step, name: str) -> str | None:
    """The value ``step`` passed as its parameter ``name`` of ``op``."""
    return step.path_params.get(name) if name in op.path_params else step.params.get(name)


def _entity(name: str, op: Operation) -> str:
    """What an id parameter of ``op`` is the id of ('' when nothing, or a version segment)."""
    entity = param_entity(name, op.segments if name in op.path_params else ())
    return "" if not entity or is_version_entity(entity) else entity


def _given(spec: SpecIndex, earlier: Step, name: str, value: str | None, entity: str) -> bool:
    """Whether ``earlier`` was itself given the id a later step takes from its output as
    ``name``: the same value (its output echoes an input: ``zone_id`` of
    ``GET /dns_zones/{zone_id}``), or, reading one thing by its id, an id of the same name or
    the same entity (``server_id`` from ``GET /servers/{id}``). Whoever called it had the id."""
    if value is not None and value in (*earlier.path_params.values(), *earlier.params.values()):
        return True
    op = spec.operations[spec.by_key[earlier.key]]
    return op.role == "get" and bool(entity) and any(
        _entity(p, op) == entity and (is_id_name(p) or name_key(p) == name_key(name))
        for p in op.path_params)


def found_ids(spec: SpecIndex, wf: Workflow, i: int) -> dict[str, int]:
    """The ids step ``i`` of ``wf`` takes that an earlier step found and nobody had before it:
    parameter name → that step's index. An id the earlier step was given (:func:`_given`) is
    no find: the user or the history had it already."""
    step = wf.steps[i]
    op = spec.operations[spec.by_key[step.key]]
    out: dict[str, int] = {}
    for name, j in step.from_steps:
        if not (name in op.path_params or is_id_name(name)):
            continue
        if not _given(spec, wf.steps[j], name, _value(op, step, name), _entity(name, op)):
            out[name] = j
    return out


def needs_found_id(spec: SpecIndex, wf: Workflow, i: int) -> bool:
    """Whether step ``i`` of ``wf`` takes an id that only an earlier step's output gave."""
    return bool(found_ids(spec, wf, i))


def _render(description: str, spec: SpecIndex, step: Step, values: dict[str, str],
            *, names: tuple[Step, dict[str, str]] | None = None) -> str:
    """``description`` with ``values`` of ``step``'s parameters after the words naming them, and
    ``names``' (a step and its :func:`naming_values`) after those."""
    parts = _value_parts(spec, step, values)
    if names is not None:
        parts += _value_parts(spec, *names)
    return f"{description.rstrip('.')} ({', '.join(parts)})" if parts else description


def _value_parts(spec: SpecIndex, step: Step, values: dict[str, str]) -> list[str]:
    op = spec.operations[spec.by_key[step.key]]
    parts = []
    for name, value in values.items():
        entity = param_entity(name, op.segments if name in op.path_params else ())
        words = entity.replace("_", " ") if entity else " ".join(tokenize(name, keep_stopwords=True))
        parts.append(f"{words} {value}")
    return parts


def _with_values(api: str, workflow_id: str, position: int) -> bool:
    """Half the training asks carry their values, half don't (a stable hash)."""
    return hashlib.sha1(f"values|{api}|{workflow_id}|{position}".encode()).digest()[0] % 2 == 0


def request_examples(
    workflows: Iterable[Workflow], kind: RequestKind | Literal["training"], *, named: bool = False,
) -> Iterator[Example]:
    """The ``kind`` requests of every step of ``workflows`` that has a description.
    ``training``: direct asks (half with their values) and find-id asks together, and with
    ``named`` the named find-id asks too."""
    for wf in workflows:
        if wf.source != "real":
            continue
        spec = load_spec(wf.spec_path)
        if kind in ("direct", "direct_values", "training"):
            for i, step in enumerate(wf.steps):
                if not step.description:
                    continue
                with_values = kind == "direct_values" or (
                    kind == "training" and _with_values(wf.api, wf.workflow_id, i))
                # Asked without the id an earlier step found, the right next call is the one
                # that finds it (the find_id asks): not a direct ask to train on.
                if kind == "training" and not with_values and needs_found_id(spec, wf, i):
                    continue
                values = known_values(spec, step, with_found=True) if with_values else {}
                yield Example(api=wf.api, workflow_id=wf.workflow_id, spec=spec, history=(),
                              prompt=_render(step.description, spec, step, values),
                              target=step.key, source="request", position=i,
                              request="direct_values" if values else "direct")
        if kind in ("find_id", "find_id_named", "training"):
            done: set[int] = set()
            for k, step in enumerate(wf.steps):
                if not step.description:
                    continue
                for j in dict.fromkeys(found_ids(spec, wf, k).values()):
                    finder = spec.operations[spec.by_key[wf.steps[j].key]]
                    if j in done or finder.role not in _FINDING_ROLES or finder.method != "GET":
                        continue
                    done.add(j)
                    values = known_values(spec, step)
                    ask = Example(api=wf.api, workflow_id=wf.workflow_id, spec=spec,
                                  history=history_of(wf, spec, j),
                                  prompt=_render(step.description, spec, step, values),
                                  target=finder.key, source="request", position=j,
                                  request="find_id")
                    if kind in ("find_id", "training"):
                        yield ask
                    names = naming_values(spec, wf.steps[j])
                    if names and (kind == "find_id_named" or (kind == "training" and named)):
                        yield replace(ask, request="find_id_named", prompt=_render(
                            step.description, spec, step, values, names=(wf.steps[j], names)))
