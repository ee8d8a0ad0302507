"""The feedback store against a stuck writer and against memory that grows with what it has seen
(real SQLite files; another connection holds the write lock as another process would)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from core.errors import FeedbackUnavailable
from core.priors.personal import TransitionPrior
from core.spec.openapi import parse_spec
from deployments.serving import feedback
from deployments.serving.feedback import FeedbackReader, FeedbackStore, PredictionContext
from deployments.serving.prior_feed import PriorFeed
from tests.specs import billing_spec


def _spec(n: int):
    spec = billing_spec()
    spec["info"]["title"] = f"Billing {n}"
    return parse_spec(spec)


def _ctx(pid: str, spec, *, user: str = "u1") -> PredictionContext:
    shown = [("GET /invoices/{invoice_id}", 0.8), ("POST /invoices", 0.1)]
    return PredictionContext(
        prediction_id=pid, user_id=user, spec=spec, events=[("GET /v1/invoices", {}, None)],
        prompt="p", k=2, candidates=[(spec.by_key[k], {"bm25": 1.0}, False) for k, _ in shown],
        shown=shown, model_version="m1",
    )


def _locked(path: Path) -> sqlite3.Connection:
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    return blocker


def test_stuck_writer_full_queue_and_slow_commit_are_503s_that_never_block(tmp_path: Path) -> None:
    path = tmp_path / "f.sqlite"
    store = FeedbackStore(path, max_queue=4, wait_s=0.3)
    spec = _spec(0)
    store.record_prediction(_ctx("p0", spec))
    store.flush()
    blocker = _locked(path)
    try:
        # A commit that cannot happen: the async wait ends at wait_s, with a 503 saying so.
        t = time.perf_counter()
        with pytest.raises(FeedbackUnavailable, match=r"did not commit within 0.3s"):
            asyncio.run(store.arecord_outcome("p0", actual_endpoint="POST /v1/invoices"))
        assert time.perf_counter() - t < 1.0
        for i in range(10):  # the queue fills behind the stuck writer; contexts are dropped
            store.record_prediction(_ctx(f"q{i}", spec))
        # A full queue: refused at once, not a blocking put on the caller's event loop.
        t = time.perf_counter()
        with pytest.raises(FeedbackUnavailable, match="writer is behind"):
            asyncio.run(store.arecord_outcome("p0", actual_endpoint="POST /v1/invoices"))
        with pytest.raises(FeedbackUnavailable, match="writer is behind"):
            asyncio.run(store.aflush())
        assert time.perf_counter() - t < 0.2
    finally:
        blocker.rollback()
        blocker.close()
    # Once the lock goes the queued outcome is written; sending it again is answered as recorded.
    store.flush(timeout=30)
    again = store.record_outcome("p0", actual_endpoint="POST /v1/invoices")
    assert again.actual_key == "POST /invoices"
    assert store.status()["timeouts"] == 1
    store.close()


def test_decoded_specs_kept_are_bounded(tmp_path: Path) -> None:
    path = tmp_path / "f.sqlite"
    store = FeedbackStore(path)
    n = feedback._MAX_CACHED_SPECS + 8
    for i in range(n):
        store.record_prediction(_ctx(f"p{i}", _spec(i)))
    store.flush()
    reader = FeedbackReader(path)
    for row in reader._conn().execute("SELECT spec_hash FROM specs"):
        reader.spec(row[0])
    assert reader.counts()["specs"] == n
    assert len(reader._specs) == feedback._MAX_CACHED_SPECS
    reader.close()
    store.close()


def test_the_prior_feed_replays_only_the_latest_outcomes_at_start(tmp_path: Path) -> None:
    path = tmp_path / "f.sqlite"
    store = FeedbackStore(path)
    spec = _spec(0)
    for i in range(10):
        store.record_prediction(_ctx(f"p{i}", spec, user=f"u{i}"))
        store.record_outcome(f"p{i}", actual_endpoint="POST /v1/invoices")
    feed = PriorFeed(TransitionPrior(weight=0.5), path, replay_max=3)
    try:
        assert feed.poll_once() == 3 and feed.poll_once() == 0
        assert feed.prior.status()["observed"] == 3
    finally:
        feed.stop()
        store.close()
