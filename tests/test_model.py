"""The shipped ranker: a metric threshold on held-out APIs, behaviour, calibration, the model card,
the heuristic fallback, parameter filling and explanations."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from core.candidates.retrieval import RetrievalGenerator
from core.candidates.types import Candidate
from core.explain import explain
from core.features import FEATURE_NAMES, FeatureExtractor
from core.params import fill_params
from core.priors.transitions import load_transitions
from core.scorer import (
    CARD_FILE,
    MODEL_FILE,
    Calibration,
    HeuristicRanker,
    ModelMismatch,
    RankerModel,
    default_model_path,
    expected_calibration_error,
)
from core.spec.index import SpecIndex
from core.spec.openapi import parse_spec
from ranker.data import examples, parse_workflow_document, split_of
from ranker.evaluate import build_groups, ranking_metrics, ranks_from_scores
from tests.specs import billing_spec

VALID_SAMPLE_APIS = 16


@pytest.fixture(scope="module")
def model() -> RankerModel:
    return RankerModel.load()


@pytest.fixture(scope="module")
def transitions():
    return load_transitions()


@pytest.fixture(scope="module")
def pipeline(transitions):
    return RetrievalGenerator(transitions=transitions), FeatureExtractor(transitions=transitions)


@pytest.fixture(scope="module")
def spec() -> SpecIndex:
    return parse_spec(billing_spec())


def _rank(model, extractor, spec, history, prompt, keys):
    """Scores of the given operations as candidates (in the given order)."""
    cands = [Candidate(index=spec.by_key[k], destructive=spec.operations[spec.by_key[k]].destructive)
             for k in keys]
    X = extractor.extract(spec, history, prompt, cands)
    [(probs, contribs)] = model.score_groups([X])
    return X, probs, contribs


# -- the shipped model -------------------------------------------------------------------------


def test_shipped_model_card_matches_code_and_is_small(model) -> None:
    assert model.card.feature_names == list(FEATURE_NAMES)
    assert model.card.training_data_hash and len(model.card.training_data_hash) == 64
    assert model.card.metrics["validation"]["real"]["ranker"]["hit@1"] > 0
    assert default_model_path().stat().st_size < 5_000_000
    # the transitions the model was trained with are the ones serving loads
    shipped = default_model_path().with_name("transitions.json").read_bytes()
    assert model.card.data["transitions_sha256"] == hashlib.sha256(shipped).hexdigest()
    # ... and so are the word vectors of its semantic features
    vectors = default_model_path().with_name("word_vectors.npz").read_bytes()
    assert model.card.data["word_vectors_sha256"] == hashlib.sha256(vectors).hexdigest()


def _validation_sample(jentic_dir: Path, n: int) -> list:
    picked = []
    files = sorted((jentic_dir / "workflows").glob("*/workflows.arazzo.json"),
                   key=lambda f: hashlib.sha256(f.parent.name.encode()).hexdigest())
    for wf_file in files:
        api = wf_file.parent.name
        if split_of(api) != "valid":
            continue
        doc = json.loads(wf_file.read_text())
        urls = [s.get("url") for s in doc.get("sourceDescriptions") or [] if isinstance(s, dict)]
        if not urls or not (jentic_dir / str(urls[0])).is_file() or \
                (jentic_dir / str(urls[0])).stat().st_size > 400_000:
            continue
        picked.extend(parse_workflow_document(doc, api=api, root=jentic_dir))
        if len({w.api for w in picked}) >= n:
            break
    return picked


def test_validation_metric_threshold(model, pipeline, jentic_dir) -> None:
    """On held-out APIs (never trained on), the ranker clearly beats the generator's order."""
    workflows = _validation_sample(jentic_dir, VALID_SAMPLE_APIS)
    generator, extractor = pipeline
    groups = build_groups(list(examples(workflows)), generator=generator, extractor=extractor)
    ranker = ranking_metrics(ranks_from_scores(groups, model.raw_scores(groups.X)))
    baseline = ranking_metrics(groups.gen_rank)
    assert ranker["n"] >= 150
    assert ranker["hit@1"] >= 0.45, ranker
    assert ranker["mrr"] >= 0.58, ranker
    assert ranker["hit@1"] >= baseline["hit@1"] + 0.05, (ranker, baseline)


# -- behaviour ---------------------------------------------------------------------------------


def _served(model, pipeline, spec, history, prompt, *, extra=()):
    """Rank the generator's candidates (plus ``extra`` operations, as an LLM could propose
    them) the way serving does; returns the keys best first."""
    generator, extractor = pipeline
    cands = generator.generate(spec, history, prompt)
    for key in extra:
        i = spec.by_key[key]
        if all(c.index != i for c in cands):
            cands.append(Candidate(index=i, sources={"llm": 0.9},
                                   destructive=spec.operations[i].destructive))
    X = extractor.extract(spec, history, prompt, cands)
    [(probs, _)] = model.score_groups([X])
    order = np.argsort(-probs, kind="stable")
    return [spec.operations[cands[j].index].key for j in order]


def test_consuming_the_returned_id_outranks_an_unrelated_call(model, pipeline, spec) -> None:
    history = [spec.resolve("GET /v1/users/me"),
               spec.resolve("POST /v1/invoices", {"customer_id": "cu_1"})]
    for prompt in (None, "billing", "what now?"):
        ranked = _served(model, pipeline, spec, history, prompt, extra=["GET /users/{user_id}"])
        assert ranked.index("GET /invoices/{invoice_id}") < ranked.index("GET /users/{user_id}"), (
            prompt, ranked)


def test_delete_is_not_first_unless_asked(model, pipeline, spec) -> None:
    history = [spec.resolve("GET /v1/invoices"), spec.resolve("GET /v1/invoices/in_1")]
    delete = "DELETE /invoices/{invoice_id}"
    for prompt in (None, "finish billing for Q2", "tidy up this draft invoice"):
        ranked = _served(model, pipeline, spec, history, prompt, extra=[delete])
        assert ranked[0] != delete, (prompt, ranked)
        assert ranked[-1] == delete, (prompt, ranked)  # below everything else, by policy
    # the ranker asks the generator's own question (wants_destructive): "clean up" asks too
    for prompt in ("delete this draft invoice", "clean up this draft invoice"):
        asked = _served(model, pipeline, spec, history, prompt, extra=[delete])
        assert asked.index(delete) < 3, (prompt, asked)


def test_scores_are_probabilities_non_increasing_with_rank(model, pipeline, spec) -> None:
    _, extractor = pipeline
    cands = [Candidate(index=i) for i in range(len(spec))]
    X = extractor.extract(spec, [spec.resolve("GET /v1/invoices")], "pay an invoice", cands)
    raw = model.raw_scores(X)
    [(probs, contribs)] = model.score_groups([X], explain_top=len(X))
    assert ((probs >= 0) & (probs <= 1)).all()
    order = np.argsort(-raw, kind="stable")
    assert (np.diff(probs[order]) <= 1e-12).all()
    # contributions add up to the raw score (core.saabas)
    np.testing.assert_allclose(contribs.sum(1), raw, rtol=1e-5, atol=1e-5)
    # only the best rows are explained (contributions are the costly part)
    [(probs2, partial)] = model.score_groups([X], explain_top=2)
    explained = np.flatnonzero(~np.isnan(partial).any(1))
    assert sorted(explained) == sorted(order[:2].tolist())
    np.testing.assert_array_equal(probs2, probs)
    [(probs3, none)] = model.score_groups([X], contributions=False)
    assert none is None
    np.testing.assert_array_equal(probs3, probs)


def test_one_pass_scoring_is_predict_and_contributions_bit_for_bit(model, pipeline, spec) -> None:
    """score_groups reads scores and the shown rows' contributions from one pass over the trees
    (the leaves each row reaches): the same numbers as a predict of every row and the
    contributions of the explained rows, bit for bit, per-group k included."""
    _, extractor = pipeline
    cands = [Candidate(index=i) for i in range(len(spec))]
    groups = [extractor.extract(spec, [spec.resolve("GET /v1/invoices")], prompt, cands)
              for prompt in ("pay an invoice", "delete the customer", None)]
    scored = model.score_groups(groups, explain_top=[3, 1, 5])
    raw = model.raw_scores(np.vstack(groups))
    assert model.probabilities(raw, [len(g) for g in groups]).tobytes() == np.concatenate(
        [p for p, _ in scored]).tobytes()
    for g, (probs, contribs), k in zip(groups, scored, [3, 1, 5], strict=True):
        shown = np.argsort(-probs, kind="stable")[:k]
        assert sorted(np.flatnonzero(~np.isnan(contribs).any(1))) == sorted(shown.tolist())
        assert contribs[shown].tobytes() == model.contributions(g[shown]).tobytes()


def test_calibration_fit_is_monotone_and_reduces_error() -> None:
    rng = np.random.default_rng(0)
    sizes = [10] * 400
    raw = rng.normal(size=4000)
    labels = np.zeros(4000)
    for g in range(400):  # the true item tends to have the highest raw score
        s = g * 10
        labels[s + int(np.argmax(raw[s:s + 10] + rng.normal(scale=1.0, size=10)))] = 1
    cal = Calibration.fit(raw * 5, labels, sizes)  # overconfident raw scores
    p = cal.probabilities(raw * 5, sizes)
    naive = Calibration().softmax(raw * 5, sizes)
    assert expected_calibration_error(p, labels) < expected_calibration_error(naive, labels)
    assert cal.temperature > 1
    x = np.linspace(-5, 5, 50)
    assert (np.diff(cal.probabilities(x, [50])) >= 0).all()
    with pytest.raises(ValueError, match="add up to"):
        cal.probabilities(raw, [3])
    with pytest.raises(ValueError, match="monotone"):
        Calibration(a=-1.0)


# -- the model card is checked -------------------------------------------------------------------


def _copy_model(tmp_path: Path) -> Path:
    for name in (MODEL_FILE, CARD_FILE):
        shutil.copy(default_model_path().with_name(name), tmp_path / name)
    return tmp_path / MODEL_FILE


def test_mismatched_card_is_refused(tmp_path) -> None:
    path = _copy_model(tmp_path)
    card = json.loads((tmp_path / CARD_FILE).read_text())
    card["feature_names"] = card["feature_names"][::-1]
    (tmp_path / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(ModelMismatch, match="order differs"):
        RankerModel.load(path)
    card["feature_names"] = card["feature_names"][::-1][:-1]
    (tmp_path / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(ModelMismatch, match="missing"):
        RankerModel.load(path)
    card["feature_names"] = list(FEATURE_NAMES)
    card["feature_version"] = "0"
    (tmp_path / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(ModelMismatch, match="feature version '0'"):
        RankerModel.load(path)


def test_model_file_not_matching_its_card_is_refused(tmp_path) -> None:
    path = _copy_model(tmp_path)
    path.write_text(path.read_text().replace("feature_names=", "feature_names=extra "))
    with pytest.raises(ModelMismatch):
        RankerModel.load(path)
    with pytest.raises(FileNotFoundError, match="not found"):
        RankerModel.load(tmp_path / "absent.txt")


def test_loading_is_lazy(tmp_path) -> None:
    model = RankerModel.load(_copy_model(tmp_path))
    assert not model.loaded
    model.raw_scores(np.zeros((2, len(FEATURE_NAMES)), np.float32))
    assert model.loaded
    with pytest.raises(ValueError, match=r"features must be \(n, "):
        model.raw_scores(np.zeros((2, 3)))


# -- the heuristic fallback ----------------------------------------------------------------------


def test_heuristic_fallback_ranks_sensibly(pipeline, spec) -> None:
    _, extractor = pipeline
    fallback = HeuristicRanker(reason="test")
    assert fallback.degraded and fallback.version.startswith("heuristic")
    history = [spec.resolve("POST /v1/invoices", {"customer_id": "cu_1"})]
    X, probs, contribs = _rank(fallback, extractor, spec, history, "finish billing",
                               ["DELETE /invoices/{invoice_id}", "GET /users/{user_id}",
                                "GET /invoices/{invoice_id}"])
    assert int(np.argmax(probs)) == 2
    assert ((probs >= 0) & (probs <= 1)).all()
    np.testing.assert_allclose(contribs.sum(1), fallback.raw_scores(X))
    why = explain(spec.operations[spec.by_key["GET /invoices/{invoice_id}"]], X[2], contribs[2],
                  history=history, prompt="finish billing")
    assert "invoice" in why


def test_heuristic_fallback_beats_bm25_order_on_held_out_apis(pipeline, jentic_dir) -> None:
    generator, extractor = pipeline
    workflows = _validation_sample(jentic_dir, 8)
    groups = build_groups(list(examples(workflows)), generator=generator, extractor=extractor)
    fallback = ranking_metrics(ranks_from_scores(groups, HeuristicRanker().raw_scores(groups.X)))
    assert fallback["hit@1"] >= ranking_metrics(groups.gen_rank)["hit@1"] - 0.03


# -- params and explanations ------------------------------------------------------------------


def test_fill_params_from_history_by_name_and_resource(spec) -> None:
    pay = spec.operations[spec.by_key["POST /invoices/{invoice_id}/pay"]]
    params, missing = fill_params(pay, [spec.resolve("GET /v1/invoices/in_123")])
    assert params == {"invoice_id": "in_123"} and missing == []
    # a returned id whose value the history doesn't show is missing, not invented
    params, missing = fill_params(pay, [spec.resolve("POST /v1/invoices", {"customer_id": "c"})])
    assert params == {} and missing == ["invoice_id"]
    # the newest id wins
    params, _ = fill_params(pay, [spec.resolve("GET /v1/invoices/in_1"),
                                  spec.resolve("PUT /v1/invoices/in_2/status")])
    assert params == {"invoice_id": "in_2"}
    # required body params come from earlier calls with the same name
    create = spec.operations[spec.by_key["POST /invoices"]]
    assert fill_params(create, []) == ({}, ["customer_id"])
    assert fill_params(create, [spec.resolve("POST /v1/invoices", {"customer_id": "cu_7"})]) == (
        {"customer_id": "cu_7"}, [])
    # an unrelated id does not fill a parameter of another resource
    user = spec.operations[spec.by_key["GET /users/{user_id}"]]
    assert fill_params(user, [spec.resolve("GET /v1/invoices/in_1")]) == ({}, ["user_id"])


def test_fill_params_takes_the_llms_values_only_where_the_user_gave_them(spec) -> None:
    pay = spec.operations[spec.by_key["POST /invoices/{invoice_id}/pay"]]
    prompt = "pay in_42 today."  # named by nothing: the request alone fills no parameter
    # In the prompt, as a whole token: filled, no longer missing.
    filled = fill_params(pay, [], proposed={"invoice_id": "in_42"}, prompt=prompt)
    assert filled == ({"invoice_id": "in_42"}, [])
    # A guess (nowhere in the prompt or the history), or a part of a token, is left missing.
    for guess in ("in_43", "42", "in"):
        assert fill_params(pay, [], proposed={"invoice_id": guess}, prompt=prompt) == ({}, ["invoice_id"])
    # A parameter the operation does not declare is ignored; the history wins over the LLM.
    assert fill_params(pay, [], proposed={"amount": "42"}, prompt="pay 42") == ({}, ["invoice_id"])
    history = [spec.resolve("GET /v1/invoices/in_1"), spec.resolve("GET /v1/invoices/in_7")]
    params, _ = fill_params(pay, history, proposed={"invoice_id": "in_1"}, prompt=prompt)
    assert params == {"invoice_id": "in_7"}
    # A value of the history is grounded too (here one the history could not place by name).
    create = spec.operations[spec.by_key["POST /invoices"]]
    after_user = [spec.resolve("GET /v1/users/cu_9")]
    assert fill_params(create, after_user, proposed={"customer_id": "cu_9"}) == ({"customer_id": "cu_9"}, [])


def test_why_comes_from_contributions_in_user_words(model, pipeline, spec) -> None:
    _, extractor = pipeline
    history = [spec.resolve("GET /v1/invoices"), spec.resolve("GET /v1/invoices/in_123")]
    keys = ["POST /invoices/{invoice_id}/pay", "GET /users/me"]
    X, probs, contribs = _rank(model, extractor, spec, history, "get this invoice paid", keys)
    why = explain(spec.operations[spec.by_key[keys[0]]], X[0], contribs[0], history=history,
                  prompt="get this invoice paid")
    assert why and ("in_123" in why or "'paid'" in why or "invoice" in why), why
    # a reason follows the contributions: only the prompt contributes → a prompt reason
    only_prompt = np.zeros(len(FEATURE_NAMES) + 1)
    only_prompt[FEATURE_NAMES.index("bm25")] = 1.0
    text = explain(spec.operations[spec.by_key[keys[0]]], X[0], only_prompt, history=history,
                   prompt="get this invoice paid")
    assert text.startswith("matches") and "'invoice'" in text or "'paid'" in text
    only_dataflow = np.zeros(len(FEATURE_NAMES) + 1)
    only_dataflow[FEATURE_NAMES.index("params_from_last_call")] = 1.0
    text = explain(spec.operations[spec.by_key[keys[0]]], X[0], only_dataflow, history=history,
                   prompt="get this invoice paid")
    assert text == "uses the invoice id in_123 from your last call"


def test_why_says_which_words_the_candidate_means(spec) -> None:
    """When the prompt drives the score through meaning rather than shared words, the reason
    quotes the user's word that the operation means."""
    pay = spec.operations[spec.by_key["POST /invoices/{invoice_id}/pay"]]
    only_semantic = np.zeros(len(FEATURE_NAMES) + 1)
    only_semantic[FEATURE_NAMES.index("sem_prompt")] = 1.0
    row = np.zeros(len(FEATURE_NAMES))
    text = explain(pay, row, only_semantic, history=[], prompt="get this one paid")
    assert text == "means 'paid' in your request", text
