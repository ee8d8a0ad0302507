"""What an API's users do next, learned from everyone's recorded outcomes: the population memory.

Per API (and tenant), the memory counts which operation followed which — after the last call
(``prev``), after the last two (``prev2``), and after the last call for requests whose prompt
held a word (``word``: "for which kind of request") — as *aggregates* only:

- a user's contribution to a count is capped (``user_cap``, 1 by default): one client replaying
  a sequence 10,000 times adds what one run adds;
- a count is used only once at least ``min_users`` distinct users made it (3 by default); below
  that it is invisible, as if never seen;
- every count fades with a half-life (``half_life_s``), so a product whose flows change is
  relearned;
- operations are named without their version segment and path parameter names
  (:func:`operation_id`) and an API by its title (:func:`api_key`), so a new version of an API
  keeps what was learned for the operations that still exist.

Who contributed is kept only as a salted digest per count, for the cap and the distinct-user
threshold; prompts are kept only as the word contexts' stems, and only aggregated.

The same :class:`PopulationMemory` is filled by the serving store
(``deployments/serving/population_store.py``, from the outcomes of the feedback store), by
training (:mod:`ranker.population`, out of fold) and by the benchmarks; a request's
:class:`PopulationView` becomes the ranker's ``pop_*`` features through
:func:`population_columns`, called by :class:`core.features.FeatureExtractor` — one code path.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.priors.transitions import normalized_segments
from core.spec.index import Call, SpecIndex
from core.spec.operations import Operation
from core.vocabulary import feature_stem, tokenize

__all__ = [
    "POPULATION_FEATURES",
    "PopulationConfig",
    "PopulationMemory",
    "PopulationView",
    "Observation",
    "Cell",
    "contribute",
    "faded",
    "decayed",
    "api_key",
    "operation_id",
    "request_words",
    "observation",
    "population_columns",
    "user_digest",
    "EMPTY_VIEW",
]

START = "<start>"
UNKNOWN = "<unknown>"
MAX_WORDS = 16  # distinct prompt words a request is counted under (the rarest in the prompt first)
# A contributor whose decayed weight fell below this is forgotten (4 half-lives with cap 1): the
# distinct-user count then follows recent traffic.
FORGET_BELOW = 1 / 16

POPULATION_FEATURES: tuple[str, ...] = (
    "pop_p_next",  # share of the population's transitions after this last call that were the candidate
    "pop_n_context",  # log1p of how many (decayed, capped) transitions after this last call are visible
    "pop_p_next2",  # the same after the last two calls
    "pop_n_context2",
    "pop_p_prompt",  # the same after this last call, for requests with this request's prompt words
    "pop_n_prompt",  # log1p of the transitions behind pop_p_prompt
    "pop_p_next_grank",  # rank of pop_p_next among the request's candidates (0 = best)
    "pop_p_prompt_grank",
)
_COL = {name: i for i, name in enumerate(POPULATION_FEATURES)}


@dataclass(frozen=True, kw_only=True)
class PopulationConfig:
    min_users: int = 3
    half_life_s: float = 30 * 86400.0
    user_cap: float = 1.0

    def __post_init__(self) -> None:
        if self.min_users < 1:
            raise ValueError(f"min_users must be >= 1, got {self.min_users}")
        if not self.half_life_s > 0:
            raise ValueError(f"half_life_s must be > 0, got {self.half_life_s}")
        if not self.user_cap > 0:
            raise ValueError(f"user_cap must be > 0, got {self.user_cap}")


# -- names that survive a new version of the API ---------------------------------------------------


def api_key(spec: SpecIndex, tenant: str = "") -> str:
    """The API a spec is a version of: its title (lower-cased, words only), else its hash;
    prefixed by the tenant when the service has tenants."""
    title = " ".join(tokenize(spec.title, keep_stopwords=True)) if spec.title else ""
    return f"{tenant}|{title or spec.spec_hash}"


def operation_id(op: Operation) -> str:
    """``METHOD /path`` without version segments or parameter names: the same operation across
    versions of an API (``GET /v1/pets/{petId}`` and ``GET /v2/pets/{id}`` are one)."""
    return f"{op.method} /" + "/".join(normalized_segments(op))


def _call_id(call: Call) -> str:
    return operation_id(call.operation) if call.operation is not None else UNKNOWN


def contexts(history: Sequence[Call]) -> tuple[str, str]:
    """(prev, prev2): the last call, and the last two, as context keys."""
    if not history:
        return START, START
    last = _call_id(history[-1])
    before = _call_id(history[-2]) if len(history) > 1 else START
    return last, f"{before} > {last}"


def request_words(prompt: str | None) -> tuple[str, ...]:
    """The prompt's distinct word stems, at most :data:`MAX_WORDS` (the longest first: they are
    the most specific), sorted."""
    stems = {feature_stem(t) for t in tokenize(prompt or "")}
    return tuple(sorted(sorted(stems, key=lambda s: (-len(s), s))[:MAX_WORDS]))


def user_digest(user_id: str, salt: str) -> str:
    """Who contributed, as the counts keep it: a salted digest, never the id."""
    return hashlib.blake2b(user_id.encode(), key=salt.encode()[:64], digest_size=12).hexdigest()


# -- the arithmetic of one count -------------------------------------------------------------------


def decayed(value: float, since: float, now: float, half_life_s: float) -> float:
    """``value`` set at ``since``, as it is at ``now``: halved every ``half_life_s``."""
    if now <= since:
        return value
    return value * 0.5 ** ((now - since) / half_life_s)


@dataclass(slots=True)
class Cell:
    """One count: transitions ``context → next`` of an API, decayed to ``t``, with its
    distinct contributors (their digests) and each one's capped weight at the time it was set."""

    total: float = 0.0
    t: float = 0.0
    users: dict[str, tuple[float, float]] = field(default_factory=dict)  # digest -> (weight, at)


def contribute(cell: Cell, digest: str, now: float, config: PopulationConfig) -> None:
    """One more transition by ``digest``: their weight grows by one, up to the cap, and the
    total by as much; everything decays to ``now`` first."""
    cell.total = decayed(cell.total, cell.t, now, config.half_life_s)
    cell.t = max(cell.t, now)
    w, at = cell.users.get(digest, (0.0, now))
    w = decayed(w, at, now, config.half_life_s)
    new = min(config.user_cap, w + 1.0)
    cell.total = max(cell.total + new - w, 0.0)
    cell.users[digest] = (new, now)


def faded(cell: Cell, now: float, config: PopulationConfig) -> list[str]:
    """Forgets the contributors whose weight has faded (and their part of the total), so the
    distinct-user count follows recent traffic; returns their digests."""
    gone = [d for d, (w, at) in cell.users.items()
            if decayed(w, at, now, config.half_life_s) < FORGET_BELOW * config.user_cap]
    for d in gone:
        w, at = cell.users.pop(d)
        cell.total = max(decayed(cell.total, cell.t, now, config.half_life_s)
                         - decayed(w, at, now, config.half_life_s), 0.0)
        cell.t = max(cell.t, now)
    return gone


# -- what one outcome teaches ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Observation:
    """One recorded outcome as the memory counts it: the cells it adds to."""

    api: str
    user: str  # digest (user_digest), not the id
    next: str  # operation_id of the call made
    keys: tuple[tuple[str, str], ...]  # (kind, context) it is counted under
    t: float


def observation(
    spec: SpecIndex, history: Sequence[Call], prompt: str | None, actual_key: str | None, *,
    user: str, t: float, tenant: str = "",
) -> Observation | None:
    """What an outcome (``actual_key`` after ``history`` and ``prompt`` on ``spec``) adds, or
    None when the call made is none of the spec's operations. ``user``: a digest."""
    i = spec.by_key.get(actual_key) if actual_key is not None else None
    if i is None:
        return None
    prev, prev2 = contexts(history)
    keys = [("prev", prev), ("prev2", prev2)] + [("word", f"{prev} | {w}") for w in request_words(prompt)]
    return Observation(api=api_key(spec, tenant), user=user, next=operation_id(spec.operations[i]),
                       keys=tuple(keys), t=t)


# -- the memory and what a request sees of it ------------------------------------------------------

Context = tuple[str, str, str]  # (api, kind, context)


@dataclass(frozen=True, slots=True)
class PopulationView:
    """What the population did in this request's situation, only counts with enough distinct
    users: per context kind, operation_id → decayed count. Small; travels with the request."""

    prev: Mapping[str, float] = field(default_factory=dict)
    prev2: Mapping[str, float] = field(default_factory=dict)
    prompt: Mapping[str, float] = field(default_factory=dict)  # idf-weighted share over the words
    n_prompt: float = 0.0

    @property
    def empty(self) -> bool:
        return not (self.prev or self.prev2 or self.prompt)

    def to_wire(self) -> dict[str, Any] | None:
        if self.empty:
            return None
        return {"prev": dict(self.prev), "prev2": dict(self.prev2), "prompt": dict(self.prompt),
                "n_prompt": self.n_prompt}

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any] | None) -> PopulationView:
        if not wire:
            return EMPTY_VIEW
        return cls(prev={str(k): float(v) for k, v in wire.get("prev", {}).items()},
                   prev2={str(k): float(v) for k, v in wire.get("prev2", {}).items()},
                   prompt={str(k): float(v) for k, v in wire.get("prompt", {}).items()},
                   n_prompt=float(wire.get("n_prompt", 0.0)))


EMPTY_VIEW = PopulationView()


class PopulationMemory:
    """The counts of every API, in memory; thread-safe. Filled by :meth:`observe` (training,
    benchmarks, the serving store's writer) or :meth:`set_cell` (a replica mirroring the store)."""

    def __init__(self, config: PopulationConfig | None = None) -> None:
        self.config = config or PopulationConfig()
        self._cells: dict[Context, dict[str, Cell]] = {}
        self._lock = threading.Lock()
        self.observed = 0
        # per API: [counts, counts with enough users], kept as cells change (status() walks nothing)
        self._tally: dict[str, list[int]] = {}

    def _account(self, api: str, before: Cell | None, before_users: int, after: Cell | None) -> None:
        tally = self._tally.setdefault(api, [0, 0])
        tally[0] += (after is not None) - (before is not None)
        need = self.config.min_users
        tally[1] += ((after is not None and len(after.users) >= need)
                     - (before is not None and before_users >= need))

    def observe(self, obs: Observation) -> list[tuple[Context, str, Cell]]:
        """Adds one outcome; returns the cells it changed."""
        changed = []
        with self._lock:
            for kind, ctx in obs.keys:
                key = (obs.api, kind, ctx)
                row = self._cells.setdefault(key, {})
                old = row.get(obs.next)
                users = len(old.users) if old is not None else 0
                cell = row.setdefault(obs.next, Cell())
                contribute(cell, obs.user, obs.t, self.config)
                self._account(obs.api, old, users, cell)
                changed.append((key, obs.next, cell))
            self.observed += 1
        return changed

    def forget_faded(self, now: float) -> list[tuple[Context, str, str, Cell]]:
        """:func:`faded` over every count: (context, next, digest forgotten, the cell after)."""
        out = []
        with self._lock:
            for key, row in self._cells.items():
                for nxt, cell in row.items():
                    users = len(cell.users)
                    out += [(key, nxt, d, cell) for d in faded(cell, now, self.config)]
                    self._account(key[0], cell, users, cell)
        return out

    def erase(self, digest: str, now: float) -> list[tuple[Context, str, Cell]]:
        """Removes one contributor (a user erased) from every count, with their part of its
        total; returns the cells changed."""
        changed = []
        with self._lock:
            for key, row in self._cells.items():
                for nxt, cell in row.items():
                    if digest in cell.users:
                        users = len(cell.users)
                        w, at = cell.users.pop(digest)
                        cell.total = max(decayed(cell.total, cell.t, now, self.config.half_life_s)
                                         - decayed(w, at, now, self.config.half_life_s), 0.0)
                        cell.t = max(cell.t, now)
                        self._account(key[0], cell, users, cell)
                        changed.append((key, nxt, cell))
        return changed

    def cell(self, key: Context, nxt: str) -> Cell | None:
        with self._lock:
            return self._cells.get(key, {}).get(nxt)

    def set_cell(self, key: Context, nxt: str, cell: Cell) -> None:
        """Puts ``cell`` in place (a new object: the one in place is what it replaces)."""
        with self._lock:
            row = self._cells.setdefault(key, {})
            old = row.get(nxt)
            if cell.total <= 0 and not cell.users:
                row.pop(nxt, None)
                self._account(key[0], old, len(old.users) if old else 0, None)
            else:
                row[nxt] = cell
                self._account(key[0], old, len(old.users) if old else 0, cell)

    def clear(self, api: str | None = None) -> None:
        with self._lock:
            for key in [k for k in self._cells if api is None or k[0] == api]:
                del self._cells[key]
            for name in [a for a in self._tally if api is None or a == api]:
                del self._tally[name]

    def _visible(self, key: Context, now: float) -> dict[str, float]:
        row = self._cells.get(key)
        if not row:
            return {}
        cfg = self.config
        return {nxt: decayed(c.total, c.t, now, cfg.half_life_s) for nxt, c in row.items()
                if len(c.users) >= cfg.min_users}

    def view(self, api: str, history: Sequence[Call], prompt: str | None, *, now: float) -> PopulationView:
        """What this request's situation saw in the population (only counts with enough users)."""
        prev, prev2 = contexts(history)
        with self._lock:
            after = self._visible((api, "prev", prev), now)
            if not after:
                return EMPTY_VIEW
            after2 = self._visible((api, "prev2", prev2), now)
            by_word = [self._visible((api, "word", f"{prev} | {w}"), now) for w in request_words(prompt)]
        n = sum(after.values())
        mixed: dict[str, float] = {}
        weights = 0.0
        n_prompt = 0.0
        for counts in by_word:
            nw = sum(counts.values())
            if nw <= 0:
                continue
            # a word every session after this call had says nothing about which kind it is
            weight = math.log((n + 1.0) / (nw + 0.5))
            if weight <= 0:
                continue
            weights += weight
            n_prompt += nw
            for nxt, c in counts.items():
                mixed[nxt] = mixed.get(nxt, 0.0) + weight * c / nw
        prompt_share = {k: v / weights for k, v in mixed.items()} if weights > 0 else {}
        return PopulationView(prev=after, prev2=after2, prompt=prompt_share, n_prompt=n_prompt)

    def status(self) -> dict[str, Any]:
        """How much each API's memory holds: counts, and counts with enough users to be used."""
        with self._lock:
            return {api: {"counts": c, "usable": u} for api, (c, u) in self._tally.items() if c}


def population_columns(view: PopulationView | None, ops: Sequence[Operation]) -> np.ndarray:
    """The ``pop_*`` features of the candidates ``ops`` (columns :data:`POPULATION_FEATURES`);
    zeros without a view (nothing the population did is known here)."""
    X = np.zeros((len(ops), len(POPULATION_FEATURES)), np.float32)
    if view is None or view.empty or not ops:
        return X
    col = _COL
    ids = [operation_id(op) for op in ops]
    for counts, share, size in ((view.prev, "pop_p_next", "pop_n_context"),
                                (view.prev2, "pop_p_next2", "pop_n_context2")):
        n = sum(counts.values())
        if n > 0:
            X[:, col[share]] = [counts.get(i, 0.0) / n for i in ids]
            X[:, col[size]] = math.log1p(n)
    if view.prompt:
        X[:, col["pop_p_prompt"]] = [view.prompt.get(i, 0.0) for i in ids]
        X[:, col["pop_n_prompt"]] = math.log1p(view.n_prompt)
    for name in ("pop_p_next", "pop_p_prompt"):
        v = X[:, col[name]]
        X[:, col[name + "_grank"]] = (v[None, :] > v[:, None]).sum(1)  # 0 = the best, ties share
    return X
