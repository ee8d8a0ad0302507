"""Static word vectors distilled from a sentence-embedding model: semantic similarity with numpy
alone at serving.

Lexical features miss synonyms and paraphrases ("paid" vs ``pay``, "subscribe" vs
``/subscriptions``, "logs a follow-up task" vs ``activitiesAdd``). A sentence encoder
(all-MiniLM-L6-v2) knows them, but would cost a heavy dependency and milliseconds per request.
So, as Model2Vec does, every word of a vocabulary is embedded by the encoder once, at BUILD
time; the vectors are reduced by PCA, quantised to int8 and shipped as
``ranker/models/word_vectors.npz`` (a few MB). At serving, a text's vector is the SIF-weighted
mean of its words' vectors: a dictionary lookup and one small matrix product.

- Vocabulary: the encoder's WordPiece vocabulary (general English, plus ``##`` continuation pieces
  so that any word can be spelled from pieces), and the words of the TRAINING APIs' operations and
  workflow prompts that occur in at least two of those APIs (API jargon shared across APIs, never
  one API's own names). Nothing of the validation APIs is read, so their scores measure APIs whose
  words the vectors have never seen.
- A word the vocabulary lacks is split into WordPiece pieces (greedy longest match, as BERT
  does) and takes the mean of their vectors.
- Weights: SIF, ``a / (a + p(word))`` with ``p`` the word's frequency in that corpus: frequent
  words ("get", "list", "id") say little about which operation is meant.

They are built by :mod:`ranker.word_vectors`; serving needs numpy only.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from core.settings import SHIPPED_MODELS_DIR
from core.spec.operations import Operation
from core.vocabulary import tokenize

__all__ = [
    "WordVectors",
    "Encoder",
    "DEFAULT_PATH",
    "load_word_vectors",
    "operation_fields",
    "operation_vectors",
    "unit_rows",
]

DEFAULT_PATH = SHIPPED_MODELS_DIR / "word_vectors.npz"
FORMAT_VERSION = 1
DEFAULT_DIM = 64
DEFAULT_MIN_APIS = 2
SIF_A = 1e-3
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
# Field weights of an operation's vector (each field is a weighted mean of its words first, so
# a long description cannot drown the path and summary).
OPERATION_FIELDS = {"path": 2.0, "operation_id": 1.0, "summary": 2.0, "description": 0.5, "tags": 0.5}
_PIECE_CACHE = 1 << 16
_WORD = re.compile(r"[a-z]+")

# Embeds texts: a list of n strings → an (n, D) float array. A text that is exactly a WordPiece
# token (``"##ing"``) is that token alone.
Encoder = Callable[[Sequence[str]], np.ndarray]


@dataclass(frozen=True)
class _Lookup:
    """Rows and weight of one token: the word's own row, or the rows of its WordPiece pieces."""

    rows: tuple[int, ...]
    weight: float
    vector: np.ndarray | None = None  # the mean of the rows' vectors (None without rows)


class WordVectors:
    """Word → vector table with SIF weights; plain numpy, thread-safe, immutable after load."""

    def __init__(
        self,
        words: Sequence[str],
        vectors: np.ndarray,
        weights: np.ndarray,
        *,
        meta: dict[str, Any] | None = None,
        sha256: str = "",
    ) -> None:
        vectors = np.asarray(vectors, np.float32)
        weights = np.asarray(weights, np.float32)
        if vectors.ndim != 2 or len(vectors) != len(words):
            raise ValueError(f"vectors must be (len(words), dim), got {vectors.shape} for "
                             f"{len(words)} words")
        if weights.shape != (len(words),):
            raise ValueError(f"weights must be ({len(words)},), got {weights.shape}")
        if not np.isfinite(vectors).all() or not np.isfinite(weights).all():
            raise ValueError("vectors and weights must be finite")
        self.words = tuple(words)
        self.vectors = vectors
        self.weights = weights
        self.meta = dict(meta or {})
        self.sha256 = sha256
        self.index = {w: i for i, w in enumerate(self.words)}
        if len(self.index) != len(self.words):
            raise ValueError("duplicate words in the vocabulary")
        self.dim = int(vectors.shape[1])
        self._oov_weight = float(weights.max()) if len(weights) else 1.0
        self._cache: dict[str, _Lookup] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.words)

    # -- files ------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: Path | str = DEFAULT_PATH) -> WordVectors:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found; build it with `python -m ranker.word_vectors build`")
        with np.load(path, allow_pickle=False) as z:
            fmt = int(z["format"])
            if fmt != FORMAT_VERSION:
                raise ValueError(f"{path}: word-vector format {fmt}, expected {FORMAT_VERSION}")
            words = str(z["words"]).split("\n")
            q = z["vectors"].astype(np.float32)
            vectors = q * (z["scale"].astype(np.float32)[:, None] / 127.0)
            weights = z["weights"].astype(np.float32)
            meta = json.loads(str(z["meta"]))
        return cls(words, vectors, weights, meta=meta, sha256=_file_sha256(path))

    def save(self, path: Path | str = DEFAULT_PATH) -> Path:
        """int8 vectors with one scale per row (≈1/4 of float32; cosine error ~1e-3)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        scale = np.abs(self.vectors).max(1)
        scale[scale == 0] = 1.0
        q = np.clip(np.rint(self.vectors / scale[:, None] * 127.0), -127, 127).astype(np.int8)
        with open(path, "wb") as f:
            np.savez_compressed(
                f, format=np.array(FORMAT_VERSION), words=np.array("\n".join(self.words)),
                vectors=q, scale=scale.astype(np.float32), weights=self.weights.astype(np.float16),
                meta=np.array(json.dumps(self.meta, sort_keys=True)),
            )
        return path

    # -- lookups ----------------------------------------------------------------------------

    def lookup(self, token: str) -> _Lookup:
        """The row of a (``tokenize``d) word, else the rows of its WordPiece pieces; no rows for
        what is not a word (ids, numbers) or cannot be spelled from pieces."""
        found = self._cache.get(token)
        if found is not None:
            return found
        row = self.index.get(token)
        if row is not None:
            found = _Lookup((row,), float(self.weights[row]), self.vectors[row])
        elif len(token) >= 3 and _WORD.fullmatch(token):
            pieces = self._wordpieces(token)
            found = (_Lookup(pieces, self._oov_weight, self.vectors[list(pieces)].mean(0))
                     if pieces else _Lookup((), 0.0))
        else:
            found = _Lookup((), 0.0)
        with self._lock:
            if len(self._cache) >= _PIECE_CACHE:
                self._cache.clear()
            self._cache[token] = found
        return found

    def _wordpieces(self, word: str) -> tuple[int, ...]:
        """Greedy longest-match-first WordPiece split (BERT's); () when a part has no piece."""
        rows: list[int] = []
        start = 0
        while start < len(word):
            end = len(word)
            row = None
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                row = self.index.get(piece)
                if row is not None:
                    break
                end -= 1
            if row is None:
                return ()
            rows.append(row)
            start = end
        return tuple(rows)

    def token_vectors(self, tokens: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(vectors (n, dim), SIF weights (n,)) of tokens; unknown tokens get weight 0."""
        out = np.zeros((len(tokens), self.dim), np.float32)
        w = np.zeros(len(tokens), np.float32)
        for i, token in enumerate(tokens):
            found = self.lookup(token)
            if found.vector is not None:
                out[i] = found.vector
                w[i] = found.weight
        return out, w

    def embed(self, tokens: Sequence[str], weights: Sequence[float] | None = None) -> np.ndarray:
        """Unit vector of a text's tokens (SIF-weighted mean, times ``weights``); zeros when no
        token is known."""
        field: Any = 1.0 if weights is None else list(weights)
        return self.embed_docs([[(list(tokens), field)]])[0]

    def embed_docs(self, docs: Sequence[Sequence[tuple[Sequence[str], Any]]]) -> np.ndarray:
        """Unit vectors of documents made of weighted fields: each document is a list of
        ``(tokens, weight)`` where ``weight`` is a field weight (float; the field counts as the
        SIF-weighted mean of its tokens) or a list of per-token weights (summed as they are).
        Rows with no known token are zeros. One gather and one segment sum for all of them."""
        doc_of, rows, mass = self.doc_weights(docs)
        out = np.zeros((len(docs), self.dim), np.float32)
        if len(rows):
            contrib = self.vectors[rows] * mass[:, None]
            starts = np.flatnonzero(np.r_[True, doc_of[1:] != doc_of[:-1]])
            out[doc_of[starts]] = np.add.reduceat(contrib, starts, axis=0)
        return unit_rows(out)

    def doc_weights(
        self, docs: Sequence[Sequence[tuple[Sequence[str], Any]]]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The sparse (document, row, weight) triples :meth:`embed_docs` sums, by document."""
        doc_of: list[int] = []
        rows: list[int] = []
        mass: list[float] = []
        for d, fields in enumerate(docs):
            for tokens, weight in fields:
                if not tokens:
                    continue
                looked = [self.lookup(t) for t in tokens]
                if isinstance(weight, int | float):
                    total = sum(x.weight for x in looked)
                    if total <= 0:
                        continue
                    per = [float(weight) * x.weight / total for x in looked]
                else:
                    per = [float(w) * x.weight for w, x in zip(weight, looked, strict=True)]
                for x, m in zip(looked, per, strict=True):
                    if m <= 0 or not x.rows:
                        continue
                    share = m / len(x.rows)
                    for r in x.rows:
                        doc_of.append(d)
                        rows.append(r)
                        mass.append(share)
        return (np.asarray(doc_of, np.int64), np.asarray(rows, np.int64),
                np.asarray(mass, np.float32))


def unit_rows(M: np.ndarray, *, precision: type[np.floating] | None = None) -> np.ndarray:
    """Every row of ``M`` scaled to length 1 (a row of zeros stays zeros), in ``M``'s float type.
    ``precision``: the float type the lengths and quotients are computed in (default ``M``'s)."""
    A = M if precision is None else np.asarray(M, precision)
    norms = np.sqrt((A * A).sum(1, keepdims=True))
    out = np.divide(A, norms, out=np.zeros(A.shape, A.dtype), where=norms > 0)
    return out if out.dtype == M.dtype else out.astype(M.dtype)


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


_LOCK = threading.Lock()


@lru_cache(maxsize=4)
def _load_cached(path: str) -> WordVectors:
    return WordVectors.load(path)


def load_word_vectors(path: Path | str | None = None) -> WordVectors:
    """The shipped word vectors (or ``path``'s), loaded once per process."""
    with _LOCK:
        return _load_cached(str(Path(path) if path else DEFAULT_PATH))


# -- operations ----------------------------------------------------------------------------------


def operation_fields(op: Operation) -> list[tuple[list[str], float]]:
    """The weighted fields an operation's vector is made of."""
    return [
        (tokenize(" ".join(op.literal_segments)), OPERATION_FIELDS["path"]),
        (tokenize(op.operation_id or ""), OPERATION_FIELDS["operation_id"]),
        (tokenize(op.summary), OPERATION_FIELDS["summary"]),
        (tokenize(op.description), OPERATION_FIELDS["description"]),
        (tokenize(" ".join(op.tags)), OPERATION_FIELDS["tags"]),
    ]


def operation_vectors(wv: WordVectors, operations: Sequence[Operation]) -> np.ndarray:
    """Unit vector of every operation (rows in spec order), centred on the spec's mean
    operation first: what all operations of an API share (its domain) says nothing about which
    one is meant, and centring makes the cosines spread over the spec's own operations."""
    V = wv.embed_docs([operation_fields(op) for op in operations])
    return unit_rows(V - V.mean(0, keepdims=True)) if len(V) > 1 else V
