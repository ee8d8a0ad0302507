"""The LLM generator inside the whole pipeline, against a real OpenAI-protocol server on loopback:
every outcome ends in valid predictions, and the metadata says which generator answered."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest

from core.settings import load_settings
from deployments.serving.pipeline import Pipeline
from deployments.serving.schemas import PredictRequest, PredictResponse
from tests.llm_server import FakeLLMServer, Reply, dead_port
from tests.specs import billing_spec

API_KEY = "sk-test-never-log-me-0123456789"
PAY = "POST /invoices/{invoice_id}/pay"


@pytest.fixture()
def llm() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as server:
        yield server


HISTORY = ("GET /v1/invoices", "GET /v1/invoices/in_9")


def _predict(base_url: str, tmp_path, *, prompt: str = "get this invoice paid",
             history: tuple[str, ...] = HISTORY, **overrides) -> PredictResponse:
    settings = load_settings(
        {}, data_dir=str(tmp_path), llm_base_url=base_url, llm_model="m", llm_api_key=API_KEY,
        llm_budget_s=0.5, **overrides,
    )
    request = PredictRequest.model_validate({
        "user_id": "u", "spec": billing_spec(), "prompt": prompt, "k": 5,
        "events": [{"endpoint": e} for e in history],
    })

    async def run() -> PredictResponse:
        pipeline = Pipeline(settings)
        try:
            return await pipeline.predict(request)
        finally:
            await pipeline.aclose()

    return asyncio.run(run())


def _valid(response: PredictResponse) -> list[str]:
    spec_keys = {f"{m.upper()} {p}" for p, item in billing_spec()["paths"].items() for m in item
                 if m != "parameters"}
    endpoints = [p.endpoint for p in response.predictions]
    assert endpoints and set(endpoints) <= spec_keys and len(set(endpoints)) == len(endpoints)
    scores = [p.score for p in response.predictions]
    assert scores == sorted(scores, reverse=True)
    return endpoints


def test_good_answer_is_merged_and_reported(llm, tmp_path) -> None:
    llm.script(Reply.predictions([{"endpoint": PAY, "params": {"invoice_id": "in_9"},
                                   "confidence": 0.9, "reason": "pay it"}]))
    response = _predict(llm.base_url, tmp_path)
    assert PAY in _valid(response)
    assert response.metadata.generator == "llm" and response.metadata.fallback_reason is None
    # Retrieval candidates are still there beside the LLM's one.
    assert len(response.predictions) > 1


def test_the_llms_params_fill_what_the_history_cannot_when_the_user_wrote_them(llm, tmp_path) -> None:
    get = "GET /invoices/{invoice_id}"
    llm.script(Reply.predictions([
        {"endpoint": PAY, "params": {"invoice_id": "in_77"}, "confidence": 0.9, "reason": "asked"},
        {"endpoint": get, "params": {"invoice_id": "in_55"}, "confidence": 0.5, "reason": "a guess"},
    ]))
    response = _predict(llm.base_url, tmp_path, prompt="pay invoice in_77 now", history=("GET /v1/invoices",))
    by_endpoint = {p.endpoint: p for p in response.predictions}
    assert response.metadata.generator == "llm" and {PAY, get} <= set(by_endpoint)
    assert by_endpoint[PAY].params == {"invoice_id": "in_77"} and by_endpoint[PAY].missing_params == []
    # the LLM's in_55 is in neither the request nor the events: never used; the invoice the
    # request names is (the embedded path fills params from the request too)
    assert by_endpoint[get].params == {"invoice_id": "in_77"} and by_endpoint[get].missing_params == []


def test_invented_endpoint_is_dropped(llm, tmp_path) -> None:
    llm.script(Reply.predictions([{"endpoint": "POST /invoices/{invoice_id}/teleport",
                                   "confidence": 1.0}]))
    response = _predict(llm.base_url, tmp_path)
    assert "POST /invoices/{invoice_id}/teleport" not in _valid(response)
    assert response.metadata.generator == "retrieval"
    assert response.metadata.fallback_reason == "no_valid"


def test_destructive_proposal_without_intent_is_dropped(llm, tmp_path) -> None:
    llm.script(Reply.predictions([{"endpoint": "DELETE /invoices/{invoice_id}", "confidence": 1.0},
                                  {"endpoint": PAY, "confidence": 0.5}]))
    response = _predict(llm.base_url, tmp_path)
    assert "DELETE /invoices/{invoice_id}" not in _valid(response)


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (Reply.slow(2.0), "timeout"),
        (Reply.error(500), "http_500"),
        (Reply.text("this is not json"), "malformed"),
        (Reply.text(""), "empty"),
    ],
)
def test_failures_fall_back_to_retrieval(llm, tmp_path, reply, reason) -> None:
    llm.script(reply)
    response = _predict(llm.base_url, tmp_path)
    _valid(response)
    assert response.metadata.generator == "retrieval"
    assert response.metadata.fallback_reason == reason


def test_dead_port_falls_back(tmp_path) -> None:
    response = _predict(f"http://127.0.0.1:{dead_port()}/v1", tmp_path)
    _valid(response)
    assert response.metadata.fallback_reason == "connect"


def test_api_key_never_in_response_or_logs(llm, tmp_path, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    llm.script(Reply.error(500))
    response = _predict(llm.base_url, tmp_path)
    assert API_KEY not in response.model_dump_json()
    assert API_KEY not in caplog.text
    assert llm.requests[0].headers.get("authorization") == f"Bearer {API_KEY}"  # it was sent


def test_proposals_keep_retrievals_order_and_widen_it(llm, tmp_path) -> None:
    """The ranker's generator features were learned on retrieval's order: the LLM may add a
    candidate from further down its shortlist, never reorder the others."""
    from core.candidates.generator import CandidateGenerator
    from core.candidates.retrieval import RetrievalGenerator
    from core.spec.openapi import parse_spec
    from deployments.serving.llm import LLMGenerator

    spec = parse_spec(billing_spec())
    settings = load_settings({}, data_dir=str(tmp_path), llm_base_url=llm.base_url, llm_model="m",
                             llm_budget_s=0.5)
    retrieval = RetrievalGenerator()
    history = spec.resolve_history([("GET /v1/invoices", {})])
    alone = [spec.operations[c.index].key for c in retrieval.generate(spec, history, None, limit=40)]
    assert len(alone) > 3
    far, near = alone[-1], alone[1]  # the last of the shortlist, and retrieval's second
    llm.script(Reply.predictions([{"endpoint": far, "confidence": 0.8},
                                  {"endpoint": near, "confidence": 0.2}]))

    async def run():
        llm_gen = LLMGenerator(settings)
        try:
            return await CandidateGenerator(retrieval=retrieval, llm=llm_gen, limit=3).generate(
                spec, history, None, k=5)
        finally:
            await llm_gen.aclose()

    cset = asyncio.run(run())
    keys = [spec.operations[c.index].key for c in cset.candidates]
    assert cset.generator == "llm"
    assert keys == [*alone[:3], far]  # retrieval's first three in its order, then the proposal
    conf = {spec.operations[c.index].key: c.sources.get("llm") for c in cset.candidates}
    assert conf[far] == 0.8 and conf[near] == 0.2 and conf[alone[0]] is None


@pytest.mark.parametrize("weight", [0.0, 0.9])
def test_the_llm_counts_after_the_model_by_its_weight(llm, tmp_path, weight) -> None:
    """At weight 0 the LLM's proposal is one candidate among others; at a high weight it leads,
    and its ``why`` says where that came from."""
    status = "PUT /invoices/{invoice_id}/status"
    llm.script(Reply.predictions([{"endpoint": status, "confidence": 0.9, "reason": "mark it"}]))
    response = _predict(llm.base_url, tmp_path, llm_weight=weight)
    endpoints = _valid(response)
    top = response.predictions[0]
    if weight:
        assert top.endpoint == status and top.why.startswith("suggested by the language model; ")
    else:
        assert endpoints[0] != status  # "get this invoice paid": the model itself prefers paying
        assert not any(p.why.startswith("suggested by") for p in response.predictions)
