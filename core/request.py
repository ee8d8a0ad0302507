"""What a request says beyond its words: the values it carries and what they are named as.

"pay invoice in_77", "delete the message 1234567 in channel 998877", "flights on 2027-03-02",
"send 'hello team'": a value is an id-like token (a digit in it), a number, an ISO date, an
e-mail or a quoted string, with the words written just before it ("invoice", "channel"). A
value fills a parameter only when those words name it (the parameter's own words, or the entity
of its id: ``{id}`` of ``/invoices/{id}`` is named by "invoice"), or when its kind says which
(an e-mail fills an ``email``, a date a ``date``), and it fits the parameter's type. A wrong
value is worse than none: a value named by nothing fills nothing.

Read once per prompt (cached); the features read which required parameters of a candidate the
request fills, and the served ``params`` take the same values (:mod:`core.params`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from core.spec.operations import Operation, Param
from core.vocabulary import ID_SUFFIXES, STOPWORDS, feature_stem, param_entity, tokenize

__all__ = ["RequestValue", "request_values", "request_fills", "type_fits", "named_stems"]

# quoted text, an e-mail, an ISO date, or a token with a digit in it (ids, numbers, codes)
_VALUE = re.compile(
    r"\"(?P<dq>[^\"]{1,200})\"|(?<!\w)'(?P<sq>[^']{1,200})'(?!\w)|“(?P<cq>[^”]{1,200})”"
    r"|(?P<email>[\w.+-]+@[\w-]+(?:\.[\w-]+)+)"
    r"|(?P<date>\b\d{4}-\d{2}-\d{2}(?:T[\d:.]+Z?)?\b)"
    r"|(?P<token>(?<![\w@.-])[A-Za-z0-9][\w.:-]*\d[\w.:-]*|(?<![\w@.-])\d[\w.:-]*)"
)
_WORD = re.compile(r"[A-Za-z]+")
# Words between a name and its value that say nothing of which parameter it is ("invoice
# number 42", "the channel with id 9", "project: 8f3a").
_LINKING = STOPWORDS | ID_SUFFIXES | {"named", "called", "titled", "is", "equal", "value", "no"}


@dataclass(frozen=True, slots=True)
class RequestValue:
    value: str
    kind: str  # "quoted" | "email" | "date" | "number" | "id"
    named: tuple[str, ...]  # feature stems of the words naming it, nearest last (may be empty)


@lru_cache(maxsize=4096)
def request_values(prompt: str | None) -> tuple[RequestValue, ...]:
    """The values written in ``prompt``, in order, each with the (up to two) words naming it."""
    if not prompt:
        return ()
    out: list[RequestValue] = []
    for m in _VALUE.finditer(prompt):
        kind = m.lastgroup or "token"
        value = m.group(kind).rstrip(".:,;")
        if kind in ("dq", "sq", "cq"):
            kind = "quoted"
        elif kind == "token":
            kind = "number" if re.fullmatch(r"-?\d+(\.\d+)?", value) else "id"
        if not value:
            continue
        before = _WORD.findall(prompt[max(0, m.start() - 60): m.start()])
        words: list[str] = []
        for w in reversed(before):
            lw = w.lower()
            if lw in _LINKING:
                if words:
                    break
                continue
            words.insert(0, feature_stem(lw))
            if len(words) == 2:
                break
        out.append(RequestValue(value, kind, tuple(words)))
    return tuple(out)


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
    return isinstance(value, str | int | float) and not isinstance(value, bool)


@lru_cache(maxsize=65536)
def _param_names(name: str, segments: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    """The word sequences that name a parameter: its own words without an id word
    (``project_id`` → project; ``channel_name`` → channel name), and the entity of its id."""
    words = [w for w in tokenize(name, keep_stopwords=True)]
    core = tuple(feature_stem(w) for w in words if w not in ID_SUFFIXES)
    out = {core} if core else set()
    entity = param_entity(name, segments)
    if entity and not re.fullmatch(r"v\d.*|api", entity):
        out.add(tuple(feature_stem(w) for w in entity.split("_")))
    return tuple(sorted(out))


def _names(value: RequestValue, param: Param, segments: tuple[str, ...]) -> bool:
    if value.kind == "email" and "email" in param.name.lower():
        return True
    if value.kind == "date" and re.search(r"date|day|since|until|from|to$", param.name, re.I):
        return True
    if not value.named:
        return False
    return any(
        len(words) <= len(value.named) and value.named[-len(words):] == words
        for words in _param_names(param.name, segments if param.location == "path" else ())
    )


def request_fills(operation: Operation, values: tuple[RequestValue, ...]) -> dict[str, str]:
    """The parameters of ``operation`` (not headers) that a value of the request fills: named by
    the words before it (or by its kind), of the parameter's type; each value fills one parameter
    and each parameter takes the first value that names it."""
    if not values:
        return {}
    out: dict[str, str] = {}
    used: set[int] = set()
    params = [p for p in operation.params if p.location not in ("header", "cookie")]
    declared = {p.name for p in params}
    params += [Param(n, "path", True) for n in operation.path_params if n not in declared]
    for p in params:
        for k, v in enumerate(values):
            if k not in used and type_fits(v.value, p.type) and _names(v, p, operation.segments):
                out[p.name] = v.value
                used.add(k)
                break
    return out
