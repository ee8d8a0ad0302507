"""Word vectors: the shipped table (numpy only), text vectors, and the build path on a tiny fake
encoder (the real one needs the ``embed`` extra and minutes; this runs in milliseconds)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import pytest

from core.priors.word_vectors import DEFAULT_PATH, WordVectors, load_word_vectors, operation_vectors
from core.spec.openapi import parse_spec
from core.vocabulary import tokenize
from ranker.word_vectors import build_word_vectors, main, surface_words
from tests.specs import billing_spec


@pytest.fixture(scope="module")
def wv() -> WordVectors:
    return load_word_vectors()


def _cos(wv: WordVectors, a: str, b: str) -> float:
    return float(wv.embed(tokenize(a)) @ wv.embed(tokenize(b)))


def test_shipped_table_is_small_and_well_formed(wv) -> None:
    assert DEFAULT_PATH.stat().st_size < 5_000_000
    assert len(wv) > 20_000 and 32 <= wv.dim <= 256
    assert wv.vectors.dtype == np.float32 and np.isfinite(wv.vectors).all()
    assert ((wv.weights > 0) & (wv.weights <= 1)).all()
    assert "all-MiniLM-L6-v2" in wv.meta["model"]
    assert wv.sha256 == hashlib.sha256(DEFAULT_PATH.read_bytes()).hexdigest()
    assert load_word_vectors() is wv  # once per process
    # frequent API words say less than rare ones
    assert wv.weights[wv.index["get"]] < wv.weights[wv.index["invoice"]]


def test_synonyms_and_word_forms_are_close(wv) -> None:
    assert _cos(wv, "paid", "pay") > _cos(wv, "paid", "playlist") + 0.2
    assert _cos(wv, "subscribe", "subscription") > _cos(wv, "subscribe", "invoice") + 0.2
    assert _cos(wv, "task", "activity") > _cos(wv, "task", "genre")
    assert _cos(wv, "get this invoice paid", "pay an invoice") > _cos(
        wv, "get this invoice paid", "list movie genres")


def test_unknown_words_are_spelled_from_pieces(wv) -> None:
    assert "teamgamelog" not in wv.index
    found = wv.lookup("teamgamelog")
    assert len(found.rows) >= 2
    assert _cos(wv, "teamgamelog", "team game log") > 0.6
    # not a word: no vector, no weight
    assert wv.lookup("a1b2c3").rows == () and wv.lookup("42").rows == ()
    v = wv.embed(["a1b2c3"])
    assert not v.any()


def test_text_vectors_are_unit_and_deterministic(wv) -> None:
    docs = [[(["invoice"], 1.0), (["pay"], 2.0)], [], [(["zz9"], 1.0)], [(["pay", "invoice"], [1.0, 0.0])]]
    V = wv.embed_docs(docs)
    assert V.shape == (4, wv.dim)
    np.testing.assert_allclose(np.linalg.norm(V[[0, 3]], axis=1), 1.0, rtol=1e-5)
    assert not V[1].any() and not V[2].any()
    # per-token weights: a zero-weight token contributes nothing
    np.testing.assert_allclose(V[3], wv.embed(["pay"]), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(V, wv.embed_docs(docs))


def test_operation_vectors_point_at_the_right_operation(wv) -> None:
    spec = parse_spec(billing_spec())
    V = operation_vectors(wv, spec.operations)
    assert V.shape == (len(spec), wv.dim)
    best = spec.operations[int(np.argmax(V @ wv.embed(tokenize("get this invoice paid"))))]
    assert best.key == "POST /invoices/{invoice_id}/pay", best.key


# -- building, with a fake encoder ---------------------------------------------------------------


def _fake_encoder(dim: int = 12):
    """A deterministic 'sentence encoder': each character trigram hashes to a random direction,
    so words sharing letters are close — enough to exercise the build path."""

    def encode(texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), dim))
        for i, text in enumerate(texts):
            t = f"#{text.lstrip('#')}#"
            for k in range(len(t) - 2):
                seed = int(hashlib.sha256(t[k: k + 3].encode()).hexdigest()[:8], 16)
                out[i] += np.random.default_rng(seed).standard_normal(dim)
            out[i] /= np.linalg.norm(out[i]) or 1.0
        return out

    return encode


BASE = ["invoice", "pay", "customer", "list", "get", "##s", "##ing", "team", "##game", "##log"]
CORPUS = [
    ("billing", "List invoices of a customer"), ("billing", "Pay an invoice"),
    ("billing", "Get invoice line items"), ("shop", "List invoices and payouts"),
    ("shop", "Get line items of an order"), ("shop", "Refund a payout"),
    ("music", "List playlists"),  # 'playlist' in one API only: not in the vocabulary
]


def test_build_from_a_corpus_with_a_fake_encoder(tmp_path) -> None:
    wv = build_word_vectors(CORPUS, base_vocab=BASE, encode=_fake_encoder(), dim=4, min_apis=2)
    assert wv.words[: len(BASE)] == tuple(BASE)
    extra = set(wv.words[len(BASE):])
    assert {"line", "item"} <= extra  # in two APIs
    assert not {"playlist", "order", "payout"} & extra  # in one API only
    assert wv.dim == 4 and wv.meta["corpus_words"] == len(extra)
    # SIF: 'invoice' (4 times) weighs less than 'customer' (once); unseen base words weigh 1
    w = dict(zip(wv.words, wv.weights, strict=True))
    assert w["invoice"] < w["customer"] < w["team"] == pytest.approx(1.0)
    # deterministic, and a save/load round trip keeps the vectors (int8, one scale per row)
    again = build_word_vectors(CORPUS, base_vocab=BASE, encode=_fake_encoder(), dim=4, min_apis=2)
    np.testing.assert_array_equal(wv.vectors, again.vectors)
    loaded = WordVectors.load(wv.save(tmp_path / "wv.npz"))
    assert loaded.words == wv.words and loaded.meta == wv.meta
    np.testing.assert_allclose(loaded.vectors, wv.vectors, atol=np.abs(wv.vectors).max() / 100)
    assert loaded.lookup("teamgamelog").rows == (
        wv.index["team"], wv.index["##game"], wv.index["##log"])
    assert surface_words("Series of Invoices") == [("sery", "series"), ("invoice", "invoices")]


def test_build_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="dim must be >= 1"):
        build_word_vectors(CORPUS, base_vocab=BASE, encode=_fake_encoder(), dim=0)
    with pytest.raises(ValueError, match="exceeds the vocabulary"):
        build_word_vectors(CORPUS, base_vocab=BASE, encode=_fake_encoder(), dim=99)
    with pytest.raises(ValueError, match="vectors must be"):
        WordVectors(["a", "b"], np.zeros((3, 2)), np.ones(2))
    with pytest.raises(FileNotFoundError, match="ranker.word_vectors build"):
        WordVectors.load("/nonexistent/word_vectors.npz")


def test_build_entry_point_on_a_tiny_jentic(jentic_dir, tmp_path, capsys) -> None:
    """``python -m ranker.word_vectors build`` end to end, with the fake encoder in place of
    MiniLM; then ``neighbours`` on what it wrote."""
    from tests.test_train import _tiny_jentic

    _tiny_jentic(jentic_dir, tmp_path / "jentic", train=3, valid=1)
    out = tmp_path / "wv.npz"
    assert main(["build", "--jentic-dir", str(tmp_path / "jentic"), "--out", str(out),
                 "--dim", "8"], encoder_factory=lambda: (_fake_encoder(16), BASE, "fake")) == 0
    wv = WordVectors.load(out)
    assert wv.meta["model"] == "fake" and wv.dim == 8 and len(wv) > len(BASE)
    assert main(["neighbours", "invoice", "--path", str(out)]) == 0
    assert capsys.readouterr().out.startswith("invoice: ")
    assert wv.meta["corpus"].startswith("training APIs")
