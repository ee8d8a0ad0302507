"""The public contract of ``/predict`` and ``/health``: pydantic models shared by HTTP and handles."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core.spec.index import parse_endpoint

__all__ = [
    "Event",
    "PredictRequest",
    "Prediction",
    "PredictMetadata",
    "PredictResponse",
    "ErrorBody",
    "ErrorResponse",
    "HealthResponse",
    "FeedbackRequest",
    "FeedbackResponse",
    "StoredPredictionResponse",
    "UserErasedResponse",
    "MAX_EVENTS",
    "MAX_PROMPT_CHARS",
    "MAX_PARAM_VALUE_BYTES",
    "MAX_EVENT_PARAMS_BYTES",
    "PREDICTION_ID_PATTERN",
    "PREDICTION_ID_MAX_CHARS",
]

MAX_EVENTS = 200
MAX_PROMPT_CHARS = 4000
MAX_PARAMS = 100
MAX_ENDPOINT_CHARS = 2048
PREDICTION_ID_PATTERN = r"^[A-Za-z0-9_\-]+$"
PREDICTION_ID_MAX_CHARS = 64
# The request travels between replicas over Ray's gRPC, which refuses messages over 4 MiB (an HTTP
# 500), so params are bounded by their size as JSON. The largest of the 4,378 real workflow steps
# has 2,331 bytes of params, the largest workflow 3,444 in all.
MAX_PARAM_VALUE_BYTES = 4 * 1024  # each param value (nested ones whole)
MAX_EVENT_PARAMS_BYTES = 64 * 1024  # the params of all events of one request together


def json_size(value: Any, *, limit: int) -> int:
    """The size of ``value`` as compact UTF-8 JSON, counted without recursion and only until it
    passes ``limit`` (then the count so far, over ``limit``, is returned)."""
    size = 0
    stack = [value]
    while stack and size <= limit:
        item = stack.pop()
        if isinstance(item, str):
            # A string longer than the limit is over it in any encoding; skip encoding megabytes.
            size += 2 + (len(item) if len(item) > limit else len(item.encode("utf-8", "surrogatepass")))
        elif isinstance(item, dict):
            size += 1 + max(len(item), 1)  # braces and commas
            for key, sub in item.items():
                size += 3 + len(str(key).encode("utf-8", "surrogatepass"))  # quotes and colon
                stack.append(sub)
        elif isinstance(item, list | tuple):
            size += 1 + max(len(item), 1)
            stack.extend(item)
        elif item is None or isinstance(item, bool):
            size += 5
        elif isinstance(item, int):
            size += 2 + item.bit_length() * 30103 // 100_000  # digits, without str() of a huge int
        else:
            size += len(repr(item))
    return size


_EPOCH = re.compile(r"-?\d+(\.\d+)?")
_TS_RULE = "must be a timestamp: ISO 8601 (2026-12-04T10:00:00Z) or epoch seconds"


def timestamp(value: Any) -> str | None:
    """An event's ``ts`` as ISO 8601 (epoch seconds are converted, in UTC): implicit feedback
    orders events by it, so anything else is refused."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(_TS_RULE)
    text = str(value).strip()
    if len(text) > 64:
        raise ValueError(_TS_RULE)
    if not isinstance(value, str) or _EPOCH.fullmatch(text):
        seconds = float(text)
        if not 0 <= seconds < 1e11:  # 1970 to the year 5138: a count of seconds, not of ms
            raise ValueError(f"{_TS_RULE} (epoch seconds out of range: {text})")
        return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat()
    try:
        dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(_TS_RULE) from None
    return text


class Event(BaseModel):
    model_config = ConfigDict(extra="forbid")

    endpoint: str = Field(max_length=MAX_ENDPOINT_CHARS, examples=["GET /v1/invoices/in_123"])
    params: dict[str, Any] = Field(default_factory=dict)
    ts: str | None = Field(default=None, max_length=64,
                           description="when the call was made: ISO 8601, or epoch seconds")

    @field_validator("ts", mode="before")
    @classmethod
    def _ts(cls, v: Any) -> str | None:
        return timestamp(v)

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        parse_endpoint(v)  # ValueError → 422 naming the problem
        return v.strip()

    @field_validator("params")
    @classmethod
    def _params(cls, v: dict[str, Any]) -> dict[str, Any]:
        if len(v) > MAX_PARAMS:
            raise ValueError(f"at most {MAX_PARAMS} params per event")
        for name, value in v.items():
            if json_size(value, limit=MAX_PARAM_VALUE_BYTES) > MAX_PARAM_VALUE_BYTES:
                raise ValueError(
                    f"params value {name[:64]!r} is over {MAX_PARAM_VALUE_BYTES} bytes as JSON "
                    "(the cap per value)"
                )
        return v


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: str = Field(min_length=1, max_length=256)
    events: list[Event] = Field(default_factory=list, max_length=MAX_EVENTS)
    prompt: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
    spec_url: str | None = Field(default=None, max_length=2048)
    spec: dict[str, Any] | None = None
    k: int = Field(default=5, ge=1, le=20)

    @field_validator("events")
    @classmethod
    def _params_size(cls, v: list[Event]) -> list[Event]:
        total = 0
        for event in v:
            total += json_size(event.params, limit=MAX_EVENT_PARAMS_BYTES - total)
            if total > MAX_EVENT_PARAMS_BYTES:
                raise ValueError(
                    f"the events' params are over {MAX_EVENT_PARAMS_BYTES} bytes as JSON "
                    "(the cap per request)"
                )
        return v

    @model_validator(mode="after")
    def _one_spec(self) -> PredictRequest:
        if (self.spec_url is None) == (self.spec is None):
            raise ValueError("give exactly one of 'spec_url' or 'spec'")
        if self.spec_url is not None and not self.spec_url.lower().startswith(("http://", "https://")):
            raise ValueError("'spec_url' must be an http:// or https:// URL")
        return self

    def history(self) -> list[tuple[str, dict[str, Any]]]:
        return [(e.endpoint, e.params) for e in self.events]


class Prediction(BaseModel):
    endpoint: str
    params: dict[str, Any]
    score: float = Field(ge=0.0, le=1.0)
    why: str
    destructive: bool = False
    missing_params: list[str] = Field(default_factory=list)


class PredictMetadata(BaseModel):
    model_version: str
    generator: Literal["retrieval", "llm"]
    cold_start: bool
    timings_ms: dict[str, float]
    fallback_reason: str | None = None
    unknown_events: int = 0


class PredictResponse(BaseModel):
    predictions: list[Prediction]
    prediction_id: str
    metadata: PredictMetadata


class ErrorBody(BaseModel):
    status: int
    message: str
    details: list[dict[str, Any]] | None = None


class ErrorResponse(BaseModel):
    """Every error answer: ``{"error": {"status", "message", "details"?}}``."""

    error: ErrorBody


class HealthResponse(BaseModel):
    status: Literal["ok", "degraded"]
    model_version: str
    deployments: dict[str, dict[str, Any]]


class FeedbackRequest(BaseModel):
    """What the user really did after a prediction: the call they made, or that they took the
    top prediction (``accepted: true``)."""

    model_config = ConfigDict(extra="forbid")

    prediction_id: str = Field(min_length=1, max_length=PREDICTION_ID_MAX_CHARS,
                               pattern=PREDICTION_ID_PATTERN)
    actual_endpoint: str | None = Field(
        default=None, max_length=MAX_ENDPOINT_CHARS,
        examples=["POST /v1/invoices/in_123/pay", "POST /invoices/{invoice_id}/pay"],
    )
    accepted: bool | None = None

    @field_validator("actual_endpoint")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        if v is not None:
            parse_endpoint(v)
            return v.strip()
        return v

    @model_validator(mode="after")
    def _one_outcome(self) -> FeedbackRequest:
        if self.accepted is False and self.actual_endpoint is None:
            raise ValueError("'accepted': false says what the user did not do; give 'actual_endpoint'")
        if (self.actual_endpoint is None) == (self.accepted is None or self.accepted is False):
            raise ValueError("give exactly one of 'actual_endpoint' or 'accepted': true")
        return self


class FeedbackResponse(BaseModel):
    prediction_id: str
    recorded: bool = Field(description="false when this outcome was already stored (a repeat)")
    actual_endpoint: str = Field(description="the call as reported")
    operation: str | None = Field(description="the spec operation it is, or null if none")
    rank: int | None = Field(description="1-based position among the predictions shown, or null")
    source: Literal["explicit", "accepted", "implicit"]


class UserErasedResponse(BaseModel):
    user_id: str
    predictions: int = Field(description="stored predictions of the user deleted")
    outcomes: int = Field(description="their outcomes deleted")


class StoredPredictionResponse(BaseModel):
    prediction_id: str
    user_id: str
    model_version: str
    created_at: float
    predictions: list[dict[str, Any]]
    outcome: FeedbackResponse | None
