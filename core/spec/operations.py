"""What the service knows about one API operation: its path, parameters, role (list, get,
create, ...), resource noun and whether it destroys, read with the words of
:mod:`core.vocabulary`.

Everything here is API-agnostic on purpose: roles and resource nouns carry from one API to
another, which is what lets a model trained on some APIs rank calls of others.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core.vocabulary import (
    ACTION_VERBS,
    DESTRUCTIVE_WORDS,
    NAME_VERB_ROLE,
    VERSION_SEGMENT,
    path_param_names,
    snake_name,
    tokenize,
)

__all__ = ["Param", "Operation"]


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    location: str  # path | query | header | body | formData | cookie
    required: bool = False
    type: str | None = None
    enum: tuple[str, ...] = ()  # the string values the spec allows, when it lists them


@dataclass(frozen=True, slots=True)
class Operation:
    """One operation of a spec. ``key`` is ``METHOD /path`` with the path exactly as in ``paths``."""

    method: str
    path: str
    operation_id: str | None = None
    summary: str = ""
    description: str = ""
    tags: tuple[str, ...] = ()
    params: tuple[Param, ...] = ()
    # Id-like field names found in the 2xx response body (e.g. "id", "customer_id"): what a call
    # to this operation hands to the next one.
    returns_ids: tuple[str, ...] = ()
    deprecated: bool = False  # the spec's own `deprecated: true`
    key: str = field(init=False)
    segments: tuple[str, ...] = field(init=False)
    path_params: tuple[str, ...] = field(init=False)
    resource: str = field(init=False)
    role: str = field(init=False)
    destructive: bool = field(init=False)

    def __post_init__(self) -> None:
        method = self.method.upper()
        segments = tuple(s for s in self.path.split("/") if s)
        set_ = object.__setattr__
        set_(self, "method", method)
        set_(self, "key", f"{method} {self.path}")
        set_(self, "segments", segments)
        set_(self, "path_params", tuple(path_param_names(self.path)))
        set_(self, "resource", _resource(segments))
        set_(self, "role", _role(method, segments, self.operation_id, self.summary))
        set_(self, "destructive", _destructive(method, segments, self.operation_id, self.summary))

    @property
    def literal_segments(self) -> tuple[str, ...]:
        return tuple(s for s in self.segments if "{" not in s and not VERSION_SEGMENT.match(s))

    @property
    def required_params(self) -> tuple[Param, ...]:
        return tuple(p for p in self.params if p.required)

    def text(self) -> str:
        """The words a user might use for this operation: path, id, summary, description, tags."""
        path_words = " ".join(s.strip("{}") for s in self.segments)
        return " ".join(
            (path_words, self.operation_id or "", self.summary, self.description, " ".join(self.tags))
        )


def _resource(segments: tuple[str, ...]) -> str:
    """The noun the operation acts on: the last literal segment that names a collection."""
    literals = [(i, s) for i, s in enumerate(segments) if "{" not in s and not VERSION_SEGMENT.match(s)]
    if not literals:
        return ""
    i, last = literals[-1]
    # /invoices/{id}/pay: "pay" is an action on the invoice, not a resource.
    if i > 0 and "{" in segments[i - 1] and i == len(segments) - 1 and _looks_like_verb(last):
        earlier = [s for j, s in literals if j < i]
        if earlier:
            last = earlier[-1]
    return snake_name(last)


def _looks_like_verb(segment: str) -> bool:
    words = tokenize(segment, keep_stopwords=True)
    return bool(words) and (
        words[0] in NAME_VERB_ROLE or words[0] in DESTRUCTIVE_WORDS or words[0] in ACTION_VERBS
    )


def _verb_of(operation_id: str | None, summary: str) -> str | None:
    for text in (operation_id or "", summary):
        words = tokenize(text, keep_stopwords=True)
        if words and words[0] in NAME_VERB_ROLE:
            return NAME_VERB_ROLE[words[0]]
    return None


def _role(method: str, segments: tuple[str, ...], operation_id: str | None, summary: str) -> str:
    last = segments[-1] if segments else ""
    last_is_param = last.startswith("{") and last.endswith("}")
    last_words = tokenize(last, keep_stopwords=True)
    if method == "DELETE":
        return "delete"
    if method in ("PUT", "PATCH"):
        return "update"
    literal_words = tokenize(" ".join(s for s in segments if "{" not in s), keep_stopwords=True)
    if any(w in ("search", "query", "find", "lookup") for w in literal_words):
        return "search"
    if method == "GET":
        verb = _verb_of(operation_id, summary)
        if verb == "search":
            return "search"
        return "get" if last_is_param or verb == "get" and not last.endswith("s") else "list"
    if method == "POST":
        if not last_is_param and (
            last.lower() in ACTION_VERBS or (last_words and last_words[0] in ACTION_VERBS)
        ):
            return "action"
        verb = _verb_of(operation_id, summary)
        if verb in ("create", "update", "delete", "search"):
            return verb
        return "create"
    return "action"


def _destructive(method: str, segments: tuple[str, ...], operation_id: str | None, summary: str) -> bool:
    if method == "DELETE":
        return True
    if method == "GET":
        return False
    words = set(tokenize(" ".join(segments[-1:]) + " " + (operation_id or ""), keep_stopwords=True))
    words |= set(tokenize(summary, keep_stopwords=True)[:2])
    return bool(words & DESTRUCTIVE_WORDS)
