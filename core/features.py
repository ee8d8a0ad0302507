"""Features of (request, candidate) pairs: one row per candidate, the same code for training and
serving.

Every feature carries from one API to another: nothing names an endpoint, a resource or a word of
a particular API. A feature is one of

* lexical: how the user's prompt matches the operation (BM25, word overlap on path, summary and
  description separately, where in the prompt the operation is mentioned compared with the calls
  already made — workflow prompts tend to describe their steps in order);
* semantic: the same questions by meaning rather than shared words, from static word vectors
  (:mod:`core.priors.word_vectors`): cosine of the prompt, of its next clauses and of the last calls with
  the candidate, and how much of the prompt the candidate's words match softly ("paid" ~ pay);
* dataflow: whether the candidate's path parameters can be filled with ids the user already has
  (the history's path parameters and id-like parameters, or what the last call returns);
* structure: how the candidate's path relates to the last two calls (same, child, parent, sibling);
* transitions: how likely the candidate's role/method/relation is after the last call's, learned
  on the training APIs (:mod:`core.priors.transitions`);
* repetition and recency, history length, entry points, destructiveness versus intent;
* the generator's sources and scores, and the candidate's rank in the generator's order;
* personal (:data:`PERSONAL_FEATURES`): what this user did after the same previous call in
  their recorded outcomes (:class:`UserTransitions`, handed in per request); 0 for a cold user;
* population (last, :data:`core.priors.population.POPULATION_FEATURES`): what the API's users
  as a whole did (:class:`PopulationView`, handed in per request); 0 with no traffic.

Undefined values (e.g. the relation to a last call when there is none) are ``NaN``: LightGBM
treats them as missing.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from core.candidates.types import SOURCES, Candidate
from core.lexical import BM25
from core.priors.population import POPULATION_FEATURES, PopulationView, population_columns
from core.priors.transitions import RELATIONS, Transitions, normalized_segments, relation_of_segments
from core.priors.word_vectors import DEFAULT_PATH as WORD_VECTORS_PATH
from core.priors.word_vectors import WordVectors, load_word_vectors, operation_vectors, unit_rows
from core.request import param_namings, request_fills, request_values
from core.spec.index import Call, SpecIndex
from core.spec.operations import Operation
from core.spec_tables import PerSpecCache
from core.vocabulary import (
    AUTH_OPERATION_WORDS,
    COUNT_WORDS,
    FEATURE_CLAUSE_SPLIT,
    HEAD_BOUNDARY_WORDS,
    ID_SUFFIXES,
    MEANING_PHRASES,
    PROMPT_ROLE_VERBS,
    ROLES,
    VERSION_SEGMENT,
    asks_count,
    asks_question,
    feature_stem,
    is_id_name,
    name_key,
    param_entity,
    tokenize,
    wants_destructive,
)

__all__ = [
    "FEATURE_NAMES",
    "FEATURE_VERSION",
    "FeatureExtractor",
    "SpecTables",
    "prompt_stems",
    "id_sources",
    "held_ids",
    "IdSource",
    "matching_ids",
    "PERSONAL_FEATURES",
    "UserTransitions",
    "COLD",
]

FEATURE_VERSION = "13"  # 12 was branch q17's (docs/accuracy.md), never merged

REQUEST_FEATURES: tuple[str, ...] = (
    "req_values",  # values the request carries
    "req_fills",  # of them, the ones that name a parameter of the candidate
    "req_fills_required",  # share of the candidate's required inputs the request's values fill
    "inputs_available",  # share of its required inputs the request, history or last call give
    "callable_now",  # all of them
    "needs_named_id",  # it needs the id of a thing the request names, which nobody has
    "finds_named",  # a callable list/search of such a thing, or one returning its id
    "count_asked",  # the request asks how many, and the candidate counts
    "prompt_param_words",  # share of the words of its parameters' names the request uses
    "prompt_words",  # words of the request: a direct ask is short, a workflow summary long
    "prompt_clauses",  # its clauses
    "lead_role",  # the candidate's role is one the request's first verb (a question: read) asks for
    "lead_read_get",  # the first verb reads and the candidate is a GET, or neither (NaN: no verb)
    "asked_needs_id",  # the request's best match needs an id nobody has, nor the request gives
    "yields_asked_id",  # a callable read giving that id: its collection, a search or list of
    # the thing, or one whose response carries the thing's id
)

METHOD_COLUMNS = ("GET", "POST", "PUT", "PATCH", "DELETE")

FEATURE_NAMES: tuple[str, ...] = (
    # lexical
    "bm25",
    "bm25_norm",
    "bm25_rank",
    "overlap_path",
    "overlap_summary",
    "overlap_description",
    "prompt_coverage",
    "head_coverage",  # of the next clause's head phrase (what its verb asks for), NaN: none
    "prompt_resource",
    "prompt_role_verb",
    "prompt_new_coverage",
    "prompt_pos",
    "prompt_pos_delta",
    "prompt_ahead",
    "prompt_next_clause",
    "clause_next_score",
    "clause_best_delta",
    "clause_first_best",
    "next_clause_role_verb",
    "ahead_role_verb",
    "last_call_overlap",
    "has_prompt",
    # semantic (static word vectors distilled from a sentence encoder, core.priors.word_vectors):
    # cosines of the prompt, its clauses and the last calls with the operation, and how much of
    # the prompt's words the operation's words match by meaning ("paid" ~ pay)
    "sem_prompt",
    "sem_prompt_rank",
    "sem_next_clause",
    "sem_clause_next_score",
    "sem_clause_best_delta",
    "sem_last_call",
    "sem_history_max",
    "soft_coverage",
    "soft_new_coverage",
    "soft_clause_next_score",
    # dataflow
    "n_path_params",
    "params_from_history",
    "params_from_last_call",
    "params_from_last_returns",
    "params_from_last_resource",
    "params_unfilled",
    "params_all_filled",
    "params_newest_age",
    "required_from_history",
    "consumes_last_output",
    # what the request carries and names (core.request): values that fill the candidate's
    # parameters, whether it can be called now, things named without an id and the calls
    # that find them, a count asked for
    *REQUEST_FEATURES,
    # structure
    "rel_same_op",
    "rel_same",
    "rel_child",
    "rel_parent",
    "rel_sibling",
    "rel_same_resource",
    "shared_prefix",
    "depth",
    "depth_delta",
    "rel2_same",
    "rel2_child",
    "rel2_parent",
    "rel2_same_resource",
    "resource_seen",
    # method and role of the candidate
    *(f"method_{m.lower()}" for m in METHOD_COLUMNS),
    *(f"role_{r}" for r in ROLES),
    # transitions
    "p_role",
    "role_lift",
    "p_method",
    "p_relation",
    "relation_lift",
    *(f"last_role_{r}" for r in ROLES),
    # repetition and position
    "times_called",
    "called_last",
    "steps_since_called",
    "history_len",
    "cold_start",
    "last_unknown",
    "entry_point",
    "auth_op",
    "auth_called",
    # destructiveness versus intent
    "destructive",
    "prompt_destructive",
    "destructive_without_intent",
    # the spec's own word that an operation is on its way out (a newer one does the same)
    "deprecated",
    # generator
    *(f"src_{s}" for s in SOURCES),
    *(f"has_{s}" for s in SOURCES),
    "n_sources",
    "gen_rank",
    "gen_rank_norm",
    "n_candidates",
    "log_spec_size",
    # rank of the candidate among the candidates of its request (0 = best), for the scores a
    # lambdarank tree can't compare across rows by itself
    *(f"{name}_grank" for name in (
        "bm25", "prompt_coverage", "head_coverage", "prompt_new_coverage", "overlap_path",
        "overlap_summary",
        "clause_next_score", "prompt_ahead", "role_lift", "relation_lift",
        "sem_prompt", "sem_clause_next_score", "sem_last_call", "soft_coverage",
        "soft_clause_next_score",
    )),
    # how far below the group's best value the candidate is (0 for the best)
    *(f"{name}_gap" for name in (
        "bm25_norm", "head_coverage", "prompt_new_coverage", "overlap_path", "clause_next_score",
        "sem_prompt", "sem_clause_next_score", "soft_clause_next_score",
    )),
)
# The user's own habits, from the outcomes recorded for them (a block of its own, kept last).
PERSONAL_FEATURES: tuple[str, ...] = (
    "user_p_next",  # share of the user's outcomes after this previous call that were the candidate
    "user_n_context",  # outcomes recorded for this user after this previous call (0: cold)
    "user_count_next",  # of which the candidate
)
FEATURE_NAMES += PERSONAL_FEATURES
# What all the API's users did in this situation (core/priors/population.py), after the personal block.
FEATURE_NAMES += POPULATION_FEATURES
_SEMANTIC_PROMPT = ("sem_prompt", "sem_prompt_rank", "sem_next_clause", "sem_clause_next_score",
                    "sem_clause_best_delta", "soft_coverage", "soft_new_coverage",
                    "soft_clause_next_score")
_SEMANTIC = (*_SEMANTIC_PROMPT, "sem_last_call", "sem_history_max")
SOFT_FLOOR = 0.4  # a word-vector cosine below this is no match (unrelated words sit at 0.2-0.4)
GROUP_RANKED = tuple(n[: -len("_grank")] for n in FEATURE_NAMES if n.endswith("_grank"))
GROUP_GAPPED = tuple(n[: -len("_gap")] for n in FEATURE_NAMES if n.endswith("_gap"))
_COL = {name: i for i, name in enumerate(FEATURE_NAMES)}
assert len(_COL) == len(FEATURE_NAMES), "duplicate feature name"
_GRANK_FROM = [_COL[name] for name in GROUP_RANKED]
_GRANK_TO = [_COL[name + "_grank"] for name in GROUP_RANKED]
_GAP_FROM = [_COL[name] for name in GROUP_GAPPED]
_GAP_TO = [_COL[name + "_gap"] for name in GROUP_GAPPED]
_POPULATION = slice(_COL[POPULATION_FEATURES[0]], _COL[POPULATION_FEATURES[-1]] + 1)

# -- words ---------------------------------------------------------------------------------------


def _stems(text: str) -> list[str]:
    return [feature_stem(t) for t in tokenize(text)]


ROLE_VERB_WEIGHT = 1.0  # weight of a verb that names a role, as a prompt word
FUZZY_WEIGHT = 0.6  # a word that only matches inside a compound ("anthro" ~ "anthropometric")
DESCRIPTION_WEIGHT = 0.3  # a word only the operation's description has
# A role is matched like a word: a prompt verb of it (PROMPT_ROLE_VERBS) matches every operation
# of that role, as the token an operation's vocabulary holds for its role.
_ROLE_TOKEN = {role: f"<{role}>" for role in ROLES}


@dataclass(frozen=True, slots=True)
class PromptTokens:
    """The prompt as stems with their positions and the clause each falls in."""

    stems: tuple[str, ...]
    clauses: tuple[int, ...]
    n_clauses: int
    raw: tuple[str, ...]  # the original word at each position (for explanations)
    tokens: tuple[str, ...] = ()  # the ``tokenize``d word at each position (word vectors)
    # the positions of each clause's head phrase: after its first verb of a role (from its
    # start without one), up to the first of HEAD_BOUNDARY_WORDS
    head: tuple[bool, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.stems


def _with_meanings(text: str) -> str:
    """``text`` with the word each of its :data:`MEANING_PHRASES` means after the phrase."""
    for phrase, word in MEANING_PHRASES:
        text = phrase.sub(rf" \g<0> {word} ", text)
    return text


@lru_cache(maxsize=4096)
def prompt_stems(prompt: str | None) -> PromptTokens:
    stems: list[str] = []
    clauses: list[int] = []
    raw: list[str] = []
    tokens: list[str] = []
    head: list[bool] = []
    parts = [p for p in FEATURE_CLAUSE_SPLIT.split(prompt or "") if p and p.strip()]
    for c, part in enumerate(parts):
        words = [(word, [(tok, feature_stem(tok)) for tok in tokenize(word)])
                 for word in re.findall(r"[A-Za-z0-9]+", _with_meanings(part))]
        # of the clause's head: "before" it, in the "head", "after" it
        verb = any(stem in PROMPT_ROLE_VERBS for _w, toks in words for _t, stem in toks)
        state = "before" if verb else "head"
        for word, toks in words:
            if state == "head" and word.lower() in HEAD_BOUNDARY_WORDS:
                state = "after"
            for tok, stem in toks:
                stems.append(stem)
                clauses.append(c)
                raw.append(word)
                tokens.append(tok)
                head.append(state == "head")
                if state == "before" and stem in PROMPT_ROLE_VERBS:
                    state = "head"
    return PromptTokens(tuple(stems), tuple(clauses), max(len(parts), 1), tuple(raw),
                        tuple(tokens), tuple(head))


# -- ids the user has -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IdSource:
    """An id the user has: where it came from, what it names, and its value when known."""

    name: str
    entity: str
    value: Any  # None when only its name is known (returned by the last call, value unseen)
    age: int  # 0 = the last call, 1 = the one before, ...
    origin: str  # "path" | "param" | "returns"
    call_key: str


def id_sources(history: Sequence[Call]) -> list[IdSource]:
    """Every id in the history, newest first, plus the ids the last call returns."""
    out: list[IdSource] = []
    n = len(history)
    for j in range(n - 1, -1, -1):
        call, age = history[j], n - 1 - j
        op = call.operation
        if op is not None:
            for name in op.path_params:
                out.append(IdSource(name, param_entity(name, op.segments),
                                    call.path_params.get(name), age, "path", call.key))
        for name, value in call.params.items():
            if isinstance(name, str) and is_id_name(name) and isinstance(value, str | int):
                entity = param_entity(name) or (op.resource if op is not None else "")
                out.append(IdSource(name, entity, value, age, "param", call.key))
        if age == 0 and op is not None:
            for name in op.returns_ids:
                entity = param_entity(name) or op.resource
                out.append(IdSource(name, entity, None, 0, "returns", call.key))
    return out


# -- per-spec tables -----------------------------------------------------------------------------


class SpecTables:
    """What the features need of one spec, computed once per spec and cached."""

    def __init__(self, spec: SpecIndex, word_vectors: WordVectors | None = None) -> None:
        ops = spec.operations
        n = len(ops)
        self.n = n
        self.path_words: list[frozenset[str]] = []
        self.summary_words: list[frozenset[str]] = []
        self.desc_words: list[frozenset[str]] = []
        self.vocab: list[frozenset[str]] = []  # path + operationId + summary + role token
        self.resource_words: list[frozenset[str]] = []
        self.norm_segments: list[tuple[str, ...]] = []
        self.param_entities: list[tuple[tuple[str, str, str], ...]] = []
        docs: list[list[str]] = []
        for op in ops:
            path = frozenset(_stems(" ".join(op.literal_segments)))
            summary = frozenset(_stems(op.summary))
            desc = frozenset(_stems(op.description))
            opid = frozenset(_stems(op.operation_id or ""))
            self.path_words.append(path)
            self.summary_words.append(summary)
            self.desc_words.append(desc)
            self.vocab.append(path | summary | opid | {_ROLE_TOKEN[op.role]})
            self.resource_words.append(
                frozenset(feature_stem(w) for w in op.resource.split("_") if w)
            )
            self.norm_segments.append(normalized_segments(op))
            self.param_entities.append(
                tuple((p, name_key(p), param_entity(p, op.segments)) for p in op.path_params)
            )
            docs.append(_stems(op.text()))
        # document frequency over the short vocabulary, for weighting prompt words
        df: dict[str, int] = {}
        for v in self.vocab:
            for w in v:
                df[w] = df.get(w, 0) + 1
        self.idf = {w: math.log((n + 1) / (c + 0.5)) for w, c in df.items()}
        self.bm25 = BM25([Counter(d) for d in docs], precision=np.float32)
        self.method = np.zeros((n, len(METHOD_COLUMNS)), np.float32)
        self.role = np.zeros((n, len(ROLES)), np.float32)
        for i, op in enumerate(ops):
            if op.method in METHOD_COLUMNS:
                self.method[i, METHOD_COLUMNS.index(op.method)] = 1
            self.role[i, ROLES.index(op.role)] = 1
        self.n_path_params = np.array([len(op.path_params) for op in ops], np.float32)
        self.destructive = np.array([op.destructive for op in ops], np.float32)
        self.deprecated = np.array([op.deprecated for op in ops], np.float32)
        self.depth = np.array([len(s) for s in self.norm_segments], np.float32)
        # the stem of what each path parameter is an id of ("movie" of {movie_id})
        self.path_entity_stems = [
            tuple(feature_stem(e.rsplit("_", 1)[-1]) if e else "" for _p, _k, e in ents)
            for ents in self.param_entities
        ]
        # where each path parameter sits in the normalized path (its collection is before it)
        self.param_positions = [_param_positions(op, segs)
                                for op, segs in zip(ops, self.norm_segments, strict=True)]
        self.needed_entities = frozenset(e for es in self.path_entity_stems for e in es if e)
        self.returns_entity_stems = [
            frozenset(feature_stem((param_entity(r) or op.resource).rsplit("_", 1)[-1])
                      for r in op.returns_ids if param_entity(r) or op.resource)
            for op in ops
        ]
        # the words of each operation's parameter names, id words aside ("status", "date")
        self.param_words = [
            frozenset(feature_stem(w) for p in op.params if p.location not in ("header", "cookie")
                      for w in tokenize(p.name) if w not in ID_SUFFIXES)
            for op in ops
        ]
        self.namings = [param_namings(op) for op in ops]  # what a request's values can fill
        self.required_nonpath_names = [
            tuple(p.name for p in op.params if p.required and p.location not in ("path", "header", "cookie"))
            for op in ops
        ]
        self.counts = np.array(
            [bool(COUNT_WORDS & set(tokenize(" ".join(op.literal_segments) + " "
                                             + (op.operation_id or ""))))
             for op in ops], np.float32,
        )
        self.required_nonpath = [
            tuple(name_key(p.name) for p in op.params if p.required and p.location != "path")
            for op in ops
        ]
        self.role_name = [op.role for op in ops]
        self.is_get = [op.method == "GET" for op in ops]
        self.auth = np.array(
            [bool(AUTH_OPERATION_WORDS & set(tokenize(" ".join(op.literal_segments) + " "
                                             + (op.operation_id or ""))))
             for op in ops], np.float32,
        )
        # for matching words inside compounds ('shut' ~ 'shutdown', 'authenticat' ~ 'auth')
        self.joined = ["|".join(sorted(v)) for v in self.vocab]
        self.long_words = [tuple(w for w in sorted(v) if len(w) >= 4 and "<" not in w)
                           for v in self.vocab]
        self._fuzzy_idf: dict[str, float] = {}
        # The same questions for every operation at once (match_column): inverted indexes of the
        # vocabularies, descriptions, roles and long words, and every joined vocabulary in one
        # string (a prompt word has no separator in it, so a hit never spans two operations).
        self._word_ops = _inverted(self.vocab)
        self._desc_ops = _inverted(self.desc_words)
        self._long_word_ops = _inverted(self.long_words)
        self._role_ops = {r: np.flatnonzero(self.role[:, k]) for k, r in enumerate(ROLES)}
        self._all_joined = "\n".join(self.joined)
        self._joined_starts = np.cumsum([0] + [len(j) + 1 for j in self.joined[:-1]])
        self._fuzzy_ops: dict[str, np.ndarray] = {}
        self._columns: dict[str, np.ndarray] = {}
        self._max_columns = max(64, _COLUMN_BUDGET // max(n, 1))
        self.word_vectors = word_vectors
        if word_vectors is not None:
            self._build_semantic(word_vectors, ops)

    def _build_semantic(self, wv: WordVectors, ops: Sequence[Operation]) -> None:
        # one vector per operation (centred on the spec), and the unit vectors of the distinct
        # words of each operation's path, operationId and summary, for soft word matching
        # float64 copies: the cosines are float64 products rounded to float32 (see _dot)
        self.op_vectors = operation_vectors(wv, ops).astype(np.float64)
        words: dict[str, int] = {}
        cols: list[np.ndarray] = []
        for op in ops:
            toks = tokenize(" ".join((" ".join(op.literal_segments), op.operation_id or "",
                                      op.summary)))
            ids = sorted({words.setdefault(w, len(words)) for w in toks
                          if wv.lookup(w).rows})
            cols.append(np.array(ids, np.int64))
        vecs, _ = wv.token_vectors(list(words))
        self.word_matrix = unit_rows(vecs, precision=np.float64).astype(np.float64)
        self.op_word_cols = cols


    def fuzzy(self, i: int, word: str) -> bool:
        """``word`` is inside one of operation ``i``'s words, or one of them inside it."""
        return len(word) >= 4 and (
            word in self.joined[i] or any(v in word for v in self.long_words[i])
        )

    def fuzzy_ops(self, word: str) -> np.ndarray:
        """The operations ``i`` with ``fuzzy(i, word)``, found without visiting every one."""
        found = self._fuzzy_ops.get(word)
        if found is not None:
            return found
        hits: set[int] = set()
        if len(word) >= 4:
            at = self._all_joined.find(word)
            while at >= 0:
                hits.add(int(np.searchsorted(self._joined_starts, at, side="right")) - 1)
                at = self._all_joined.find(word, at + 1)
            n = len(word)
            for a in range(n - 3):
                for b in range(a + 4, n + 1):
                    hits.update(self._long_word_ops.get(word[a:b], ()))
        found = np.array(sorted(hits), np.int64)
        if len(self._fuzzy_ops) < 10_000:
            self._fuzzy_ops[word] = found
        return found

    def match_column(self, word: str) -> np.ndarray:
        """How well each operation matches one prompt stem: 1 for the word itself or a verb of
        its role, else 0.6 inside one of its compound words, else 0.3 in its description only."""
        column = self._columns.get(word)
        if column is not None:
            return column
        column = np.zeros(self.n, np.float32)
        column[self._desc_ops.get(word, _NONE)] = DESCRIPTION_WEIGHT  # not (): that is every row
        column[self.fuzzy_ops(word)] = FUZZY_WEIGHT
        column[self._word_ops.get(word, _NONE)] = 1.0
        for role in PROMPT_ROLE_VERBS.get(word, ()):
            column[self._role_ops[role]] = 1.0
        if len(self._columns) >= self._max_columns:
            self._columns.clear()  # bounded: 1 MB per spec
        self._columns[word] = column
        return column

    def word_idf(self, word: str) -> float:
        """How distinctive a prompt word is in this spec; a word no operation has exactly is
        weighed by the operations it matches inside compounds (0 when none)."""
        idf = self.idf.get(word)
        if idf is not None:
            return idf
        found = self._fuzzy_idf.get(word)
        if found is None:
            df = len(self.fuzzy_ops(word))
            found = math.log((self.n + 1) / (df + 0.5)) if df else 0.0
            if len(self._fuzzy_idf) < 10_000:
                self._fuzzy_idf[word] = found
        return found


def _param_positions(op: Operation, segments: tuple[str, ...]) -> tuple[int, ...]:
    """For each of ``op.path_params``, the index of its ``{}`` in :func:`normalized_segments`
    (0 when it is not a segment of its own: the path before it is then no collection)."""
    out: list[int] = []
    for name in op.path_params:
        k = 0
        n = 0
        for s in op.segments:
            if VERSION_SEGMENT.match(s):
                continue
            if "{" + name + "}" == s or s == "{+" + name + "}":
                k = n
                break
            n += 1
        out.append(k)
    return tuple(out)


_READ_ROLES = frozenset({"get", "list", "search"})
_COLUMN_BUDGET = 250_000  # match columns kept per spec, in floats (1 MB; 64 specs are cached)
_NONE = np.zeros(0, np.int64)


def _inverted(word_sets: Sequence[Iterable[str]]) -> dict[str, np.ndarray]:
    """word -> the indices of the sets that hold it."""
    index: dict[str, list[int]] = {}
    for i, words in enumerate(word_sets):
        for w in set(words):
            index.setdefault(w, []).append(i)
    return {w: np.array(ids, np.int64) for w, ids in index.items()}


# -- the extractor -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UserTransitions:
    """What one user did next, in their recorded outcomes, after the same call as this request's
    last one (on the same spec): operation key → times. Small (the distinct next calls seen), so
    it travels with the request and is stored with the prediction; empty for a cold user."""

    counts: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key, n in self.counts.items():
            if not isinstance(key, str) or isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise ValueError(f"UserTransitions counts must be str -> int >= 0, got {key!r}: {n!r}")

    @property
    def n(self) -> int:
        return sum(self.counts.values())

    def to_wire(self) -> dict[str, int] | None:
        return dict(sorted(self.counts.items())) if self.counts else None

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any] | None) -> UserTransitions:
        return cls({str(k): int(v) for k, v in wire.items()}) if wire else COLD


COLD = UserTransitions()

class FeatureExtractor:
    """``extract(spec, history, prompt, candidates)`` → float32 matrix, one row per candidate,
    columns :data:`FEATURE_NAMES`. Deterministic; the only state is a cache of per-spec tables."""

    feature_names = FEATURE_NAMES
    version = FEATURE_VERSION

    def __init__(
        self,
        *,
        transitions: Transitions,
        cache_size: int = 64,
        word_vectors: WordVectors | Path | str | None = WORD_VECTORS_PATH,
    ) -> None:
        """``word_vectors``: the table of the semantic features (a path is loaded, once per
        process); None leaves them missing (NaN), which a model trained with them won't expect."""
        if not isinstance(transitions, Transitions):
            raise TypeError(f"transitions must be a core.priors.transitions.Transitions, "
                            f"got {type(transitions).__name__}")
        if isinstance(word_vectors, Path | str):
            word_vectors = load_word_vectors(word_vectors)
        self.transitions = transitions
        self.word_vectors = word_vectors
        self._tables: PerSpecCache[SpecTables] = PerSpecCache(
            lambda spec: SpecTables(spec, word_vectors), cache_size
        )

    def tables(self, spec: SpecIndex) -> SpecTables:
        return self._tables.get(spec)

    def extract(
        self,
        spec: SpecIndex,
        history: Sequence[Call],
        prompt: str | None,
        candidates: Sequence[Candidate],
        personal: UserTransitions | None = None,
        population: PopulationView | None = None,
    ) -> np.ndarray:
        """``personal``: the user's own transitions after the last call (None: a cold user);
        ``population``: what the API's users did in this situation (None: nothing known)."""
        n_ops = len(spec.operations)
        idx = np.fromiter((c.index for c in candidates), np.int64, count=len(candidates))
        if idx.size and (idx.min() < 0 or idx.max() >= n_ops):
            bad = int(idx[(idx < 0) | (idx >= n_ops)][0])
            raise ValueError(f"candidate index {bad} out of range for a spec of {n_ops} operations")
        X = np.zeros((len(candidates), len(FEATURE_NAMES)), np.float32)
        if not len(candidates):
            return X
        t = self.tables(spec)
        ops = [spec.operations[i] for i in idx]
        last = history[-1].operation if history else None
        pt = prompt_stems(prompt)

        cursor_clause = self._lexical(X, t, spec, idx, pt, history)
        self._semantic(X, t, spec, idx, pt, history, cursor_clause)
        held = _HeldIds(history)
        self._dataflow(X, t, idx, ops, history, held)
        self._request(X, t, idx, ops, history, prompt, pt, held)
        rels = self._structure(X, t, spec, idx, ops, history)
        self._transitions(X, ops, history, rels)

        col = _COL
        X[:, col["method_get"]: col["method_get"] + len(METHOD_COLUMNS)] = t.method[idx]
        X[:, col["role_list"]: col["role_list"] + len(ROLES)] = t.role[idx]

        # repetition and position
        n = len(history)
        times: dict[str, int] = {}
        last_at: dict[str, int] = {}
        for j, c in enumerate(history):
            times[c.key] = times.get(c.key, 0) + 1
            last_at[c.key] = j
        X[:, col["times_called"]] = [times.get(op.key, 0) for op in ops]
        X[:, col["steps_since_called"]] = [n - last_at[op.key] if op.key in last_at else np.nan
                                           for op in ops]
        X[:, col["called_last"]] = X[:, col["steps_since_called"]] == 1
        X[:, col["history_len"]] = n
        X[:, col["cold_start"]] = n == 0
        X[:, col["last_unknown"]] = bool(history) and last is None
        X[:, col["entry_point"]] = t.n_path_params[idx] == 0
        # signing in comes first: an auth operation, and whether one was already called
        X[:, col["auth_op"]] = t.auth[idx]
        X[:, col["auth_called"]] = any(
            c.operation is not None and t.auth[spec.by_key[c.operation.key]]
            for c in history if c.operation is not None and c.operation.key in spec.by_key
        )

        # destructiveness versus intent
        intent = wants_destructive(prompt)  # the generator's test too: one policy
        destructive = t.destructive[idx]
        X[:, col["destructive"]] = destructive
        X[:, col["prompt_destructive"]] = intent
        X[:, col["destructive_without_intent"]] = destructive * (not intent)
        X[:, col["deprecated"]] = t.deprecated[idx]

        # generator sources, scores and order
        src, has = col["src_" + SOURCES[0]], col["has_" + SOURCES[0]]
        scores = np.array([[c.sources.get(source, np.nan) for source in SOURCES] for c in candidates],
                          np.float32)
        present = ~np.isnan(scores)
        X[:, src: src + len(SOURCES)] = np.where(present, scores, 0.0)
        X[:, has: has + len(SOURCES)] = present
        X[:, col["n_sources"]] = X[:, has: has + len(SOURCES)].sum(1)
        rank = np.arange(len(candidates), dtype=np.float32)
        X[:, col["gen_rank"]] = rank
        X[:, col["gen_rank_norm"]] = rank / max(len(candidates) - 1, 1)
        X[:, col["n_candidates"]] = len(candidates)
        X[:, col["log_spec_size"]] = math.log1p(n_ops)
        X[:, _GRANK_TO] = _group_rank(X[:, _GRANK_FROM])
        X[:, _GAP_TO] = _group_gap(X[:, _GAP_FROM])
        self._personal(X, ops, personal)
        X[:, _POPULATION] = population_columns(population, ops)
        return X

    @staticmethod
    def _personal(X: np.ndarray, ops: list[Operation], personal: UserTransitions | None) -> None:
        col = _COL
        n = personal.n if personal is not None else 0
        X[:, col["user_n_context"]] = n
        if not n:
            return  # cold: zeros
        assert personal is not None
        counts = np.array([personal.counts.get(op.key, 0) for op in ops], np.float32)
        X[:, col["user_count_next"]] = counts
        X[:, col["user_p_next"]] = counts / np.float32(n)

    # -- groups of features ---------------------------------------------------------------------

    def _lexical(
        self, X: np.ndarray, t: SpecTables, spec: SpecIndex, idx: np.ndarray, pt: PromptTokens,
        history: Sequence[Call],
    ) -> int:
        """Lexical features; returns the furthest prompt clause the history explains (-1 for
        none), which the semantic features take as theirs."""
        col = _COL
        X[:, col["has_prompt"]] = not pt.empty
        if pt.empty:
            for name in ("prompt_pos", "prompt_pos_delta", "prompt_next_clause",
                         "clause_best_delta", "clause_first_best"):
                X[:, col[name]] = np.nan
            return -1
        all_bm25 = t.bm25.scores(pt.stems)
        top = float(all_bm25.max())
        bm25 = all_bm25[idx]
        X[:, col["bm25"]] = bm25
        X[:, col["bm25_norm"]] = bm25 / top if top > 0 else 0.0
        # rank among all operations of the spec (0 = best; ties share a rank), log-scaled
        X[:, col["bm25_rank"]] = np.log1p(
            np.searchsorted(np.sort(-all_bm25), -bm25, side="left")
        )

        words = set(pt.stems)
        rows = idx.tolist()
        X[:, col["overlap_path"]] = [
            len(t.path_words[i] & words) / len(t.path_words[i]) if t.path_words[i] else 0.0 for i in rows]
        X[:, col["overlap_summary"]] = [
            len(t.summary_words[i] & words) / len(t.summary_words[i]) if t.summary_words[i] else 0.0
            for i in rows]
        X[:, col["overlap_description"]] = [
            len(t.desc_words[i] & words) / len(words) if t.desc_words[i] else 0.0 for i in rows]
        X[:, col["prompt_resource"]] = [bool(t.resource_words[i] & words) for i in rows]
        roles_at = [PROMPT_ROLE_VERBS.get(w, frozenset()) for w in pt.stems]
        asked_roles = frozenset().union(*roles_at)
        X[:, col["prompt_role_verb"]] = [t.role_name[i] in asked_roles for i in idx]

        # How much of each prompt word each operation matches (its words, a word inside one of
        # its compound words, or a verb of its role), weighted by how distinctive the word is.
        weights = np.array(
            [max(t.word_idf(w), ROLE_VERB_WEIGHT if roles else 0.0)
             for w, roles in zip(pt.stems, roles_at, strict=True)], np.float32,
        )
        total = float(weights.sum()) or 1.0
        length = max(len(pt.stems) - 1, 1)
        clauses = np.array(pt.clauses, np.int64)
        positions = np.arange(len(pt.stems), dtype=np.float32)
        clause_onehot = np.zeros((len(pt.stems), pt.n_clauses), np.float32)
        clause_onehot[np.arange(len(pt.stems)), clauses] = 1
        clause_total = _per_clause(weights[None, :], clause_onehot)[0]
        clause_total[clause_total == 0] = 1.0

        columns = np.stack([t.match_column(w) for w in pt.stems], axis=1)  # (operations, stems)

        def match(rows: Sequence[int]) -> np.ndarray:
            return columns[np.asarray(rows, np.int64)] * weights

        # What the calls already made explain of the prompt, and how far along it they got:
        # each call is placed at the clause it matches best.
        seen = [spec.by_key[c.operation.key] for c in history
                if c.operation is not None and c.operation.key in spec.by_key]
        covered = np.zeros(len(pt.stems), bool)
        cursor, cursor_clause = np.nan, -1
        if seen:
            H = match(seen)
            covered = H.max(0) > 0
            mass = H.sum(1)
            some = mass > 0
            if some.any():
                cursor = float(((H * positions).sum(1)[some] / mass[some]).max()) / length
                share = _per_clause(H, clause_onehot) / clause_total
                cursor_clause = int(share[some].argmax(1).max())

        W = match(idx.tolist())
        mass = W.sum(1)
        X[:, col["prompt_coverage"]] = mass / total
        head = np.array(pt.head, bool) & (clauses == cursor_clause + 1)  # the next clause's
        head_total = float(weights[head].sum()) if head.any() else 0.0
        X[:, col["head_coverage"]] = W[:, head].sum(1) / head_total if head_total > 0 else np.nan
        X[:, col["prompt_new_coverage"]] = (W * ~covered).sum(1) / total
        with np.errstate(invalid="ignore", divide="ignore"):
            pos = np.where(mass > 0, (W * positions).sum(1) / mass / length, np.nan)
        X[:, col["prompt_pos"]] = pos
        X[:, col["prompt_pos_delta"]] = pos - cursor  # NaN when either is undefined
        ahead = (W > 0) & (clauses > cursor_clause)
        X[:, col["prompt_ahead"]] = (W * ahead).sum(1) / total
        # the first clause past the furthest one already explained that mentions the candidate
        first = np.where(ahead, clauses, np.iinfo(np.int64).max).min(1)
        X[:, col["prompt_next_clause"]] = np.where(ahead.any(1), first - cursor_clause, np.nan)

        # the roles asked for in the next clause, and in any clause not yet reached
        cand_roles = [t.role_name[i] for i in idx]
        next_roles = frozenset().union(
            *(r for r, c in zip(roles_at, pt.clauses, strict=True) if c == cursor_clause + 1))
        ahead_roles = frozenset().union(
            *(r for r, c in zip(roles_at, pt.clauses, strict=True) if c > cursor_clause))
        X[:, col["next_clause_role_verb"]] = [r in next_roles for r in cand_roles]
        X[:, col["ahead_role_verb"]] = [r in ahead_roles for r in cand_roles]

        # Clause alignment: share of each clause the candidate explains; the clauses right
        # after the cursor count most, and being the best candidate for a clause counts too.
        S = _per_clause(W, clause_onehot) / clause_total  # (candidates, clauses)
        k = np.arange(pt.n_clauses)
        decay = np.where(k > cursor_clause, 0.5 ** np.maximum(k - cursor_clause - 1, 0), 0.0)
        X[:, col["clause_next_score"]] = (S * decay.astype(np.float32)).sum(1)
        has = S.max(1) > 0
        X[:, col["clause_best_delta"]] = np.where(has, S.argmax(1) - cursor_clause, np.nan)
        best = (S > 0) & (S >= S.max(0, keepdims=True)) & (k > cursor_clause)
        X[:, col["clause_first_best"]] = np.where(
            best.any(1), np.where(best, k, pt.n_clauses).min(1) - cursor_clause, np.nan
        )
        return cursor_clause

    def _semantic(
        self, X: np.ndarray, t: SpecTables, spec: SpecIndex, idx: np.ndarray, pt: PromptTokens,
        history: Sequence[Call], cursor_clause: int,
    ) -> None:
        col = _COL
        wv = t.word_vectors
        if wv is None:
            X[:, [col[name] for name in _SEMANTIC]] = np.nan
            return
        V = t.op_vectors
        cand = V[idx]
        seen = [spec.by_key[c.operation.key] for c in history
                if c.operation is not None and c.operation.key in spec.by_key]
        last = history[-1].operation if history else None
        if last is not None and last.key in spec.by_key:
            X[:, col["sem_last_call"]] = _dot(cand, V[spec.by_key[last.key]][None, :])[:, 0]
        else:
            X[:, col["sem_last_call"]] = np.nan
        X[:, col["sem_history_max"]] = _dot(cand, V[seen]).max(1) if seen else np.nan
        if pt.empty:
            for name in _SEMANTIC_PROMPT:
                X[:, col[name]] = np.nan
            return

        # cosines of the whole prompt and of each clause with every operation of the spec
        clauses = np.array(pt.clauses, np.int64)
        P = _prompt_vectors(wv, pt)
        known = (P != 0).any(1)
        sims = _dot(P, V)  # (1 + clauses, operations)
        whole = sims[0]
        X[:, col["sem_prompt"]] = whole[idx] if known[0] else np.nan
        X[:, col["sem_prompt_rank"]] = (
            np.log1p(np.searchsorted(np.sort(-whole), -whole[idx], side="left"))
            if known[0] else np.nan
        )
        C = sims[1:, idx].T  # (candidates, clauses)
        k = np.arange(pt.n_clauses)
        valid = known[1:]
        nxt = cursor_clause + 1
        X[:, col["sem_next_clause"]] = C[:, nxt] if nxt < pt.n_clauses and valid[nxt] else np.nan
        decay = np.where((k > cursor_clause) & valid,
                         0.5 ** np.maximum(k - cursor_clause - 1, 0), 0.0).astype(np.float32)
        X[:, col["sem_clause_next_score"]] = (
            (C * decay).sum(1) / decay.sum() if decay.sum() > 0 else np.nan
        )
        X[:, col["sem_clause_best_delta"]] = (
            np.where(valid, C, -np.inf).argmax(1) - cursor_clause if valid.any() else np.nan
        )

        # soft word matching: how well each prompt word is matched by the operation's closest
        # word, 0 below SOFT_FLOOR (unrelated words), 1 for the same word
        vecs, weights = wv.token_vectors(list(pt.tokens))
        total = float(weights.sum())
        if total <= 0 or not len(t.word_matrix):
            for name in ("soft_coverage", "soft_new_coverage", "soft_clause_next_score"):
                X[:, col[name]] = 0.0
            return
        S = _dot(unit_rows(vecs, precision=np.float64), t.word_matrix)  # (prompt words, spec words)

        def soft(rows: Sequence[int]) -> np.ndarray:
            # per row, the max of S over the row's words: one gather and one segment max for
            # all rows (a max is exact in any order); a row without words stays 0
            m = np.zeros((len(rows), len(pt.tokens)), np.float32)
            have = [r for r, i in enumerate(rows) if len(t.op_word_cols[i])]
            if have:
                cols = [t.op_word_cols[rows[r]] for r in have]
                starts = np.cumsum([0] + [len(c) for c in cols[:-1]])
                m[have] = np.maximum.reduceat(S[:, np.concatenate(cols)], starts, axis=1).T
            return np.clip((m - SOFT_FLOOR) / (1.0 - SOFT_FLOOR), 0.0, 1.0)

        M = soft(idx.tolist()) * weights
        covered = soft(seen).max(0) if seen else np.zeros(len(pt.tokens), np.float32)
        X[:, col["soft_coverage"]] = M.sum(1) / total
        X[:, col["soft_new_coverage"]] = (M * (1.0 - covered)).sum(1) / total
        onehot = np.zeros((len(pt.tokens), pt.n_clauses), np.float32)
        onehot[np.arange(len(pt.tokens)), clauses] = 1
        clause_total = _per_clause(weights[None, :], onehot)[0]
        share = _per_clause(M, onehot) / np.where(clause_total > 0, clause_total, 1.0)
        soft_decay = np.where((k > cursor_clause) & (clause_total > 0),
                              0.5 ** np.maximum(k - cursor_clause - 1, 0), 0.0).astype(np.float32)
        X[:, col["soft_clause_next_score"]] = (
            (share * soft_decay).sum(1) / soft_decay.sum() if soft_decay.sum() > 0 else np.nan
        )

    def _dataflow(
        self, X: np.ndarray, t: SpecTables, idx: np.ndarray, ops: list[Operation],
        history: Sequence[Call], held: _HeldIds,
    ) -> None:
        col = _COL
        X[:, col["n_path_params"]] = t.n_path_params[idx]
        last_op = history[-1].operation if history else None
        last_resource = last_op.resource if last_op is not None else ""
        have_names = {name_key(n) for c in history for n in (*c.params, *c.path_params)}
        # per candidate, then a column at a time (a candidate without path parameters keeps
        # the zeros of the columns it has no value for)
        out: dict[str, list[float]] = {name: [] for name in _DATAFLOW_ROW}
        for i in idx:
            entities = t.param_entities[i]
            if entities:
                from_history = from_last = from_returns = from_resource = unfilled = 0
                newest = math.inf
                for _name, key, entity in entities:
                    hits = held.matching(key, entity)
                    seen = [s for s in hits if s.origin != "returns"]
                    from_history += bool(seen)
                    from_last += any(s.age == 0 for s in seen)
                    from_returns += any(s.origin == "returns" for s in hits)
                    on_resource = bool(entity) and entity == last_resource
                    from_resource += on_resource
                    unfilled += not hits and not on_resource
                    if hits:
                        newest = min(newest, min(s.age for s in hits))
                k = len(entities)
                out["params_from_history"].append(from_history / k)
                out["params_from_last_call"].append(from_last / k)
                out["params_from_last_returns"].append(from_returns / k)
                out["params_from_last_resource"].append(from_resource / k)
                out["params_unfilled"].append(unfilled)
                out["params_all_filled"].append(unfilled == 0)
                out["params_newest_age"].append(newest if newest != math.inf else np.nan)
                # uses what only the last call returned (not an id that was already around)
                out["consumes_last_output"].append(from_returns > 0 and from_returns > from_history)
            else:
                for name in _DATAFLOW_ROW[:5]:
                    out[name].append(0.0)
                out["params_all_filled"].append(1.0)
                out["params_newest_age"].append(np.nan)
                out["consumes_last_output"].append(0.0)
            required = t.required_nonpath[i]
            out["required_from_history"].append(
                sum(p in have_names for p in required) / len(required) if required else np.nan
            )
        for name, column in out.items():
            X[:, col[name]] = column

    def _request(
        self, X: np.ndarray, t: SpecTables, idx: np.ndarray, ops: list[Operation],
        history: Sequence[Call], prompt: str | None, pt: PromptTokens, held: _HeldIds,
    ) -> None:
        col = _COL
        values = request_values(prompt)
        X[:, col["req_values"]] = len(values)
        last_op = history[-1].operation if history else None
        last_resource = last_op.resource if last_op is not None else ""
        have_names = {name_key(n) for c in history for n in (*c.params, *c.path_params)}
        held_entities = {feature_stem(e.rsplit("_", 1)[-1]) for e in held.by_entity}
        valued = {w for v in values for w in v.named}
        # things the request names that some operation needs the id of, with no id for them
        named = (set(pt.stems) & t.needed_entities) - held_entities - valued
        X[:, col["count_asked"]] = t.counts[idx] * asks_count(prompt)
        words = set(pt.stems)
        X[:, col["prompt_param_words"]] = [
            len(t.param_words[i] & words) / len(t.param_words[i]) if t.param_words[i] else np.nan
            for i in idx
        ]
        X[:, col["prompt_words"]] = len(pt.stems)
        X[:, col["prompt_clauses"]] = pt.n_clauses if not pt.empty else 0
        lead = _READ_ROLES if asks_question(prompt) else next(
            (PROMPT_ROLE_VERBS[w] for w in pt.stems if w in PROMPT_ROLE_VERBS), None)
        if lead is None:
            X[:, col["lead_role"]] = np.nan
            X[:, col["lead_read_get"]] = np.nan
        else:
            reads = lead <= _READ_ROLES
            X[:, col["lead_role"]] = [t.role_name[i] in lead for i in idx]
            X[:, col["lead_read_get"]] = [t.is_get[i] == reads for i in idx]
        # per candidate: its path parameters nobody has, as (position in its path, entity stem)
        missing: list[list[tuple[int, str]]] = []
        # per candidate, then a column at a time: one numpy assignment per column, not per cell
        out: dict[str, list[float]] = {name: [] for name in _REQUEST_ROW}
        for i, op in zip(idx, ops, strict=True):
            missing.append([])
            fills = request_fills(op, values, t.namings[i]) if values else {}
            out["req_fills"].append(len(fills))
            required = 0
            available = filled = 0
            path_missing = 0
            unheld_named = False
            for k, ((name, key, entity), stem) in enumerate(
                    zip(t.param_entities[i], t.path_entity_stems[i], strict=True)):
                required += 1
                by_request = name in fills
                filled += by_request
                ok = (by_request or bool(held.matching(key, entity))
                      or (bool(entity) and entity == last_resource))
                available += ok
                path_missing += not ok
                unheld_named |= not ok and stem in named
                if not ok:
                    missing[-1].append((t.param_positions[i][k], stem))
            for pname in t.required_nonpath_names[i]:
                required += 1
                filled += pname in fills
                available += pname in fills or name_key(pname) in have_names
            out["req_fills_required"].append(filled / required if required else np.nan)
            out["inputs_available"].append(available / required if required else 1.0)
            out["callable_now"].append(available == required)
            out["needs_named_id"].append(unheld_named)
            # a search's query is the named thing itself: only its path must be callable
            out["finds_named"].append(bool(named) and not path_missing and (
                (t.role_name[i] in ("list", "search") and bool(t.path_words[i] & named))
                or bool(t.returns_entity_stems[i] & named)
            ))
        for name, column in out.items():
            X[:, col[name]] = column
        self._asked_id(X, t, idx, missing)

    @staticmethod
    def _asked_id(
        X: np.ndarray, t: SpecTables, idx: np.ndarray, missing: list[list[tuple[int, str]]],
    ) -> None:
        """The candidate the request names most directly (best BM25): whether it needs an id
        nobody has, and which callable reads give it (its collection: the path before the
        missing parameter; a list or search of the thing; a response carrying its id)."""
        col = _COL
        bm25 = X[:, col["bm25"]]
        if not len(idx) or not (bm25.max() > 0):
            X[:, col["asked_needs_id"]] = np.nan
            X[:, col["yields_asked_id"]] = np.nan
            return
        a = int(bm25.argmax())
        need = missing[a]
        X[:, col["asked_needs_id"]] = bool(need)
        if not need:
            return
        asked = t.norm_segments[idx[a]]
        stems = {s for _k, s in need if s}
        prefixes = {asked[:k] for k, _s in need if k > 0}
        for r, i in enumerate(idx):
            if r == a or missing[r] or not t.is_get[i]:
                continue
            X[r, col["yields_asked_id"]] = (
                t.norm_segments[i] in prefixes
                or bool(t.returns_entity_stems[i] & stems)
                or (t.role_name[i] in ("list", "search") and bool(t.path_words[i] & stems))
            )

    def _structure(
        self, X: np.ndarray, t: SpecTables, spec: SpecIndex, idx: np.ndarray,
        ops: list[Operation], history: Sequence[Call],
    ) -> list[str] | None:
        """Relations to the last two calls; returns the relation to the last one per candidate."""
        col = _COL
        X[:, col["depth"]] = t.depth[idx]
        resources = Counter(c.operation.resource for c in history if c.operation is not None)
        X[:, col["resource_seen"]] = [resources.get(op.resource, 0) for op in ops]
        last = history[-1].operation if history else None
        last2 = history[-2].operation if len(history) > 1 else None
        rels: list[str] | None = None
        if last is None:
            for name in _REL_LAST:
                X[:, col[name]] = np.nan
        else:
            a = _segments_of(t, spec, last)
            rels = [relation_of_segments(a, t.norm_segments[i]) for i in idx]
            j = spec.by_key.get(last.key)
            if j is not None:
                lv = t.vocab[j]
                X[:, col["last_call_overlap"]] = [
                    len(lv & t.vocab[i]) / max(len(lv | t.vocab[i]), 1) for i in idx
                ]
            rel = np.array(rels)
            X[:, col["rel_same"]] = rel == "same"
            X[:, col["rel_child"]] = rel == "child"
            X[:, col["rel_parent"]] = rel == "parent"
            X[:, col["rel_sibling"]] = rel == "sibling"
            X[:, col["rel_same_op"]] = [op.key == last.key for op in ops]
            X[:, col["rel_same_resource"]] = [
                bool(op.resource) and op.resource == last.resource for op in ops
            ]
            shared = []
            for i in idx:
                b = t.norm_segments[i]
                common = 0
                for x, y in zip(a, b, strict=False):
                    if x != y:
                        break
                    common += 1
                shared.append(common / max(len(a), len(b), 1))
            X[:, col["shared_prefix"]] = shared
            X[:, col["depth_delta"]] = t.depth[idx] - len(a)
        if last2 is None:
            for name in _REL_LAST2:
                X[:, col[name]] = np.nan
        else:
            a2 = _segments_of(t, spec, last2)
            rel2 = np.array([relation_of_segments(a2, t.norm_segments[i]) for i in idx])
            X[:, col["rel2_same"]] = rel2 == "same"
            X[:, col["rel2_child"]] = rel2 == "child"
            X[:, col["rel2_parent"]] = rel2 == "parent"
            X[:, col["rel2_same_resource"]] = [
                bool(op.resource) and op.resource == last2.resource for op in ops
            ]
        return rels

    def _transitions(
        self, X: np.ndarray, ops: list[Operation], history: Sequence[Call],
        rels: list[str] | None,
    ) -> None:
        col = _COL
        tr = self.transitions
        last = history[-1].operation if history else None
        # An unknown last call is not a cold start, but its role is unknown: START is the
        # closest prior the transitions have.
        last_role = last.role if last is not None else None
        last_method = history[-1].method if history else None
        by_role = {role: (tr.p_role(last_role, role), tr.role_lift(last_role, role)) for role in ROLES}
        X[:, col["p_role"]] = [by_role[op.role][0] for op in ops]
        X[:, col["role_lift"]] = [by_role[op.role][1] for op in ops]
        X[:, col["p_method"]] = [tr.p_method(last_method, op.method) for op in ops]
        if last is not None:
            X[:, col["last_role_" + last.role]] = 1.0
        if last is None or rels is None:
            X[:, col["p_relation"]] = np.nan
            X[:, col["relation_lift"]] = np.nan
        else:
            by_rel = {rel: (tr.p_relation(rel, last.role), tr.relation_lift(rel, last.role))
                      for rel in RELATIONS}
            X[:, col["p_relation"]] = [by_rel[rel][0] for rel in rels]
            X[:, col["relation_lift"]] = [by_rel[rel][1] for rel in rels]


@lru_cache(maxsize=1024)
def _prompt_vectors(wv: WordVectors, pt: PromptTokens) -> np.ndarray:
    """Unit vectors of the whole prompt and of each of its clauses (read-only): the requests of
    one workflow share its prompt, as :func:`prompt_stems` has it."""
    docs: list[list[tuple[list[str], Any]]] = [[(list(pt.tokens), 1.0)]]
    docs += [[([tok for tok, c in zip(pt.tokens, pt.clauses, strict=True) if c == k], 1.0)]
             for k in range(pt.n_clauses)]
    P = wv.embed_docs(docs)
    P.flags.writeable = False
    return P


def _dot(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``A @ B.T`` in float64, rounded to float32: BLAS kernels differ between machines in the
    last bits of float64, which float32 rounding then hides, so training and serving agree."""
    return (np.asarray(A, np.float64) @ np.asarray(B, np.float64).T).astype(np.float32)


def _per_clause(M: np.ndarray, onehot: np.ndarray) -> np.ndarray:
    """``M @ onehot`` for these tiny matrices, summed elementwise: no BLAS call (whose kernels
    vary by CPU), so the bits are the same on every machine."""
    return (M[:, :, None] * onehot[None, :, :]).sum(1)


def _group_rank(values: np.ndarray) -> np.ndarray:
    """Per column of ``values`` (candidates, features): 0 for the best value of the group, ties
    share the better rank; NaN ranks last; a column of NaN only is NaN."""
    missing = np.isnan(values)
    v = np.where(missing, -np.inf, values)
    ranks = (v[None, :, :] > v[:, None, :]).sum(1).astype(np.float32)
    ranks[:, missing.all(0)] = np.nan
    return ranks


def _group_gap(values: np.ndarray) -> np.ndarray:
    """Per column of ``values`` (candidates, features): how far below the column's best value
    each is; a column of NaN only is NaN."""
    empty = np.isnan(values).all(0)
    best = np.nanmax(np.where(empty, np.float32(0.0), values), axis=0)
    gaps = values - best
    gaps[:, empty] = np.nan
    return gaps


# The columns _dataflow fills candidate by candidate (the first five are 0 without path params).
_DATAFLOW_ROW = ("params_from_history", "params_from_last_call", "params_from_last_returns",
                 "params_from_last_resource", "params_unfilled", "params_all_filled",
                 "params_newest_age", "consumes_last_output", "required_from_history")
# The columns _request fills candidate by candidate.
_REQUEST_ROW = ("req_fills", "req_fills_required", "inputs_available", "callable_now", "needs_named_id",
                "finds_named")
_REL_LAST = ("last_call_overlap", "rel_same", "rel_child", "rel_parent", "rel_sibling", "rel_same_op",
             "rel_same_resource", "shared_prefix", "depth_delta")
_REL_LAST2 = ("rel2_same", "rel2_child", "rel2_parent", "rel2_same_resource")


def _segments_of(t: SpecTables, spec: SpecIndex, op: Operation) -> tuple[str, ...]:
    i = spec.by_key.get(op.key)
    return t.norm_segments[i] if i is not None else normalized_segments(op)


class _HeldIds:
    """The history's ids (:func:`held_ids`) and, once asked, the ids that fit each parameter
    (:func:`matching_ids`): one request's candidates share their parameters' names."""

    __slots__ = ("by_name", "by_entity", "_fits")

    def __init__(self, history: Sequence[Call]) -> None:
        self.by_name, self.by_entity = held_ids(history)
        self._fits: dict[tuple[str, str], list[IdSource]] = {}

    def matching(self, key: str, entity: str) -> list[IdSource]:
        """:func:`matching_ids` of ``key`` and ``entity`` (the list is shared: do not change it)."""
        fits = self._fits.get((key, entity))
        if fits is None:
            fits = self._fits[key, entity] = matching_ids(key, entity, self.by_name, self.by_entity)
        return fits


def held_ids(history: Sequence[Call]) -> tuple[dict[str, list[IdSource]], dict[str, list[IdSource]]]:
    """The history's ids (:func:`id_sources`, newest first) by name key and by entity."""
    by_name: dict[str, list[IdSource]] = {}
    by_entity: dict[str, list[IdSource]] = {}
    for src in id_sources(history):
        by_name.setdefault(name_key(src.name), []).append(src)
        if src.entity:
            by_entity.setdefault(src.entity, []).append(src)
    return by_name, by_entity


def matching_ids(
    key: str, entity: str, by_name: dict[str, list[IdSource]], by_entity: dict[str, list[IdSource]]
) -> list[IdSource]:
    """Ids the user has that fit a parameter: the same name (a bare ``id`` only for the same
    entity), or an id of the same entity under another name (``{id}`` of /invoices ← invoice_id)."""
    out = [s for s in by_name.get(key, ()) if key not in ID_SUFFIXES or s.entity == entity]
    if entity:
        out += [s for s in by_entity.get(entity, ()) if s not in out]
    return out


assert set(RELATIONS) >= {"same", "child", "parent", "sibling"}
