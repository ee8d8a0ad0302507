"""Build the plain classes of the pipeline from settings: one place, shared by every deployment
and by the in-process pipeline, so both run the same objects."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from core.candidates.generator import CandidateGenerator
from core.candidates.retrieval import RetrievalGenerator
from core.features import FeatureExtractor
from core.priors.transitions import load_transitions
from core.scorer import HeuristicRanker, RankerModel, default_model_path
from core.settings import Settings
from deployments.serving.llm import LLMGenerator
from deployments.serving.spec_store import SpecStore

__all__ = ["Components", "build_components", "build_generator", "build_extractor", "build_ranker"]

log = logging.getLogger(__name__)
# httpx logs every request at INFO: a line per prediction is a cost, not information.
logging.getLogger("httpx").setLevel(logging.WARNING)


def build_generator(settings: Settings) -> CandidateGenerator:
    llm = LLMGenerator(settings) if settings.llm_enabled else None
    return CandidateGenerator(retrieval=RetrievalGenerator(transitions=load_transitions()), llm=llm)


def build_extractor(settings: Settings) -> FeatureExtractor:
    return FeatureExtractor(transitions=load_transitions())


def build_ranker(settings: Settings) -> RankerModel | HeuristicRanker:
    """The trained model; if it cannot be loaded, the documented heuristic ranker (degraded)."""
    path = settings.model_path or default_model_path()
    try:
        return RankerModel.load(path)
    except (OSError, ValueError) as exc:
        log.warning("ranker model %s unusable (%s); serving the heuristic ranker", path, exc)
        return HeuristicRanker(reason=str(exc))


@dataclass
class Components:
    store: SpecStore
    generator: CandidateGenerator
    extractor: FeatureExtractor
    ranker: RankerModel | HeuristicRanker

    async def aclose(self) -> None:
        await self.generator.aclose()
        await self.store.aclose()


def build_components(settings: Settings) -> Components:
    return Components(
        store=SpecStore(settings),
        generator=build_generator(settings),
        extractor=build_extractor(settings),
        ranker=build_ranker(settings),
    )
