"""The words the service reads operations and prompts with: one home for each rule of them.

Tokens, stems, the words of a path template, which names are ids and what an id names, which
verbs ask for which role, which words destroy or sign in. Nothing here names a particular API:
roles and resource nouns carry from one API to another, which is what lets a model trained on
some APIs rank calls of others.

Where the generator and the features read a word two ways (two stemmers, two rules for what an
id names, two keys of a parameter name, two clause splitters), both rules stand here side by
side under names that say whose they are: one rule for both changes the candidates or the
feature rows, which the shipped model was trained on.
"""

from __future__ import annotations

import re
from functools import lru_cache

__all__ = [
    "ROLES",
    "STOPWORDS",
    "split_words",
    "tokenize",
    "singular",
    "index_stem",
    "feature_stem",
    "VERSION_SEGMENT",
    "PATH_PARAM",
    "path_param_names",
    "ID_WORDS",
    "REFERENCE_WORDS",
    "ends_in_reference",
    "ID_SUFFIXES",
    "is_id_name",
    "id_entity",
    "param_entity",
    "is_version_entity",
    "name_key",
    "snake_name",
    "NAME_VERB_ROLE",
    "ACTION_VERBS",
    "PROMPT_ROLE_VERBS",
    "DESTRUCTIVE_WORDS",
    "wants_destructive",
    "COUNT_WORDS",
    "MEANING_PHRASES",
    "asks_question",
    "LOOKUP_TEXT_WORDS",
    "LOOKUP_WORDS",
    "asks_count",
    "AUTH_WORDS",
    "AUTH_OPERATION_WORDS",
    "PLAN_CLAUSE_BREAK",
    "FEATURE_CLAUSE_SPLIT",
    "HEAD_BOUNDARY_WORDS",
]

ROLES = ("list", "search", "get", "create", "update", "delete", "action")

# -- tokens --------------------------------------------------------------------------------------

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_NON_WORD = re.compile(r"[^A-Za-z0-9]+")
STOPWORDS = frozenset(
    "a an the and or of to for in on at by with from into this that these those it its is are be "
    "as via all any each my your our their me i we you use using then also".split()
)


def split_words(text: str) -> list[str]:
    """The lower-case words of a text, camelCase and snake_case split; none dropped or folded."""
    return _NON_WORD.sub(" ", _CAMEL.sub(" ", text)).lower().split()


def tokenize(text: str, *, keep_stopwords: bool = False) -> list[str]:
    """Lower-case word tokens, camelCase and snake_case split, plurals folded to singular."""
    if len(text) <= _CACHED_TEXT_LEN:  # prompts, names and paths come back request after request
        return list(_tokens(text, keep_stopwords))
    return _tokenize(text, keep_stopwords)


_CACHED_TEXT_LEN = 512


def _tokenize(text: str, keep_stopwords: bool) -> list[str]:
    return [
        singular(w) for w in split_words(text)
        if keep_stopwords or (w not in STOPWORDS and len(w) > 1)
    ]


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


# -- stems ---------------------------------------------------------------------------------------
# Two stemmers, and one for both would change outputs. On the 4,378 real steps of both splits:
# feature_stem in the generator too changes the candidates of 919 steps and the feature rows of
# 1,116; index_stem in the features too leaves the candidates and changes the rows of 1,484.
# Either moves the ranking benchmark by a few thousandths without retraining.

_INDEX_SUFFIXES = ("ments", "ment", "ings", "ing", "ions", "ion", "ed")
_VOWELS = frozenset("aeiouy")


@lru_cache(maxsize=1 << 16)
def index_stem(word: str) -> str:
    """The generator's BM25 terms: a light, consistent suffix stripper so that 'creating',
    'created', 'creation' and 'create' meet, as do 'assignment' and 'assign'. Only consistency
    matters: both the prompt and the operations go through it. Takes ``tokenize``d (singular)
    words."""
    if len(word) <= 3 or word.isdigit():
        return word
    for suffix in _INDEX_SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            break
    if word.endswith("e") and len(word) > 3:
        word = word[:-1]
    if len(word) > 3 and word[-1] == word[-2] and word[-1] not in _VOWELS:
        word = word[:-1]
    return word


_FEATURE_STEMS: dict[str, str] = {}


def feature_stem(word: str) -> str:
    """The features' (and explanations') words: singular, then -ing and -ed only, so that
    'create', 'creates', 'creating' and 'created' meet ('creat') while 'creation' stays apart."""
    s = _FEATURE_STEMS.get(word)
    if s is not None:
        return s
    w = singular(word.lower())
    for suffix in ("ing", "ed"):
        if w.endswith(suffix) and len(w) - len(suffix) >= 3:
            w = w[: -len(suffix)]
            if len(w) > 3 and w[-1] == w[-2] and w[-1] not in "lsz":
                w = w[:-1]  # getting -> get, stopped -> stop
            break
    if len(w) > 3 and w.endswith("e"):
        w = w[:-1]
    if len(_FEATURE_STEMS) < 200_000:
        _FEATURE_STEMS[word] = w
    return w


# -- the words of a path -------------------------------------------------------------------------

# A version, not a resource: v1, v2.1, 1.0, api, and Google's v1beta1, v2alpha, v1p1beta1.
VERSION_SEGMENT = re.compile(
    r"^v\d+(\.\d+)*((alpha|beta|p)\d*)*$|^\d+(\.\d+)+$|^api$", re.I
)
# A template expression of a path: {id}, and RFC 6570 forms such as {+name} or {id*}.
PATH_PARAM = re.compile(r"\{([^{}]+)\}")
_OPERATOR = re.compile(r"^[+#./;?&=,!@|]+|(\*|:\d+)$")


def path_param_names(template: str) -> list[str]:
    """Names of the parameters of a path or segment template, without RFC 6570 operators and
    modifiers: ``/v1/{+name}/items/{id*}`` → ``['name', 'id']``."""
    return [_OPERATOR.sub("", raw).strip() for raw in PATH_PARAM.findall(template)]


# -- ids -----------------------------------------------------------------------------------------

# The last word of a parameter that looks things up by free text or by what they are called
# (``q``, ``search``, ``name``, ``title`` …), and, with a few more, by what the user knows of the
# thing that is no id of it (``email``, ``username`` …).
LOOKUP_TEXT_WORDS = frozenset({"q", "query", "search", "term", "keyword", "text", "name", "title"})
LOOKUP_WORDS = LOOKUP_TEXT_WORDS | {"email", "username", "login", "filter"}

# The last word of a name that makes it an id: invoice_id, customerKey, userSlug, orderRef ...
ID_WORDS = frozenset("id uuid guid key slug code number sid token name ref".split())
# In a request body a name, code, number or token is as often a value of its own as a reference
# to another record; the other id words surely refer to one.
REFERENCE_WORDS = ID_WORDS - {"name", "code", "number", "token"}
# The features also read a plural and two more words as ending an id's name: ids, num, handle.
ID_SUFFIXES = ID_WORDS | {"ids", "num", "handle"}
# Names as written in a response or a call ("id", "customer_id", "invoiceId"): every id word but
# "ref", which as a field of its own ("ref", "git_ref") names a branch or a tag as often as a
# record. "guid" needs no entry: it ends in "id".
_ID_NAMES = ID_WORDS - {"ref"}
_ID_NAME_ENDINGS = ("id", *sorted("_" + w for w in _ID_NAMES))


@lru_cache(maxsize=65536)
def ends_in_reference(name: str) -> bool:
    """Whether ``name``'s last word is one of :data:`REFERENCE_WORDS` (``message_id``,
    ``userKey``): it refers to a record."""
    words = tokenize(name, keep_stopwords=True)
    return bool(words) and words[-1] in REFERENCE_WORDS


def is_id_name(name: str) -> bool:
    """Whether a field or parameter name, as written, holds an id."""
    n = name.lower()
    return n in _ID_NAMES or n.endswith(_ID_NAME_ENDINGS)


# What an id names. Two rules, which differ on path parameters named by a word of their own:
# the generator's dataflow index takes ``/users/{username}`` for 'username' (id_entity), the
# features, the filled parameters and the explanations for 'user' (param_entity); they also end
# an id's name with other words (ID_WORDS, ID_SUFFIXES) and look back past version segments or not.


def id_entity(name: str, previous_literal: str | None) -> str:
    """The generator's rule: ``person_id`` → person; a bare id word (``{id}``) names what
    ``previous_literal`` names (the path's literal segment before it, version segments skipped,
    or the operation's resource) → person for ``/persons/{id}``; any other name, itself."""
    words = tokenize(name, keep_stopwords=True)
    if words and words[-1] in ID_WORDS:
        if len(words) > 1:
            return "_".join(words[:-1])
        if previous_literal:
            return "_".join(tokenize(previous_literal, keep_stopwords=True)) or name.lower()
    return snake_name(name)


@lru_cache(maxsize=65536)
def param_entity(name: str, segments: tuple[str, ...] = ()) -> str:
    """The features' rule: ``invoice_id``/``invoiceId`` → 'invoice'; any other path parameter of
    the operation with path ``segments`` takes the literal segment before it (``/invoices/{id}``
    → 'invoice', ``/users/{username}`` → 'user'); else a name of one word that is not an id word
    is itself (``{repo}``), and anything else names nothing ('')."""
    words = tokenize(name, keep_stopwords=True)
    if len(words) > 1 and words[-1] in ID_SUFFIXES:
        return "_".join(words[:-1])
    if segments:
        for i, seg in enumerate(segments):
            if name in path_param_names(seg):
                for prev in reversed(segments[:i]):
                    if "{" not in prev:
                        ws = tokenize(prev, keep_stopwords=True)
                        return "_".join(ws) if ws else ""
                break
    if len(words) == 1 and words[0] not in ID_SUFFIXES:
        return words[0]  # {username}, {repo}
    return ""


def is_version_entity(entity: str) -> bool:
    """Whether an entity read off a path is a version segment (``v1beta1``, ``api``): it names
    nothing an id could be of."""
    return VERSION_SEGMENT.match(entity.replace("_", "")) is not None


def snake_name(text: str) -> str:
    """A name's tokens joined by '_': 'invoice_id' for ``invoiceId``, 'line_item' for
    ``LineItems``; the text lower-cased when it has no token. The generator's key of a parameter
    name, and an operation's resource noun."""
    return "_".join(tokenize(text, keep_stopwords=True)) or text.lower()


@lru_cache(maxsize=65536)
def name_key(name: str) -> str:
    """The features' key of a parameter name, whatever its case and separators: ``invoiceId``,
    ``invoice_id`` and ``InvoiceID`` → 'invoiceid'. (The generator keys names by
    :func:`snake_name`: 'invoice_id'; one key for both changes which ids match.)"""
    return "".join(tokenize(name, keep_stopwords=True))


# -- verbs and roles -----------------------------------------------------------------------------

# The verbs an operation's name starts with (operationId, summary), by the role they give it. A
# prompt asks for the role with them too, except "export" and "put", and with more words below.
_NAMING_VERBS = {
    "list": "list",
    "search": "search find query lookup filter",
    "get": "get describe download export",
    "create": "create add new post insert register upload make open",
    "update": "update edit modify patch set replace put change rename",
    "delete": "delete remove destroy purge erase",
}
_NAMING_ONLY = frozenset({"export", "put"})
# Reading verbs: an operation named with one gets; a prompt with one ("show the open invoices")
# may ask for a list or a search as well.
_READING_VERBS = "retrieve fetch read show view"
NAME_VERB_ROLE: dict[str, str] = {
    w: role for role, words in _NAMING_VERBS.items() for w in words.split()
} | dict.fromkeys(_READING_VERBS.split(), "get")
# Verbs that make a POST, or a last path segment, an action on a resource (/invoices/{id}/pay).
ACTION_VERBS = frozenset(
    "pay send finalize finalise approve reject submit publish unpublish archive unarchive restore "
    "start stop pause resume cancel void refund capture confirm verify validate activate "
    "deactivate enable disable lock unlock merge close reopen assign unassign sync import export "
    "run execute trigger retry reset move copy clone share invite accept decline complete mark "
    "test preview render login logout authorize".split()
)
_READ = ("get", "list", "search")
# The words a prompt asks for roles with, beyond the naming verbs.
_PROMPT_ONLY_VERBS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("list",), "listing browse enumerate all every"),
    (("search",), "look"),
    (_READ, "check inspect review see obtain monitor"),
    (("get",), "detail details specific single particular given individual"),
    (("create",), "generate issue build submit setup install provision"),
    (("update",), "adjust mark configure enable"),
    (("delete",), "clear uninstall"),
    (("action",), "start stop trigger run execute send"),
)


def _prompt_role_verbs() -> dict[str, frozenset[str]]:
    table: dict[str, frozenset[str]] = {}
    words_by_roles: list[tuple[tuple[str, ...], str]] = [
        ((role,), " ".join(w for w in words.split() if w not in _NAMING_ONLY))
        for role, words in _NAMING_VERBS.items()
    ]
    words_by_roles += [(_READ, _READING_VERBS), *_PROMPT_ONLY_VERBS]
    for roles, words in words_by_roles:
        for w in words.split():
            s = feature_stem(w)
            table[s] = table.get(s, frozenset()) | frozenset(roles)
    return table


# A prompt word's stem (feature_stem) → the roles it asks for.
PROMPT_ROLE_VERBS: dict[str, frozenset[str]] = _prompt_role_verbs()

# -- destroying and signing in -------------------------------------------------------------------

# Verbs that undo or destroy; an operation named with one is only offered when the prompt asks.
# Also what users regret: marking as spam, redacting, suspending, banning, archiving.
DESTRUCTIVE_WORDS = frozenset(
    "delete remove destroy purge cancel void refund revoke terminate wipe erase drop "
    "deactivate disable unsubscribe reject discard detach unlink "
    "spam redact suspend ban archive".split()
)
# A prompt asks to destroy with a word that starts like one of DESTRUCTIVE_WORDS ('deleting',
# 'removal', 'cancellation': a final e dropped, but 'wipe' keeps it: 'wip' is a word of its own)
# or like one of more verbs that a prompt uses for it; "drop" and "ban" only whole
# (_DESTRUCTIVE_EXACT).
_DESTRUCTIVE_PREFIXES = tuple(sorted(
    w[:-1] if len(w) > 4 and w.endswith("e") else w for w in DESTRUCTIVE_WORDS - {"drop", "ban"}
)) + (
    "revoc", "clean", "clear", "uninstall", "unregister", "dismiss", "withdraw", "unassign",
    "unfollow", "unpublish", "unshare", "unmount", "disconnect", "dissolv", "logout", "signout",
    "teardown",
)
# Whole words only: "dropbox", "droplet", "expiration", "bank" and "banner" ask for nothing.
_DESTRUCTIVE_EXACT = frozenset(
    "drop drops dropped dropping expire expires ban bans banned banning".split()
)
_UNDO_PHRASES = re.compile(
    r"\b(?:get(?:ting)? rid|(?:log|sign)(?:s|ged|ging|ed|ing)?(?: \w+){0,2}[ -]?out|"
    r"tear(?:s|ing)? down)\b", re.I,
)


@lru_cache(maxsize=4096)
def wants_destructive(prompt: str | None) -> bool:
    """Whether the prompt clearly asks to delete, cancel, refund, revoke, expire, log out ...
    something. Cached: the generator and the features ask it of every request's prompt."""
    if not prompt:
        return False
    if _UNDO_PHRASES.search(prompt):
        return True
    return any(
        w.startswith(_DESTRUCTIVE_PREFIXES) or w in _DESTRUCTIVE_EXACT
        for w in tokenize(prompt, keep_stopwords=True)
    )


# A request that asks how many, and the words of an operation that counts. "How many" also
# reads as the word "count" in the features' words (MEANING_PHRASES), as a user means it.
# Phrases that mean a thing they do not name: "how many" a count, "who is in" a group's members,
# sending quoted words a message. The features read that word after the phrase, as a user
# means it.
MEANING_PHRASES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\bhow many\b", re.I), "count"),
    (re.compile(r"\bwho(?:'s|\s+is|\s+are)\s+(?:in|on|part\s+of)\b", re.I), "member"),
    (re.compile(r"\b(?:send|post|say)\s+(?=[\"'“])", re.I), "message"),
)
_COUNT_ASK = re.compile(r"\bhow many\b|\bnumber of\b|\bcount(?:s|ing)?\b|\btotal\b", re.I)
COUNT_WORDS = frozenset({"count", "total", "tally"})


def asks_count(prompt: str | None) -> bool:
    """Whether the request asks how many of something there are."""
    return bool(prompt) and _COUNT_ASK.search(prompt or "") is not None


# A request that opens with a question asks to read, whatever verb follows ("who created issue
# 5?", "is the museum open today?"); "how do I …" / "can you …" ask for something else.
_QUESTION = re.compile(
    r"^\W*(?:who|whom|whose|what|which|when|where|is|are|was|were|does|did|has|have"
    r"|how (?:many|much|long|often|old|far|big))\b", re.I)


def asks_question(prompt: str | None) -> bool:
    """Whether the request opens with a question: it asks to read."""
    return bool(prompt) and _QUESTION.match(prompt or "") is not None


# Words of signing in or exchanging a token, as ``tokenize`` gives them (singular).
AUTH_WORDS = frozenset(
    "auth authenticate authentication authorize authorization login logon signin token oauth "
    "oauth2 session".split()
)
# The auth_op feature also counts "sign" (signIn, /sign-in: two tokens). The generator's setup
# source, which proposes what it finds to every short session, counts only AUTH_WORDS.
AUTH_OPERATION_WORDS = AUTH_WORDS | {"sign"}

# -- clauses -------------------------------------------------------------------------------------
# A prompt reads as a plan ("find X, look at its Y, then update Z"). Two splitters, as for the
# stems: the generator's plan (a period only before a space or at the end, "followed by") and
# the features' clauses (every period, "!" and "?").
PLAN_CLAUSE_BREAK = re.compile(
    r"[,;:]|\.(?:\s|$)|\b(?:and then|then|and|finally|after|before|followed by)\b", re.I
)
FEATURE_CLAUSE_SPLIT = re.compile(
    r"[,;:.!?]|\band\b|\bthen\b|\bafter\b|\bbefore\b|\bfinally\b", re.I
)
# Where the thing a request asks for ends and what qualifies it begins ("List all contacts |
# associated with the company", "Create an invoice | for the new customer"): prepositions and
# relative words, lower case.
HEAD_BOUNDARY_WORDS = frozenset(
    "for by with using to that which who whose where in from on based after before including "
    "within via belonging associated so and when if into as at under until while".split()
)
