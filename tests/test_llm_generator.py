"""The LLM candidate backend against a real OpenAI-protocol server on loopback."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from pydantic import SecretStr

from core.settings import Settings
from core.spec.operations import Operation
from deployments.serving.llm import (
    CircuitBreaker,
    LLMAnswerCache,
    LLMGenerator,
    LLMProposal,
    LLMUnavailable,
)
from tests.llm_server import FakeLLMServer, Reply, dead_port

T = TypeVar("T")
API_KEY = "sk-test-7f3a9c-DO-NOT-LEAK"
SPEC_HASH = "spec-abc"
HISTORY = ["GET /invoices", "PUT /invoices/in_123/status"]


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


def make_ops(n: int) -> list[Operation]:
    base = [
        Operation(
            method="GET", path="/invoices", operation_id="listInvoices", summary="List invoices"
        ),
        Operation(
            method="GET",
            path="/invoices/{invoice_id}",
            operation_id="getInvoice",
            summary="Retrieve an invoice",
        ),
        Operation(
            method="POST",
            path="/invoices/{invoice_id}/pay",
            operation_id="payInvoice",
            summary="Pay an invoice",
        ),
        Operation(
            method="DELETE",
            path="/invoices/{invoice_id}",
            operation_id="deleteInvoice",
            summary="Delete a draft invoice",
        ),
    ]
    extra = [
        Operation(
            method="GET",
            path=f"/things{i}/{{thing_id}}",
            operation_id=f"getThing{i}",
            summary=f"Retrieve thing number {i}",
            description="x" * 500,
        )
        for i in range(max(0, n - len(base)))
    ]
    return (base + extra)[:n]


OPS = make_ops(4)
GOOD: list[dict[str, Any]] = [
    {
        "endpoint": "POST /invoices/{invoice_id}/pay",
        "params": {"invoice_id": "in_123"},
        "confidence": 0.8,
        "reason": "pays the invoice you just updated",
    },
    {
        "endpoint": "GET /invoices/{invoice_id}",
        "params": {"invoice_id": "in_123"},
        "confidence": 0.4,
        "reason": "checks it",
    },
]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as s:
        yield s


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    def _make(base_url: str, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "data_dir": tmp_path / "var",
            "llm_base_url": base_url,
            "llm_model": "test-model",
            "llm_api_key": SecretStr(API_KEY),
            "llm_budget_s": 0.5,
            "llm_connect_timeout_s": 0.2,
            "llm_breaker_failures": 3,
            "llm_breaker_reset_s": 10.0,
        }
        values.update(overrides)
        return Settings(**values)

    return _make


async def propose(
    gen: LLMGenerator,
    *,
    prompt: str | None = "get this invoice paid",
    shortlist: list[Operation] | None = None,
    k: int = 5,
) -> list[LLMProposal]:
    return await gen.propose(
        shortlist=OPS if shortlist is None else shortlist,
        history=HISTORY,
        prompt=prompt,
        spec_hash=SPEC_HASH,
        k=k,
    )


async def call_once(settings: Settings, **kwargs: Any) -> list[LLMProposal]:
    gen = LLMGenerator(settings)
    try:
        return await propose(gen, **kwargs)
    finally:
        await gen.aclose()


async def expect_unavailable(gen: LLMGenerator, **kwargs: Any) -> LLMUnavailable:
    with pytest.raises(LLMUnavailable) as info:
        await propose(gen, **kwargs)
    return info.value


# -- answers -------------------------------------------------------------------------------------


def test_good_answer_gives_proposals_and_a_well_formed_request(server, make_settings):
    server.script(Reply.predictions(GOOD))
    proposals = run(call_once(make_settings(server.base_url)))

    assert proposals == [
        LLMProposal(
            "POST /invoices/{invoice_id}/pay",
            {"invoice_id": "in_123"},
            0.8,
            "pays the invoice you just updated",
        ),
        LLMProposal("GET /invoices/{invoice_id}", {"invoice_id": "in_123"}, 0.4, "checks it"),
    ]
    (req,) = server.requests
    assert req.path == "/v1/chat/completions"
    assert req.headers["authorization"] == f"Bearer {API_KEY}"
    body = req.json
    assert body["model"] == "test-model"
    assert body["temperature"] == 0
    assert body["response_format"] == {"type": "json_object"}
    assert 0 < body["max_tokens"] <= 1024
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    user = req.user_message
    for event in HISTORY:
        assert event in user
    assert "get this invoice paid" in user
    assert "- DELETE /invoices/{invoice_id} | [destructive] Delete a draft invoice" in user


def test_fenced_json_clamped_confidence_bad_items_and_k(server, make_settings):
    items: list[dict[str, Any]] = [
        {
            "endpoint": "post  /invoices/{invoice_id}/pay",
            "params": {"invoice_id": "in_123", "amount": 12, "nested": {}},
            "confidence": 1.7,
        },
        {"endpoint": "GET /invoices", "confidence": -0.2},
        {"endpoint": "GET /invoices/{invoice_id}", "confidence": "high"},  # bad: skipped
        {"confidence": 0.9},  # bad: no endpoint
        {"endpoint": "POST /invoices/{invoice_id}/pay", "confidence": 0.1},  # duplicate
        {"endpoint": "DELETE /invoices/{invoice_id}", "params": {"invoice_id": "{invoice_id}"}},
    ]
    server.script(Reply.predictions(items, fenced=True))

    async def scenario() -> tuple[list[LLMProposal], LLMGenerator]:
        gen = LLMGenerator(make_settings(server.base_url))
        try:
            return await propose(gen, k=3), gen
        finally:
            await gen.aclose()

    proposals, gen = run(scenario())
    assert [(p.endpoint, p.confidence) for p in proposals] == [
        ("POST /invoices/{invoice_id}/pay", 1.0),
        ("GET /invoices", 0.0),
        ("DELETE /invoices/{invoice_id}", 0.5),  # missing confidence: no opinion
    ]
    assert proposals[0].params == {"invoice_id": "in_123", "amount": "12"}
    assert proposals[2].params == {}  # a placeholder is not a value
    assert gen.invalid_items == 2


def test_invented_endpoint_is_dropped_and_counted(server, make_settings):
    server.script(
        Reply.predictions(
            [
                {"endpoint": "POST /invoices/{invoice_id}/refund_everything", "confidence": 0.99},
                GOOD[0],
            ]
        )
    )

    async def scenario() -> tuple[list[LLMProposal], LLMGenerator]:
        gen = LLMGenerator(make_settings(server.base_url))
        try:
            return await propose(gen), gen
        finally:
            await gen.aclose()

    proposals, gen = run(scenario())
    assert [p.endpoint for p in proposals] == ["POST /invoices/{invoice_id}/pay"]
    assert gen.invented_dropped == 1
    assert gen.status()["invented_dropped"] == 1


def test_only_invented_endpoints_is_unavailable(server, make_settings):
    server.script(Reply.predictions([{"endpoint": "GET /nowhere", "confidence": 0.9}]))
    with pytest.raises(LLMUnavailable, match="^no_valid"):
        run(call_once(make_settings(server.base_url)))


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (Reply.error(500), "http_500"),
        (Reply.error(429), "http_429"),
        (Reply.error(401), "http_401"),
        (Reply.text("Sure! The next call is probably GET /invoices."), "malformed"),
        (Reply.text('{"predictions": [{"endpoint": '), "malformed"),
        (Reply.text('{"answer": 42}'), "malformed"),
        (Reply.raw(b"<html>bad gateway</html>"), "malformed"),
        (Reply.raw(b'{"choices": []}'), "malformed"),
        (Reply.text(""), "empty"),
        (Reply.text(None), "empty"),
        (Reply.text('{"predictions": []}'), "empty"),
    ],
)
def test_bad_answers_are_unavailable(server, make_settings, reply, reason):
    server.script(reply)
    with pytest.raises(LLMUnavailable) as info:
        run(call_once(make_settings(server.base_url)))
    assert info.value.reason == reason
    assert len(server.requests) == 1  # no retry on an answer, only on a connection error


# -- time budget, connections, retry --------------------------------------------------------------


@pytest.mark.parametrize(
    "reply", [Reply.slow(3.0, Reply.predictions(GOOD)), Reply.hanging()], ids=["slow", "black-hole"]
)
def test_past_the_budget_is_a_timeout_within_budget(server, make_settings, reply):
    server.script(Reply.predictions(GOOD), reply)  # the first call warms the client up
    settings = make_settings(server.base_url, llm_budget_s=0.3)

    async def scenario() -> tuple[LLMUnavailable, float, LLMGenerator]:
        gen = LLMGenerator(settings)
        try:
            await propose(gen, prompt="warm-up")
            started = time.perf_counter()
            exc = await expect_unavailable(gen)
            return exc, time.perf_counter() - started, gen
        finally:
            await gen.aclose()

    exc, elapsed, gen = run(scenario())
    assert exc.reason == "timeout"
    assert 0.3 <= elapsed < 1.5, elapsed  # the slow reply takes 3 s; slack for a loaded CI box
    assert gen.fallbacks == {"timeout": 1}


class CountingTransport(httpx.AsyncHTTPTransport):
    """The real transport, counting the attempts that reach it."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.attempts = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.attempts += 1
        return await super().handle_async_request(request)


def test_dead_port_is_connect_after_exactly_one_retry(make_settings):
    settings = make_settings(f"http://127.0.0.1:{dead_port()}/v1")
    transport = CountingTransport()

    async def scenario() -> tuple[LLMUnavailable, LLMGenerator]:
        gen = LLMGenerator(settings, transport=transport)
        try:
            return await expect_unavailable(gen), gen
        finally:
            await gen.aclose()

    started = time.perf_counter()
    exc, gen = run(scenario())
    assert exc.reason == "connect"
    assert transport.attempts == 2
    assert (gen.requests, gen.retries) == (2, 1)
    assert gen.fallbacks["connect"] == 1
    assert time.perf_counter() - started < settings.llm_budget_s + 0.25


def test_dropped_connection_is_retried_once_and_then_succeeds(server, make_settings):
    server.script(Reply.dropped(), Reply.predictions(GOOD))

    async def scenario() -> tuple[list[LLMProposal], LLMGenerator]:
        gen = LLMGenerator(make_settings(server.base_url))
        try:
            return await propose(gen), gen
        finally:
            await gen.aclose()

    proposals, gen = run(scenario())
    assert proposals[0].endpoint == "POST /invoices/{invoice_id}/pay"
    assert len(server.requests) == 2
    assert gen.retries == 1
    assert gen.breaker.state == "closed"


def test_connections_are_reused(server, make_settings):
    server.default = Reply.predictions(GOOD)

    async def scenario() -> None:
        gen = LLMGenerator(make_settings(server.base_url))
        try:
            for i in range(3):
                await propose(gen, prompt=f"distinct prompt {i}")  # distinct: no cache hits
        finally:
            await gen.aclose()

    run(scenario())
    assert len(server.requests) == 3
    ports = {r.client_port for r in server.requests}
    assert len(ports) == 1  # one keep-alive connection served all three


# -- circuit breaker ------------------------------------------------------------------------------


def test_circuit_opens_fails_fast_and_half_opens_after_reset(server, make_settings):
    clock = FakeClock()
    settings = make_settings(server.base_url, llm_breaker_failures=2, llm_breaker_reset_s=10.0)

    async def scenario() -> LLMGenerator:
        gen = LLMGenerator(settings, clock=clock)
        try:
            server.script(Reply.error(500), Reply.error(503))
            assert (await expect_unavailable(gen, prompt="a")).reason == "http_500"
            assert (await expect_unavailable(gen, prompt="b")).reason == "http_503"
            assert gen.breaker.state == "open"

            started = time.perf_counter()
            assert (await expect_unavailable(gen, prompt="c")).reason == "circuit_open"
            assert time.perf_counter() - started < 0.5  # fails fast, below the 0.5 s budget
            assert len(server.requests) == 2  # nothing reached the server

            clock.now += 9.9
            assert (await expect_unavailable(gen, prompt="d")).reason == "circuit_open"

            clock.now += 0.1  # half-open: one trial, which fails -> open again
            server.script(Reply.error(500))
            assert (await expect_unavailable(gen, prompt="e")).reason == "http_500"
            assert gen.breaker.state == "open"
            assert (await expect_unavailable(gen, prompt="f")).reason == "circuit_open"
            assert len(server.requests) == 3

            clock.now += 10  # half-open again: the trial succeeds -> closed
            server.script(Reply.predictions(GOOD))
            assert await propose(gen, prompt="g")
            assert gen.breaker.state == "closed"
            return gen
        finally:
            await gen.aclose()

    gen = run(scenario())
    status = gen.status()
    assert status["breaker"] == "closed"
    assert status["breaker_opened"] == 2
    assert status["fallbacks"] == {"http_500": 2, "http_503": 1, "circuit_open": 3}


def test_breaker_allows_one_trial_at_a_time_and_frees_a_lost_one():
    clock = FakeClock()
    breaker = CircuitBreaker(failures=1, reset_after_s=5.0, clock=clock)
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state == "open" and not breaker.allow()
    clock.now += 5
    assert breaker.allow() and breaker.state == "half_open"
    assert not breaker.allow()  # the trial is still in flight
    clock.now += 5  # its caller was cancelled and never reported: free the slot
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == "closed" and breaker.allow()
    with pytest.raises(ValueError, match="failures must be >= 1"):
        CircuitBreaker(failures=0, reset_after_s=1.0)


# -- answer cache ---------------------------------------------------------------------------------


def test_cache_hit_on_identical_call_also_across_instances(server, make_settings):
    settings = make_settings(server.base_url)
    server.default = Reply.predictions(GOOD)

    async def scenario() -> tuple[list[LLMProposal], list[LLMProposal], int]:
        gen = LLMGenerator(settings)
        try:
            first = await propose(gen)
            second = await propose(gen)
            return first, second, gen.cache_hits
        finally:
            await gen.aclose()

    first, second, hits = run(scenario())
    assert first == second and hits == 1
    assert len(server.requests) == 1

    third = run(call_once(settings))  # new instance, same SQLite file
    assert third == first
    assert len(server.requests) == 1
    assert (settings.data_dir / "llm_cache.sqlite").exists()

    run(call_once(settings, prompt="something else"))  # different key
    run(call_once(settings, k=1))  # k shapes the answer too
    assert len(server.requests) == 3


def test_cache_entries_expire(tmp_path):
    clock = FakeClock()
    cache = LLMAnswerCache(tmp_path / "c.sqlite", ttl_s=60, clock=clock)
    proposal = LLMProposal("GET /a", {"x": "1"}, 0.5, "r")
    cache.put("k", [proposal])
    assert cache.get("k") == [proposal]
    clock.now += 61
    assert cache.get("k") is None
    cache.close()


@pytest.mark.parametrize("breakage", ["corrupt", "unwritable"])
def test_broken_cache_is_bypassed_with_a_warning(server, make_settings, tmp_path, caplog, breakage):
    data_dir = tmp_path / "data"
    if breakage == "corrupt":
        data_dir.mkdir()
        (data_dir / "llm_cache.sqlite").write_bytes(b"this is not a database" * 100)
    else:
        data_dir.write_text("a file where the data directory should be")
    settings = make_settings(server.base_url, data_dir=data_dir)
    server.default = Reply.predictions(GOOD)
    caplog.set_level(logging.WARNING, logger="deployments.serving.llm")

    async def scenario() -> LLMGenerator:
        gen = LLMGenerator(settings)
        try:
            assert await propose(gen)
            assert await propose(gen)
            return gen
        finally:
            await gen.aclose()

    gen = run(scenario())
    assert len(server.requests) == 2  # no cache, but no failure either
    assert gen.status()["cache"] == "disabled"
    assert "cache" in caplog.text and "disabled" in caplog.text


# -- prompt size and content ----------------------------------------------------------------------


def test_prompt_carries_the_shortlist_only_and_stays_bounded(server, make_settings, tmp_path):
    server.default = Reply.predictions(GOOD)
    big_spec = make_ops(1000)

    def settings(name: str) -> Settings:  # a cache each, or the 2nd and 3rd calls would be hits
        return make_settings(server.base_url, llm_shortlist=40, data_dir=tmp_path / name)

    run(call_once(settings("a"), shortlist=big_spec[:40]))
    run(call_once(settings("b"), shortlist=big_spec))  # caller passed too many: capped
    run(call_once(settings("c"), shortlist=make_ops(40)))  # a spec of just 40
    small, capped, tiny_spec = (r.user_message for r in server.requests)

    assert "POST /invoices/{invoice_id}/pay | Pay an invoice" in small
    assert "GET /things35/{thing_id}" in small
    for outside in ("GET /things36/{thing_id}", "GET /things500/{thing_id}", "things999"):
        assert outside not in small and outside not in capped
    assert capped == small == tiny_spec  # size depends on the shortlist, not the spec
    assert len(json.dumps(server.requests[1].json)) < 12_000
    assert "x" * 200 not in small  # long descriptions are truncated


def test_long_history_and_prompt_are_truncated(server, make_settings):
    server.default = Reply.predictions(GOOD)
    history = [f"GET /invoices/in_{i}" for i in range(100)]
    gen_settings = make_settings(server.base_url)

    async def scenario() -> None:
        gen = LLMGenerator(gen_settings)
        try:
            await gen.propose(
                shortlist=OPS, history=history, prompt="pay " * 2000, spec_hash=SPEC_HASH, k=3
            )
        finally:
            await gen.aclose()

    run(scenario())
    user = server.requests[0].user_message
    assert "in_99" in user and "in_80" in user and "in_79\n" not in user
    assert len(user) < 3000


def test_no_key_no_authorization_header(server, make_settings):
    server.default = Reply.predictions(GOOD)
    run(call_once(make_settings(server.base_url, llm_api_key=None)))
    assert "authorization" not in server.requests[0].headers


def test_disabled_settings_are_refused(make_settings):
    with pytest.raises(ValueError, match="llm_base_url and llm_model"):
        LLMGenerator(make_settings("http://127.0.0.1:1/v1", llm_model=None))


# -- the key never leaks --------------------------------------------------------------------------


def test_api_key_never_in_logs_exceptions_reprs_or_status(server, make_settings, caplog):
    caplog.set_level(logging.DEBUG)  # every logger, httpx and httpcore included
    settings = make_settings(server.base_url, llm_budget_s=0.3, llm_breaker_failures=10)
    dead = make_settings(f"http://127.0.0.1:{dead_port()}/v1")
    server.script(
        Reply.predictions(GOOD),
        Reply.error(500),
        Reply.text("nope"),
        Reply.hanging(),
        Reply.dropped(),
        Reply.dropped(),
        Reply.predictions([{"endpoint": "GET /x"}]),
    )
    texts: list[str] = []

    async def scenario() -> None:
        for gen_settings, n in ((settings, 6), (dead, 1)):
            gen = LLMGenerator(gen_settings)
            texts.append(repr(gen))
            try:
                for i in range(n):
                    try:
                        await propose(gen, prompt=f"call {i}")
                    except LLMUnavailable as exc:
                        texts.extend([str(exc), repr(exc), exc.detail])
                        logging.getLogger("test").exception("fell back")  # with traceback
            finally:
                texts.append(json.dumps(gen.status()))
                await gen.aclose()

    run(scenario())
    assert server.requests[0].headers["authorization"] == f"Bearer {API_KEY}"  # it was sent
    assert len(texts) > 10
    assert "Traceback" in caplog.text  # tracebacks were captured, so they were checked too
    for text in [*texts, caplog.text, repr(settings)]:
        assert API_KEY not in text
        assert "DO-NOT-LEAK" not in text
