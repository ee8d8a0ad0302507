"""The parameters a prediction can fill in from what the user did and said, and those it cannot."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from core.features import IdSource, held_ids, matching_ids
from core.spec.index import Call
from core.spec.operations import Operation
from core.vocabulary import is_id_name, name_key, param_entity

__all__ = ["fill_params", "param_sources"]


def _type_fits(value: Any, type_: str | None) -> bool:
    if type_ in ("integer", "number"):
        try:
            float(str(value))
        except ValueError:
            return False
        return type_ == "number" or str(value).lstrip("-").isdigit()
    if type_ == "boolean":
        return str(value).lower() in ("true", "false")
    return isinstance(value, str | int | float) and not isinstance(value, bool)


def param_sources(
    operation: Operation, history: Sequence[Call]
) -> dict[str, tuple[IdSource | None, bool]]:
    """For each path parameter: the id it takes (newest first, concrete values preferred) and
    whether that value is known."""
    by_name, by_entity = held_ids(history)
    types = {p.name: p.type for p in operation.params if p.location == "path"}
    out: dict[str, tuple[IdSource | None, bool]] = {}
    for name in operation.path_params:
        hits = matching_ids(
            name_key(name), param_entity(name, operation.segments), by_name, by_entity
        )
        hits.sort(key=lambda s: (s.age, s.value is None, s.origin != "path"))
        concrete = [s for s in hits if s.value is not None and _type_fits(s.value, types.get(name))]
        if concrete and (not hits or concrete[0].age <= hits[0].age):
            out[name] = (concrete[0], True)
        elif hits:
            out[name] = (hits[0], False)
        else:
            out[name] = (None, False)
    return out


def fill_params(
    operation: Operation,
    history: Sequence[Call],
    *,
    proposed: Mapping[str, str] | None = None,
    prompt: str | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Path parameters filled with ids from the history where names and types match (the newest
    fitting id wins), and the required parameters that could not be filled.

    ``{invoice_id}`` takes an ``invoice_id`` the user passed, or the id in the path of an earlier
    call on invoices (``/invoices/{id}``); a bare ``{id}`` takes an id of its own resource only.
    An id the last call returns but whose value the history doesn't show stays missing.

    ``proposed``: the values an LLM proposed for this operation. What the history leaves unfilled
    takes one when the operation declares the parameter, the value fits its type, and it is
    grounded: written in the prompt, or a value of the history. An LLM's value found nowhere the
    user gave it is a guess, and a parameter filled by a guess is worse than one shown missing.
    """
    params: dict[str, Any] = {}
    missing: list[str] = []
    for name, (src, known) in param_sources(operation, history).items():
        if known and src is not None:
            params[name] = src.value
        else:
            missing.append(name)
    # other required parameters: the same name passed before (newest first)
    for p in operation.params:
        if not p.required or p.location == "path" or p.location == "header" or p.name in params:
            continue
        value = None
        for call in reversed(history):
            if p.name in call.params and _type_fits(call.params[p.name], p.type):
                value = call.params[p.name]
                break
            if p.name in call.path_params and is_id_name(p.name):
                value = call.path_params[p.name]
                break
        if value is None:
            missing.append(p.name)
        else:
            params[p.name] = value
    if proposed:
        _fill_proposed(operation, proposed, params, missing, history, prompt)
    return params, missing


def _fill_proposed(
    operation: Operation,
    proposed: Mapping[str, str],
    params: dict[str, Any],
    missing: list[str],
    history: Sequence[Call],
    prompt: str | None,
) -> None:
    seen = {str(v) for c in history for v in (*c.path_params.values(), *c.params.values())}
    for p in operation.params:
        value = str(proposed.get(p.name, "")).strip()
        if not value or p.name in params or p.location == "header" or not _type_fits(value, p.type):
            continue
        if value in seen or _written_in(value, prompt):
            params[p.name] = value
            if p.name in missing:
                missing.remove(p.name)


def _written_in(value: str, prompt: str | None) -> bool:
    """``value`` appears in the prompt as a whole token (``INV-42`` in "resend INV-42.", not ``42``)."""
    if not prompt:
        return False
    return re.search(rf"(?<![\w-]){re.escape(value)}(?![\w-])", prompt) is not None
