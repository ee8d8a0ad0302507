"""The whole prediction pipeline in one process: the plain classes, no Ray.

Used for development, by the CLI, and as the baseline the Serve graph is benchmarked against.
The Serve graph runs exactly these steps, one deployment per step, and both answer through
:func:`deployments.serving.respond.respond`.
"""

from __future__ import annotations

import time

import numpy as np

from core.priors.personal import TransitionPrior, user_transitions
from core.scoring import score_top_k
from core.settings import Settings, load_settings
from deployments.serving.components import Components, build_components
from deployments.serving.feedback import FeedbackStore, prediction_context
from deployments.serving.messages import Ranked
from deployments.serving.population_store import PopulationStore
from deployments.serving.respond import respond
from deployments.serving.schemas import PredictRequest, PredictResponse

__all__ = ["Pipeline"]


class Pipeline:
    def __init__(
        self,
        settings: Settings | None = None,
        *,
        components: Components | None = None,
        feedback: FeedbackStore | None = None,
        prior: TransitionPrior | None = None,
        population: PopulationStore | None = None,
    ):
        self.settings = settings or load_settings()
        self.c = components or build_components(self.settings)
        self.feedback = feedback  # when given, every prediction's context is recorded, as served
        # Users' habits (a PriorFeed's prior follows a store): features and/or blend, as served.
        self.prior = prior
        # What all users of each API did (a PopulationFeed's store follows a feedback store).
        self.population = population

    async def predict(self, request: PredictRequest) -> PredictResponse:
        t0 = time.perf_counter()
        spec = await self.c.store.resolve(spec_url=request.spec_url, spec=request.spec)
        t1 = time.perf_counter()
        history = spec.resolve_history(request.history())
        cset = await self.c.generator.generate(spec, history, request.prompt, k=request.k)
        t2 = time.perf_counter()
        personal = user_transitions(self.prior if self.settings.personal_prior_feature else None,
                                    user_id=request.user_id, spec=spec, events=request.history())
        population = self.population.view(spec, history, request.prompt) if self.population else None
        features = self.c.extractor.extract(spec, history, request.prompt, cset.candidates, personal,
                                            population)
        t3 = time.perf_counter()
        # The same work as the Ranker deployment: explanations for the shown rows only.
        [scored] = score_top_k(self.c.ranker, [features], [request.k])
        t4 = time.perf_counter()
        ms = {"candidates": (t2 - t1) * 1000, "features": (t3 - t2) * 1000, "rank": (t4 - t3) * 1000}
        wire = cset.to_wire()
        ranked = Ranked(**wire, ms=ms, features=features, k=request.k, probs=scored.probs,
                        top=scored.top, contribs_top=scored.contribs_top,
                        model_version=self.c.ranker.version)

        async def explain_rows(rows: np.ndarray) -> np.ndarray:
            return self.c.ranker.contributions(rows)

        response = await respond(
            ranked, request=request, spec=spec, history=history, prior=self.prior,
            llm_weight=self.settings.llm_weight, explain_rows=explain_rows,
            timings_ms={"spec": (t1 - t0) * 1000, **ms}, started=t0)
        if self.feedback is not None:
            self.feedback.record_prediction(prediction_context(
                request=request, response=response, spec=spec, candidates=wire["candidates"],
                personal=personal, population=population))
        return response

    async def aclose(self) -> None:
        await self.c.aclose()
