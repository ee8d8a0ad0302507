"""What the deployments send each other, in graph order: the contract of the graph in one place.

They are TypedDicts, so what crosses a handle is a plain dict (Ray pickles it as it always has) and
every key a stage reads is checked by the type checker. A request that fails in a stage travels on
as its exception, in its place in the batch.

    Ingress ──GraphRequest──▶ CandidateGenerator ──Generated──▶ FeatureExtractor ──Featured──▶
    Ranker ──Ranked──▶ Ingress
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

import numpy as np

from core.candidates.generator import CandidatesWire

__all__ = ["GraphRequest", "CandidatesWire", "Generated", "Featured", "Ranked", "StageTimes",
           "candidates_of"]

# Milliseconds each stage took, by stage ("candidates", "features", "rank").
StageTimes = dict[str, float]


class GraphRequest(TypedDict):
    """One prediction request, as the Ingress sends it to the generator and the extractor."""

    spec_hash: str
    history: list[tuple[str, dict[str, Any]]]  # the events (endpoint, params), resolved by each stage
    prompt: str | None
    k: int
    # The user's transitions after the last event's call (UserTransitions.to_wire()); absent: cold.
    personal: NotRequired[Any]
    # What the API's users did in this situation (PopulationView.to_wire()); absent: nothing known.
    population: NotRequired[Any]
    # The parsed spec (SpecIndex.to_bytes()), when the receiver cannot read it from the node's L2.
    spec_index: NotRequired[bytes]


class Generated(CandidatesWire):
    ms: StageTimes


class Featured(Generated):
    features: np.ndarray  # (candidates, FEATURE_NAMES) float32, in the candidates' order
    k: int


class Ranked(Featured):
    probs: np.ndarray  # calibrated score of every candidate
    top: np.ndarray  # the rows of the model's own top k, best first
    contribs_top: np.ndarray  # their per-feature contributions (the rows ``why`` is written from)
    model_version: str


def candidates_of(message: CandidatesWire) -> CandidatesWire:
    """The candidate set a message carries, to build the next stage's message around."""
    return CandidatesWire(candidates=message["candidates"], generator=message["generator"],
                          fallback_reason=message["fallback_reason"], llm_params=message["llm_params"])
