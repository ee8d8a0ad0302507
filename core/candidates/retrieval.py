"""The embedded candidate generator: no network, deterministic, a few milliseconds per request.

Eight sources each score every operation of the spec, vectorised over a per-spec index:

- ``bm25``: the prompt (and, weighted lower, the last call's words) against each operation's path
  words, summary, description, operationId and tags, with light stemming and compound path words
  ("teamgamelog") matched by their parts; blended with the same score for the prompt's *next
  clause*, since prompts read as plans ("find X, look at its Y, then update Z");
- ``semantic``: the cosine of the prompt (and of its next clause, weighted as for ``bm25``) with
  each operation, from static word vectors distilled from a sentence encoder
  (:mod:`core.priors.word_vectors`; numpy only): "paid" finds ``/invoices/{id}/pay``. Operation vectors
  are built once per spec with the index. Only the operations above the spec's upper quartile
  of cosine are proposed by it; it weighs little in the order (on training APIs it adds recall@10
  and costs a little recall@30) but its score is a feature of the ranker;
- ``dataflow``: operations whose path parameters can be filled from ids the user already has
  (path parameters and id-like parameters of the history, ids the last call returns), and the
  providers of ids that the operations the prompt points at still need;
- ``neighbour``: same resource, sub-resources and parent collection of the last one or two calls;
- ``transition``: roles and path relations that usually follow the last call's role
  (``ranker/models/transitions.json``, learned from workflow data, API-agnostic), and status
  checks after a write (as ``status`` below);
- ``entry``: for a short history, operations without path parameters, ranked by the prompt;
- ``setup``: for a short history, the calls a session makes before its real work whatever the
  prompt says, and which the prompt therefore never names: who the user is (``GET /me``,
  ``GetMembershipsForCurrentUser``), signing in or exchanging a token, and operations that need
  no ids and hand over an id much of the spec requires (``access_token``); not once made;
- ``status``: after a write, the status checks of what it started (``GET /actions/{id}``,
  ``/jobs/{id}/status``): the API's global one or the written resource's, the one whose id the
  user has before the list.

An operation is a candidate when at least one source proposes it; it carries the score of every
source that did. Candidates come back ordered by a weighted sum of the source scores, operations
already called scaled down. The prompt's words dominate that order, so the best proposals of
``setup`` and ``status`` keep a few of the last places (``RESERVED_SLOTS``) when the order left
them out. Destructive operations are proposed only when the prompt asks for one, and are
flagged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from core.candidates.types import Candidate
from core.lexical import BM25, K1, Postings, idf
from core.priors.transitions import normalized_segments
from core.priors.word_vectors import DEFAULT_PATH as WORD_VECTORS_PATH
from core.priors.word_vectors import load_word_vectors
from core.spec.index import Call, SpecIndex
from core.spec.operations import Operation
from core.spec_tables import PerSpecCache
from core.vocabulary import (
    AUTH_WORDS,
    ID_WORDS,
    PLAN_CLAUSE_BREAK,
    ROLES,
    VERSION_SEGMENT,
    ends_in_reference,
    id_entity,
    index_stem,
    path_param_names,
    singular,
    snake_name,
    tokenize,
    wants_destructive,
)

if TYPE_CHECKING:
    from core.priors.transitions import Transitions
    from core.priors.word_vectors import WordVectors

__all__ = [
    "CANDIDATE_LIMIT", "HISTORY_CANDIDATE_LIMIT", "RetrievalGenerator", "RetrievalIndex",
    "SOURCE_WEIGHTS", "candidate_limit", "wants_destructive", "terms",
]

# Candidates per request without a history: what the service ranks and the ranker is trained on
# for a direct ask. A pool of 50 for every request lost direct asks (docs/accuracy.md, "The
# targets the generator never proposes; a larger pool").
CANDIDATE_LIMIT = 30
# Candidates per request after a history (workflow steps, find-id asks after a read): their
# targets are the ones a pool of 30 misses most (docs/accuracy.md, "A pool of 50 when the
# request has a history").
HISTORY_CANDIDATE_LIMIT = 50
# How much each source counts in the generator's own order (each score is in [0, 1]).
SOURCE_WEIGHTS = {
    "bm25": 2.5, "semantic": 0.5, "dataflow": 0.6, "neighbour": 0.35, "transition": 0.25,
    "entry": 0.6, "setup": 0.3, "status": 0.3,
}
# Field weights of the BM25 document: the path and summary say most about an operation.
FIELD_WEIGHTS = {"path": 2.0, "operation_id": 1.0, "summary": 2.0, "description": 0.5, "tags": 1.0}
COMPOUND_WEIGHT = 0.5  # a piece of a split compound word, relative to a whole word
SUBSTRING_CACHE = 4096  # prompt words remembered per spec index for compound matching
CLAUSE_WEIGHT = 1.5  # the prompt's next clause, relative to the whole prompt
LAST_CALL_WEIGHT = 0.3  # the last call's words, relative to the prompt's
DONE_WORD_WEIGHT = 0.6  # a prompt word the history already acted on
BODY_DATAFLOW = 0.15  # an id the user has fits a required body/query parameter (weak evidence)
PREREQUISITE_TOP = 8  # prompt-relevant operations whose missing ids are looked for
PREREQUISITE_WEIGHT = 0.6  # a provider of such an id, relative to a fully fillable operation
STATUS_DATAFLOW = 0.8  # a status check right after a write
STATUS_UNRELATED = 0.3  # a status check of another resource than the write's, relative
STATUS_VAGUE = 0.8  # a list of actions or jobs, or one whose id the user hasn't got, relative
SETUP_HISTORY = 4  # the setup source speaks while the history is shorter than this
SETUP_AUTH = 0.6  # signing in / exchanging a token, relative to asking who the user is
SETUP_HUB_SHARE = 0.05  # an id needed by this share of the spec's operations makes a hub
# Slots of the ``limit`` kept for the best proposals of sources that the prompt's words can't
# find (setup calls, status checks): the weighted order would push them out behind prompt matches.
RESERVED_SLOTS = {"setup": 2, "status": 2}
REPEAT_FACTOR = 0.4  # combined score kept by an operation already called (repeats are rare)
SEMANTIC_QUANTILE = 0.75  # the semantic source proposes operations above this cosine quantile
SEMANTIC_RELEVANCE = 0.5  # semantic vs bm25 in the prompt relevance of entry and prerequisites
DEFAULT_INDEX_CACHE = 64

# What an asynchronous write hands back to check on: GET /actions/{id}, /jobs/{id}/status ...
_STATUS_NOUNS = frozenset(
    "action operation job task request status state progress result execution".split()
)
# Asking who the user is: GET /me, /users/@me, /self, GetMembershipsForCurrentUser.
_SELF_WORDS = frozenset("me self whoami myself my".split())
_CURRENT_OF = frozenset("user account member profile identity".split())


def candidate_limit(history: Sequence[Call]) -> int:
    """How many candidates a request gets: ``HISTORY_CANDIDATE_LIMIT`` after any call,
    ``CANDIDATE_LIMIT`` without one. Serving, training and the benchmarks all take it from here
    (the default of :meth:`RetrievalGenerator.generate`)."""
    return HISTORY_CANDIDATE_LIMIT if history else CANDIDATE_LIMIT


def terms(text: str) -> list[str]:
    """The BM25 terms of a text: ``tokenize`` then :func:`~core.vocabulary.index_stem`."""
    return [index_stem(t) for t in tokenize(text)]


def _split_compound(word: str, vocabulary: set[str], *, max_parts: int = 4) -> list[str] | None:
    """'projecttravelexpense' → ['project', 'travel', 'expense'] when every part is a word of the
    spec (min. 3 letters); None when it cannot be split. Fewest parts wins."""
    n = len(word)
    best: list[list[str] | None] = [None] * (n + 1)
    best[0] = []
    for end in range(3, n + 1):
        for start in range(0, end - 2):
            prefix = best[start]
            if prefix is None or len(prefix) >= max_parts:
                continue
            piece = word[start:end]
            current = best[end]
            if piece in vocabulary and (current is None or len(prefix) + 1 < len(current)):
                best[end] = [*prefix, piece]
    found = best[n]
    return found if found is not None and len(found) > 1 else None


def _path_param_entities(op: Operation) -> list[tuple[str, str]]:
    """(name, entity) of each path parameter, in path order."""
    out = []
    previous: str | None = None
    for seg in op.segments:
        names = path_param_names(seg)
        if not names:
            if not VERSION_SEGMENT.match(seg):
                previous = seg
            continue
        for name in names:
            out.append((name, id_entity(name, previous)))
    return out


def _is_status_check(op: Operation) -> bool:
    if op.method != "GET" or not op.literal_segments:
        return False
    return op.resource in _STATUS_NOUNS or singular(op.literal_segments[-1].lower()) in _STATUS_NOUNS


class _Vocab(dict[str, int]):
    def id(self, key: str) -> int:
        found = self.get(key)
        if found is None:
            found = self[key] = len(self)
        return found


class RetrievalIndex:
    """Everything about one spec that the generator needs, precomputed as numpy arrays."""

    def __init__(self, spec: SpecIndex, *, word_vectors: WordVectors | None = None) -> None:
        ops = spec.operations
        n = len(ops)
        self.spec_hash = spec.spec_hash
        self.size = n
        self.by_key = dict(spec.by_key)
        self.destructive = np.array([op.destructive for op in ops], dtype=bool)
        self.has_path_params = np.array([bool(op.path_params) for op in ops], dtype=bool)
        self.role = np.array([ROLES.index(op.role) for op in ops], dtype=np.int8)
        self.status_check = np.array([_is_status_check(op) for op in ops], dtype=np.float32)
        # /actions/{id}, /jobs/{id}: the API's own status endpoint, good after any write
        self.status_global = self.status_check.astype(bool) & np.array(
            [bool(op.literal_segments) and singular(op.literal_segments[0].lower()) in _STATUS_NOUNS
             for op in ops], dtype=bool,
        )
        # GET /actions, /jobs: all of them, not the one a write started (/status is one state)
        self.status_list = self.status_check.astype(bool) & np.array(
            [bool(op.segments) and "{" not in op.segments[-1]
             and singular(op.segments[-1].lower()) != op.segments[-1].lower() for op in ops],
            dtype=bool,
        )
        self._build_bm25(ops)
        self._build_structure(ops)
        self._build_dataflow(ops)
        self._build_setup(ops)
        self.word_vectors = word_vectors
        self.op_vectors: np.ndarray | None = None
        if word_vectors is not None:
            from core.priors.word_vectors import operation_vectors

            self.op_vectors = operation_vectors(word_vectors, ops)

    # -- BM25 ------------------------------------------------------------------------------

    def _build_bm25(self, ops: Sequence[Operation]) -> None:
        fields = [
            {
                "path": tokenize(" ".join(s.strip("{}") for s in op.segments)),
                "operation_id": tokenize(op.operation_id or ""),
                "summary": tokenize(op.summary),
                "description": tokenize(op.description),
                "tags": tokenize(" ".join(op.tags)),
            }
            for op in ops
        ]
        # Words of the spec that stand alone somewhere: the pieces compound path segments such
        # as "projecttravelexpenses" are split into.
        vocabulary = {t for d in fields for words in d.values() for t in words if len(t) >= 3}
        splits: dict[str, list[str] | None] = {}
        tfs: list[dict[str, float]] = []
        for d in fields:
            tf: dict[str, float] = {}
            for field_name, words in d.items():
                weight = FIELD_WEIGHTS[field_name]
                for token in words:
                    term = index_stem(token)
                    tf[term] = tf.get(term, 0.0) + weight
                    if len(token) >= 6 and field_name in ("path", "operation_id"):
                        if token not in splits:
                            splits[token] = _split_compound(token, vocabulary - {token})
                        for piece in splits[token] or ():
                            term = index_stem(singular(piece))
                            tf[term] = tf.get(term, 0.0) + COMPOUND_WEIGHT * weight
            tfs.append(tf)
        bm25 = BM25(tfs, precision=np.float64)
        self.postings = bm25.postings
        # Compound path words ("teamgamelog") by the operations that have them, so that a prompt
        # word found inside one still counts (see _substring_postings).
        compounds: dict[str, set[int]] = {}
        for i, d in enumerate(fields):
            for token in (*d["path"], *d["operation_id"]):
                if len(token) >= 6:
                    compounds.setdefault(token, set()).add(i)
        self._compounds = {
            t: np.fromiter(sorted(ds), dtype=np.int32) for t, ds in compounds.items()
        }
        f = COMPOUND_WEIGHT * FIELD_WEIGHTS["path"]
        self._compound_tf = (f * (K1 + 1) / (f + bm25.norm)).astype(np.float32)
        self._substring_cache: dict[str, Postings | None] = {}
        self.call_words = [
            tokenize(" ".join(op.literal_segments) + " " + (op.operation_id or "")) for op in ops
        ]
        self.call_stems = [
            {index_stem(t) for t in (*words, *tokenize(op.summary))}
            for words, op in zip(self.call_words, ops, strict=True)
        ]

    def _substring_postings(self, token: str) -> Postings | None:
        found = self._substring_cache.get(token, False)
        if found is not False:
            return found  # type: ignore[return-value]
        result = None
        if len(token) >= 3:
            hits = [d for word, d in self._compounds.items() if token in word and token != word]
            if hits:
                docs = np.unique(np.concatenate(hits))
                weights = self._compound_tf[docs] * idf(self.size, len(docs))
                result = Postings(docs, weights.astype(np.float32))
        if len(self._substring_cache) > SUBSTRING_CACHE:
            self._substring_cache.clear()
        self._substring_cache[token] = result
        return result

    def bm25(self, tokens: Sequence[str], weights: Sequence[float] | None = None) -> np.ndarray:
        """BM25 of ``tokenize``d words (stemmed here), each optionally weighted; a word also
        matches inside compound path words, at a lower weight."""
        scores = np.zeros(self.size, dtype=np.float32)
        seen: dict[str, float] = {}
        for i, token in enumerate(tokens):
            w = 1.0 if weights is None else weights[i]
            seen[token] = max(seen.get(token, 0.0), w)
        term_scores = np.zeros(self.size, dtype=np.float32)
        for token, w in seen.items():
            p = self.postings.get(index_stem(token))
            sub = self._substring_postings(token)
            if p is None and sub is None:
                continue
            term_scores[:] = 0.0
            if p is not None:
                term_scores[p.docs] = p.weights
            if sub is not None:
                term_scores[sub.docs] = np.maximum(term_scores[sub.docs], sub.weights)
            scores += w * term_scores
        return scores

    # -- structure ---------------------------------------------------------------------------

    def _build_structure(self, ops: Sequence[Operation]) -> None:
        prefixes = _Vocab()
        segs = [normalized_segments(op) for op in ops]
        colls = []
        for s in segs:
            c = s
            while c and c[-1] == "{}":
                c = c[:-1]
            colls.append(c)
        self.seg_id = np.array([prefixes.id("/".join(s)) for s in segs], dtype=np.int32)
        self.coll_id = np.array([prefixes.id("/".join(c)) for c in colls], dtype=np.int32)
        self.first_id = np.array(
            [prefixes.id("/".join(c[:1])) if c else -1 for c in colls], dtype=np.int32
        )
        depth = max((len(s) for s in segs), default=0)
        # Row i: ids of every leading prefix of operation i's path (-2 pads).
        self.prefix_ids = np.full((len(ops), max(depth, 1)), -2, dtype=np.int32)
        for i, s in enumerate(segs):
            for d in range(1, len(s) + 1):
                self.prefix_ids[i, d - 1] = prefixes.id("/".join(s[:d]))
        self.depth = np.array([len(s) for s in segs], dtype=np.int16)

    def relations(self, last: int) -> dict[str, np.ndarray]:
        """Boolean masks of same/child/parent/sibling relative to operation ``last``."""
        same = self.coll_id == self.coll_id[last]
        child = ~same & (
            (self.prefix_ids == self.seg_id[last]).any(axis=1)
            | (self.prefix_ids == self.coll_id[last]).any(axis=1)
        ) & (self.depth > self.depth[last])
        last_prefixes = self.prefix_ids[last]
        parent = ~same & ~child & (
            _member(self.seg_id, last_prefixes) | _member(self.coll_id, last_prefixes)
        ) & (self.depth < self.depth[last])
        sibling = ~same & ~child & ~parent & (self.first_id == self.first_id[last]) & (
            self.first_id >= 0
        )
        return {"same": same, "child": child, "parent": parent, "sibling": sibling}

    # -- dataflow ----------------------------------------------------------------------------

    def _build_dataflow(self, ops: Sequence[Operation]) -> None:
        self.names = _Vocab()
        self.entities = _Vocab()
        pair_op: list[int] = []
        pair_entity: list[int] = []
        pair_name: list[int] = []
        pair_path: list[bool] = []
        self.path_entities: list[list[tuple[str, str]]] = []
        self.resource_entity: list[str] = []
        for i, op in enumerate(ops):
            pe = _path_param_entities(op)
            self.path_entities.append(pe)
            self.resource_entity.append(op.resource or "")
            for name, entity in pe:
                pair_op.append(i)
                pair_entity.append(self.entities.id(entity))
                pair_name.append(self.names.id(snake_name(name)))
                pair_path.append(True)
            path_names = set(op.path_params)
            for p in op.params:
                # Required id-like body/query parameters also consume an id (POST /lines
                # with invoice_id in its body), though less tellingly than a path parameter.
                if (
                    p.required and p.name not in path_names and p.location != "header"
                    and ends_in_reference(p.name)
                ):
                    pair_op.append(i)
                    pair_entity.append(self.entities.id(id_entity(p.name, op.resource)))
                    pair_name.append(self.names.id(snake_name(p.name)))
                    pair_path.append(False)
        self.pair_op = np.asarray(pair_op, dtype=np.int32)
        self.pair_entity = np.asarray(pair_entity, dtype=np.int32)
        self.pair_name = np.asarray(pair_name, dtype=np.int32)
        self.pair_path = np.asarray(pair_path, dtype=bool)
        self.n_path = np.bincount(self.pair_op[self.pair_path], minlength=self.size)
        self.returns = [
            [(snake_name(r), id_entity(r, op.resource)) for r in op.returns_ids] for op in ops
        ]
        self.pair_start = np.searchsorted(self.pair_op, np.arange(self.size + 1)).astype(np.int32)
        # Who hands over each entity: operations returning its id, and list/search/create calls
        # of its own collection. "membership" also serves "destiny_membership" and vice versa.
        provided: dict[str, set[int]] = {}
        for i, op in enumerate(ops):
            entities = {e for _, e in self.returns[i]}
            if op.role in ("list", "search", "create") and op.resource:
                entities.add(id_entity("id", op.resource))
            for e in entities - ID_WORDS:
                provided.setdefault(e, set()).add(i)
        longer: dict[str, list[str]] = {}  # "membership" -> ["destiny_membership", ...]
        for e in provided:
            parts = e.split("_")
            for k in range(1, len(parts)):
                longer.setdefault("_".join(parts[k:]), []).append(e)
        self.providers: list[np.ndarray] = []
        for entity in self.entities:  # in id order
            found: set[int] = set()
            if entity not in ID_WORDS:
                parts = entity.split("_")
                related = ["_".join(parts[k:]) for k in range(len(parts))] + longer.get(entity, [])
                for e in related:
                    found |= provided.get(e, set())
            self.providers.append(np.fromiter(sorted(found), dtype=np.int32, count=len(found)))

    # -- setup -------------------------------------------------------------------------------

    def _build_setup(self, ops: Sequence[Operation]) -> None:
        """How much each operation looks like a call a session makes before its real work: who
        the user is (GET /me), signing in or exchanging a token, or handing over an id that much
        of the spec requires (a hub); 0 for operations that need ids or destroy something."""
        consumers: dict[str, int] = {}
        for op in ops:
            needed = {snake_name(p.name) for p in op.params
                      if (p.required or p.location == "path") and p.location != "header"}
            for key in needed:
                consumers[key] = consumers.get(key, 0) + 1
        setup = np.zeros(len(ops), dtype=np.float32)
        for i, op in enumerate(ops):
            if op.path_params or op.destructive or op.role == "delete":
                continue
            words = set(tokenize(" ".join(op.literal_segments) + " " + (op.operation_id or ""),
                                 keep_stopwords=True))
            if words & _SELF_WORDS or ("current" in words and words & _CURRENT_OF):
                named = 1.0
            elif words & AUTH_WORDS:
                named = SETUP_AUTH
            else:
                named = 0.0
            needed_by = max(
                (consumers.get(name, 0) for name, _ in self.returns[i] if name not in ID_WORDS),
                default=0,
            ) / max(len(ops), 1)
            hub = 0.0
            if needed_by >= SETUP_HUB_SHARE:
                hub = min(1.0, needed_by / (4 * SETUP_HUB_SHARE))
            setup[i] = (named + hub) / 2
        self.setup = np.minimum(setup, 1.0)


def _prerequisites(index: RetrievalIndex, relevance: np.ndarray, have: np.ndarray) -> np.ndarray:
    """For the operations most relevant to the prompt, the providers of the path ids the user
    doesn't have yet, scored by that relevance."""
    out = np.zeros(index.size, dtype=np.float32)
    top = np.argsort(-relevance, kind="stable")[:PREREQUISITE_TOP]
    for i in top.tolist():
        weight = float(relevance[i])
        if weight <= 0:
            break
        lo, hi = index.pair_start[i], index.pair_start[i + 1]
        for e in index.pair_entity[lo:hi][index.pair_path[lo:hi]].tolist():
            if have[e] > 0:
                continue
            who = index.providers[e]
            if len(who):
                out[who] = np.maximum(out[who], weight)
    return out


# Weight of a clause by its place relative to the furthest clause the history acted on.
_CLAUSE_NEXT, _CLAUSE_AFTER_NEXT, _CLAUSE_CURRENT, _CLAUSE_OTHER = 1.0, 0.5, 0.7, 0.1


def _member(ids: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``np.isin(ids, values)`` for the few values of one path's prefixes: a comparison per value
    costs less than isin's sorting."""
    found = np.zeros(len(ids), bool)
    for value in values.tolist():
        found |= ids == value
    return found


def _over_max(scores: np.ndarray) -> np.ndarray:
    """``scores`` divided by their maximum, so the best is 1; as they are when none is positive."""
    top = float(scores.max()) if len(scores) else 0.0
    return scores / top if top > 0 else scores


def _plan(
    index: RetrievalIndex, history: Sequence[Call], prompt: str
) -> list[tuple[list[str], float]]:
    """The prompt's clauses (tokens) with a weight each by its place relative to the furthest
    clause the history acted on: the clause right after it weighs most."""
    clauses = [c for c in (tokenize(part) for part in PLAN_CLAUSE_BREAK.split(prompt)) if c]
    if not clauses:
        return []
    stems = [set(map(index_stem, c)) for c in clauses]
    frontier = -1
    for call in history:
        j = index.by_key.get(call.operation.key) if call.operation else None
        if j is None:
            continue
        words = index.call_stems[j]
        overlap = [len(words & c) for c in stems]
        if max(overlap) > 0:
            # Most overlap; among equals, the clause closest to just after the frontier.
            frontier = max(
                frontier,
                max(range(len(stems)), key=lambda k: (overlap[k], -abs(k - frontier - 1))),
            )
    return [
        (clause, _CLAUSE_NEXT if k == frontier + 1 else _CLAUSE_AFTER_NEXT if k == frontier + 2
         else _CLAUSE_CURRENT if k == frontier else _CLAUSE_OTHER)
        for k, clause in enumerate(clauses)
    ]


def _plan_scores(index: RetrievalIndex, plan: Sequence[tuple[list[str], float]]) -> np.ndarray:
    if not plan:
        return np.zeros(index.size, dtype=np.float32)
    tokens: list[str] = []
    weights: list[float] = []
    for clause, w in plan:
        tokens += clause
        weights += [w] * len(clause)
    return index.bm25(tokens, weights)


def _semantic_scores(
    index: RetrievalIndex, prompt_tokens: Sequence[str], plan: Sequence[tuple[list[str], float]]
) -> np.ndarray:
    """Cosine of the prompt, and of its clauses weighted as in :func:`_plan`, with every
    operation (word vectors; see :mod:`core.priors.word_vectors`); in [-1, 1]."""
    wv, V = index.word_vectors, index.op_vectors
    if wv is None or V is None or not prompt_tokens:
        return np.zeros(index.size, dtype=np.float32)
    P = _prompt_vectors(wv, tuple(prompt_tokens), tuple(tuple(clause) for clause, _ in plan))
    sims = P @ V.T
    whole = sims[0]
    if len(plan) < 2:
        return whole.astype(np.float32)
    w = np.array([weight for _, weight in plan], np.float32)
    by_clause = (sims[1:] * w[:, None]).sum(0) / w.sum()
    return ((whole + CLAUSE_WEIGHT * by_clause) / (1.0 + CLAUSE_WEIGHT)).astype(np.float32)


@lru_cache(maxsize=1024)
def _prompt_vectors(
    wv: WordVectors, prompt_tokens: tuple[str, ...], clauses: tuple[tuple[str, ...], ...]
) -> np.ndarray:
    """Unit vectors of the prompt and of its clauses (read-only): the requests of one workflow
    share its prompt."""
    docs = [[(list(prompt_tokens), 1.0)], *([(list(clause), 1.0)] for clause in clauses)]
    P = wv.embed_docs(docs)
    P.flags.writeable = False
    return P


def _semantic_source(cosine: np.ndarray) -> np.ndarray:
    """The semantic source's score in [0, 1]: the operations above the spec's
    ``SEMANTIC_QUANTILE`` of cosine, scaled up to 1 for the best; 0 for the rest."""
    if not len(cosine):
        return cosine
    floor = float(np.quantile(cosine, SEMANTIC_QUANTILE))
    top = float(cosine.max())
    if top <= floor:
        return np.zeros_like(cosine)
    return np.clip((cosine - floor) / (top - floor), 0.0, 1.0).astype(np.float32)


@dataclass
class _Known:
    """Ids the user has, by entity and by parameter name, with a weight for how recent."""

    entity: dict[str, float]
    name: dict[str, float]
    fresh: set[str]  # entities returned by the last call and not yet used in any path


def _known_ids(index: RetrievalIndex, history: Sequence[Call]) -> _Known:
    entity: dict[str, float] = {}
    name: dict[str, float] = {}
    used: set[str] = set()

    def add(table: dict[str, float], key: str, w: float) -> None:
        if key and w > table.get(key, 0.0):
            table[key] = w

    for age, call in enumerate(reversed(history)):
        w = 1.0 if age == 0 else max(0.5, 0.85**age)
        op_i = index.by_key.get(call.operation.key) if call.operation else None
        pe = dict(index.path_entities[op_i]) if op_i is not None else {}
        for pname in call.path_params:
            ent = pe.get(pname) or id_entity(pname, None)
            add(entity, ent, w)
            add(name, snake_name(pname), w)
            used.add(ent)
        resource = call.operation.resource if call.operation else None
        for pname in call.params:
            words = tokenize(pname, keep_stopwords=True)
            if words and words[-1] in ID_WORDS:
                add(entity, id_entity(pname, resource), w * 0.9)
                add(name, snake_name(pname), w * 0.9)
        if op_i is not None:
            for rname, rent in index.returns[op_i]:
                add(entity, rent, w * (1.0 if age == 0 else 0.7))
                add(name, rname, w * (1.0 if age == 0 else 0.7))
    fresh: set[str] = set()
    last = history[-1].operation if history else None
    last_i = index.by_key.get(last.key) if last is not None else None
    if last is not None and last_i is not None:
        fresh = {rent for _, rent in index.returns[last_i]}
        # A list/search/create call hands over ids of its own resource even when the response
        # schema doesn't say so.
        if last.role in ("list", "search", "create") and last.resource:
            own = id_entity("id", last.resource)
            fresh.add(own)
            add(entity, own, 1.0)
        fresh -= used | {""}
    return _Known(entity=entity, name=name, fresh=fresh)


class RetrievalGenerator:
    """Candidates for one request from the spec alone; plain class, no Ray, no network."""

    def __init__(
        self,
        *,
        transitions: Transitions | None = None,
        weights: dict[str, float] | None = None,
        cache_size: int = DEFAULT_INDEX_CACHE,
        word_vectors: WordVectors | Path | str | None = WORD_VECTORS_PATH,
    ) -> None:
        """``word_vectors``: the table of the semantic source (a path is loaded, once per
        process); None turns the source off."""
        if cache_size < 1:
            raise ValueError(f"cache_size must be >= 1, got {cache_size}")
        unknown = set(weights or {}) - set(SOURCE_WEIGHTS)
        if unknown:
            raise ValueError(
                f"unknown source weights {sorted(unknown)}; known: {list(SOURCE_WEIGHTS)}"
            )
        self.transitions = transitions
        if isinstance(word_vectors, Path | str):
            word_vectors = load_word_vectors(word_vectors)
        self.word_vectors = word_vectors
        self.weights = {**SOURCE_WEIGHTS, **(weights or {})}
        self._cache: PerSpecCache[RetrievalIndex] = PerSpecCache(
            lambda spec: RetrievalIndex(spec, word_vectors=self.word_vectors), cache_size
        )

    def index_for(self, spec: SpecIndex) -> RetrievalIndex:
        return self._cache.get(spec)

    def scores(
        self, spec: SpecIndex, history: Sequence[Call], prompt: str | None
    ) -> dict[str, np.ndarray]:
        """Every source's score for every operation, each in [0, 1] (0 = not proposed)."""
        index = self.index_for(spec)
        n = index.size
        last_ops = [
            index.by_key[c.operation.key] for c in history[-2:][::-1]
            if c.operation is not None and c.operation.key in index.by_key
        ]
        last = last_ops[0] if last_ops and history[-1].operation is not None else None

        # bm25: the prompt, then the last call's words at a lower weight. Prompt words the
        # history already covered weigh less: what is left of the intent is what comes next.
        tokens = tokenize(prompt or "")
        done: set[str] = set()
        for c in history:
            j = index.by_key.get(c.operation.key) if c.operation else None
            done.update(map(index_stem, index.call_words[j] if j is not None else tokenize(c.path)))
        weights = [DONE_WORD_WEIGHT if index_stem(t) in done else 1.0 for t in tokens]
        if history:
            call = history[-1]
            words = index.call_words[last] if last is not None else tokenize(call.path)
            tokens += words
            weights += [LAST_CALL_WEIGHT] * len(words)
        bm25 = _over_max(index.bm25(tokens, weights))
        semantic = np.zeros(n, dtype=np.float32)
        relevance = bm25
        if prompt:
            # Workflow prompts read as a plan ("find X, look at its Y, then update Z"): the
            # clause right after the last one the history acted on is where the next call is.
            plan = _plan(index, history, prompt)
            bm25 = (bm25 + CLAUSE_WEIGHT * _over_max(_plan_scores(index, plan))) / (
                1.0 + CLAUSE_WEIGHT
            )
            # semantic: the same, by meaning rather than by shared words ("paid" ~ pay).
            semantic = _semantic_source(_semantic_scores(index, tokenize(prompt), plan))
            relevance = (bm25 + SEMANTIC_RELEVANCE * semantic) / (1.0 + SEMANTIC_RELEVANCE)

        # dataflow: path parameters fillable from ids the user has; fresh ids count double.
        dataflow = np.zeros(n, dtype=np.float32)
        fillable = ~index.has_path_params  # every path id known
        if len(index.pair_op):
            known = _known_ids(index, history)
            ent_w = np.zeros(len(index.entities) + 1, dtype=np.float32)
            for ent, w in known.entity.items():
                j = index.entities.get(ent)
                if j is not None:
                    ent_w[j] = w
            name_w = np.zeros(len(index.names) + 1, dtype=np.float32)
            for nm, w in known.name.items():
                j = index.names.get(nm)
                if j is not None:
                    name_w[j] = w
            fresh = np.zeros(len(index.entities) + 1, dtype=bool)
            for ent in known.fresh:
                j = index.entities.get(ent)
                if j is not None:
                    fresh[j] = True
            pw = np.maximum(ent_w[index.pair_entity], name_w[index.pair_name])
            matched = pw > 0
            path = index.pair_path
            n_matched = np.bincount(index.pair_op[path & matched], minlength=n)
            w_sum = np.bincount(index.pair_op[path], weights=pw[path], minlength=n)
            all_filled = (index.n_path > 0) & (n_matched == index.n_path)
            fillable = fillable | all_filled
            mean_w = np.divide(w_sum, np.maximum(index.n_path, 1))
            fresh_use = np.bincount(
                index.pair_op[fresh[index.pair_entity] & matched], minlength=n
            ) > 0
            body_use = np.bincount(index.pair_op[~path & matched], minlength=n) > 0
            dataflow = np.where(all_filled, 0.5 + 0.3 * mean_w, 0.0)
            dataflow = dataflow + 0.2 * (fresh_use & (all_filled | ~index.has_path_params))
            dataflow = dataflow + np.where(~index.has_path_params & body_use, BODY_DATAFLOW, 0.0)
            dataflow = np.minimum(dataflow, 1.0).astype(np.float32)
            if prompt:
                # Backward: the operations the prompt points at need ids the user hasn't got
                # yet; whoever hands those over is a likely next call (GET /me before
                # GET /members/{member_id}/profile).
                dataflow = np.maximum(
                    dataflow, PREREQUISITE_WEIGHT * _prerequisites(index, relevance, ent_w)
                ).astype(np.float32)

        # neighbour: structural relation to the last one or two calls.
        neighbour = np.zeros(n, dtype=np.float32)
        relation_masks = index.relations(last) if last is not None else None
        for k, op_i in enumerate(last_ops):
            masks = (
                relation_masks if k == 0 and relation_masks is not None else index.relations(op_i)
            )
            scale = 1.0 if k == 0 else 0.5
            for rel, value in (("same", 1.0), ("child", 0.9), ("parent", 0.6), ("sibling", 0.25)):
                neighbour = np.maximum(neighbour, np.where(masks[rel], value * scale, 0.0))
        neighbour = neighbour.astype(np.float32)

        # transition: roles (and path relations) that usually follow the last call's role.
        transition = np.zeros(n, dtype=np.float32)
        if self.transitions is not None and history:
            t = self.transitions
            last_role = history[-1].operation.role if history[-1].operation else None
            role_lift = np.array([t.role_lift(last_role, r) for r in ROLES], dtype=np.float32)
            lift = role_lift[index.role]
            if relation_masks is not None:
                rel_lift = np.full(n, t.relation_lift("unrelated", last_role), dtype=np.float32)
                for rel, mask in relation_masks.items():
                    rel_lift[mask] = t.relation_lift(rel, last_role)
                lift = lift * rel_lift
            transition = (lift / max(float(lift.max()), 1e-6)).astype(np.float32)
            transition[transition < 0.25] = 0.0
        # status: after a write, users check on what it started (GET /actions/{id},
        # /jobs/{id}): the write handed over the id of that action or job.
        status = np.zeros(n, dtype=np.float32)
        if history and history[-1].method not in ("GET", "HEAD"):
            # The one action or job the write started (its id known), rather than the list.
            status = index.status_check * np.where(
                fillable & ~index.status_list, 1.0, STATUS_VAGUE
            )
            if last is not None:
                # the write's own resource, or the API's global status endpoint; not the status
                # checks of every other resource (/certificates/actions after POST /servers)
                related = index.status_global | (index.first_id == index.first_id[last])
                status = np.where(related, status, STATUS_UNRELATED * status)
            status = status.astype(np.float32)
            transition = np.maximum(transition, status)
            dataflow = np.maximum(dataflow, STATUS_DATAFLOW * status)

        # setup: with little history, calls a session makes first whatever it is about (GET /me,
        # sign in, exchange a token), ranked by the prompt; not once they were made.
        setup = np.zeros(n, dtype=np.float32)
        if len(history) < SETUP_HISTORY:
            setup = (index.setup * (0.5 + 0.5 * relevance)).astype(np.float32)
            called = [index.by_key.get(c.operation.key) for c in history if c.operation]
            setup[[i for i in called if i is not None]] = 0.0

        # entry: with little history, operations that need no ids, ranked by the prompt.
        entry = np.zeros(n, dtype=np.float32)
        if len(history) < 2:
            prior = np.ones(n, dtype=np.float32)
            if self.transitions is not None:
                start = np.array(
                    [self.transitions.p_role(None, r) for r in ROLES], dtype=np.float32
                )
                prior = start[index.role] / max(float(start.max()), 1e-6)
            entry = np.where(~index.has_path_params, 0.5 * prior + 0.5 * relevance, 0.0)
            entry = entry.astype(np.float32)
        return {
            "bm25": bm25.astype(np.float32), "semantic": semantic, "dataflow": dataflow,
            "neighbour": neighbour, "transition": transition, "entry": entry, "setup": setup,
            "status": status,
        }

    def combined(
        self, index: RetrievalIndex, per_source: dict[str, np.ndarray], history: Sequence[Call]
    ) -> np.ndarray:
        """The generator's own order: weighted source scores, operations already called
        scaled down (a workflow rarely repeats a call)."""
        combined = np.zeros(index.size, dtype=np.float32)
        for source, values in per_source.items():
            combined += self.weights[source] * values
        called = [index.by_key.get(c.operation.key) for c in history if c.operation is not None]
        # Checking on a status again is normal; repeating anything else is rare.
        called_idx = [i for i in called if i is not None and not index.status_check[i]]
        if called_idx:
            combined[called_idx] *= REPEAT_FACTOR
        return combined

    def generate(
        self,
        spec: SpecIndex,
        history: Sequence[Call],
        prompt: str | None,
        *,
        limit: int | None = None,
    ) -> list[Candidate]:
        """At most ``limit`` candidates (default :func:`candidate_limit` of the history),
        deduplicated, best first by the combined source score."""
        if limit is None:
            limit = candidate_limit(history)
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        index = self.index_for(spec)
        per_source = self.scores(spec, history, prompt)
        combined = self.combined(index, per_source, history)
        proposed = np.zeros(index.size, dtype=bool)
        for values in per_source.values():
            proposed |= values > 0
        if not wants_destructive(prompt):
            proposed &= ~index.destructive
        candidates_idx = np.flatnonzero(proposed)
        # Stable order: combined score, then spec order, so the output is deterministic.
        ranked = candidates_idx[np.lexsort((candidates_idx, -combined[candidates_idx]))]
        order = _with_reserved(ranked, per_source, combined, limit=limit)
        # each source's scores of the chosen, as Python floats: one conversion per source
        scores = [(s, v[order].tolist()) for s, v in per_source.items()]
        destructive = index.destructive[order].tolist()
        out = []
        for r, i in enumerate(order.tolist()):
            sources = {s: round(values[r], 6) for s, values in scores if values[r] > 0}
            out.append(Candidate(index=i, sources=sources, destructive=bool(destructive[r])))
        return out


def _with_reserved(
    ranked: np.ndarray, per_source: dict[str, np.ndarray], combined: np.ndarray, *, limit: int
) -> np.ndarray:
    """The first ``limit`` of ``ranked``, except that the best proposals of each source of
    ``RESERVED_SLOTS`` (by that source's score, then the combined one) take the last places if
    the combined order left them out; still in the combined order."""
    head = ranked[:limit]
    if len(ranked) <= limit:
        return head
    allowed = np.zeros(len(combined), dtype=bool)
    allowed[ranked] = True
    extra: list[int] = []
    for source, slots in RESERVED_SLOTS.items():
        values = per_source.get(source)
        if values is None or slots < 1:
            continue
        mine = np.flatnonzero(allowed & (values > 0))
        if not len(mine):
            continue
        best = mine[np.lexsort((mine, -combined[mine], -values[mine]))][:slots]
        extra += [i for i in best.tolist() if i not in extra]
    in_head = set(head.tolist())
    extra = [i for i in extra if i not in in_head][:limit]
    if not extra:
        return head
    # Everything left out scores below the head: the reserved ones go last, in their order.
    chosen = np.array([*head[: limit - len(extra)].tolist(), *extra], dtype=np.int64)
    return chosen[np.lexsort((chosen, -combined[chosen]))]

