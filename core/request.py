"""What a request says beyond its words: the values it carries and what they are named as.

"pay invoice in_77", "delete the message 1234567 in channel 998877", "flights on 2027-03-02",
"send 'hello team'": a value is an id-like token (a digit in it), a number, an ISO date, an
e-mail or a quoted string, with the words written just before it ("invoice", "channel"). After
"from" or "to", a capitalised word or an all-capital code is a value too ("flights from Lisbon
to OSL"), named by that word: it fills a parameter called ``from`` or ``to``. A value fills a
parameter only when those words name it (the parameter's own words, or the entity of its id:
``{id}`` of ``/invoices/{id}`` is named by "invoice"), or when its kind says which (an e-mail
fills an ``email``, a date a ``date``; "on 2027-03-02" is that day, not the end of a range), and
it fits the parameter's type. A wrong value is worse than none: a value named by nothing fills
nothing.

Read once per prompt (cached); the features read which required parameters of a candidate the
request fills, and the served ``params`` take the same values (:mod:`core.params`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from core.spec.operations import Operation, Param
from core.vocabulary import (
    ID_SUFFIXES,
    LOOKUP_TEXT_WORDS,
    PROMPT_ROLE_VERBS,
    STOPWORDS,
    ends_in_reference,
    feature_stem,
    is_version_entity,
    param_entity,
    tokenize,
)

__all__ = ["RequestValue", "request_values", "request_fills", "param_namings", "type_fits", "named_stems"]

# quoted text, an e-mail, an ISO date, or a token with a digit in it (ids, numbers, codes)
_VALUE = re.compile(
    r"\"(?P<dq>[^\"]{1,200})\"|(?<!\w)'(?P<sq>[^']{1,200})'(?!\w)|“(?P<cq>[^”]{1,200})”"
    r"|(?P<email>[\w.+-]+@[\w-]+(?:\.[\w-]+)+)"
    r"|(?P<date>\b\d{4}-\d{2}-\d{2}(?:T[\d:.]+Z?)?\b)"
    r"|(?P<token>(?<![\w@.-])[A-Za-z0-9][\w.:-]*\d[\w.:-]*|(?<![\w@.-])\d[\w.:-]*)"
)
# After "from" or "to", a place or party by its name or code: "from Lisbon", "to OSL", "from New
# York" (read only there: elsewhere a capitalised word is a sentence's first word or a product).
_ENDPOINT_NAME = re.compile(
    r"\b(?P<prep>[Ff]rom|[Tt]o)\s+(?P<value>[A-Z][a-z]+(?:\s[A-Z][a-z]+)?|[A-Z]{2,5})\b")
# Words right before a value that name it by where it stands: a range's ends, a day.
_PLACING = frozenset({"from", "to", "on"})
_WORD = re.compile(r"[A-Za-z]+")
# A value's name is written in its clause, right before it: never across these.
_CLAUSE_END = re.compile(r"[.;,!?()\[\]{}]")
# Words between a name and its value that say nothing ("the role named admins", "project is
# 8f3a"); any other small word ends the name ("a request to 'approved'" names nothing).
_LINKING = frozenset({"the", "a", "an", "is", "named", "called", "titled", "equal", "equals"})
# Of them, those that say the value is the thing's name (or title), which no id is.
_NAMING = {"named": "name", "called": "name", "titled": "title"}
_NAME_WORDS = 3  # at most this many words name a value
# Trailing words that only say "an id of": "invoice number 42" names the invoice's id.
_ID_TAIL = frozenset(feature_stem(w) for w in ID_SUFFIXES | {"no"})


@dataclass(frozen=True, slots=True)
class RequestValue:
    value: str
    kind: str  # "quoted" | "email" | "date" | "number" | "id" | "name" (after from / to)
    named: tuple[str, ...]  # feature stems of the words naming it, nearest last (may be empty)
    bare: tuple[str, ...] = ()  # the same without trailing id words ("invoice number" → invoice)
    as_name: bool = False  # "a droplet named web-1": the thing's name, no id of it


@lru_cache(maxsize=4096)
def request_values(prompt: str | None) -> tuple[RequestValue, ...]:
    """The values written in ``prompt``, in order, each with the (up to two) words naming it."""
    if not prompt:
        return ()
    found: list[tuple[int, RequestValue]] = []
    spans: list[tuple[int, int]] = []
    for m in _VALUE.finditer(prompt):
        kind = m.lastgroup or "token"
        value = m.group(kind).rstrip(".:,;")
        if kind in ("dq", "sq", "cq"):
            kind = "quoted"
        elif kind == "token":
            kind = "number" if re.fullmatch(r"-?\d+(\.\d+)?", value) else "id"
        spans.append(m.span())
        if value:
            found.append((m.start(), _named(prompt, m.start(), value, kind)))
    for m in _ENDPOINT_NAME.finditer(prompt):
        start, end = m.span("value")
        if not any(a < end and start < b for a, b in spans):
            # a place's name or code, never a record's id
            found.append((start, RequestValue(m.group("value"), "name", (m.group("prep").lower(),),
                                              as_name=True)))
    return tuple(v for _start, v in sorted(found, key=lambda f: f[0]))


def _named(prompt: str, start: int, value: str, kind: str) -> RequestValue:
    """The value at ``start`` with the words before it that name it."""
    head = prompt[max(0, start - 80): start]
    cut = [c.end() for c in _CLAUSE_END.finditer(head)]
    words: list[str] = []
    as_name: str | None = None
    for w in reversed(_WORD.findall(head[cut[-1]:] if cut else head)):
        lw = w.lower()
        if lw in _LINKING and not words:
            as_name = as_name or _NAMING.get(lw)
            continue
        if lw in _PLACING and not words and not as_name:
            words.append(lw)
            break
        if lw in STOPWORDS or lw in _LINKING:
            break
        words.insert(0, feature_stem(lw))
        if len(words) == _NAME_WORDS:
            break
    bare = list(words)
    while bare and bare[-1] in _ID_TAIL:
        bare.pop()
    if as_name:  # "the droplet named web-1" names the droplet's name: droplet_name, name
        words.append(feature_stem(as_name))
    return RequestValue(value, kind, tuple(words), tuple(bare), as_name=as_name is not None)


def named_stems(prompt: str | None) -> frozenset[str]:
    """The stems of the words that name a value of the request ("invoice" of "invoice in_77")."""
    return frozenset(w for v in request_values(prompt) for w in v.named)


def type_fits(value: Any, type_: str | None) -> bool:
    """Whether ``value`` can be a value of a parameter of JSON-schema type ``type_``."""
    if type_ in ("integer", "number"):
        try:
            float(str(value))
        except ValueError:
            return False
        return type_ == "number" or str(value).lstrip("-").isdigit()
    if type_ == "boolean":
        return str(value).lower() in ("true", "false")
    if type_ in ("array", "object"):
        return False  # one word of a request is no list or object ("messages" of a bulk delete)
    return isinstance(value, str | int | float) and not isinstance(value, bool)


@lru_cache(maxsize=65536)
def _param_names(name: str, segments: tuple[str, ...]) -> tuple[tuple[tuple[str, ...], ...], ...]:
    """(full, core) word sequences that name a parameter. Full: all its words (``culture_code``,
    ``name``, ``project_id``); core: its words without id words, and the entity of its id
    (``project_id`` → project; ``{id}`` of ``/invoices/{id}`` → invoice)."""
    words = tokenize(name, keep_stopwords=True)
    full = (tuple(feature_stem(w) for w in words),) if words else ()
    core = tuple(feature_stem(w) for w in words if w not in ID_SUFFIXES)
    cores = {core} if core else set()
    entity = param_entity(name, segments)
    if entity and not is_version_entity(entity):
        cores.add(tuple(feature_stem(w) for w in entity.split("_")))
    return full, tuple(sorted(cores))


def _name_like(value: RequestValue) -> bool:
    """A name ("a droplet named web-1") or text with a space ("the message 'hello team'"): what
    the thing is called or says, never its id (ids have no space)."""
    return value.as_name or any(c.isspace() for c in value.value)


def _fits(value: RequestValue, name: str, type_: str | None) -> bool:
    """Of the parameter's type, and no name-like value for a reference to a record."""
    if not type_fits(value.value, type_):
        return False
    return not (ends_in_reference(name) and _name_like(value))


def _ends_with(named: tuple[str, ...], words: tuple[str, ...]) -> bool:
    return 0 < len(words) <= len(named) and named[-len(words):] == words


def _names(value: RequestValue, name: str, full: Words, cores: Words, finds: Words) -> bool:
    """Whether the words before ``value`` name the parameter (or its kind does). A name-like
    value names it only by its own words, or as the thing a lookup parameter finds ("the game
    'The Witcher 3'" fills ``search`` of ``GET /games``): named by its entity alone (``{game_pk}``
    of ``/games/{game_pk}``) it would be taken for the thing's id."""
    if value.kind == "email" and "email" in name.lower():
        return True
    if value.kind == "date" and value.named == ("on",):  # that day: no range's end
        return bool(_DAY_NAME.search(name)) and not _RANGE_END.search(name)
    if value.kind == "date" and _DATE_NAME.search(name):
        return True
    if any(_ends_with(value.named, words) for words in full):
        return True
    if _name_like(value):
        return any(_ends_with(value.bare, words) for words in finds)
    return any(_ends_with(value.bare, words) for words in cores)


_DATE_NAME = re.compile(r"date|day|since|until|from|to$", re.I)
_DAY_NAME = re.compile(r"date|day", re.I)
_RANGE_END = re.compile(r"since|until|from|to$|start|end|before|after|min|max", re.I)


# A parameter as the request can name it: (name, type, full words, core words, the words of
# the things it looks up by what they are called).
Words = tuple[tuple[str, ...], ...]
Naming = tuple[str, str | None, Words, Words, Words]


def _looks_up(operation: Operation, param: Param) -> Words:
    """The collection a free-text or name parameter of a list or search looks up (``search`` of
    ``GET /games`` looks up games): a name the request gives a game fills it."""
    words = tokenize(param.name, keep_stopwords=True)
    if (operation.method != "GET" or operation.role not in ("list", "search")
            or param.location != "query" or not words or words[-1] not in LOOKUP_TEXT_WORDS
            or param.type not in (None, "string") or param.enum):
        return ()
    looked_up = tuple(feature_stem(w) for w in tokenize(operation.resource))
    return (looked_up,) if looked_up else ()


def param_namings(operation: Operation) -> tuple[Naming, ...]:
    """The parameters of ``operation`` a request can fill (not headers or cookies; path ones
    the spec forgot to declare too), with the words that name them. Per spec, cached by the
    features' tables."""
    params = [p for p in operation.params if p.location not in ("header", "cookie")]
    declared = {p.name for p in params}
    params += [Param(n, "path", True) for n in operation.path_params if n not in declared]
    out: list[Naming] = []
    for p in params:
        full, cores = _param_names(p.name, operation.segments if p.location == "path" else ())
        out.append((p.name, p.type, full, cores, _looks_up(operation, p)))
    return tuple(out)


def request_fills(
    operation: Operation, values: tuple[RequestValue, ...],
    namings: tuple[Naming, ...] | None = None,
) -> dict[str, str]:
    """The parameters of ``operation`` (not headers) that a value of the request fills: named by
    the words before it (or by its kind), of the parameter's type (:func:`_fits`); each value
    fills one parameter and each parameter takes the first value that names it. ``namings``: the
    operation's :func:`param_namings`, when already computed."""
    if not values:
        return {}
    # a parameter whose last word names no value (and no e-mail or date to fill) is passed over
    last_words = {w[-1] for v in values for w in (v.named, v.bare) if w}
    by_kind = any(v.kind in ("email", "date") for v in values)
    out: dict[str, str] = {}
    used: set[int] = set()
    namings = namings if namings is not None else param_namings(operation)
    for name, type_, full, cores, finds in namings:
        if not by_kind and not any(w[-1] in last_words for w in (*full, *cores, *finds)):
            continue
        for k, v in enumerate(values):
            if k not in used and _names(v, name, full, cores, finds) and _fits(v, name, type_):
                out[name] = v.value
                used.add(k)
                break
    if operation.method in _WRITES:
        _quoted_text(operation, values, namings, used, out)
    return out


# Quoted words with a space, right after a verb that writes or the thing the operation writes,
# that no parameter is named for, are the text to write, when the operation writes and has a
# field for written text: "send 'hello team' to channel 998877", "post the message 'hi all'" →
# ``content``; not "rewrite it using the 'pretty spinner'" (a tool), nor "update the 'About'
# text" (which text).
_WRITES = frozenset({"POST", "PUT", "PATCH"})
_WRITE_ROLES = frozenset({"create", "update", "action"})
_WRITTEN_TEXT_WORDS = frozenset({"content", "text", "body", "message"})


def _quoted_text(
    operation: Operation, values: tuple[RequestValue, ...], namings: tuple[Naming, ...],
    used: set[int], out: dict[str, str],
) -> None:
    quoted = [k for k, v in enumerate(values)
              if k not in used and v.kind == "quoted" and _name_like(v) and v.named]
    if not quoted:  # the common case: ids and numbers only; the resource's words are not read
        return
    things = {feature_stem(w) for w in tokenize(operation.resource)}
    k = next((k for k in quoted if PROMPT_ROLE_VERBS.get(values[k].named[-1], frozenset())
              & _WRITE_ROLES or values[k].named[-1] in things), None)
    if k is None:
        return
    for name, type_, _full, _cores, _finds in namings:
        words = tokenize(name, keep_stopwords=True)
        if (name not in out and words and words[-1] in _WRITTEN_TEXT_WORDS
                and type_ in (None, "string")):
            out[name] = values[k].value
            used.add(k)
            return
