"""What a generator hands to the feature extractor: operations of the spec, by position."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Candidate", "SOURCES"]

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
