"""The LLM path against what its tests elsewhere did not reach: an endpoint that answers a byte at
a time (each read well within httpx's read timeout, so only the call's total budget,
``llm_budget_s``, can end it) and an answer cache another process holds locked. A real server on
loopback, the real LLMGenerator, a real SQLite file."""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.settings import Settings
from core.spec.operations import Operation
from deployments.serving.llm import LLMAnswerCache, LLMGenerator, LLMProposal, LLMUnavailable

BUDGET_S = 0.3
BYTE_EVERY_S = 0.1  # under the read timeout (the budget): httpx alone never times out


@pytest.fixture
def trickling_llm() -> Iterator[str]:
    """Answers a valid chat-completions envelope, one byte every ``BYTE_EVERY_S`` (~40 s in all)."""
    content = json.dumps({"predictions": [{"endpoint": "GET /invoices", "confidence": 0.5}]})
    body = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            threading.Thread(target=trickle, args=(conn,), daemon=True).start()

    def trickle(conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(body))
            for i in range(len(body)):
                if stop.wait(BYTE_EVERY_S):
                    return
                try:
                    conn.sendall(body[i : i + 1])
                except OSError:
                    return  # the client hung up: what the budget should make it do

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}/v1"
    finally:
        stop.set()
        thread.join(5)
        server.close()


def test_a_trickling_llm_is_cut_at_the_budget(trickling_llm: str, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, llm_base_url=trickling_llm, llm_model="m",
                        llm_budget_s=BUDGET_S, llm_connect_timeout_s=0.2)
    op = Operation(method="GET", path="/invoices", operation_id="listInvoices", summary="List invoices")

    async def call() -> LLMUnavailable:
        gen = LLMGenerator(settings)
        try:
            # Without the budget the whole answer arrives (~40 s) and is a valid proposal.
            with pytest.raises(LLMUnavailable) as info:
                await gen.propose(shortlist=[op], history=[], prompt="list them", spec_hash="s", k=1)
            return info.value
        finally:
            await gen.aclose()

    assert asyncio.run(call()).reason == "timeout"


def test_a_locked_answer_cache_is_skipped_then_used_again(tmp_path: Path) -> None:
    """Another process holds the answer cache's write lock: a write is skipped (counted, never
    the request's failure), the cache stays enabled and works once the lock goes."""
    path = tmp_path / "llm_cache.sqlite"
    cache = LLMAnswerCache(path, ttl_s=60)
    proposal = LLMProposal("GET /invoices", {}, 0.5, "r")
    cache.put("before", [proposal])
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        cache.put("during", [proposal])
        assert cache.errors == 1 and not cache.disabled
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    cache.put("after", [proposal])
    assert cache.get("after") == [proposal] and cache.get("during") is None
    cache.close()


def test_answers_naming_only_invented_endpoints_leave_the_breaker_closed(tmp_path: Path) -> None:
    """A server that answers well with a model that invents endpoints: each call falls back
    (``no_valid``), but the server works, so the breaker must not open and stop asking it."""
    from tests.llm_server import FakeLLMServer, Reply

    invented = Reply.predictions([{"endpoint": "POST /invoices/{invoice_id}/teleport", "confidence": 0.9}])
    with FakeLLMServer(default=invented) as server:
        settings = Settings(data_dir=tmp_path, llm_base_url=server.base_url, llm_model="m",
                            llm_breaker_failures=2, llm_breaker_reset_s=60)
        op = Operation(method="GET", path="/invoices", operation_id="listInvoices", summary="List")

        async def calls() -> list[str]:
            gen = LLMGenerator(settings)
            try:
                reasons = []
                for i in range(4):  # twice the failures that would open it; new prompts, no cache
                    with pytest.raises(LLMUnavailable) as info:
                        await gen.propose(shortlist=[op], history=[], prompt=f"p{i}", spec_hash="s", k=1)
                    reasons.append(info.value.reason)
                return [*reasons, gen.status()["breaker"]]
            finally:
                await gen.aclose()

        assert asyncio.run(calls()) == ["no_valid"] * 4 + ["closed"]
        assert len(server.requests) == 4  # every call reached the server
