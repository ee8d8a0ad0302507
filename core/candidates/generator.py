"""The candidate generator the service runs: embedded retrieval, optionally widened by an LLM.

The LLM's proposals are merged with the retrieval candidates rather than replacing them (an LLM
may miss the obvious next call), and any LLM failure falls back to retrieval alone within the same
request; the result says which generator answered and why it fell back.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypedDict

from core.candidates.retrieval import RetrievalGenerator, candidate_limit, wants_destructive
from core.candidates.types import Candidate, LLMProposal, LLMUnavailable, ProposalSource
from core.spec.index import Call, SpecIndex

__all__ = ["CandidateGenerator", "CandidateSet", "CandidatesWire"]

log = logging.getLogger(__name__)


class CandidatesWire(TypedDict):
    """A :class:`CandidateSet` as it crosses a process boundary (plain, cheap to pickle)."""

    candidates: list[tuple[int, dict[str, float], bool]]
    generator: str
    fallback_reason: str | None
    llm_params: dict[int, dict[str, str]]


@dataclass(slots=True)
class CandidateSet:
    candidates: list[Candidate]
    generator: str  # "retrieval" | "llm"
    fallback_reason: str | None = None
    # The parameter values the LLM proposed, by operation index (core.scorer.fill_params uses
    # those found in what the user gave).
    llm_params: dict[int, dict[str, str]] = field(default_factory=dict)

    def to_wire(self) -> CandidatesWire:
        return {
            "candidates": [c.to_wire() for c in self.candidates],
            "generator": self.generator,
            "fallback_reason": self.fallback_reason,
            "llm_params": self.llm_params,
        }

    @classmethod
    def from_wire(cls, wire: CandidatesWire) -> CandidateSet:
        return cls(
            candidates=[Candidate.from_wire(c) for c in wire["candidates"]],
            generator=wire["generator"],
            fallback_reason=wire["fallback_reason"],
            llm_params=wire["llm_params"],
        )


class CandidateGenerator:
    def __init__(
        self, *, retrieval: RetrievalGenerator, llm: ProposalSource | None = None,
        limit: int | None = None,
    ) -> None:
        self.retrieval = retrieval
        self.llm = llm
        self.limit = limit
        self.fallbacks: Counter[str] = Counter()

    async def generate(
        self, spec: SpecIndex, history: Sequence[Call], prompt: str | None, *, k: int = 5
    ) -> CandidateSet:
        # None: the pool :func:`candidate_limit` gives this history, as in training.
        limit = self.limit if self.limit is not None else candidate_limit(history)
        shortlist_size = self.llm.shortlist if self.llm else limit
        retrieved = self.retrieval.generate(spec, history, prompt, limit=max(limit, shortlist_size))
        if self.llm is None:
            return CandidateSet(retrieved[:limit], "retrieval")
        try:
            proposals = await self.llm.propose(
                shortlist=[spec.operations[c.index] for c in retrieved[:shortlist_size]],
                history=[f"{c.method} {c.path}" for c in history],
                prompt=prompt,
                spec_hash=spec.spec_hash,
                k=k,
            )
        except LLMUnavailable as exc:
            self.fallbacks[exc.reason] += 1
            log.info("LLM generator unavailable (%s); using retrieval", exc.reason)
            return CandidateSet(retrieved[:limit], "retrieval", fallback_reason=exc.reason)
        merged, params = self._merge(spec, retrieved, proposals, prompt, limit=limit)
        return CandidateSet(merged, "llm", llm_params=params)

    def _merge(
        self, spec: SpecIndex, retrieved: list[Candidate], proposals: list[LLMProposal],
        prompt: str | None, *, limit: int,
    ) -> tuple[list[Candidate], dict[int, dict[str, str]]]:
        """Retrieval's candidates in retrieval's order, widened by the proposals from further down
        the shortlist; a proposed candidate carries the LLM's confidence as its ``llm`` source.

        The order stays retrieval's because the ranker's generator features (gen_rank) were
        learned on it: with the LLM's proposals moved first, an LLM that is never right cuts the
        shipped model's hit@1 on held-out APIs from 0.55 to 0.38 in the simulation of
        benchmarks/llm_path.py (docs/accuracy.md). What the LLM says counts after the model, in
        :func:`core.scoring.blend_llm`. Also the params of each proposal kept.
        """
        confidence: dict[int, float] = {}
        params: dict[int, dict[str, str]] = {}
        destructive_ok = wants_destructive(prompt)
        for p in proposals:
            i = spec.by_key.get(p.endpoint)
            if i is None or i in confidence:
                continue
            if spec.operations[i].destructive and not destructive_ok:
                continue  # the same rule as retrieval: destructive only when asked
            confidence[i] = float(p.confidence)
            if p.params:
                params[i] = dict(p.params)
        merged = [c for n, c in enumerate(retrieved) if n < limit or c.index in confidence]
        kept = {c.index for c in merged}
        merged += [Candidate(index=i, destructive=spec.operations[i].destructive)
                   for i in confidence if i not in kept]
        for c in merged:
            if c.index in confidence:
                c.sources["llm"] = confidence[c.index]
        return merged, params

    def status(self) -> dict:
        return {
            "backend": "llm" if self.llm else "retrieval",
            "fallbacks": dict(self.fallbacks),
            **({"llm": self.llm.status()} if self.llm else {}),
        }

    async def aclose(self) -> None:
        if self.llm is not None:
            await self.llm.aclose()
