"""The whole prediction pipeline in one process: the plain classes, no Ray.

Used for development, by the CLI, and as the baseline the Serve graph is benchmarked against.
The Serve graph runs exactly these steps, one deployment per step.
"""

from __future__ import annotations

import time

from core.priors.personal import TransitionPrior, user_transitions
from core.scoring import after_model, annotate, expand_rows, score_top_k, unexplained_rows
from core.settings import Settings, load_settings
from deployments.serving.components import Components, build_components
from deployments.serving.feedback import FeedbackStore, prediction_context
from deployments.serving.respond import assemble_predictions, build_response
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
    ):
        self.settings = settings or load_settings()
        self.c = components or build_components(self.settings)
        self.feedback = feedback  # when given, every prediction's context is recorded, as served
        # Users' habits (a PriorFeed's prior follows a store): features and/or blend, as served.
        self.prior = prior

    async def predict(self, request: PredictRequest) -> PredictResponse:
        t0 = time.perf_counter()
        spec = await self.c.store.resolve(spec_url=request.spec_url, spec=request.spec)
        t1 = time.perf_counter()
        history = spec.resolve_history(request.history())
        cset = await self.c.generator.generate(spec, history, request.prompt, k=request.k)
        t2 = time.perf_counter()
        personal = user_transitions(self.prior if self.settings.personal_prior_feature else None,
                                    user_id=request.user_id, spec=spec, events=request.history())
        features = self.c.extractor.extract(spec, history, request.prompt, cset.candidates, personal)
        t3 = time.perf_counter()
        # The same work as the Ranker deployment: explanations for the shown rows only.
        [scored] = score_top_k(self.c.ranker, [features], [request.k])
        probs, notes = after_model(
            scored["probs"], spec=spec, history=history, candidates=cset.candidates,
            user_id=request.user_id, prior=self.prior, llm_weight=self.settings.llm_weight)
        contribs = expand_rows(len(features), scored["top"], scored["contribs_top"])
        missing = unexplained_rows(probs, request.k, scored["top"])  # moved up: need reasons
        if missing:
            contribs[missing] = self.c.ranker.contributions(features[missing])
        t4 = time.perf_counter()
        predictions = assemble_predictions(
            spec=spec,
            history=history,
            prompt=request.prompt,
            candidates=cset,
            features=features,
            probs=probs,
            contribs=contribs,
            k=request.k,
        )
        annotate(predictions, notes)
        timings = {
            "spec": t1 - t0,
            "candidates": t2 - t1,
            "features": t3 - t2,
            "rank": t4 - t3,
            "total": time.perf_counter() - t0,
        }
        response = build_response(
            predictions=predictions,
            model_version=self.c.ranker.version,
            candidates=cset,
            history=history,
            timings_ms={k: v * 1000 for k, v in timings.items()},
        )
        if self.feedback is not None:
            self.feedback.record_prediction(prediction_context(
                request=request, response=response, spec=spec, candidates=cset.to_wire()["candidates"],
                personal=personal))
        return response

    async def aclose(self) -> None:
        await self.c.aclose()
