"""What the service knows about one API operation, and the words it is described with.

Everything here is API-agnostic on purpose: roles (list, get, create, ...) and resource nouns carry
from one API to another, which is what lets a model trained on some APIs rank calls of others.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

__all__ = [
    "Param",
    "Operation",
    "ROLES",
    "DESTRUCTIVE_WORDS",
    "tokenize",
    "singular",
    "is_id_name",
    "path_param_names",
    "VERSION_SEGMENT",
    "PATH_PARAM",
]

ROLES = ("list", "search", "get", "create", "update", "delete", "action")

# Verbs that undo or destroy; an operation named with one is only offered when the prompt asks.
DESTRUCTIVE_WORDS = frozenset(
    "delete remove destroy purge cancel void refund revoke terminate wipe erase drop "
    "deactivate disable unsubscribe reject discard detach unlink".split()
)
_VERB_ROLE = {
    **dict.fromkeys("list".split(), "list"),
    **dict.fromkeys("search find query lookup filter".split(), "search"),
    **dict.fromkeys("get retrieve fetch read show describe view download export".split(), "get"),
    **dict.fromkeys("create add new post insert register upload make open".split(), "create"),
    **dict.fromkeys("update edit modify patch set replace put change rename".split(), "update"),
    **dict.fromkeys("delete remove destroy purge erase".split(), "delete"),
}
# A version, not a resource: v1, v2.1, 1.0, api, and Google's v1beta1, v2alpha, v1p1beta1.
VERSION_SEGMENT = re.compile(
    r"^v\d+(\.\d+)*((alpha|beta|p)\d*)*$|^\d+(\.\d+)+$|^api$", re.I
)
_VERSION_SEGMENT = VERSION_SEGMENT
# A template expression of a path: {id}, and RFC 6570 forms such as {+name} or {id*}.
PATH_PARAM = re.compile(r"\{([^{}]+)\}")
_OPERATOR = re.compile(r"^[+#./;?&=,!@|]+|(\*|:\d+)$")


def path_param_names(template: str) -> list[str]:
    """Names of the parameters of a path or segment template, without RFC 6570 operators and
    modifiers: ``/v1/{+name}/items/{id*}`` → ``['name', 'id']``."""
    return [_OPERATOR.sub("", raw).strip() for raw in PATH_PARAM.findall(template)]
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_NON_WORD = re.compile(r"[^A-Za-z0-9]+")
STOPWORDS = frozenset(
    "a an the and or of to for in on at by with from into this that these those it its is are be "
    "as via all any each my your our their me i we you use using then also".split()
)


def tokenize(text: str, *, keep_stopwords: bool = False) -> list[str]:
    """Lower-case word tokens, camelCase and snake_case split, plurals folded to singular."""
    if len(text) <= _CACHED_TEXT_LEN:  # prompts, names and paths come back request after request
        return list(_tokens(text, keep_stopwords))
    return _tokenize(text, keep_stopwords)


_CACHED_TEXT_LEN = 512


def _tokenize(text: str, keep_stopwords: bool) -> list[str]:
    words = _NON_WORD.sub(" ", _CAMEL.sub(" ", text)).lower().split()
    return [singular(w) for w in words if keep_stopwords or (w not in STOPWORDS and len(w) > 1)]


@lru_cache(maxsize=32768)
def _tokens(text: str, keep_stopwords: bool) -> tuple[str, ...]:
    return tuple(_tokenize(text, keep_stopwords))


def singular(word: str) -> str:
    """A cheap English singular: enough to make 'invoices' and 'invoice' the same token."""
    w = word.lower()
    if len(w) <= 3 or w.endswith(("ss", "us", "is")):
        return w
    if w.endswith("ies"):
        return w[:-3] + "y"
    if w.endswith(("sses", "xes", "ches", "shes", "zes")):
        return w[:-2]
    if w.endswith("s"):
        return w[:-1]
    return w


def is_id_name(name: str) -> bool:
    n = name.lower()
    return n in {"id", "uuid", "key", "slug", "name", "code", "number", "sid", "token"} or n.endswith(
        ("_id", "id", "_key", "_uuid", "_sid", "_slug", "_code", "_number", "_name", "_token")
    )


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    location: str  # path | query | header | body | formData | cookie
    required: bool = False
    type: str | None = None


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
        return tuple(s for s in self.segments if "{" not in s and not _VERSION_SEGMENT.match(s))

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
    literals = [(i, s) for i, s in enumerate(segments) if "{" not in s and not _VERSION_SEGMENT.match(s)]
    if not literals:
        return ""
    i, last = literals[-1]
    # /invoices/{id}/pay: "pay" is an action on the invoice, not a resource.
    if i > 0 and "{" in segments[i - 1] and i == len(segments) - 1 and _looks_like_verb(last):
        earlier = [s for j, s in literals if j < i]
        if earlier:
            last = earlier[-1]
    return "_".join(tokenize(last, keep_stopwords=True)) or last.lower()


def _looks_like_verb(segment: str) -> bool:
    words = tokenize(segment, keep_stopwords=True)
    return bool(words) and (
        words[0] in _VERB_ROLE or words[0] in DESTRUCTIVE_WORDS or words[0] in _ACTION_VERBS
    )


_ACTION_VERBS = frozenset(
    "pay send finalize finalise approve reject submit publish unpublish archive unarchive restore "
    "start stop pause resume cancel void refund capture confirm verify validate activate "
    "deactivate enable disable lock unlock merge close reopen assign unassign sync import export "
    "run execute trigger retry reset move copy clone share invite accept decline complete mark "
    "test preview render login logout authorize".split()
)


def _verb_of(operation_id: str | None, summary: str) -> str | None:
    for text in (operation_id or "", summary):
        words = tokenize(text, keep_stopwords=True)
        if words and words[0] in _VERB_ROLE:
            return _VERB_ROLE[words[0]]
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
            last.lower() in _ACTION_VERBS or (last_words and last_words[0] in _ACTION_VERBS)
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
