"""The ``why`` of a prediction: the features that drove its score, grouped into reasons and said in
the user's terms."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from core.features import FEATURE_NAMES, IdSource, prompt_stems
from core.params import HistoryIds, param_sources
from core.priors.word_vectors import load_word_vectors, unit_rows
from core.request import request_fills, request_values
from core.spec.index import Call
from core.spec.operations import Operation
from core.vocabulary import (
    ACTION_VERBS,
    DESTRUCTIVE_WORDS,
    ID_SUFFIXES,
    NAME_VERB_ROLE,
    ROLES,
    feature_stem,
    is_version_entity,
    param_entity,
    singular,
    tokenize,
)

__all__ = ["explain"]


# Which reason each feature speaks for. Features not listed (e.g. the generator's rank) say
# nothing a user can act on: they still count towards the score but never make a sentence.
_REASON_OF: dict[str, str] = {}
for _reason, _names in {
    "prompt": "bm25 bm25_norm bm25_rank overlap_path overlap_summary overlap_description "
    "prompt_coverage prompt_resource prompt_role_verb lead_role lead_read_get prompt_new_coverage "
    "prompt_ahead prompt_next_clause clause_next_score clause_first_best src_bm25 has_bm25 bm25_grank "
    "prompt_coverage_grank prompt_new_coverage_grank overlap_path_grank overlap_summary_grank "
    "clause_next_score_grank prompt_ahead_grank sem_prompt sem_prompt_rank sem_next_clause "
    "sem_clause_next_score soft_coverage soft_new_coverage soft_clause_next_score src_semantic "
    "has_semantic sem_prompt_grank sem_clause_next_score_grank soft_coverage_grank "
    "soft_clause_next_score_grank sem_prompt_gap sem_clause_next_score_gap "
    "soft_clause_next_score_gap",
    "order": "prompt_pos prompt_pos_delta clause_best_delta sem_clause_best_delta",
    "dataflow": "params_from_history params_from_last_call params_from_last_returns "
    "params_from_last_resource params_all_filled params_newest_age consumes_last_output "
    "required_from_history src_dataflow has_dataflow params_unfilled",
    "structure": "rel_same rel_child rel_parent rel_sibling rel_same_resource shared_prefix "
    "depth_delta rel2_same rel2_child rel2_parent rel2_same_resource resource_seen src_neighbour "
    "has_neighbour sem_last_call sem_last_call_grank sem_history_max",
    "transition": "p_role role_lift p_method p_relation relation_lift src_transition "
    "has_transition role_lift_grank relation_lift_grank",
    "entry": "entry_point cold_start src_entry has_entry",
    "setup": "src_setup has_setup",
    "status": "src_status has_status",
    "repeat": "times_called called_last steps_since_called rel_same_op",
    "intent": "prompt_destructive",
    "request": "req_fills req_fills_required inputs_available callable_now",
    "finds": "finds_named yields_asked_id",
    "count": "count_asked",
    "habit": "user_p_next user_count_next",
    "crowd": "pop_p_next pop_n_context pop_p_next2 pop_n_context2 pop_p_prompt pop_n_prompt "
    "pop_p_next_grank pop_p_prompt_grank",
}.items():
    for _n in _names.split():
        _REASON_OF[_n] = _reason
_COL = {n: i for i, n in enumerate(FEATURE_NAMES)}
# The columns of the features that speak for a reason, in column order, and each reason with the
# positions of its columns among them, the reasons in the order of their first column: explain()
# adds each reason's contributions in column order from 0.0, so its totals (and their order on a
# tie) are bit-identical to a loop over every column, and cheaper.
_REASON_COLUMNS = np.array([i for i, n in enumerate(FEATURE_NAMES) if n in _REASON_OF], np.intp)
_REASON_GROUPS: tuple[tuple[str, tuple[int, ...]], ...] = tuple(
    (reason, tuple(k for k, i in enumerate(_REASON_COLUMNS) if _REASON_OF[FEATURE_NAMES[i]] == reason))
    for reason in dict.fromkeys(_REASON_OF[FEATURE_NAMES[i]] for i in _REASON_COLUMNS)
)


def _nan_to_zero(x: np.ndarray) -> np.ndarray:
    """``np.nan_to_num(x, nan=0.0)``, skipped when every value is finite (almost always; the
    call costs ~20 µs and explain() runs per shown row on the request path)."""
    a = np.asarray(x, np.float64)
    return a if np.isfinite(a).all() else np.nan_to_num(a, nan=0.0)


def _value(row: np.ndarray, name: str) -> float:
    """The feature ``name`` of ``row`` as ``_nan_to_zero(row)`` has it (NaN is 0), read alone:
    explain() looks at a few columns of the row, not all."""
    v = float(row[_COL[name]])
    return v if math.isfinite(v) else float(np.nan_to_num(v, nan=0.0))


def _plural(noun: str) -> str:
    noun = noun.replace("_", " ")
    if noun.endswith("y") and noun[-2:-1] not in "aeiou":
        return noun[:-1] + "ies"
    return noun if noun.endswith("s") else noun + ("es" if noun.endswith(("x", "ch", "sh")) else "s")


_VERB_WORDS = frozenset(ROLES) | frozenset(NAME_VERB_ROLE) | ACTION_VERBS | DESTRUCTIVE_WORDS


def _noun(op: Operation) -> str:
    """What the operation acts on, in words ('line item'), or '' when its path names nothing a
    user would call a thing: no literal, one of a letter or two (``/a/{id}``), or a verb
    (``/create``, ``/getMembershipForCurrentUser``): the last literal that names one."""
    return _noun_of(op.literal_segments)


@lru_cache(maxsize=4096)
def _noun_of(literal_segments: tuple[str, ...]) -> str:
    for seg in reversed(literal_segments):
        words = tokenize(seg, keep_stopwords=True)
        if words and words[0] not in _VERB_WORDS and len("".join(words)) > 2:
            return singular(" ".join(words)) if len(words) == 1 else " ".join(
                (*words[:-1], singular(words[-1])))
    return ""


def _article(noun: str) -> str:
    """'an' before a vowel sound: an invoice, an order; a user, a unit."""
    if noun.startswith(("us", "uni", "uti", "ur", "eu", "one")):
        return "a"
    return "an" if noun[:1] in "aeiou" else "a"


def _doing(op: Operation) -> str:
    """The last call as a user would describe it: 'a list of invoices', 'creating an invoice';
    the call itself ('POST /v1/create') when its path names no thing."""
    noun = _noun(op)
    if not noun:
        return f"{op.method} {op.path}"
    article = _article(noun)
    return {
        "list": f"a list of {_plural(noun)}",
        "search": f"a search for {_plural(noun)}",
        "get": f"looking up {article} {noun}",
        "create": f"creating {article} {noun}",
        "update": f"updating {article} {noun}",
        "delete": f"deleting {article} {noun}",
    }.get(op.role, f"{(op.segments[-1] if op.segments else 'an action').strip('{}')} on {article} {noun}")


def _matched_words(operation: Operation, prompt: str | None, limit: int = 3) -> list[str]:
    """The user's own words (as typed) that this operation matches, most distinctive first."""
    pt = prompt_stems(prompt)
    if pt.empty:
        return []
    vocab = _stem_set(" ".join((" ".join(operation.literal_segments), operation.operation_id or "",
                                operation.summary, " ".join(operation.tags))))
    words: list[str] = []
    seen: set[str] = set()
    for s, raw in zip(pt.stems, pt.raw, strict=True):
        if s in vocab and s not in seen and len(s) > 2:  # 'Uploads' and 'upload' say it once
            seen.add(s)
            words.append(raw)
    words.sort(key=len, reverse=True)  # longer words tend to be the telling ones
    return words[:limit]


@lru_cache(maxsize=4096)
def _stem_set(text: str) -> frozenset[str]:
    """The stems of ``text``'s words: an operation's, asked for again on every request showing it."""
    return frozenset(feature_stem(w) for w in tokenize(text))


MEANING_COSINE = 0.6  # a prompt word this close to one of the operation's words means it


def _meaning_words(operation: Operation, prompt: str | None, limit: int = 2) -> list[str]:
    """The user's words (as typed) that none of the operation's words match exactly but one
    of them means ('paid' for /invoices/{id}/pay), closest first; by the shipped word vectors."""
    pt = prompt_stems(prompt)
    if pt.empty:
        return []
    try:
        wv = load_word_vectors()
    except FileNotFoundError:
        return []
    op_tokens = sorted(set(tokenize(" ".join((" ".join(operation.literal_segments),
                                              operation.operation_id or "", operation.summary)))))
    if not op_tokens:
        return []
    op_vecs, op_w = wv.token_vectors(op_tokens)
    known = op_w > 0
    if not known.any():
        return []
    op_vecs = unit_rows(op_vecs[known])
    exact = {feature_stem(t) for t in op_tokens}
    best: dict[str, float] = {}
    for token, s, raw in zip(pt.tokens, pt.stems, pt.raw, strict=True):
        if s in exact or len(token) < 3 or raw in best:
            continue
        v = wv.embed([token])
        if not v.any():
            continue
        cos = float((op_vecs @ v).max())
        if cos >= MEANING_COSINE:
            best[raw] = cos
    return sorted(best, key=lambda w: -best[w])[:limit]


def _age_phrase(age: int) -> str:
    return "your last call" if age == 0 else (
        "the call before it" if age == 1 else f"a call {age + 1} steps back")


def _id_words(name: str, operation: Operation, src: IdSource) -> str:
    """An id as a user says it: 'the invoice id' by what it names, else by its own name ('the
    issue id or key' for ``issueIdOrKey``, never 'the issue id or id'); no entity read off a
    version segment ('the v1beta1 id')."""
    for entity in (param_entity(name, operation.segments), src.entity):
        words = entity.split("_") if entity else []
        if (words and not is_version_entity(entity)
                and not any(w in ID_SUFFIXES or w in ("or", "and") for w in words)):
            return f"the {' '.join(words)} id"
    words = tokenize(name, keep_stopwords=True)
    return f"the {' '.join(words)}" if words else f"the {name}"


def _dataflow_phrase(operation: Operation, history: Sequence[Call], ids: HistoryIds | None) -> str | None:
    best: tuple[int, str] | None = None
    for name, (src, known) in param_sources(operation, history, ids=ids).items():
        if src is None:
            continue
        what = _id_words(name, operation, src)
        if known:
            text = f"uses {what} {src.value} from {_age_phrase(src.age)}"
        else:
            text = f"uses {what} your last call returns"
        rank = src.age * 2 + (0 if known else 1)
        if best is None or rank < best[0]:
            best = (rank, text)
    return best[1] if best else None


def _structure_phrase(operation: Operation, row: np.ndarray, history: Sequence[Call]) -> str | None:
    last = next((c.operation for c in reversed(history) if c.operation is not None), None)
    if last is None:
        return None
    noun, last_noun = _noun(operation), _noun(last)
    if _value(row, "rel_same_op") > 0:
        return "repeats your last call"
    if _value(row, "rel_child") > 0:
        if noun and last_noun:
            return f"goes into the {last_noun} from your last call ({_plural(noun)})"
        return "goes one level into the path of your last call"
    if _value(row, "rel_same") > 0 or _value(row, "rel_same_resource") > 0:
        return f"works on the same {_plural(noun)} as your last call" if noun else (
            "works on the same path as your last call")
    if _value(row, "rel_parent") > 0:
        return f"goes back up to the {_plural(noun)}" if noun else (
            "goes back up the path of your last call")
    if _value(row, "rel_sibling") > 0:
        return f"next to the {_plural(last_noun)} you just used" if last_noun else (
            "next to the path of your last call")
    return None


def explain(
    operation: Operation,
    features_row: np.ndarray,
    contrib_row: np.ndarray,
    *,
    history: Sequence[Call],
    prompt: str | None,
    max_reasons: int = 2,
    ids: HistoryIds | None = None,
) -> str:
    """A one-line reason from what drove this candidate's score: the features with the largest
    positive contributions, grouped into reasons and said in the user's terms. ``ids``:
    :func:`core.params.history_ids` of ``history``, when already computed."""
    row = features_row
    contrib = np.asarray(contrib_row, np.float64)[: len(FEATURE_NAMES)]
    if len(contrib) != len(FEATURE_NAMES):
        raise ValueError(f"{len(contrib)} contributions for {len(FEATURE_NAMES)} features")
    speaking = _nan_to_zero(contrib[_REASON_COLUMNS]).tolist()
    totals: dict[str, float] = {}
    for reason, positions in _REASON_GROUPS:
        total = 0.0
        for k in positions:
            total += speaking[k]
        totals[reason] = total
    ordered = [r for r, v in sorted(totals.items(), key=lambda kv: -kv[1]) if v > 0]
    last = history[-1].operation if history else None
    phrases: list[str] = []
    for reason in ordered:
        text: str | None = None
        if reason == "prompt":
            words = _matched_words(operation, prompt)
            if words:
                text = "matches " + " and ".join(f"'{w}'" for w in words[:2]) + " in your request"
            else:
                near = _meaning_words(operation, prompt)
                if near:
                    text = "means " + " and ".join(f"'{w}'" for w in near[:2]) + " in your request"
        elif reason == "order":
            # only where the clause of the request the operation matches best is the one after
            # the clause the history has reached (else "the next step" is the order's guess)
            if prompt and history and _value(row, "clause_best_delta") == 1:
                text = "the next step your request describes"
        elif reason == "dataflow":
            text = _dataflow_phrase(operation, history, ids)
        elif reason == "structure":
            text = _structure_phrase(operation, row, history)
        elif reason == "transition":
            if last is not None:
                text = f"usually follows {_doing(last)}"
            elif not history:
                noun = _noun(operation)
                text = f"a usual first step: {_doing(operation)}" if noun else None
        elif reason == "entry":
            if not history and not operation.path_params:
                text = "a starting point that needs no ids"
        elif reason == "setup":
            if not operation.path_params:
                text = "a call sessions usually make first"
        elif reason == "status":
            if last is not None:
                text = f"checks on what {_doing(last)} started"
        elif reason == "repeat":
            called = _value(row, "times_called")
            if called > 0:
                ago = int(_value(row, "steps_since_called"))
                text = "repeats your last call" if ago == 1 else f"you called it {ago} steps ago"
        elif reason == "request":
            given = request_fills(operation, request_values(prompt))
            if given:
                name, value = next(iter(given.items()))
                text = f"takes the {' '.join(tokenize(name, keep_stopwords=True))} {value} you gave"
        elif reason == "finds":
            if _value(row, "finds_named") > 0:
                text = "finds what your request names, whose id nothing gave yet"
            elif _value(row, "yields_asked_id") > 0:
                text = "gives the id the call you ask for needs, which nothing gave yet"
        elif reason == "count":
            if _value(row, "count_asked") > 0:
                text = "counts, as your request asks"
        elif reason == "habit":
            if _value(row, "user_count_next") > 0:
                text = "what you usually do next"
        elif reason == "crowd":
            text = _crowd_phrase(row, last, prompt)
        elif reason == "intent":
            if operation.destructive:
                text = "your request asks to " + (
                    next((w for w in (prompt or "").split()
                          if feature_stem(w.lower().strip(".,;:!?")) in _DESTRUCTIVE_HINT),
                         "remove").lower().strip(".,;:!?")
                )
        if text and text not in phrases:
            phrases.append(text)
        if len(phrases) >= max_reasons:
            break
    if not phrases:
        words = _matched_words(operation, prompt)
        if words:
            phrases.append("matches " + " and ".join(f"'{w}'" for w in words[:2]) + " in your request")
        elif last is not None:
            phrases.append(f"often comes after {_doing(last)}")
        else:
            phrases.append("a common first call for this API")
    text = "; ".join(phrases)
    if operation.destructive:
        text += " (destructive)"
    return text


def _crowd_phrase(row: np.ndarray, last: Operation | None, prompt: str | None) -> str | None:
    """What the API's other users did here (the population memory's pop_* features)."""
    by_prompt, after = _value(row, "pop_p_prompt"), _value(row, "pop_p_next")
    share = by_prompt if prompt and by_prompt > 0 else after
    if not share > 0:
        return None
    most = "most people" if share >= 0.5 else "many people"
    if prompt and by_prompt > 0:
        return f"{most} who asked for this did this next"
    if last is not None:
        return f"{most} do this after {_doing(last)}"
    return f"{most} start here"


# The stems of DESTRUCTIVE_WORDS: the prompt word that asked for a destructive operation.
_DESTRUCTIVE_HINT = frozenset(map(feature_stem, DESTRUCTIVE_WORDS))
