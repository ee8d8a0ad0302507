"""Values a request gives in words that the spec wants as codes: a member of a parameter's enum
("list the issues whose state is closed" → ``state=closed``), and countries, languages and
currencies by name or code as their ISO codes ("hotels in France" → ``country=FR``,
"subtitles in German" → ``language=de``, "prices in EUR" → ``currency=EUR``).

The same grounding rule as every other filled value (:mod:`core.request`): the words are in the
request, and the value is one the parameter takes. A wrong value is worse than none, so a
parameter takes a value only when exactly one fits it; an enum member only when the request
names the parameter too, and the member is not a stopword, not one of the operation's own path
words ("user" of ``/users/{username}/repos`` names the resource, not a ``type=user``) and not
already used by another parameter.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

from core.spec.operations import Operation, Param
from core.vocabulary import STOPWORDS, tokenize

__all__ = ["coded_fills", "country_codes", "language_codes"]

# English words that are also country names: a country only when written with a capital.
_CAPITAL_ONLY = frozenset({"chad", "china", "georgia", "guinea", "jordan", "niger", "turkey", "jersey",
                           "us", "man"})
# What people write for countries ISO names otherwise (its short and official names are read too).
_COUNTRY_ALIASES = {"usa": "US", "u.s.": "US", "us": "US", "united states of america": "US",
                    "america": "US", "uk": "GB", "u.k.": "GB", "britain": "GB", "great britain": "GB",
                    "south korea": "KR", "north korea": "KP", "russia": "RU", "vietnam": "VN",
                    "iran": "IR", "syria": "SY", "laos": "LA", "taiwan": "TW", "bolivia": "BO",
                    "venezuela": "VE", "tanzania": "TZ", "turkey": "TR", "moldova": "MD", "czechia": "CZ",
                    "czech republic": "CZ", "holland": "NL", "the netherlands": "NL"}
_WORDS = re.compile(r"[A-Za-z][A-Za-z.'-]*[A-Za-z.]|[A-Za-z]")
_LONGEST_NAME_WORDS = 4


@lru_cache(maxsize=1)
def _countries() -> dict[str, tuple[str, str]]:
    """Lower-case name → (alpha-2, alpha-3), from ISO 3166-1 (pycountry's data)."""
    import pycountry

    out: dict[str, tuple[str, str]] = {}
    for c in pycountry.countries:
        for name in (c.name, getattr(c, "common_name", None), getattr(c, "official_name", None)):
            if name:
                out.setdefault(name.split(",")[0].lower(), (c.alpha_2, c.alpha_3))
    alpha_3 = {c.alpha_2: c.alpha_3 for c in pycountry.countries}
    for alias, alpha_2 in _COUNTRY_ALIASES.items():
        out[alias] = (alpha_2, alpha_3[alpha_2])
    return out


@lru_cache(maxsize=1)
def _languages() -> dict[str, tuple[str, str]]:
    """Lower-case name → (ISO 639-1, ISO 639-2/3), for the languages that have a two-letter code."""
    import pycountry

    out: dict[str, tuple[str, str]] = {}
    for lang in pycountry.languages:
        if hasattr(lang, "alpha_2"):
            for name in lang.name.split(";"):
                out.setdefault(name.split("(")[0].split(",")[0].strip().lower(), (lang.alpha_2, lang.alpha_3))
    return out


@lru_cache(maxsize=1)
def _currencies() -> frozenset[str]:
    import pycountry

    return frozenset(c.alpha_3 for c in pycountry.currencies)


def _spans(prompt: str) -> Iterable[tuple[str, str]]:
    """Each run of up to four words of ``prompt``: (as written, lower-case)."""
    words = _WORDS.findall(prompt)
    for i in range(len(words)):
        for n in range(1, min(_LONGEST_NAME_WORDS, len(words) - i) + 1):
            written = " ".join(words[i:i + n])
            yield written, written.lower()


def _named(prompt: str, table: dict[str, tuple[str, str]]) -> list[tuple[str, str]]:
    out = []
    for written, lower in _spans(prompt):
        lower = lower.rstrip(".") if lower not in table else lower
        codes = table.get(lower)
        if codes is None or (lower in _CAPITAL_ONLY and not written[:1].isupper()):
            continue
        if lower == "us" and written != "US":
            continue
        out.append(codes)
    return out


@lru_cache(maxsize=4096)
def country_codes(prompt: str) -> tuple[tuple[str, str], ...]:
    """The countries ``prompt`` names, as (alpha-2, alpha-3), in order, each once."""
    return tuple(dict.fromkeys(_named(prompt, _countries())))


@lru_cache(maxsize=4096)
def language_codes(prompt: str) -> tuple[tuple[str, str], ...]:
    """The languages ``prompt`` names, as (ISO 639-1, ISO 639-2/3), in order, each once."""
    return tuple(dict.fromkeys(_named(prompt, _languages())))


def _currency_codes(prompt: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(w for w in re.findall(r"\b[A-Z]{3}\b", prompt) if w in _currencies()))


def _iso_kind(param: Param) -> str | None:
    """Which ISO code ``param`` takes, by its name: a language's (``language``, ``lang``,
    ``languageCode``), a currency's (``currency``), or a country's when its name says it is a
    code (``country_code``, ``IsoCountry``) or its enum lists codes; a bare ``country`` may want
    the name, and is left to the enum."""
    words = set(tokenize(param.name))
    if words & {"language", "lang"}:
        return "language"
    if "currency" in words:
        return "currency"
    if "country" in words and (param.enum or words & {"code", "iso", "alpha"}):
        return "country"
    return None


def _iso_candidates(param: Param, kind: str, prompt: str) -> list[str]:
    """The ISO codes of what the request names that ``param`` of ``kind`` (:func:`_iso_kind`)
    can take: the two-letter (currency: three-letter) code, or any code its enum lists."""
    if kind == "country":
        pairs = country_codes(prompt)
    elif kind == "language":
        pairs = language_codes(prompt)
    else:
        pairs = tuple((c, c) for c in _currency_codes(prompt))
    if not param.enum:
        return list(dict.fromkeys(short for short, _ in pairs))
    allowed = {v.upper(): v for v in param.enum}
    return list(dict.fromkeys(allowed[c.upper()] for pair in pairs for c in pair if c.upper() in allowed))


def _plain(text: str) -> str:
    """``text`` lower-case, with ``_`` and ``-`` read as spaces: how a member and a request are
    compared."""
    return " ".join(text.replace("_", " ").replace("-", " ").lower().split())


def _enum_members(param: Param, prompt_words: str, prompt_tokens: frozenset[str],
                  own_words: frozenset[str], api_words: frozenset[str]) -> list[str]:
    """The members of ``param``'s enum written in the request as words of their own, when the
    request also names the parameter ("set the status to approved"): a member alone is too often
    a word of the request's own ("create an invoice document" is no ``type=invoice``), of the
    operation's path, or the API's name ("a Lyft ride" is no ``ride_type=lyft``)."""
    if not set(tokenize(param.name)) <= prompt_tokens:
        return []
    found = []
    for value in param.enum:
        words = _plain(value)
        member = set(tokenize(words))
        if (len(words) < 3 or words in STOPWORDS or member & own_words or member <= api_words
                or not re.search(rf"(?<![\w-]){re.escape(words)}(?![\w-])", prompt_words)):
            continue
        found.append(value)
    return found


def coded_fills(operation: Operation, prompt: str | None, filled: Iterable[str] = (),
                api_words: frozenset[str] = frozenset()) -> dict[str, str]:
    """The parameters of ``operation`` (string-typed, not headers or cookies, not in ``filled``)
    that the request gives a coded value for: exactly one enum member written in it, or exactly
    one ISO code of what it names. A value fills one parameter. No member is a word of the
    operation's path or of the API's name (``api_words``)."""
    if not prompt:
        return {}
    prompt_words = _plain(prompt)
    prompt_tokens = frozenset(tokenize(prompt_words))
    own_words = frozenset(tokenize(" ".join(s for s in operation.segments if not s.startswith("{"))))
    taken = set(filled)
    used: set[str] = set()
    out: dict[str, str] = {}
    for p in operation.params:
        if p.name in taken or p.location in ("header", "cookie") or p.type not in (None, "string"):
            continue
        kind = _iso_kind(p)
        coded = (_iso_candidates(p, kind, prompt) if kind
                 else _enum_members(p, prompt_words, prompt_tokens, own_words, api_words))
        found = [v for v in coded if v.lower() not in used]
        if len(found) == 1:
            out[p.name] = found[0]
            used.add(found[0].lower())
    return out
