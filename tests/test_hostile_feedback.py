"""The feedback store against a stuck writer and against memory that grows with what it has seen
(real SQLite files; another connection holds the write lock as another process would)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import sqlite3
import time
from pathlib import Path
from typing import Any

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


def test_spec_urls_are_not_stored_in_the_cache_file(tmp_path: Path) -> None:
    from deployments.serving.spec_cache import SpecCacheDB

    db = SpecCacheDB(tmp_path / "cache.sqlite", url_ttl_s=60)
    secret_url = "https://specs.example.com/openapi.json?token=sk-live-0123456789"
    assert db.put_url(secret_url, "abc")
    assert db.get_url(secret_url) == "abc"
    assert db.get_url("https://specs.example.com/openapi.json?token=other") is None  # still told apart
    db.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert b"sk-live" not in raw and b"specs.example.com" not in raw


def test_retention_deletes_old_predictions_their_outcomes_and_unused_specs(tmp_path: Path) -> None:
    path = tmp_path / "f.sqlite"
    store = FeedbackStore(path, retention_days=1)
    old_spec, new_spec = _spec(1), _spec(2)
    old = _ctx("old", old_spec)
    old.created_at = time.time() - 2 * 86400
    store.record_prediction(old)
    store.record_prediction(_ctx("new", new_spec))
    store.flush()
    store.record_outcome("old", actual_endpoint="POST /v1/invoices")
    store.record_outcome("new", actual_endpoint="POST /v1/invoices")
    removed = store.purge()
    assert removed == {"predictions": 1, "outcomes": 1, "specs": 1}
    assert store.prediction("old") is None and store.prediction("new") is not None
    assert store.counts() == {"predictions": 1, "outcomes_explicit": 1, "outcomes": 1, "specs": 1}
    store.close()


def test_erasing_a_user_deletes_their_rows_and_every_prior_forgets_them(tmp_path: Path) -> None:
    path = tmp_path / "f.sqlite"
    store = FeedbackStore(path)
    spec = _spec(0)
    for i, user in enumerate(("victim", "victim", "other")):
        store.record_prediction(_ctx(f"p{i}", spec, user=user))
        store.record_outcome(f"p{i}", actual_endpoint="POST /v1/invoices")
    feed = PriorFeed(TransitionPrior(weight=0.5), path)  # another replica's prior
    try:
        assert feed.poll_once() == 3
        assert feed.prior.transitions("victim", spec.spec_hash, "GET /invoices").counts
        erased = asyncio.run(store.aerase_user("victim"))
        assert erased == {"predictions": 2, "outcomes": 2}
        assert [p.user_id for p in store.predictions()] == ["other"]
        feed.poll_once()
        assert not feed.prior.transitions("victim", spec.spec_hash, "GET /invoices").counts
        assert feed.prior.transitions("other", spec.spec_hash, "GET /invoices").counts
    finally:
        feed.stop()
        store.close()


def test_backup_while_writing_is_consistent_and_runs_as_a_command(tmp_path: Path) -> None:
    """tools.backup copies the feedback store while a writer commits predictions and outcomes
    as fast as it can: the copy passes integrity_check, every outcome in it has its prediction
    (one consistent state, not a torn file) and it holds every outcome acknowledged before it
    began (a copy of the main file alone misses those still in the WAL)."""
    import subprocess
    import sys
    import threading

    from core.settings import PROJECT_ROOT
    from tools.backup import backup_store

    data = tmp_path / "var"
    data.mkdir()
    path = data / "feedback.sqlite"
    store = FeedbackStore(path)
    spec = _spec(0)
    stop = threading.Event()
    acknowledged = [0]

    def write() -> None:
        i = 0
        while not stop.is_set():
            store.record_prediction(_ctx(f"w{i}", spec))
            store.record_outcome(f"w{i}", actual_endpoint="POST /v1/invoices")
            i += 1
            acknowledged[0] = i

    def backup(n: int) -> dict[str, Any]:
        before = acknowledged[0]  # committed before the copy began: the copy must hold them
        return {**backup_store(path, tmp_path / "out" / f"copy{n}.sqlite"), "before": before}

    writer = threading.Thread(target=write)
    writer.start()
    try:
        time.sleep(0.3)
        copies = [backup(n) for n in range(3)]
        run = subprocess.run([sys.executable, "-m", "tools.backup", "--out", str(tmp_path / "cli"),
                              "--data-dir", str(data)], cwd=PROJECT_ROOT, capture_output=True,
                             text=True, timeout=60)
    finally:
        stop.set()
        writer.join(30)
        store.close()
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["stores"]["feedback"]["rows"]["predictions"] > 0
    for copy in copies:
        conn = sqlite3.connect(tmp_path / "out" / copy["copy"])
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        orphans = conn.execute("SELECT count(*) FROM outcomes WHERE prediction_id NOT IN "
                               "(SELECT prediction_id FROM predictions)").fetchone()[0]
        assert orphans == 0 and copy["rows"]["outcomes"] >= copy["before"] > 0, copy
        conn.close()
    assert copies[-1]["rows"]["predictions"] >= copies[0]["rows"]["predictions"]


def test_an_acknowledged_outcome_is_committed_with_synchronous_full(tmp_path: Path) -> None:
    """A SIGKILL cannot tell FULL from NORMAL (WAL survives a process crash either way; only an
    OS crash or power loss loses NORMAL's last commits), so the crash test passed with NORMAL.
    This watches the writer's statements: the commit an outcome is acknowledged after runs with
    synchronous=FULL; contexts alone may run NORMAL."""
    store = FeedbackStore(tmp_path / "f.sqlite")
    spec = _spec(0)
    for i in range(3):  # contexts only: committed with NORMAL
        store.record_prediction(_ctx(f"p{i}", spec))
        time.sleep(0.1)
    time.sleep(0.3)
    statements: list[str] = []
    mode = store._synchronous  # what the writer connection runs with when the watch starts
    store._writer_conn.set_trace_callback(statements.append)
    store.record_outcome("p0", actual_endpoint="POST /v1/invoices")
    store.close()
    acknowledged = False
    for sql in statements:
        if sql.startswith("PRAGMA synchronous"):
            mode = sql.split("=")[1].strip()
        if "INTO outcomes" in sql:
            acknowledged = True
        if sql == "COMMIT" and acknowledged:
            assert mode == "FULL", statements
            break
    else:
        raise AssertionError(f"no commit of the outcome seen: {statements}")


def test_a_failed_commit_is_reported_and_its_specs_are_stored_again(tmp_path: Path) -> None:
    """A commit that fails mid-batch (the file cannot grow: a full disk, as on the cluster)
    loses its contexts: the store must say it is failing (``/health`` degraded), an outcome for a
    lost prediction is a 503 saying why (not 404 "no prediction"), and the spec the rolled-back
    batch inserted is written again with the next prediction that needs it (it was believed
    stored, and feedback on its predictions failed for ever)."""
    path = tmp_path / "f.sqlite"
    store = FeedbackStore(path, linger_s=0)
    store.record_prediction(_ctx("p0", _spec(0)))
    store.flush()
    writer = store._writer_conn  # idle between batches; max_page_count stands in for a full disk
    pages = writer.execute("PRAGMA page_count").fetchone()[0]
    writer.execute(f"PRAGMA max_page_count = {pages}")
    # The batch fails after its new spec's row went in (the spec is small, the prompt is not):
    # the rollback takes the spec with it.
    new_spec = _spec(1)
    noise = random.Random(0).randbytes(16_000).hex()  # zlib cannot shrink it into a free page
    store.record_prediction(dataclasses.replace(_ctx("lost", new_spec), prompt=noise))
    deadline = time.monotonic() + 30
    while not store.status()["errors"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert store.status()["failing"] and "full" in store.status()["last_error"], store.status()
    writer.execute("PRAGMA max_page_count = 1073741823")  # space freed
    with pytest.raises(FeedbackUnavailable, match="'lost' was not stored .the feedback store failed"):
        store.record_outcome("lost", actual_endpoint="POST /v1/invoices")
    store.record_prediction(_ctx("after", new_spec))
    store.flush()
    assert not store.status()["failing"]
    store.close()
    # The spec is in the file, not only in the store's memory: what a restarted replica, an
    # outcome for "after" and training read.
    reader = FeedbackReader(path)
    assert reader.spec(new_spec.spec_hash).spec_hash == new_spec.spec_hash
    reader.close()
