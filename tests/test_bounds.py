"""Size bounds of the request model: event params are capped by their bytes as JSON, so no request
the model accepts is too large for Ray's 4 MiB gRPC messages (RELIABILITY.md, "Bounds")."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from deployments.serving.schemas import (
    MAX_EVENT_PARAMS_BYTES,
    MAX_EVENTS,
    MAX_PARAM_VALUE_BYTES,
    PredictRequest,
    json_size,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "request.json"


def _request(*params: dict[str, Any]) -> dict[str, Any]:
    return {
        "user_id": "u",
        "spec": {"openapi": "3.0.0"},
        "events": [{"endpoint": "GET /v1/invoices", "params": p} for p in params],
    }


def test_a_5_mb_param_value_is_refused_naming_the_cap() -> None:
    started = time.perf_counter()
    cap = f"over {MAX_PARAM_VALUE_BYTES} bytes as JSON \\(the cap per value"
    with pytest.raises(ValidationError, match=cap):
        PredictRequest.model_validate(_request({"q": "x" * 5_000_000}))
    assert time.perf_counter() - started < 0.5


@pytest.mark.parametrize(
    "value",
    [
        ["x" * 100] * 50,  # nested values count whole
        {"a": {"b": "é" * 2100}},  # bytes, not characters
        10**5000,  # a huge integer (no str() of it: Python refuses over 4,300 digits)
    ],
    ids=["list", "utf-8", "huge-int"],
)
def test_large_nested_or_numeric_values_are_refused(value: Any) -> None:
    with pytest.raises(ValidationError, match="the cap per value"):
        PredictRequest.model_validate(_request({"v": value}))


def test_a_value_of_exactly_the_cap_is_accepted() -> None:
    at_cap = "x" * (MAX_PARAM_VALUE_BYTES - 2)  # plus its two quotes
    assert len(json.dumps(at_cap)) == MAX_PARAM_VALUE_BYTES
    PredictRequest.model_validate(_request({"q": at_cap}))
    with pytest.raises(ValidationError, match="the cap per value"):
        PredictRequest.model_validate(_request({"q": at_cap + "x"}))


def test_params_of_all_events_together_are_capped_per_request() -> None:
    event = {f"p{i}": "x" * 390 for i in range(10)}  # ~4 KB per event
    size = json_size(event, limit=10**9)
    fits = MAX_EVENT_PARAMS_BYTES // size
    PredictRequest.model_validate(_request(*[event] * fits))
    cap = f"over {MAX_EVENT_PARAMS_BYTES} bytes as JSON \\(the cap per request"
    with pytest.raises(ValidationError, match=cap):
        PredictRequest.model_validate(_request(*[event] * (fits + 1)))
    assert fits + 1 <= MAX_EVENTS  # the count bound alone would have let it through


def test_deep_params_through_a_handle_are_counted_without_recursion() -> None:
    deep: dict[str, Any] = {}
    for _ in range(100_000):
        deep = {"a": deep}
    with pytest.raises(ValidationError, match="the cap per value"):
        PredictRequest.model_validate(_request({"d": deep}))


def test_json_size_is_the_compact_json_size_of_small_values() -> None:
    for value in ["", "héllo", 0, 7, -12345, 1.5, None, True, [], {}, [1, "a"], {"a": {"b": [None]}}]:
        exact = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
        assert exact <= json_size(value, limit=10**9) <= exact + 3, value


def test_the_example_request_and_real_sized_histories_are_accepted() -> None:
    PredictRequest.model_validate_json(EXAMPLE.read_bytes())
    # The largest real workflow has 3,444 bytes of params; 200 events of ~300 bytes each fit.
    event = {"invoice_id": "in_" + "1" * 20, "note": "x" * 250}
    PredictRequest.model_validate(_request(*[event] * MAX_EVENTS))
