"""A request that fails inside a batch fails alone: the other requests coalesced with it are
answered. The FeatureExtractor deployment's own class, run without Ray (its batch step, below
``@serve.batch``, which needs a replica), on a real spec."""

from __future__ import annotations

import asyncio
from pathlib import Path

from core.candidates.generator import CandidateSet
from core.candidates.types import Candidate
from core.spec.openapi import parse_spec
from deployments.feature_extractor import FeatureExtractorDeployment
from deployments.serving.messages import Featured, Generated, GraphRequest
from tests.specs import billing_spec


def test_a_failing_request_does_not_fail_its_batch(tmp_path: Path) -> None:
    spec = parse_spec(billing_spec())
    replica = FeatureExtractorDeployment.func_or_class(settings={"data_dir": str(tmp_path)})
    request = GraphRequest(spec_hash=spec.spec_hash, history=[], prompt="pay the invoice", k=3,
                           spec_index=spec.to_bytes())
    good = CandidateSet([Candidate(i) for i in range(len(spec.operations))], "retrieval").to_wire()
    bad = CandidateSet([Candidate(len(spec.operations) + 5)], "retrieval").to_wire()  # no such op

    async def both() -> list[Featured | BaseException]:
        generated = [Generated(**good, ms={}), Generated(**bad, ms={})]
        return await replica._extract([request, request], generated)

    ok, failed = asyncio.run(both())
    assert isinstance(failed, ValueError) and "out of range" in str(failed)
    assert not isinstance(ok, BaseException) and ok["features"].shape[0] == len(spec.operations)
