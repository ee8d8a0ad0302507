"""The parameters a prediction can fill in from what the user did and said, and those it cannot."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from core.coded_values import coded_fills
from core.features import IdSource, held_ids, matching_ids
from core.request import request_fills, request_values, type_fits
from core.spec.index import Call
from core.spec.operations import Operation, Param
from core.vocabulary import (
    REFERENCE_WORDS,
    VERSION_SEGMENT,
    ends_in_reference,
    is_id_name,
    is_version_entity,
    name_key,
    param_entity,
    path_param_names,
    tokenize,
)

__all__ = ["fill_params", "request_params", "param_sources", "history_ids", "HistoryIds", "SESSION_PARAMS"]


def param_sources(
    operation: Operation, history: Sequence[Call], *, ids: HistoryIds | None = None
) -> dict[str, tuple[IdSource | None, bool]]:
    """For each path parameter: the id it takes (newest first, concrete values preferred) and
    whether that value is known.

    A value the history shows fits by its name only: ``{invoice_id}`` takes an ``invoice_id``,
    and a bare ``{id}`` the ``{id}`` of its own resource; an id of the same entity under another
    name (``{Sid}`` of ``/Sims/{Sid}`` for ``{SimSid}``) is not taken. An id the last call
    returns (value unseen, never filled) fits by its entity too (:func:`matching_ids`), when that
    entity names something: a version segment (``/v1beta1/{+name}``, ``/api/{id}``) names
    nothing, and neither does the literal before a segment for any parameter but the segment's
    first (``/media/{id}.{extension}``: the extension is no media id).

    ``ids``: :func:`history_ids` of ``history``, when already computed."""
    return _param_sources(operation, *(ids or history_ids(history)).held)


# The history's ids by name key and by entity (:func:`held_ids`).
_Held = dict[str, list[IdSource]]


@dataclass(frozen=True, slots=True)
class HistoryIds:
    """A history as the params read it: its calls as placed (:func:`_placed`) and their ids."""

    placed: list[Call]
    held: tuple[_Held, _Held]


def history_ids(history: Sequence[Call]) -> HistoryIds:
    """What :func:`fill_params` and :func:`param_sources` read of ``history``, computed once for
    every operation a request shows."""
    placed = _placed(history)
    return HistoryIds(placed, held_ids(placed))


def _param_sources(
    operation: Operation, by_name: _Held, by_entity: _Held
) -> dict[str, tuple[IdSource | None, bool]]:
    types = {p.name: p.type for p in operation.params if p.location == "path"}
    out: dict[str, tuple[IdSource | None, bool]] = {}
    for name in operation.path_params:
        key, entity = name_key(name), param_entity(name, operation.segments)
        hits = [s for s in matching_ids(key, entity, by_name, by_entity) if _fits(s, key)
                and (s.origin == "returns" or name_key(s.name) == key)]
        if not _names_something(name, entity, operation.segments):
            hits = [s for s in hits if name_key(s.name) == key]  # by its name only
        hits.sort(key=lambda s: (s.age, s.value is None, s.origin != "path"))
        concrete = [s for s in hits if s.value is not None and type_fits(s.value, types.get(name))]
        if concrete and (not hits or concrete[0].age <= hits[0].age):
            out[name] = (concrete[0], True)
        elif hits:
            out[name] = (hits[0], False)
        else:
            out[name] = (None, False)
    return out


def _placed(history: Sequence[Call]) -> list[Call]:
    """The history with the values of calls the spec placed on a shifted template emptied (the
    call stays, unknown, so the others keep their age).

    A path whose first segment is a parameter (``/{country}/{region}``) also matches the spec's
    base path taken for that parameter: ``/api/tz/dar`` read as country ``api``, region ``tz``,
    district ``dar``. A record's id is no ``api`` or ``v1`` (:data:`VERSION_SEGMENT`): when the
    first parameter holds one, every value of the call sits one place off and would fill the
    wrong parameter. (A version parameter, ``/{apiVersion}/accounts``, holds ``v1`` rightly.)"""
    out = []
    for call in history:
        op = call.operation
        first = path_param_names(op.segments[0]) if op is not None and op.segments else []
        if (first and "version" not in tokenize(first[0], keep_stopwords=True)
                and VERSION_SEGMENT.match(str(call.path_params.get(first[0], "")))):
            call = Call(call.method, call.path, None, {}, {})
        out.append(call)
    return out


def _segments(src: IdSource) -> tuple[str, ...]:
    """The path segments of the call an id came from (its key ``METHOD /path``), for its path
    parameters; () for ids passed as params or returned."""
    if src.origin != "path":
        return ()
    return tuple(s for s in src.call_key.partition(" ")[2].split("/") if s)


def _names_something(name: str, entity: str, segments: tuple[str, ...]) -> bool:
    """Whether ``entity`` (the features' :func:`param_entity` of ``name``) surely says what the id
    is. A version segment (``/v1beta1/{+name}``, ``/api/{id}``) names nothing. An entity read
    from the literal before a path parameter's segment is its only when that literal comes right
    before and the parameter is the segment's first: ``/invoices/{id}`` is an invoice's, but
    neither ``{extension}`` of ``/media/{id}.{extension}`` nor ``{key}`` of ``/jobs/{id}/{key}``
    is a media's or a job's id."""
    if not entity or is_version_entity(entity):
        return False
    if param_entity(name) == entity:
        return True  # said by the name itself: invoice_id, {repo}
    for i, seg in enumerate(segments):
        names = path_param_names(seg)
        if name in names:
            return names[0] == name and i > 0 and "{" not in segments[i - 1]
    return True


# A bare key, slug or ref is as often the record's own value as another's id.
_BARE_ID_NAMES = REFERENCE_WORDS - {"key", "slug", "ref"}


def _refers(name: str) -> bool:
    """Whether a parameter passed in a request (not a path) surely holds an id of another record:
    ``invoice_id``, ``projectId``, a bare ``id``; not ``campaign_name``, nor a bare ``name`` or
    ``key``, which are as often the record's own values (the name of the project created)."""
    words = tokenize(name, keep_stopwords=True)
    if len(words) > 1:
        return ends_in_reference(name)
    return bool(words) and words[0] in _BARE_ID_NAMES


def _fits(src: IdSource, key: str) -> bool:
    """An id matched by its entity rather than its name is kept when it surely is one."""
    if name_key(src.name) == key:
        return True
    if src.origin == "param" and not _refers(src.name):
        return False
    return _names_something(src.name, src.entity, _segments(src))


def request_params(operation: Operation, prompt: str | None, *,
                   api_words: frozenset[str] = frozenset()) -> tuple[dict[str, Any], dict[str, str]]:
    """The values the request itself gives ``operation``, as :func:`fill_params` takes them: those
    it names (:func:`core.request.request_fills`), and those it gives in words the spec codes
    ("closed" of a state enum, "France" as FR: :func:`core.coded_values.coded_fills`) for the
    parameters left."""
    named = request_fills(operation, request_values(prompt))
    return named, coded_fills(operation, prompt, filled=named, api_words=api_words)


def _not_another_things(
    operation: Operation, named: dict[str, str], by_name: Mapping[str, Sequence[IdSource]],
) -> dict[str, str]:
    """``named`` without the values the events hold as the id of another thing: after
    ``GET /issue/PROJ-123``, "transition PROJ-123 to Done" names the issue PROJ-123, not a
    transition, though "transition" is written before it. A value is one record's id."""
    held: dict[str, set[str]] = {}
    for sources in by_name.values():
        for src in sources:
            if src.value is not None and src.entity:
                held.setdefault(str(src.value), set()).add(src.entity)
    out: dict[str, str] = {}
    for name, value in named.items():
        entities = held.get(str(value))
        if entities:
            segments = operation.segments if name in operation.path_params else ()
            entity = param_entity(name, segments) or name_key(name)
            if entity not in entities:
                continue
        out[name] = value
    return out


def fill_params(
    operation: Operation,
    history: Sequence[Call],
    *,
    proposed: Mapping[str, str] | None = None,
    prompt: str | None = None,
    ids: HistoryIds | None = None,
    api_words: frozenset[str] = frozenset(),
) -> tuple[dict[str, Any], list[str]]:
    """Parameters filled with values the request names (:func:`core.request.request_fills`:
    "invoice in_77" fills ``invoice_id``) and with values of the history that mean the same (the
    newest wins), and the required parameters that could not be filled. A wrong value is worse
    than a missing one.

    Path parameters take ids of their own name (:func:`param_sources`): ``{invoice_id}`` an
    ``invoice_id`` the user passed or had in a path, a bare ``{id}`` the ``{id}`` of its own
    resource. An id of the same entity under another name is left out: carried across names
    (the ``{Sid}`` of ``/Sims/{Sid}`` into ``{SimSid}``), an id was wrong on the real workflows
    as often as it could be checked at all (``benchmarks.params_precision``). An id the
    last call returns but whose value the history doesn't show stays missing, and so do the
    values of a call read with the spec's base path as its first parameter (:func:`_placed`).

    Other required parameters (query, body) take a value only where its meaning is certain: the
    same name in the same place (query or body) of an earlier call on the same resource (of any
    call, for credentials and the API version: :data:`SESSION_PARAMS`), or, for an id
    (``customer_id``), an id of the same name from any call. ``lat`` of ``GET /eta`` is never
    the ``lat`` of ``PUT /rides/{id}/destination``: those stay missing.

    ``proposed``: the values an LLM proposed for this operation. What the history leaves unfilled
    takes one when the operation declares the parameter, the value fits its type, and it is
    grounded: written in the prompt, or a value of the history. An LLM's value found nowhere the
    user gave it is a guess, and a parameter filled by a guess is worse than one shown missing.

    ``ids``: :func:`history_ids` of ``history``, when already computed. ``api_words``: the words
    of the API's name (``SpecIndex.name_words``), which give no value.
    """
    # What the request itself names wins: "delete the message 1234567" means that message,
    # whatever message the events last showed.
    named, coded = request_params(operation, prompt, api_words=api_words)
    ids = ids or history_ids(history)
    placed, held = ids.placed, ids.held
    params: dict[str, Any] = {**_not_another_things(operation, named, held[0]), **coded}
    missing: list[str] = []
    for name, (src, known) in _param_sources(operation, *held).items():
        if name in params:
            continue
        if known and src is not None:
            params[name] = src.value
        else:
            missing.append(name)
    # other required parameters (query, body): only a value of the same meaning
    for p in operation.params:
        if not p.required or p.location in ("path", "header", "cookie") or p.name in params:
            continue
        value = _same_meaning_value(operation, p, placed, held)
        if value is None:
            missing.append(p.name)
        else:
            params[p.name] = value
    if proposed:
        _fill_proposed(operation, proposed, params, missing, history, prompt)
    return params, missing


def _same_meaning_value(
    operation: Operation, param: Param, history: Sequence[Call], held: tuple[_Held, _Held]
) -> Any:
    """The newest value of ``param`` (a query or body parameter) the history gives it with the
    same meaning, or None."""
    place = _place(param.location)
    session = name_key(param.name) in SESSION_PARAMS
    for call in reversed(history):
        op = call.operation
        if op is None or not (session or op.key == operation.key
                              or (operation.resource and op.resource == operation.resource)):
            continue
        value = call.params.get(param.name)
        declared = next((q for q in op.params if q.name == param.name), None)
        if (value is not None and declared is not None and _place(declared.location) == place
                and type_fits(value, param.type)):
            return value
        if param.name in call.path_params and is_id_name(param.name):
            return call.path_params[param.name]
    entity = param_entity(param.name)
    if not _refers(param.name) or not _names_something(param.name, entity, ()):
        return None
    key = name_key(param.name)
    # an id of its own name, as a path parameter takes one (:func:`_param_sources`)
    hits = [s for s in matching_ids(key, entity, *held)
            if name_key(s.name) == key and s.value is not None and type_fits(s.value, param.type)]
    return min(hits, key=lambda s: (s.age, s.origin != "path")).value if hits else None


# Parameters that mean the same in every call of a session: credentials and the API's version.
# Any other value is the value of one resource's field (``lat`` of an ETA is not the ``lat`` of a
# ride's destination), and goes only to calls on that resource.
SESSION_PARAMS = frozenset(
    "apikey appkey subscriptionkey accesstoken authtoken token jwt clientid clientsecret "
    "username password apiversion".split()
)


def _place(location: str) -> str:
    return "body" if location in ("body", "formData") else location


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
        if not value or p.name in params or p.location == "header" or not type_fits(value, p.type):
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
