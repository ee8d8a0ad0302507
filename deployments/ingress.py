"""The HTTP ingress: validates the request, resolves the spec, drives the graph, answers."""

# No `from __future__ import annotations` here: Serve rebuilds the route functions and FastAPI
# must see real types, not strings, to read the body model.


import asyncio
import logging
import time
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

from core.priors.personal import user_transitions
from deployments.serving.api_docs import install_docs
from deployments.serving.batching import Coalescer, IngressConfig
from deployments.serving.fairness import ClientShares, EdgeGuard, client_key, source_address
from deployments.serving.feedback import (
    FeedbackUnavailable,
    UnknownPrediction,
    feedback_response,
    prediction_context,
    stored_response,
)
from deployments.serving.http_errors import BodySizeLimit, install_error_handlers
from deployments.serving.identity import KEYS, ApiKeys, owned_by, scoped_user
from deployments.serving.logs import log_outcome, log_prediction
from deployments.serving.messages import GraphRequest, Ranked
from deployments.serving.metrics import RequestMetrics, metrics
from deployments.serving.prior_feed import start_prior_feed
from deployments.serving.probes import DownstreamHealth, check_feedback_writer, not_ready_reasons
from deployments.serving.replica import Replica
from deployments.serving.resources import deployment_options
from deployments.serving.respond import respond
from deployments.serving.schemas import (
    PREDICTION_ID_MAX_CHARS,
    PREDICTION_ID_PATTERN,
    ErrorResponse,
    FeedbackRequest,
    FeedbackResponse,
    HealthResponse,
    PredictRequest,
    PredictResponse,
    StoredPredictionResponse,
    UserErasedResponse,
)
from deployments.serving.spec_store import SpecStore, send_with_spec
from deployments.serving.store_actor import open_feedback, open_population

__all__ = ["Ingress", "api"]

log = logging.getLogger(__name__)

HEALTH_TIMEOUT_S = 2.0
# How long /health and /readyz wait for the deployments' own answers before they give the last
# ones (a busy graph answers later; the probe must not wait with it). Under the 100 ms for
# /health: a round answers in ~10-30 ms when the graph is not saturated; 0.25 s made /health
# wait up to that much longer than /livez during a flood. 0.02 s halved /health while a large
# spec kept the graph busy, but under make test's load the round then often came after it, and a
# /health read right after a change showed the round before (RELIABILITY.md, issue 19).
HEALTH_FRESH_WAIT_S = 0.05


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The error answers a route really gives, for the schema (tests/test_readme.py checks them
    against the README's list and the live /openapi.json)."""
    said = {
        401: "API keys are on and the request has no valid one (Authorization: Bearer <key>)",
        404: "unknown prediction_id",
        409: "a different outcome is already recorded for this prediction",
        413: "request body too large (or, for /predict, the fetched spec)",
        422: "invalid request (the message names the field)",
        429: "this client already has its share of requests in flight (client_max_concurrent; Retry-After)",
        502: "the spec host answered an error or could not be reached",
        503: "overloaded or a backend failed (Retry-After); for feedback also: the store is unavailable",
        504: "the spec host timed out, or the request passed the service's deadline (request_timeout_s)",
    }
    return {s: {"model": ErrorResponse, "description": said[s]} for s in statuses}


api = FastAPI(
    title="opensesame-predictor",
    description="Predicts the next API call from recent calls, a prompt and an OpenAPI spec.",
    version="0.1.0",
    docs_url=None,  # Swagger UI from the installed package below, not a CDN
    redoc_url=None,
)
install_docs(api)
install_error_handlers(api)
# Starlette refuses middleware added once the app runs, so it is added here and reads its limit
# from the replica's settings, set in Ingress.__init__.
_body_limit = BodySizeLimit.install(api)
_edge = EdgeGuard.install(api)  # Serve's client-set timeout headers never reach the routes
RequestMetrics.install(api)  # outermost (added last): it counts the edge's own 504s too


@serve.deployment(name="Ingress", **deployment_options("Ingress"))
@serve.ingress(api)
class Ingress(Replica):
    def __init__(
        self,
        generator: DeploymentHandle,
        extractor: DeploymentHandle,
        ranker: DeploymentHandle,
        settings: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(settings)
        self.store = SpecStore(self.settings)
        self.generator = generator
        self.extractor = extractor
        self.ranker = ranker
        _body_limit.max_bytes = self.settings.request_body_max_bytes
        _edge.seconds = self.settings.request_timeout_s
        self.shares = ClientShares(self.settings.client_max_concurrent)
        KEYS.keys = ApiKeys.from_settings(self.settings)  # None: no keys, clients say who they are
        # Outcomes of predictions (deployments/serving/feedback.py): this node's file, or the
        # store actor on the data node (store_actor.py); None: predictions still served.
        self.outcomes, self.outcomes_off_reason = open_feedback(self.settings, settings)
        # Each user's habits, learned from those outcomes: the ranker's user_* features (and,
        # with personal_prior_weight > 0, blended into the scores after the model).
        self.prior_feed = start_prior_feed(self.settings, self.outcomes)
        self.feature_prior = (self.prior_feed.prior
                              if self.prior_feed is not None and self.settings.personal_prior_feature
                              else None)
        # What all users of each API did next, learned from the same outcomes: the pop_* features.
        self.population = open_population(self.settings, self.outcomes)
        # Concurrent requests go down the graph together: one handle call per stage per batch.
        self.graph: Coalescer[GraphRequest, Ranked] = Coalescer(self._down_the_graph)
        # What /health and /readyz say of the other deployments, asked without waiting on them.
        self.downstream = DownstreamHealth(
            {"candidate_generator": lambda: generator.health.remote(),
             "feature_extractor": lambda: extractor.health.remote(),
             "ranker": lambda: ranker.health.remote()},
            timeout_s=HEALTH_TIMEOUT_S, fresh_wait_s=HEALTH_FRESH_WAIT_S)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        self.graph.configure(IngressConfig.from_user_config(user_config).batching.model_dump())

    async def _down_the_graph(self, requests: list[GraphRequest]) -> list[Ranked]:
        # Chained without awaiting in between: each stage's output goes straight to the next.
        generated = self.generator.generate_batch.remote(requests)
        featured = self.extractor.extract.remote(requests, generated)
        return await self.ranker.rank.remote(featured)

    @api.post("/predict", response_model=PredictResponse,
              responses=_errors(401, 413, 422, 429, 502, 503, 504))
    # `http` is FastAPI's Request over HTTP, None through a DeploymentHandle (another Ray job
    # calls predict(body) / feedback(body): tests/test_handle_job.py, tests/test_readme.py);
    # such callers are inside the cluster (Ray's token auth) and need no API key.
    async def predict(self, body: PredictRequest, http: Request = None) -> PredictResponse:  # type: ignore[assignment]
        tenant = KEYS.tenant_of(http) if http is not None else None
        address = source_address(http) if http is not None else None
        with self.shares.hold(client_key(tenant=tenant, user_id=body.user_id, address=address)):
            if tenant is not None:  # stored and learned under the tenant's own namespace
                body = body.model_copy(update={"user_id": scoped_user(tenant, body.user_id)})
            return await self._predict(body)

    async def _predict(self, body: PredictRequest) -> PredictResponse:
        t0 = time.perf_counter()
        spec = await self.store.resolve(spec_url=body.spec_url, spec=body.spec)
        spec_ms = (time.perf_counter() - t0) * 1000
        request = GraphRequest(spec_hash=spec.spec_hash, history=body.history(), prompt=body.prompt,
                               k=body.k)
        personal = user_transitions(self.feature_prior, user_id=body.user_id, spec=spec,
                                    events=request["history"])
        if personal is not None and personal.counts:
            request["personal"] = personal.to_wire()
        history = spec.resolve_history(request["history"])
        population = (self.population.store.view(spec, history, body.prompt, user_id=body.user_id)
                      if self.population is not None else None)
        if population is not None and not population.empty:
            request["population"] = population.to_wire()
        if not self.store.is_shared(spec.spec_hash):  # the node's L2 failed: send the index along
            request["spec_index"] = spec.to_bytes()
        sent = time.perf_counter()
        ranked = await send_with_spec(self.graph, request, spec)
        graph_s = time.perf_counter() - sent

        async def explain_rows(rows: np.ndarray) -> np.ndarray:
            nonlocal graph_s
            asked = time.perf_counter()
            contribs: np.ndarray = await self.ranker.explain_rows.remote(rows)
            graph_s += time.perf_counter() - asked
            return contribs

        response = await respond(
            ranked, request=body, spec=spec, history=history,
            prior=self.prior_feed.prior if self.prior_feed is not None else None,
            llm_weight=self.settings.llm_weight, explain_rows=explain_rows,
            timings_ms={"spec": spec_ms, **ranked["ms"]}, started=t0)
        metrics().stages({"spec": spec_ms, **ranked["ms"]})
        log_prediction(response)
        if self.outcomes is not None:  # enqueued only: written off the event loop
            self.outcomes.record_prediction(prediction_context(
                request=body, response=response, spec=spec, candidates=ranked["candidates"],
                personal=personal, population=population))
        # Own time only: the graph's latency is the other deployments' to report, and fetching
        # and parsing a spec not cached yet is a cache miss, not load (a fresh deploy's first
        # requests would otherwise make the autoscaler add an Ingress replica that then sits idle).
        self.latency.observe(time.perf_counter() - t0 - graph_s - spec_ms / 1000)
        return response

    @api.post("/feedback", response_model=FeedbackResponse,
              responses=_errors(401, 404, 409, 413, 422, 429, 503, 504))
    async def feedback(self, body: FeedbackRequest, http: Request = None) -> FeedbackResponse:  # type: ignore[assignment]
        """Record what the user really did after a prediction; answers once it is on disk."""
        tenant = KEYS.tenant_of(http) if http is not None else None
        if self.outcomes is None:
            raise FeedbackUnavailable(f"feedback is not recorded here: {self.outcomes_off_reason}")
        address = source_address(http) if http is not None else None
        with self.shares.hold(client_key(tenant=tenant, user_id=None, address=address)):
            result = await self.outcomes.arecord_outcome(
                body.prediction_id, actual_endpoint=body.actual_endpoint, accepted=bool(body.accepted),
                tenant=tenant,
            )
        log_outcome(result)
        return feedback_response(result)

    @api.get("/feedback/{prediction_id}", response_model=StoredPredictionResponse,
             responses=_errors(401, 404, 422, 503, 504))
    async def stored_prediction(
        self,
        http: Request,
        prediction_id: str = PathParam(max_length=PREDICTION_ID_MAX_CHARS, pattern=PREDICTION_ID_PATTERN),
    ) -> StoredPredictionResponse:
        """A stored prediction and its outcome, if any."""
        tenant = KEYS.tenant_of(http)
        if self.outcomes is None:
            raise FeedbackUnavailable(f"feedback is not recorded here: {self.outcomes_off_reason}")
        stored = await self.outcomes.aprediction(prediction_id)
        if stored is None or not owned_by(tenant, stored.user_id):
            raise UnknownPrediction(f"no prediction with id {prediction_id!r}")
        return stored_response(stored)

    @api.get("/livez")
    async def livez(self) -> dict[str, str]:
        """Liveness: this replica answers (nothing downstream asked; deployments/serving/probes.py)."""
        return {"status": "ok"}

    @api.get("/readyz", responses={503: {"description": "not ready, with the reasons"}})
    async def readyz(self) -> JSONResponse:
        """Readiness: a trained model loaded, the stores writable (deployments/serving/probes.py)."""
        ranker = (await self.downstream.answers())["ranker"]
        reasons = not_ready_reasons(ranker=ranker, feedback=self.outcomes.status() if self.outcomes else None,
                                    feedback_enabled=self.settings.feedback_enabled,
                                    spec_cache=self.store.status())
        return JSONResponse({"status": "not ready" if reasons else "ready", "reasons": reasons},
                            status_code=503 if reasons else 200)

    def check_health(self) -> None:
        check_feedback_writer(self.outcomes.status() if self.outcomes else None)

    @api.delete("/users/{user_id}", response_model=UserErasedResponse, responses=_errors(401, 422, 503, 504))
    async def erase_user(self, http: Request,
                         user_id: str = PathParam(min_length=1, max_length=256)) -> UserErasedResponse:
        """Delete a user's stored predictions and outcomes (the tenant's user, with keys), and
        what the personal prior learned from them (here at once, elsewhere at the next poll)."""
        tenant = KEYS.tenant_of(http)
        if self.outcomes is None:
            raise FeedbackUnavailable(f"feedback is not recorded here: {self.outcomes_off_reason}")
        erased = await self.outcomes.aerase_user(scoped_user(tenant, user_id))
        if self.prior_feed is not None:
            self.prior_feed.prior.forget(scoped_user(tenant, user_id))
        return UserErasedResponse(user_id=user_id, **erased)

    @api.get("/health", response_model=HealthResponse, responses=_errors(503, 504))
    async def health(self) -> HealthResponse:
        answers = await self.downstream.answers()  # never waits long (probes.DownstreamHealth)
        answers["ingress"] = {
            "ok": True,
            "batch_sizes": self.graph.stats.summary(),
            **self.latency.stats(),
            "spec_cache": self.store.status(),
            "feedback": self.outcomes.status() if self.outcomes else {"off": self.outcomes_off_reason},
            "personal_prior": self.prior_feed.status() if self.prior_feed else {"off": True},
            "client_shares": self.shares.status(),
            "population": self.population.status() if self.population else {"off": True},
            "stale_health_answers": self.downstream.stale_answers,
        }
        degraded = (
            not all(a.get("ok") for a in answers.values())
            or bool(answers["ranker"].get("degraded"))
            or not self.store.status().get("healthy", True)
            or self._feedback_degraded()
        )
        return HealthResponse(
            status="degraded" if degraded else "ok",
            model_version=str(answers["ranker"].get("model_version", "unknown")),
            deployments=answers,
        )

    def _feedback_degraded(self) -> bool:
        """Outcomes are being lost: the store failed to open, its writer died or it cannot commit."""
        if self.outcomes is None:
            return self.settings.feedback_enabled
        status = self.outcomes.status()
        return not status["writer_alive"] or bool(status.get("failing"))

    async def __del__(self) -> None:
        if self.prior_feed is not None:
            await asyncio.to_thread(self.prior_feed.stop)
        if self.population is not None:
            await asyncio.to_thread(self.population.stop)
        if self.outcomes is not None:  # commit the queued prediction contexts
            await asyncio.to_thread(self.outcomes.close)
        await self.store.aclose()
