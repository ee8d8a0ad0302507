"""What a generator hands to the feature extractor: operations of the spec, by position; and what
an LLM backend must offer to widen them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from core.spec.operations import Operation

__all__ = ["Candidate", "SOURCES", "LLMProposal", "LLMUnavailable", "ProposalSource"]

# Every way a candidate can be proposed; each is a feature column for the ranker.
SOURCES = (
    "bm25", "semantic", "dataflow", "neighbour", "transition", "entry", "setup", "status", "llm",
)


@dataclass(slots=True)
class Candidate:
    index: int  # position in SpecIndex.operations
    sources: dict[str, float] = field(default_factory=dict)  # source name -> its score
    destructive: bool = False

    def to_wire(self) -> tuple[int, dict[str, float], bool]:
        return (self.index, self.sources, self.destructive)

    @classmethod
    def from_wire(cls, wire: tuple[int, dict[str, float], bool]) -> Candidate:
        return cls(index=wire[0], sources=dict(wire[1]), destructive=wire[2])


class LLMUnavailable(Exception):
    """No usable answer from the LLM; ``reason`` is a short code (``timeout``, ``http_500``...).

    The message never carries request headers or the server's body, so it is safe to log.
    """

    def __init__(self, reason: str, *, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(slots=True)
class LLMProposal:
    endpoint: str  # an operation key of the shortlist, "METHOD /path/template"
    params: dict[str, str]
    confidence: float  # in [0, 1]
    reason: str


class ProposalSource(Protocol):
    """An LLM backend (``deployments.serving.llm.LLMGenerator``): at most ``k`` proposals from the
    first ``shortlist`` operations of retrieval's order; raises :class:`LLMUnavailable`."""

    @property
    def shortlist(self) -> int: ...

    async def propose(
        self, *, shortlist: Sequence[Operation], history: Sequence[str], prompt: str | None,
        spec_hash: str, k: int,
    ) -> list[LLMProposal]: ...

    def status(self) -> dict[str, Any]: ...

    async def aclose(self) -> None: ...
