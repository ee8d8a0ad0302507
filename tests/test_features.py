"""FeatureExtractor: names and shapes, determinism, and one code path for training and serving."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from core.candidates.generator import CandidateGenerator
from core.candidates.retrieval import RetrievalGenerator
from core.candidates.types import Candidate
from core.features import (
    FEATURE_NAMES,
    FEATURE_VERSION,
    PERSONAL_FEATURES,
    FeatureExtractor,
    UserTransitions,
    prompt_stems,
)
from core.priors.transitions import load_transitions
from core.spec.index import SpecIndex
from core.spec.openapi import parse_spec
from core.vocabulary import PROMPT_ROLE_VERBS, feature_stem, param_entity
from ranker.data import concrete_endpoint, examples, parse_workflow_document, split_of
from ranker.evaluate import build_groups
from tests.specs import billing_spec

COL = {n: i for i, n in enumerate(FEATURE_NAMES)}


@pytest.fixture(scope="module")
def transitions():
    return load_transitions()


@pytest.fixture(scope="module")
def extractor(transitions) -> FeatureExtractor:
    return FeatureExtractor(transitions=transitions)


@pytest.fixture(scope="module")
def spec() -> SpecIndex:
    return parse_spec(billing_spec())


def _all(spec: SpecIndex) -> list[Candidate]:
    return [Candidate(index=i, sources={"bm25": 0.5} if i % 2 else {}) for i in range(len(spec))]


def test_names_are_unique_and_versioned() -> None:
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES)
    assert FEATURE_VERSION
    assert all(n == n.strip() and " " not in n for n in FEATURE_NAMES)


def test_shape_dtype_and_empty(extractor, spec) -> None:
    history = [spec.resolve("GET /v1/invoices")]
    X = extractor.extract(spec, history, "pay the invoice", _all(spec))
    assert X.shape == (len(spec), len(FEATURE_NAMES)) and X.dtype == np.float32
    assert extractor.extract(spec, history, None, []).shape == (0, len(FEATURE_NAMES))
    with pytest.raises(ValueError, match="out of range"):
        extractor.extract(spec, history, None, [Candidate(index=len(spec))])


def test_deterministic_across_calls_and_instances(extractor, spec, transitions) -> None:
    history = [spec.resolve("POST /v1/invoices", {"customer_id": "cu_1"}),
               spec.resolve("GET /v1/invoices/in_9")]
    a = extractor.extract(spec, history, "Create an invoice then pay it", _all(spec))
    b = extractor.extract(spec, history, "Create an invoice then pay it", _all(spec))
    c = FeatureExtractor(transitions=transitions).extract(
        SpecIndex.from_bytes(spec.to_bytes()), history, "Create an invoice then pay it", _all(spec)
    )
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


def test_dataflow_and_destructive_features(extractor, spec) -> None:
    created = [spec.resolve("POST /v1/invoices", {"customer_id": "cu_1"})]
    idx = {op.key: i for i, op in enumerate(spec.operations)}
    cands = [Candidate(index=idx[k]) for k in
             ("GET /invoices/{invoice_id}", "GET /users/{user_id}", "DELETE /invoices/{invoice_id}")]
    X = extractor.extract(spec, created, "look at the invoice", cands)
    get_invoice, get_user, delete = X
    assert get_invoice[COL["params_from_last_returns"]] == 1.0
    assert get_invoice[COL["consumes_last_output"]] == 1.0
    assert get_user[COL["params_unfilled"]] == 1.0
    assert delete[COL["destructive_without_intent"]] == 1.0
    X2 = extractor.extract(spec, created, "delete the invoice", cands)
    assert X2[2, COL["destructive_without_intent"]] == 0.0 and X2[2, COL["prompt_destructive"]] == 1.0


def test_the_specs_deprecated_flag_is_a_feature(extractor) -> None:
    doc = billing_spec()
    doc["paths"]["/invoices"]["get"]["deprecated"] = True
    spec = parse_spec(doc)
    X = extractor.extract(spec, [], "list the invoices", _all(spec))
    deprecated = {op.key for op, row in zip(spec.operations, X, strict=True) if row[COL["deprecated"]] == 1}
    assert deprecated == {"GET /invoices"}


def test_the_head_of_the_request_is_what_it_asks_for(extractor) -> None:
    ok = {"200": {"description": "ok"}}
    spec = parse_spec({"openapi": "3.0.0", "info": {"title": "CRM", "version": "1"}, "paths": {
        "/contacts": {"get": {"summary": "List contacts", "responses": ok}},
        "/companies": {"get": {"summary": "List companies", "responses": ok}}}})
    pt = prompt_stems("List all contacts associated with the company")
    assert [w for w, h in zip(pt.raw, pt.head, strict=True) if h] == ["contacts"]
    X = extractor.extract(spec, [], "List all contacts associated with the company", _all(spec))
    contacts, companies = X[:, COL["head_coverage"]]
    assert contacts > 0 and companies == 0
    assert X[0, COL["head_coverage_grank"]] == 0 and X[1, COL["head_coverage_grank"]] == 1
    assert np.isnan(extractor.extract(spec, [], "List all", _all(spec))[:, COL["head_coverage"]]).all()
    # once the history has done the first clause, the head is the next clause's
    after = [spec.resolve("GET /contacts")]
    X = extractor.extract(spec, after, "List the contacts, then list the companies of them", _all(spec))
    contacts, companies = X[:, COL["head_coverage"]]
    assert companies > 0 and contacts == 0


def test_words_and_entities() -> None:
    forms = "creating creates created create".split()
    assert {feature_stem(w) for w in forms} == {"creat"}
    assert feature_stem("getting") == "get"
    assert param_entity("invoiceId") == param_entity("invoice_id") == "invoice"
    spec = parse_spec(billing_spec())
    assert param_entity("invoice_id", spec.operations[2].segments) == "invoice"
    pt = prompt_stems("List invoices, then pay the first one")
    assert pt.n_clauses == 2 and pt.clauses[0] == 0 and pt.clauses[-1] == 1


# -- the training path and the serving path compute the same features ---------------------------


def _small_real_api(jentic_dir: Path) -> tuple[str, dict]:
    """A real API with a small spec (deterministic pick), for a fast end-to-end comparison."""
    best = None
    for wf_file in sorted((jentic_dir / "workflows").glob("*/workflows.arazzo.json")):
        doc = json.loads(wf_file.read_text())
        urls = [s.get("url") for s in doc.get("sourceDescriptions") or [] if isinstance(s, dict)]
        if len(urls) != 1 or not isinstance(urls[0], str):
            continue
        size = (jentic_dir / urls[0]).stat().st_size if (jentic_dir / urls[0]).is_file() else 0
        if 20_000 < size < 60_000:
            key = hashlib.sha256(wf_file.parent.name.encode()).hexdigest()
            if best is None or key < best[0]:
                best = (key, wf_file.parent.name, doc)
    assert best is not None, "no small API found in the jentic data"
    return best[1], best[2]


def test_training_and_serving_paths_compute_identical_features(jentic_dir, transitions) -> None:
    api, doc = _small_real_api(jentic_dir)
    workflows = parse_workflow_document(doc, api=api, root=jentic_dir)
    assert workflows, f"{api}: no workflow resolved"
    exs = list(examples(workflows))[:12]
    # every other example is a returning user's: their transitions after the last call (the
    # target among them, and another operation of the spec)
    def other(ex):
        return next(op.key for op in ex.spec.operations if op.key != ex.target)

    exs = [dataclasses.replace(ex, personal=UserTransitions({ex.target: 2, other(ex): 1})) if g % 2
           else ex for g, ex in enumerate(exs)]

    # training: ranker.evaluate.build_groups, as ranker.train runs it
    train_gen = RetrievalGenerator(transitions=transitions)
    groups = build_groups(exs, generator=train_gen, extractor=FeatureExtractor(transitions=transitions))

    # serving: the spec shipped between replicas as bytes, events resolved from concrete
    # endpoints, candidates from the CandidateGenerator, features from a separate extractor
    serving_extractor = FeatureExtractor(transitions=transitions)
    generator = CandidateGenerator(retrieval=RetrievalGenerator(transitions=transitions))
    b = groups.bounds
    wf_by_id = {w.workflow_id: w for w in workflows}
    for g, ex in enumerate(exs):
        spec = SpecIndex.from_bytes(ex.spec.to_bytes())
        steps = wf_by_id[ex.workflow_id].steps[: len(ex.history)]
        events = [(concrete_endpoint(spec, s), dict(s.params)) for s in steps]
        history = spec.resolve_history(events)
        cset = asyncio.run(generator.generate(spec, history, ex.prompt))
        # the ingress sends the user's transitions down the graph as their wire form
        wire = ex.personal.to_wire() if ex.personal is not None else None
        served = serving_extractor.extract(spec, history, ex.prompt, cset.candidates,
                                           UserTransitions.from_wire(wire))
        np.testing.assert_array_equal(served, groups.X[b[g]: b[g + 1]], err_msg=f"group {g} of {api}")
    assert split_of(api) in ("train", "valid")
    personal = groups.X[:, [COL[n] for n in PERSONAL_FEATURES]]
    assert (personal[: b[1]] == 0).all() and personal[:, 0].max() == pytest.approx(2 / 3)


def test_match_columns_are_the_per_operation_definition(spec) -> None:
    """The lexical match of a prompt stem, computed for every operation at once from inverted
    indexes, is exactly its per-operation definition (word or role verb, compound, description)."""
    from core.features import DESCRIPTION_WEIGHT, FUZZY_WEIGHT, SpecTables

    t = SpecTables(spec)
    words = {w for v in t.vocab for w in v} | {w for v in t.desc_words for w in v}
    words |= {w[:k] for w in list(words) for k in range(3, len(w))}  # pieces: inside compounds
    words |= {w + "s" + x for w in list(words)[:200] for x in ("", "et", "board")}  # wrappers
    words |= {feature_stem(w) for w in "create list get invoices paying statuses overdue xyzzy".split()}
    for w in sorted(words):
        roles = PROMPT_ROLE_VERBS.get(w, frozenset())
        expected = np.array([
            1.0 if w in t.vocab[i] or t.role_name[i] in roles
            else FUZZY_WEIGHT if t.fuzzy(i, w)
            else DESCRIPTION_WEIGHT if w in t.desc_words[i] else 0.0
            for i in range(t.n)], np.float32)
        assert np.array_equal(t.match_column(w), expected), w
        assert t.fuzzy_ops(w).tolist() == [i for i in range(t.n) if t.fuzzy(i, w)], w


def test_identical_in_every_process(extractor, spec) -> None:
    """Serving runs the extractor in other processes (other hash seeds): same bits there."""
    import os
    import subprocess
    import sys

    from core.settings import PROJECT_ROOT

    code = (
        "import hashlib; from core.spec.openapi import parse_spec; "
        "from core.candidates.types import Candidate; "
        "from core.features import FeatureExtractor; from core.priors.transitions import load_transitions; "
        "from tests.specs import billing_spec; s = parse_spec(billing_spec()); "
        "h = [s.resolve('GET /v1/invoices'), s.resolve('GET /v1/invoices/in_1')]; "
        "X = FeatureExtractor(transitions=load_transitions()).extract(s, h, "
        "'list invoices, then pay the overdue invoice and set its status', "
        "[Candidate(index=i) for i in range(len(s))]); print(hashlib.sha256(X.tobytes()).hexdigest())"
    )
    digests = {
        subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True,
                       text=True, env={**os.environ, "PYTHONHASHSEED": seed,
                            "PYTHONPATH": str(PROJECT_ROOT)},
                       check=True).stdout.strip()
        for seed in ("1", "2")
    }
    assert len(digests) == 1


# -- semantic features -----------------------------------------------------------------------------


def test_semantic_features_match_meaning_not_just_words(extractor, spec, transitions) -> None:
    """'paid' is not a word of POST /invoices/{invoice_id}/pay, but its meaning is."""
    history = [spec.resolve("GET /v1/invoices"), spec.resolve("GET /v1/invoices/in_1")]
    keys = ["POST /invoices/{invoice_id}/pay", "GET /users/me", "PUT /invoices/{invoice_id}/status"]
    cands = [Candidate(index=spec.by_key[k]) for k in keys]
    X = extractor.extract(spec, history, "get this invoice paid", cands)
    pay, me, status = X
    assert pay[COL["soft_coverage"]] > me[COL["soft_coverage"]]
    assert pay[COL["sem_prompt"]] > me[COL["sem_prompt"]]
    assert pay[COL["sem_prompt_grank"]] == 0
    # related to the last call (an invoice) more than an unrelated operation is
    assert status[COL["sem_last_call"]] > me[COL["sem_last_call"]]
    assert -1 <= X[:, COL["sem_prompt"]].min() and X[:, COL["sem_prompt"]].max() <= 1
    # no prompt: prompt features missing, relations to the history still there
    X = extractor.extract(spec, history, None, cands)
    assert np.isnan(X[:, COL["sem_prompt"]]).all() and not np.isnan(X[:, COL["sem_last_call"]]).any()
    # without word vectors every semantic feature is missing (NaN), nothing else changes
    plain = FeatureExtractor(transitions=transitions, word_vectors=None)
    Y = plain.extract(spec, history, "get this invoice paid", cands)
    X = extractor.extract(spec, history, "get this invoice paid", cands)
    semantic = [i for n, i in COL.items() if n.startswith(("sem_", "soft_"))]
    assert np.isnan(Y[:, semantic]).all()
    others = [i for i in range(len(FEATURE_NAMES)) if i not in semantic]
    np.testing.assert_array_equal(X[:, others], Y[:, others])
