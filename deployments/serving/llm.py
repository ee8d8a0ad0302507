"""LLM candidate backend: ask an OpenAI-compatible chat-completions server for the next calls.

Plain class, no Ray import; it belongs to serving for its HTTP client and its SQLite answer cache.
The prompt carries a shortlist of operations (never the whole spec), the answer is validated
against that shortlist, and every failure raises :class:`LLMUnavailable` with a short reason code
so the caller can fall back to the embedded generator in the same request.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import re
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from core.candidates.types import LLMProposal, LLMUnavailable

if TYPE_CHECKING:
    from core.settings import Settings
    from core.spec.operations import Operation

__all__ = [
    "BreakerState",
    "CircuitBreaker",
    "LLMAnswerCache",
    "LLMGenerator",
    "LLMProposal",
    "LLMUnavailable",
]

log = logging.getLogger(__name__)

Clock = Callable[[], float]
BreakerState = Literal["closed", "open", "half_open"]

# Prompt bounds: the prompt's size depends on the shortlist length only, never on the spec's.
_MAX_HISTORY = 20
_MAX_EVENT_CHARS = 200
_MAX_PROMPT_CHARS = 1000
_MAX_SUMMARY_CHARS = 120
# Answer bounds: a runaway or hostile server cannot make us buffer or keep much.
_MAX_RESPONSE_BYTES = 256 * 1024
_MAX_PARAMS = 20
_MAX_VALUE_CHARS = 200
_MAX_REASON_CHARS = 200


class CircuitBreaker:
    """closed → open after ``failures`` consecutive failures → half-open once ``reset_after_s``
    has passed (one trial call) → closed on its success, open again on its failure.

    Meant for one event loop: transitions happen between awaits, so no lock.
    """

    def __init__(
        self, *, failures: int, reset_after_s: float, clock: Clock = time.monotonic
    ) -> None:
        if failures < 1:
            raise ValueError(f"failures must be >= 1, got {failures}")
        if reset_after_s <= 0:
            raise ValueError(f"reset_after_s must be > 0, got {reset_after_s}")
        self._threshold = failures
        self._reset_after_s = reset_after_s
        self._clock = clock
        self._state: BreakerState = "closed"
        self._consecutive = 0
        self._opened_at = 0.0
        self._trial_started_at: float | None = None
        self.times_opened = 0

    @property
    def state(self) -> BreakerState:
        return self._state

    def allow(self) -> bool:
        if self._state == "closed":
            return True
        now = self._clock()
        if self._state == "open":
            if now - self._opened_at < self._reset_after_s:
                return False
            self._state = "half_open"
            self._trial_started_at = now
            log.info("LLM circuit half-open: trying one call")
            return True
        # half_open: one trial at a time. A trial that never reports back (its caller was
        # cancelled) frees the slot after another reset period instead of wedging the breaker.
        started = self._trial_started_at
        if started is not None and now - started < self._reset_after_s:
            return False
        self._trial_started_at = now
        return True

    def record_success(self) -> None:
        if self._state != "closed":
            log.info("LLM circuit closed")
        self._state = "closed"
        self._consecutive = 0
        self._trial_started_at = None

    def record_failure(self) -> None:
        self._consecutive += 1
        if self._state == "half_open" or (
            self._state == "closed" and self._consecutive >= self._threshold
        ):
            self._open()
        # Already open: a straggler started before the circuit opened; don't extend the wait.

    def _open(self) -> None:
        self._state = "open"
        self._opened_at = self._clock()
        self._trial_started_at = None
        self.times_opened += 1
        log.warning(
            "LLM circuit open after %d consecutive failures; next trial in %.1f s",
            self._consecutive,
            self._reset_after_s,
        )


class LLMAnswerCache:
    """Validated answers in SQLite (WAL), shared by a node's replicas, expiring after ``ttl_s``.

    A cache problem (corrupt or unwritable file, lock contention) logs a warning and is bypassed:
    it never fails a request. Calls are blocking and short; callers run them in a thread.
    """

    def __init__(self, path: Path, *, ttl_s: float, clock: Clock = time.time) -> None:
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be > 0, got {ttl_s}")
        self.path = path
        self._ttl_s = ttl_s
        self._clock = clock  # wall clock: rows are shared with other processes
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._puts = 0
        self.disabled = False
        self.errors = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> LLMAnswerCache:
        return cls(settings.data_dir / "llm_cache.sqlite", ttl_s=settings.llm_cache_ttl_s)

    @staticmethod
    def key(
        *,
        model: str,
        spec_hash: str,
        history: Sequence[str],
        prompt: str | None,
        shortlist_keys: Sequence[str],
        k: int,
    ) -> str:
        # The shortlist and k shape the answer too, so they are part of the key.
        payload = json.dumps(
            [model, spec_hash, list(history), prompt, list(shortlist_keys), k],
            separators=(",", ":"),
        )
        return hashlib.sha256(payload.encode()).hexdigest()

    def get(self, key: str) -> list[LLMProposal] | None:
        with self._lock:
            conn = self._connect()
            if conn is None:
                return None
            try:
                row = conn.execute(
                    "SELECT value FROM answers WHERE key = ? AND expires_at > ?",
                    (key, self._clock()),
                ).fetchone()
            except sqlite3.Error as exc:
                self._failed("read", exc)
                return None
        if row is None:
            return None
        try:
            return [LLMProposal(**item) for item in json.loads(row[0])]
        except (ValueError, TypeError) as exc:
            log.warning("LLM answer cache: unreadable entry skipped (%s)", exc)
            return None

    def put(self, key: str, proposals: Sequence[LLMProposal]) -> None:
        value = json.dumps([asdict(p) for p in proposals], separators=(",", ":"))
        with self._lock:
            conn = self._connect()
            if conn is None:
                return
            now = self._clock()
            try:
                conn.execute(
                    "INSERT OR REPLACE INTO answers (key, expires_at, value) VALUES (?, ?, ?)",
                    (key, now + self._ttl_s, value),
                )
                self._puts += 1
                if self._puts % 256 == 0:
                    conn.execute("DELETE FROM answers WHERE expires_at <= ?", (now,))
            except sqlite3.Error as exc:
                self._failed("write", exc)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _connect(self) -> sqlite3.Connection | None:
        if self.disabled:
            return None
        if self._conn is not None:
            return self._conn
        conn: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Short busy timeout: a locked cache is skipped, not waited for.
            conn = sqlite3.connect(
                self.path, timeout=0.05, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS answers "
                "(key TEXT PRIMARY KEY, expires_at REAL NOT NULL, value TEXT NOT NULL)"
            )
        except (OSError, sqlite3.Error) as exc:
            if conn is not None:
                conn.close()
            self._disable(exc)
            return None
        self._conn = conn
        return conn

    def _failed(self, what: str, exc: sqlite3.Error) -> None:
        if isinstance(exc, sqlite3.OperationalError):
            # Usually "database is locked": transient, skip this one operation.
            self.errors += 1
            log.warning("LLM answer cache %s skipped: %s", what, exc)
        else:
            self._disable(exc)  # corrupt file: stop trying

    def _disable(self, exc: BaseException) -> None:
        self.errors += 1
        self.disabled = True
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        log.warning("LLM answer cache at %s disabled, bypassing it: %s", self.path, exc)


class _Prediction(BaseModel):
    """One item of the model's answer, before it is checked against the shortlist."""

    model_config = ConfigDict(extra="ignore")

    endpoint: str
    params: dict[str, str] = {}
    confidence: float = 0.5  # a model that omits it has no opinion
    reason: str = ""

    @field_validator("params", mode="before")
    @classmethod
    def _scalars_as_text(cls, value: Any) -> dict[str, str]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ValueError("params must be an object")
        out: dict[str, str] = {}
        for name, v in list(value.items())[:_MAX_PARAMS]:
            if isinstance(v, bool):
                out[str(name)] = "true" if v else "false"
            elif isinstance(v, str | int | float):
                text = str(v)
                # A placeholder such as "{invoice_id}" is not a value the user has.
                if text and not (text.startswith(("{", "<")) and text.endswith(("}", ">"))):
                    out[str(name)] = text[:_MAX_VALUE_CHARS]
        return out

    @field_validator("confidence")
    @classmethod
    def _clamped(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("confidence must be a finite number")
        return min(1.0, max(0.0, value))

    @field_validator("reason", mode="before")
    @classmethod
    def _short_reason(cls, value: Any) -> str:
        return " ".join(str(value or "").split())[:_MAX_REASON_CHARS]


_SYSTEM_PROMPT = (
    "You predict the next API call a user of a product will make. "
    "Choose only among the candidate operations listed, copying each endpoint string exactly "
    "as written (METHOD and path template). Fill params only with values that appear in the "
    "recent calls or in the user's intent. Do not propose destructive operations (marked "
    "[destructive]: delete, cancel, void, refund, remove...) unless the intent clearly asks "
    "for one. Answer with a JSON object only, no prose: "
    '{"predictions": [{"endpoint": "METHOD /path/{param}", "params": {"param": "value"}, '
    '"confidence": 0.0, "reason": "one short sentence"}]}'
)

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)\s*```", re.S)


class LLMGenerator:
    """Proposes next operations from a shortlist by asking an OpenAI-compatible server.

    One ``httpx.AsyncClient`` per instance (pooled, keep-alive), built on first use inside the
    running loop. Each call is bounded by ``llm_budget_s`` in total, retries once on a connection
    error while budget remains, and goes through a circuit breaker. Answers are cached in SQLite.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Clock = time.monotonic,
        cache: LLMAnswerCache | None = None,
    ) -> None:
        base_url, model = settings.llm_base_url, settings.llm_model
        if not (base_url and model):
            raise ValueError(
                "the LLM backend needs llm_base_url and llm_model "
                "(OPENSESAME_LLM_BASE_URL, OPENSESAME_LLM_MODEL)"
            )
        self._settings = settings
        self._model = model
        self._url = f"{base_url}/chat/completions"
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._owns_cache = cache is None
        self.cache = cache if cache is not None else LLMAnswerCache.from_settings(settings)
        self.breaker = CircuitBreaker(
            failures=settings.llm_breaker_failures,
            reset_after_s=settings.llm_breaker_reset_s,
            clock=clock,
        )
        self.calls = 0  # propose() invocations
        self.requests = 0  # HTTP attempts, retries included
        self.retries = 0
        self.cache_hits = 0
        self.invented_dropped = 0  # endpoints not in the shortlist
        self.invalid_items = 0  # items that failed validation
        self.fallbacks: Counter[str] = Counter()  # reason code -> count

    @property
    def settings(self) -> Settings:
        return self._settings  # the key inside is a SecretStr: safe to pass around and repr

    @property
    def shortlist(self) -> int:
        return self._settings.llm_shortlist

    def __repr__(self) -> str:
        return f"LLMGenerator(model={self._model!r}, breaker={self.breaker.state!r})"

    async def propose(
        self,
        *,
        shortlist: Sequence[Operation],
        history: Sequence[str],
        prompt: str | None,
        spec_hash: str,
        k: int,
    ) -> list[LLMProposal]:
        """At most ``k`` proposals, each an operation of ``shortlist``; raises LLMUnavailable."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.calls += 1
        ops = list(shortlist[: self._settings.llm_shortlist])
        if not ops:
            raise self._fallback("no_shortlist")
        cache_key = LLMAnswerCache.key(
            model=self._model,
            spec_hash=spec_hash,
            history=history,
            prompt=prompt,
            shortlist_keys=[op.key for op in ops],
            k=k,
        )
        # Outside the budget: bounded by SQLite's 50 ms busy timeout, and a hit is what we want.
        cached = await asyncio.to_thread(self.cache.get, cache_key)
        if cached is not None:
            self.cache_hits += 1
            return cached[:k]
        if not self.breaker.allow():
            raise self._fallback("circuit_open")

        body = self._request_body(ops=ops, history=history, prompt=prompt, k=k)
        client = await self._http()
        try:
            async with asyncio.timeout(self._settings.llm_budget_s) as budget:
                raw = await self._post(client, body, budget)
            proposals = self._parse(raw, ops=ops, k=k)
        except LLMUnavailable as exc:
            # A well-formed answer with nothing usable is the model's fault, not the server's.
            if exc.reason == "no_valid":
                self.breaker.record_success()
            else:
                self.breaker.record_failure()
            self.fallbacks[exc.reason] += 1
            log.debug("LLM unavailable: %s", exc)
            raise
        except TimeoutError:
            self.breaker.record_failure()
            budget_s = self._settings.llm_budget_s
            raise self._fallback("timeout", detail=f"over {budget_s} s") from None
        self.breaker.record_success()
        await asyncio.to_thread(self.cache.put, cache_key, proposals)
        return proposals

    def status(self) -> dict[str, Any]:
        """For /health: no URL, no key, only state and counters."""
        return {
            "backend": "llm",
            "model": self._model,
            "breaker": self.breaker.state,
            "breaker_opened": self.breaker.times_opened,
            "calls": self.calls,
            "requests": self.requests,
            "retries": self.retries,
            "cache_hits": self.cache_hits,
            "cache": "disabled" if self.cache.disabled else "ok",
            "invented_dropped": self.invented_dropped,
            "invalid_items": self.invalid_items,
            "fallbacks": dict(self.fallbacks),
        }

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
            self._client_loop = None
        if self._owns_cache:
            await asyncio.to_thread(self.cache.close)

    # -- request -------------------------------------------------------------------------------

    async def _http(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._client is not None and self._client_loop is loop:
            return self._client
        # Pooled connections belong to the loop that opened them, hence built lazily, in the
        # running loop. Construction loads the TLS trust store (~50 ms): done in a thread so it
        # neither blocks the loop nor eats into the first request's budget.
        s = self._settings
        client = await asyncio.to_thread(
            httpx.AsyncClient,
            transport=self._transport,
            limits=httpx.Limits(
                max_connections=s.llm_max_connections,
                max_keepalive_connections=s.llm_max_connections,
                keepalive_expiry=s.llm_keepalive_s,
            ),
            timeout=httpx.Timeout(s.llm_budget_s, connect=s.llm_connect_timeout_s),
            follow_redirects=False,
        )
        if self._client is not None and self._client_loop is loop:
            await client.aclose()  # a concurrent first call built one already
            return self._client
        self._client, self._client_loop = client, loop
        return client

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        key = self._settings.llm_api_key
        if key is not None and key.get_secret_value():
            headers["Authorization"] = f"Bearer {key.get_secret_value()}"
        return headers

    async def _post(
        self, client: httpx.AsyncClient, body: dict[str, Any], budget: asyncio.Timeout
    ) -> bytes:
        loop = asyncio.get_running_loop()
        for attempt in (1, 2):
            self.requests += 1
            try:
                return await self._send(client, body)
            except (httpx.ConnectError, httpx.RemoteProtocolError) as exc:
                # Refused, or a pooled keep-alive connection the server had closed: the request
                # did not get an answer, and a chat completion is safe to ask for twice.
                reason = "connect" if isinstance(exc, httpx.ConnectError) else "protocol"
                deadline = budget.when()
                if attempt == 2 or (deadline is not None and deadline - loop.time() <= 0):
                    # str(exc) of these is the socket/h11 error: no headers, no key.
                    raise LLMUnavailable(reason, detail=_describe(exc)) from None
                self.retries += 1
                log.debug("LLM request failed (%s), retrying once", _describe(exc))
            except httpx.TimeoutException as exc:
                raise LLMUnavailable("timeout", detail=type(exc).__name__) from None
            except httpx.HTTPError as exc:
                raise LLMUnavailable("transport", detail=_describe(exc)) from None
        raise AssertionError("unreachable")

    async def _send(self, client: httpx.AsyncClient, body: dict[str, Any]) -> bytes:
        async with client.stream("POST", self._url, json=body, headers=self._headers()) as resp:
            if resp.status_code >= 400:
                raise LLMUnavailable(f"http_{resp.status_code}")
            chunks: list[bytes] = []
            size = 0
            async for chunk in resp.aiter_bytes():
                size += len(chunk)
                if size > _MAX_RESPONSE_BYTES:
                    raise LLMUnavailable("too_large", detail=f"over {_MAX_RESPONSE_BYTES} bytes")
                chunks.append(chunk)
            return b"".join(chunks)

    def _request_body(
        self, *, ops: Sequence[Operation], history: Sequence[str], prompt: str | None, k: int
    ) -> dict[str, Any]:
        return {
            "model": self._model,
            "messages": [
                {"role": "system", "content": _SYSTEM_PROMPT},
                {
                    "role": "user",
                    "content": _user_message(ops=ops, history=history, prompt=prompt, k=k),
                },
            ],
            "temperature": 0,
            "max_tokens": min(1024, 64 + 96 * k),
            "response_format": {"type": "json_object"},
        }

    # -- answer --------------------------------------------------------------------------------

    def _parse(self, raw: bytes, *, ops: Sequence[Operation], k: int) -> list[LLMProposal]:
        try:
            envelope = json.loads(raw)
            content = envelope["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError, RecursionError):  # "[[[[..." too
            raise LLMUnavailable("malformed", detail="not a chat-completions response") from None
        if content is None or (isinstance(content, str) and not content.strip()):
            raise LLMUnavailable("empty", detail="no content")
        if not isinstance(content, str):
            raise LLMUnavailable("malformed", detail="content is not text")
        data = _extract_json(content)
        items = data.get("predictions") if isinstance(data, dict) else data
        if not isinstance(items, list):
            raise LLMUnavailable("malformed", detail="no predictions list")
        if not items:
            raise LLMUnavailable("empty", detail="no predictions")

        known = {op.key for op in ops}
        proposals: list[LLMProposal] = []
        seen: set[str] = set()
        for item in items:
            try:
                p = _Prediction.model_validate(item)
            except ValidationError:
                self.invalid_items += 1
                continue
            endpoint = _normalise_endpoint(p.endpoint)
            if endpoint not in known:
                self.invented_dropped += 1
                log.debug("LLM proposed an endpoint outside the shortlist; dropped")
                continue
            if endpoint in seen:
                continue
            seen.add(endpoint)
            proposals.append(LLMProposal(endpoint, p.params, p.confidence, p.reason))
            if len(proposals) == k:
                break
        if not proposals:
            raise LLMUnavailable("no_valid", detail="no proposal names a shortlisted operation")
        return proposals

    def _fallback(self, reason: str, *, detail: str = "") -> LLMUnavailable:
        self.fallbacks[reason] += 1
        return LLMUnavailable(reason, detail=detail)


def _user_message(
    *, ops: Sequence[Operation], history: Sequence[str], prompt: str | None, k: int
) -> str:
    """The user turn: recent calls, the intent and one line per shortlisted operation."""
    lines = ["Recent calls, oldest first:"]
    recent = list(history)[-_MAX_HISTORY:]
    lines += [f"- {_one_line(e, _MAX_EVENT_CHARS)}" for e in recent] or ["- (none yet)"]
    intent = _one_line(prompt or "", _MAX_PROMPT_CHARS)
    lines.append(f"User intent: {intent}" if intent else "User intent: (not given)")
    lines.append("Candidate operations (endpoint | what it does):")
    for op in ops:
        about = op.summary or op.description or op.operation_id or ""
        mark = " [destructive]" if getattr(op, "destructive", False) else ""
        lines.append(f"- {op.key} |{mark} {_one_line(about, _MAX_SUMMARY_CHARS)}".rstrip())
    lines.append(f"Return at most {k} predictions, best first.")
    return "\n".join(lines)


def _one_line(text: str, limit: int) -> str:
    # Collapsing whitespace also keeps user text from forging new sections of the prompt.
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _extract_json(content: str) -> Any:
    """The JSON value in ``content``, tolerating ```json fences and prose around one object."""
    text = content.strip()
    fenced = _FENCE.search(text)
    if fenced:
        text = fenced.group(1)
    attempts = [text]
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        attempts.append(text[start : end + 1])  # prose around the object
    for attempt in attempts:
        try:
            return json.loads(attempt)
        except (ValueError, RecursionError):
            continue
    raise LLMUnavailable("malformed", detail="content is not JSON")


def _normalise_endpoint(endpoint: str) -> str:
    method, _, path = " ".join(endpoint.split()).partition(" ")
    return f"{method.upper()} {path}"


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:200]}" if str(exc) else type(exc).__name__
