"""Every metric the service exports, defined once: name, kind, tags and buckets.

They go through Serve's own mechanism (``ray.serve.metrics``, tagged with the deployment,
replica and application), so the Ray node's metrics agent serves them in Prometheus format next
to Ray's own ``ray_serve_*`` metrics: ``make run`` starts the head with
``--metrics-export-port 8080`` (README, Operations). Ray prefixes every name with ``ray_`` and
counters get ``_total``: ``opensesame_outcomes`` is scraped as ``ray_opensesame_outcomes_total``
(:func:`exported_names` lists them; the Grafana dashboard is checked against it).

A replica turns them on in its constructor (:func:`enable`, from the ``metrics`` setting); before
that, and in every process that is no Serve replica (the in-process pipeline, unit tests,
benchmarks), :func:`metrics` is a no-op recorder, so the places that count need no guard.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["METRICS", "Metrics", "RequestMetrics", "enable", "metrics", "exported_names", "breaker_value"]

# name -> (kind, description, tag keys, histogram boundaries). Tag values stay few: routes,
# statuses, stages, reasons and API titles (capped by _ApiNames), never ids.
_MS: list[float] = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]
METRICS: Mapping[str, tuple[str, str, tuple[str, ...], list[float] | None]] = {
    "opensesame_http_requests": (
        "counter", "HTTP requests answered by the Ingress, by route and status code",
        ("route", "status"), None),
    "opensesame_http_request_ms": (
        "histogram", "time the Ingress took to answer, ms", ("route",), _MS),
    "opensesame_stage_ms": (
        "histogram", "time per stage of a prediction (spec, candidates, features, rank), ms",
        ("stage",), _MS),
    # The deployment tag says which stage batched. Ray exports a histogram's _sum from bucket
    # midpoints (ray/_private/telemetry/open_telemetry_metric_recorder.py), not the values: the
    # mean batch size is batched_requests / batch_size_count, both exact.
    "opensesame_batch_size": (
        "histogram", "requests per batch a deployment handled at once", (), [1.5, 2.5, 4.5, 8.5, 16.5, 32.5]),
    "opensesame_batched_requests": (
        "counter", "requests a deployment handled in batches (over batch_size_count: the mean size)",
        (), None),
    "opensesame_fallbacks": (
        "counter", "predictions whose LLM generator was not used, by reason (timeout, circuit_open, ...)",
        ("reason",), None),
    "opensesame_llm_breaker_state": (
        "gauge", "the LLM circuit breaker: 0 closed, 0.5 half-open, 1 open", (), None),
    "opensesame_spec_cache": (
        "counter", "spec resolutions: hit (cached index) or miss (fetched and parsed)", ("result",), None),
    "opensesame_feedback": (
        "counter", "prediction contexts written to the feedback store, or dropped (queue full)",
        ("result",), None),
    "opensesame_model_info": (
        "gauge", "1 for the ranker model version a replica serves", ("version",), None),
    "opensesame_outcomes": (
        "counter", "outcomes recorded (what the user did after a prediction), by API and source",
        ("api", "source"), None),
    "opensesame_outcome_hits": (
        "counter", "recorded outcomes whose endpoint was in the prediction's top k (k=1, k=3), by API",
        ("api", "k"), None),
}

_BREAKER = {"closed": 0.0, "half_open": 0.5, "open": 1.0}
_MAX_APIS = 50  # distinct `api` tag values per process; later ones are counted as "other"


def exported_names(names: Iterable[str] = METRICS) -> set[str]:
    """The series names Prometheus sees for these of :data:`METRICS`."""
    out: set[str] = set()
    for name in names:
        kind, full = METRICS[name][0], f"ray_{name}"
        if kind == "counter":
            out.add(f"{full}_total")
        elif kind == "histogram":
            out.update({f"{full}_bucket", f"{full}_sum", f"{full}_count"})
        else:
            out.add(full)
    return out


def breaker_value(state: str) -> float:
    return _BREAKER.get(state, 1.0)


class _Null:
    """Stands for any metric when metrics are off: every call does nothing."""

    def inc(self, *_a: Any, **_k: Any) -> None:
        pass

    observe = set = inc


class _Recorder:
    """Makes the Ray records on a thread of its own: the request path only appends to a deque.

    A Ray record is ~4 µs of CPU with the GIL held (ray/util/metrics.py checks and merges the
    tags, then the core worker's C++ recorder takes it), and a prediction makes ~16 across the
    replicas. Every ``_RECORD_EVERY_S`` the thread takes what is pending and makes one Ray record
    per counter series (the sum of its increments) and per gauge series (the last value set);
    histograms, which Ray records one value at a time, get every value. A prediction's records
    then cost ~43 µs in all, ~6 of them on the request path, against ~61 with one Ray call each
    (benchmarks/metrics_cost.py). Counts stay exact and reach Ray within ``_RECORD_EVERY_S`` (Ray
    exports every few seconds). Bounded: past ``_MAX_PENDING`` waiting records the oldest are
    dropped rather than growing the replica.
    """

    def __init__(self, *, start: bool = True) -> None:
        self._pending: collections.deque[tuple[str, Any, float, dict[str, str] | None]] = (
            collections.deque(maxlen=_MAX_PENDING))
        self._thread = threading.Thread(target=self._run, name="metrics-recorder", daemon=True)
        if start:
            self._thread.start()

    def add(self, kind: str, metric: Any, value: float, tags: dict[str, str] | None) -> None:
        self._pending.append((kind, metric, value, tags))

    def _run(self) -> None:
        while True:
            time.sleep(_RECORD_EVERY_S)
            self.flush()

    def flush(self) -> int:
        """Record what is pending now (what arrives meanwhile waits for the next call).

        Returns the Ray records made: one per counter series (the sum of its increments), one
        per gauge series (the last value set), one per histogram value.
        """
        sums: dict[_Series, float] = {}
        last: dict[_Series, float] = {}
        values: dict[_Series, list[float]] = {}
        pending = self._pending
        for _ in range(len(pending)):  # popleft, not a copy: appends go on meanwhile
            kind, metric, value, tags = pending.popleft()
            series = (metric, tuple(tags.items()) if tags else ())
            if kind == "inc":
                sums[series] = sums.get(series, 0.0) + value
            elif kind == "set":
                last[series] = value
            else:
                values.setdefault(series, []).append(value)
        made = 0
        for (metric, key), total in sums.items():
            made += _record(metric.inc, total, dict(key) or None)
        for (metric, key), value in last.items():
            made += _record(metric.set, value, dict(key) or None)
        for (metric, key), observed in values.items():
            series_tags = dict(key) or None
            for value in observed:
                made += _record(metric.observe, value, series_tags)
        return made


_Series = tuple[Any, tuple[tuple[str, str], ...]]  # a Ray metric and one set of its tag values


def _record(record: Callable[..., None], value: float, tags: dict[str, str] | None) -> int:
    """One Ray record (1 if made): one bad record must not stop the others."""
    try:
        record(value, tags=tags)
    except Exception:  # noqa: BLE001
        logging.getLogger(__name__).exception("metrics: a record failed")
        return 0
    return 1


_RECORD_EVERY_S = 0.25
_MAX_PENDING = 100_000


class _Deferred:
    """A Ray metric whose records the :class:`_Recorder` makes."""

    __slots__ = ("_metric", "_recorder")

    def __init__(self, metric: Any, recorder: _Recorder) -> None:
        self._metric = metric
        self._recorder = recorder

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        self._recorder.add("inc", self._metric, value, tags)

    def observe(self, value: float, tags: dict[str, str] | None = None) -> None:
        self._recorder.add("observe", self._metric, value, tags)

    def set(self, value: float, tags: dict[str, str] | None = None) -> None:
        self._recorder.add("set", self._metric, value, tags)


class _ApiNames:
    """Caps the ``api`` tag: the API titles users send are open-ended, the series count must not be."""

    def __init__(self) -> None:
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, title: str) -> str:
        name = " ".join(title.split())[:60] or "untitled"
        with self._lock:
            if name in self._seen:
                return name
            if len(self._seen) >= _MAX_APIS:
                return "other"
            self._seen.add(name)
            return name


class Metrics:
    """What the code records; attribute names match :data:`METRICS` without the prefix."""

    def __init__(self, enabled: bool, *, recorder: _Recorder | None = None) -> None:
        self.enabled = enabled
        self.api_name = _ApiNames()
        if enabled and recorder is None:
            recorder = _Recorder()
        self.recorder = recorder
        for name, (kind, description, tags, boundaries) in METRICS.items():
            metric: Any = _Null()
            if recorder is not None:
                metric = _Deferred(_make(kind, name, description, tags, boundaries), recorder)
            setattr(self, name.removeprefix("opensesame_"), metric)
        self._model_version: str | None = None

    # The few records that are more than one call: kept here so each hook stays one line.

    def outcome(self, *, api: str, source: str, rank: int | None, corrects: bool = False,
                corrected_rank: int | None = None) -> None:
        """An outcome was recorded: count it, and whether the prediction had it first / in its top 3.

        ``corrects``: it replaces the implicit outcome (of rank ``corrected_rank``) already counted
        for the same prediction, so it is not counted again; only a hit the implicit one lacked
        is added. Counters cannot go down: a hit the correction takes away stays counted.
        """
        if not self.enabled:
            return
        api = self.api_name(api)
        if not corrects:
            self.outcomes.inc(tags={"api": api, "source": source})
        for k in (1, 3):
            hit = rank is not None and rank <= k
            counted = corrects and corrected_rank is not None and corrected_rank <= k
            if hit and not counted:
                self.outcome_hits.inc(tags={"api": api, "k": str(k)})

    def serving_model(self, version: str) -> None:
        """The model a replica serves now: its version's series 1, the previous one's 0."""
        if not self.enabled or version == self._model_version:
            return
        if self._model_version is not None:
            self.model_info.set(0, tags={"version": self._model_version})
        self.model_info.set(1, tags={"version": version})
        self._model_version = version

    def generated(self, *, fallback_reason: str | None, breaker_state: str | None) -> None:
        if fallback_reason:
            self.fallbacks.inc(tags={"reason": fallback_reason})
        if breaker_state is not None:
            self.llm_breaker_state.set(breaker_value(breaker_state))

    def batch(self, size: int) -> None:
        self.batch_size.observe(size)
        self.batched_requests.inc(size)

    def stages(self, timings_ms: Mapping[str, float]) -> None:
        if self.enabled:
            for stage, ms in timings_ms.items():
                self.stage_ms.observe(ms, tags={"stage": stage})

    # Attributes set in __init__ (typed for mypy).
    http_requests: Any
    http_request_ms: Any
    stage_ms: Any
    batch_size: Any
    batched_requests: Any
    fallbacks: Any
    llm_breaker_state: Any
    spec_cache: Any
    feedback: Any
    model_info: Any
    outcomes: Any
    outcome_hits: Any


def _make(
    kind: str, name: str, description: str, tags: tuple[str, ...], boundaries: list[float] | None
) -> Any:
    from ray.serve import metrics as serve_metrics  # only in a replica: the rest needs no Ray

    keys: Any = tags  # Ray's stubs say tuple[str]: any length works
    if kind == "counter":
        return serve_metrics.Counter(name, description=description, tag_keys=keys)
    if kind == "gauge":
        return serve_metrics.Gauge(name, description=description, tag_keys=keys)
    assert boundaries is not None
    return serve_metrics.Histogram(name, description=description, boundaries=boundaries, tag_keys=keys)


_current = Metrics(enabled=False)


def enable(on: bool = True) -> Metrics:
    """Turn metrics on for this process (a Serve replica); once, the first replica call wins."""
    global _current
    if on and not _current.enabled:
        _current = Metrics(enabled=True)
    return _current


def metrics() -> Metrics:
    """This process's recorder (a no-op one unless :func:`enable` ran)."""
    return _current


class RequestMetrics:
    """ASGI middleware of the Ingress: every answer counted by route and status, and timed.

    Pure ASGI (no BaseHTTPMiddleware task per request): two records per request.
    """

    def __init__(self, app: ASGIApp, *, routes: tuple[str, ...]) -> None:
        self.app = app
        self.routes = routes

    @staticmethod
    def install(app: FastAPI) -> None:
        # The templates of the app's own routes, so a path with an id is counted under its
        # template and unknown paths under "other": tag values stay few.
        routes = ("/predict", "/feedback", "/feedback/{prediction_id}", "/health", "/livez", "/readyz")
        app.add_middleware(RequestMetrics, routes=routes)

    def route(self, path: str) -> str:
        if path in self.routes:
            return path
        if path.startswith("/feedback/") and path.count("/") == 2:
            return "/feedback/{prediction_id}"
        return "other"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        m = _current
        if scope["type"] != "http" or not m.enabled:
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # an exception that escapes every handler is answered 500 by the server

        async def seen(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, seen)
        finally:
            route = self.route(scope.get("path", ""))
            m.http_requests.inc(tags={"route": route, "status": str(status)})
            m.http_request_ms.observe((time.perf_counter() - start) * 1000, tags={"route": route})
