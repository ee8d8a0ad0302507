"""Outcomes of predictions: the SQLite store on its own (real files, a real crash), then the
``/feedback`` API of the whole graph on the real cluster over HTTP, across a replica crash and a
redeploy."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from core.errors import InvalidRequest
from core.settings import PROJECT_ROOT
from core.spec.openapi import parse_spec
from deployments.serving import metrics as metrics_module
from deployments.serving.feedback import (
    FeedbackReader,
    FeedbackStore,
    FeedbackUnavailable,
    OutcomeConflict,
    PredictionContext,
    UnknownPrediction,
    follow_up_index,
    resolve_operation,
)
from deployments.serving.store_actor import FeedbackStoreActor, StoreClient
from tests.specs import billing_spec

SPEC = parse_spec(billing_spec())
SHOWN = [("GET /invoices/{invoice_id}", 0.8), ("POST /invoices/{invoice_id}/pay", 0.1),
         ("POST /invoices", 0.05)]


def _ctx(pid: str, *, user: str = "u1", events=(), at: float | None = None) -> PredictionContext:
    return PredictionContext(
        prediction_id=pid, user_id=user, spec=SPEC, events=list(events), prompt="get it paid", k=3,
        candidates=[(SPEC.by_key[k], {"bm25": 1.0}, False) for k, _ in SHOWN], shown=SHOWN,
        model_version="m1", **({"created_at": at} if at is not None else {}),
    )


@pytest.fixture
def store(tmp_path) -> Iterator[FeedbackStore]:
    s = FeedbackStore(tmp_path / "feedback.sqlite")
    yield s
    s.close()


# -- the plain store -----------------------------------------------------------------------------


def test_follow_up_index() -> None:
    a, b, c, d = ("GET /a", {}, None), ("GET /b", {}, None), ("GET /c", {}, None), ("GET /d", {}, None)
    assert follow_up_index([a, b], [a, b, c]) == 2
    assert follow_up_index([a, b], [b, c, d]) == 1  # the window slid
    assert follow_up_index([a, b], [a, b]) is None  # the same request again: nothing followed yet
    assert follow_up_index([], [c, d]) == 0  # a cold start is followed by the first call
    assert follow_up_index([a], []) is None
    assert follow_up_index([a, b], [c, d]) is None  # unrelated: no overlap
    t = lambda e, ts: (e[0], {}, ts)  # noqa: E731
    prev = [t(a, "2025-07-08T14:00:00Z"), t(b, "2025-07-08T14:01:00Z")]
    cur = [t(b, "2025-07-08T14:01:00Z"), t(b, "2025-07-08T14:02:00+00:00"), t(c, "2025-07-08T14:03:00Z")]
    assert follow_up_index(prev, cur) == 1  # by time: the same endpoint called again counts


def test_resolve_operation() -> None:
    assert resolve_operation(SPEC, "POST /v1/invoices/in_1/pay") == "POST /invoices/{invoice_id}/pay"
    assert resolve_operation(SPEC, "POST /invoices/{invoice_id}/pay") == "POST /invoices/{invoice_id}/pay"
    assert resolve_operation(SPEC, "GET /nowhere") is None


def test_explicit_round_trip_idempotency_and_conflict(store) -> None:
    store.record_prediction(_ctx("p1"))
    first = store.record_outcome("p1", actual_endpoint="POST /v1/invoices/in_9/pay")
    assert (first.actual_key, first.rank, first.source, first.recorded) == (
        "POST /invoices/{invoice_id}/pay", 2, "explicit", True)
    # the same outcome again, concrete or as a template: acknowledged, nothing changes
    again = store.record_outcome("p1", actual_endpoint="POST /invoices/{invoice_id}/pay")
    assert again.recorded is False and again.actual_endpoint == "POST /v1/invoices/in_9/pay"
    with pytest.raises(OutcomeConflict, match="already has the outcome"):
        store.record_outcome("p1", actual_endpoint="GET /v1/invoices")
    with pytest.raises(UnknownPrediction, match="nope"):
        store.record_outcome("nope", accepted=True)
    with pytest.raises(InvalidRequest):
        store.submit_outcome("p1")
    stored = store.prediction("p1")
    assert stored.actual_key == "POST /invoices/{invoice_id}/pay" and stored.shown == SHOWN
    assert [c[0] for c in stored.candidates] == [SPEC.by_key[k] for k, _ in SHOWN]


def test_accepted_means_the_top_prediction(store) -> None:
    store.record_prediction(_ctx("p2"))
    result = store.record_outcome("p2", accepted=True)
    assert (result.actual_key, result.rank, result.source) == (SHOWN[0][0], 1, "accepted")
    assert store.record_outcome("p2", actual_endpoint="GET /v1/invoices/in_1").recorded is False


def test_unknown_endpoint_is_recorded_as_a_miss(store) -> None:
    store.record_prediction(_ctx("p3"))
    result = store.record_outcome("p3", actual_endpoint="DELETE /v1/somewhere/else")
    assert result.actual_key is None and result.rank is None and result.recorded


def test_implicit_outcome_from_the_next_request(store) -> None:
    e1, e2 = ("GET /v1/invoices", {}, None), ("GET /v1/invoices/in_5", {}, None)
    store.record_prediction(_ctx("a1", events=[e1]))
    store.record_prediction(_ctx("other-user", user="u2", events=[e1]))
    store.record_prediction(_ctx("a2", events=[e1, e2]))  # u1 called in_5 after a1
    store.flush()
    a1 = store.prediction("a1")
    assert (a1.source, a1.actual_key, a1.rank) == ("implicit", "GET /invoices/{invoice_id}", 1)
    assert store.prediction("other-user").source is None  # another user's calls say nothing
    assert store.prediction("a2").source is None
    # an explicit outcome corrects an implicit one; a later implicit one never overrides explicit
    fixed = store.record_outcome("a1", actual_endpoint="POST /v1/invoices/in_5/pay")
    assert fixed.recorded and fixed.source == "explicit"
    store.record_prediction(_ctx("a3", events=[e1, e2, ("GET /v1/invoices", {}, None)]))
    store.flush()
    assert store.prediction("a1").source == "explicit"
    assert store.prediction("a2").actual_key == "GET /invoices"


class _Counter:
    def __init__(self) -> None:
        self.counts: dict[tuple[tuple[str, str], ...], float] = {}

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        key = tuple(sorted((tags or {}).items()))
        self.counts[key] = self.counts.get(key, 0.0) + value


def test_a_correction_is_counted_once(store, monkeypatch) -> None:
    """outcomes_total counts a prediction's outcome once: an explicit outcome that corrects the
    implicit one replaces it, and adds only the hit the implicit one did not have."""
    recorder = metrics_module.Metrics(enabled=False)
    recorder.enabled = True
    recorder.outcomes, recorder.outcome_hits = _Counter(), _Counter()
    monkeypatch.setattr(metrics_module, "_current", recorder)
    e1, e2 = ("GET /v1/invoices", {}, None), ("GET /v1/invoices/in_5", {}, None)
    store.record_prediction(_ctx("c1", events=[e1]))
    store.record_prediction(_ctx("c2", events=[e1, e2]))  # settles c1: GET in_5, rank 1
    store.flush()
    assert store.prediction("c1").source == "implicit"
    store.record_outcome("c1", actual_endpoint="POST /v1/invoices/in_5/pay")  # rank 2: corrects
    store.record_outcome("c2", accepted=True)  # a first outcome: counted
    assert sum(recorder.outcomes.counts.values()) == 2, recorder.outcomes.counts
    hits = {dict(k)["k"]: v for k, v in recorder.outcome_hits.counts.items()}
    assert hits == {"1": 2, "3": 2}  # c1's implicit rank 1 (k=1, k=3), c2's accepted rank 1


def test_implicit_window(tmp_path) -> None:
    store = FeedbackStore(tmp_path / "f.sqlite", implicit_window_s=60)
    try:
        now = time.time()
        store.record_prediction(_ctx("old", events=[("GET /v1/invoices", {}, None)], at=now - 120))
        store.record_prediction(_ctx("new", events=[("GET /v1/invoices", {}, None),
                                                    ("GET /v1/invoices/in_1", {}, None)], at=now))
        store.flush()
        assert store.prediction("old").source is None
    finally:
        store.close()


def test_outcomes_survive_reopening(tmp_path) -> None:
    path = tmp_path / "f.sqlite"
    store = FeedbackStore(path)
    store.record_prediction(_ctx("p1"))
    store.record_prediction(_ctx("p2"))  # queued, never acknowledged: close() commits it anyway
    store.record_outcome("p1", accepted=True)
    store.close()
    reader = FeedbackReader(path)
    assert reader.prediction("p1").source == "accepted"
    assert reader.prediction("p2") is not None
    assert reader.counts() == {"predictions": 2, "outcomes_accepted": 1, "outcomes": 1, "specs": 1}
    assert [s.prediction_id for s in reader.predictions()] == ["p1"]
    assert reader.spec(SPEC.spec_hash).by_key == SPEC.by_key
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    reader.close()


_CRASHER = """
import os, signal, sys
sys.path.insert(0, {root!r})
from tests.test_feedback import _ctx
from deployments.serving.feedback import FeedbackStore
store = FeedbackStore({path!r})
store.record_prediction(_ctx("crash-1"))
result = store.record_outcome("crash-1", actual_endpoint="POST /v1/invoices/in_1/pay")
print("ACK", result.recorded, flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # no close(), no atexit, no flush: a crash
"""


def test_an_acknowledged_outcome_survives_a_crash(tmp_path) -> None:
    path = tmp_path / "f.sqlite"
    run = subprocess.run([sys.executable, "-c", _CRASHER.format(root=str(PROJECT_ROOT), path=str(path))],
                         capture_output=True, text=True, timeout=60, cwd=PROJECT_ROOT)
    assert run.returncode == -signal.SIGKILL, run.stderr[-2000:]
    assert "ACK True" in run.stdout
    stored = FeedbackReader(path).prediction("crash-1")
    assert stored is not None and stored.actual_key == "POST /invoices/{invoice_id}/pay"


def test_contexts_share_a_commit_and_an_outcome_does_not_wait(tmp_path) -> None:
    """Prediction contexts wait up to linger_s for company (one commit for many, not fsynced);
    an outcome ends the wait at once and is committed with a full sync."""
    store = FeedbackStore(tmp_path / "f.sqlite", linger_s=2.0)
    try:
        commits = store.stats["commits"]
        for i in range(5):
            store.record_prediction(_ctx(f"p{i}"))
        time.sleep(0.1)  # well inside the linger: nothing committed yet
        assert store.stats["commits"] == commits
        assert store.prediction("p0") is None
        started = time.monotonic()
        result = store.record_outcome("p4", accepted=True)
        assert time.monotonic() - started < 1.5  # did not sit out the rest of the linger
        assert result.recorded and result.rank == 1
        assert store.stats["commits"] == commits + 1  # the five contexts and the outcome, together
        assert all(store.prediction(f"p{i}") is not None for i in range(5))
        assert store._synchronous == "FULL"
        store.record_prediction(_ctx("p5"))
        store.flush()  # a flush does not wait either, and commits it
        assert store.prediction("p5") is not None
        store.record_prediction(_ctx("p6"))
        deadline = time.monotonic() + 10
        while store.prediction("p6") is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store.prediction("p6") is not None  # committed once its linger ran out
        assert store._synchronous == "NORMAL"  # contexts alone: not fsynced
    finally:
        store.close()
    with pytest.raises(ValueError, match="linger_s"):
        FeedbackStore(tmp_path / "g.sqlite", linger_s=-1)


def test_a_full_queue_drops_predictions_without_blocking(tmp_path) -> None:
    path = tmp_path / "f.sqlite"
    store = FeedbackStore(path, max_queue=4)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the writer now waits for the write lock
    try:
        time.sleep(0.05)
        accepted = []
        start = time.perf_counter()
        for i in range(40):
            accepted.append(store.record_prediction(_ctx(f"q{i}")))
        elapsed = time.perf_counter() - start
        assert elapsed < 2.0  # a blocking put would wait out the writer's 5 s lock timeout
        assert not all(accepted) and store.stats["dropped"] == accepted.count(False)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    store.flush()
    assert store.counts()["predictions"] == accepted.count(True)
    # An outcome for a dropped one says it was lost and why (503), not that it never existed (404).
    dropped = f"q{accepted.index(False)}"
    with pytest.raises(FeedbackUnavailable, match="was not stored .the feedback queue was full"):
        store.record_outcome(dropped, actual_endpoint="GET /v1/invoices")
    store.close()


# -- the API on the real cluster -----------------------------------------------------------------

serve_mark = pytest.mark.serve
ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

REQUEST = {
    "user_id": "u-42",
    "events": [{"endpoint": "GET /v1/invoices"},
               {"endpoint": "PUT /v1/invoices/in_123/status", "params": {"status": "DRAFT"}}],
    "prompt": "get this invoice paid",
    "spec": billing_spec(),
    "k": 3,
}


def _deploy(data_dir: Path) -> None:
    from graph import build_app

    serve.run(build_app({"settings": {"data_dir": str(data_dir)}}), name="opensesame", route_prefix="/")


@pytest.fixture(scope="module")
def app(serve_cluster, tmp_path_factory) -> Iterator[tuple[str, Path]]:
    data_dir = tmp_path_factory.mktemp("feedback-serve")
    _deploy(data_dir)
    try:
        yield serve_cluster, data_dir
    finally:
        serve.delete("opensesame")


@pytest.fixture(scope="module")
def client(app) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=app[0], timeout=30) as c:
        yield c


def _predict(client: httpx.Client, **changes) -> dict:
    r = client.post("/predict", json={**REQUEST, **changes})
    assert r.status_code == 200, r.text
    return r.json()


@serve_mark
def test_feedback_round_trip_over_http(client) -> None:
    answer = _predict(client)
    pid = answer["prediction_id"]
    r = client.post("/feedback",
                    json={"prediction_id": pid, "actual_endpoint": "POST /v1/invoices/in_123/pay"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["recorded"] is True and body["operation"] == "POST /invoices/{invoice_id}/pay"
    shown = [p["endpoint"] for p in answer["predictions"]]
    assert body["rank"] == (shown.index(body["operation"]) + 1 if body["operation"] in shown else None)
    again = client.post("/feedback",
                        json={"prediction_id": pid, "actual_endpoint": "POST /invoices/{invoice_id}/pay"})
    assert again.status_code == 200 and again.json()["recorded"] is False
    conflict = client.post("/feedback", json={"prediction_id": pid, "actual_endpoint": "GET /v1/invoices"})
    assert conflict.status_code == 409 and "already has the outcome" in conflict.json()["error"]["message"]
    stored = client.get(f"/feedback/{pid}").json()
    assert stored["outcome"]["operation"] == "POST /invoices/{invoice_id}/pay"
    assert [p["endpoint"] for p in stored["predictions"]] == shown


@serve_mark
def test_accepted(client) -> None:
    answer = _predict(client, user_id="u-acc")
    r = client.post("/feedback", json={"prediction_id": answer["prediction_id"], "accepted": True})
    assert r.status_code == 200, r.text
    assert r.json()["operation"] == answer["predictions"][0]["endpoint"] and r.json()["rank"] == 1


@serve_mark
def test_unknown_prediction_is_404(client) -> None:
    r = client.post("/feedback", json={"prediction_id": "0123abcd", "accepted": True})
    assert r.status_code == 404 and "0123abcd" in r.json()["error"]["message"]
    assert client.get("/feedback/0123abcd").status_code == 404


@serve_mark
@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"prediction_id": "x"}, "exactly one of"),
        ({"prediction_id": "x", "accepted": True, "actual_endpoint": "GET /a"}, "exactly one of"),
        ({"prediction_id": "x", "accepted": False}, "actual_endpoint"),
        ({"prediction_id": "x", "actual_endpoint": "FETCH /a"}, "method"),
        ({"prediction_id": "x", "actual_endpoint": "GET a"}, "/"),
        ({"prediction_id": "", "accepted": True}, "prediction_id"),
        ({"prediction_id": "x", "accepted": True, "extra": 1}, "extra"),
        ({"actual_endpoint": "GET /a"}, "prediction_id"),
    ],
)
def test_bad_feedback_is_422(client, body, fragment) -> None:
    r = client.post("/feedback", json=body)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert fragment in error["message"] + str(error.get("details"))


@serve_mark
def test_implicit_feedback_from_the_next_predict(client) -> None:
    first = _predict(client, user_id="u-implicit", events=[{"endpoint": "GET /v1/invoices"}])
    _predict(client, user_id="u-implicit",
             events=[{"endpoint": "GET /v1/invoices"}, {"endpoint": "GET /v1/invoices/in_77"}])
    stored = client.get(f"/feedback/{first['prediction_id']}").json()
    assert stored["outcome"] == {
        "prediction_id": first["prediction_id"], "recorded": True,
        "actual_endpoint": "GET /v1/invoices/in_77",
        "operation": "GET /invoices/{invoice_id}",
        "rank": next((i + 1 for i, p in enumerate(first["predictions"])
                      if p["endpoint"] == "GET /invoices/{invoice_id}"), None),
        "source": "implicit",
    }


def _ingress_actor():
    names = [a for a in ray.util.list_named_actors(all_namespaces=True)
             if "opensesame" in a["name"] and "Ingress" in a["name"] and a["namespace"] == "serve"]
    assert len(names) == 1, names
    return ray.get_actor(names[0]["name"], namespace="serve")


def _wait_healthy(client: httpx.Client, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if client.post("/predict", json={**REQUEST, "user_id": "probe"}).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError("the app did not come back")


@serve_mark
def test_outcomes_survive_a_crash_and_a_redeploy(client, app) -> None:
    acknowledged = _predict(client, user_id="u-durable")["prediction_id"]
    assert client.post("/feedback", json={"prediction_id": acknowledged, "accepted": True}).status_code == 200
    ray.kill(_ingress_actor(), no_restart=True)  # a crash: no destructor, no flush
    _wait_healthy(client)
    stored = client.get(f"/feedback/{acknowledged}")
    assert stored.status_code == 200 and stored.json()["outcome"]["source"] == "accepted"

    # a prediction made just before a redeploy can still get its feedback afterwards
    pending = _predict(client, user_id="u-redeploy")["prediction_id"]
    serve.delete("opensesame")
    _deploy(app[1])
    _wait_healthy(client)
    r = client.post("/feedback", json={"prediction_id": pending, "actual_endpoint": "GET /v1/invoices"})
    assert r.status_code == 200, r.text
    assert client.get(f"/feedback/{acknowledged}").json()["outcome"]["source"] == "accepted"
    assert os.path.getsize(app[1] / "feedback.sqlite") > 0


# -- the personal prior learned from outcomes ----------------------------------------------------


def test_prior_blend_and_shrinkage() -> None:
    import numpy as np

    from core.priors.personal import START, TransitionPrior

    prior = TransitionPrior(weight=0.5, shrink=3.0)
    keys, probs = ["a", "b", "c"], np.array([0.7, 0.2, 0.1])
    assert prior.blend("u", "s", START, keys, probs) is probs  # nothing learned: untouched
    for _ in range(3):
        prior.observe("u", "s", START, "c")
    blended = prior.blend("u", "s", START, keys, probs)
    lam = 0.5 * 3 / (3 + 3.0)
    assert np.allclose(blended, (1 - lam) * probs + lam * np.array([0, 0, 1]))
    assert blended.sum() == pytest.approx(1.0)
    assert prior.blend("other user", "s", START, keys, probs) is probs
    tenant = TransitionPrior(weight=0.5, scope="tenant")
    tenant.observe("u", "s", START, "c")
    assert tenant.blend("other user", "s", START, keys, probs)[2] > 0.1


def test_prior_feed_follows_every_writer(tmp_path) -> None:
    from core.priors.personal import TransitionPrior
    from deployments.serving.prior_feed import PriorFeed

    path = tmp_path / "f.sqlite"
    one, two = FeedbackStore(path), FeedbackStore(path)  # two replicas, one file
    feed = PriorFeed(TransitionPrior(weight=0.5), path)
    try:
        events = [("GET /v1/invoices", {}, None)]
        for i, store in enumerate((one, two, one)):
            store.record_prediction(_ctx(f"p{i}", events=events))
            store.record_outcome(f"p{i}", actual_endpoint="POST /v1/invoices")
        assert feed.poll_once() == 3 and feed.poll_once() == 0
        keys = ["GET /invoices/{invoice_id}", "POST /invoices"]
        import numpy as np

        blended = feed.prior.blend("u1", SPEC.spec_hash, "GET /invoices", keys, np.array([0.9, 0.1]))
        assert blended[1] > 0.1
    finally:
        feed.stop()
        one.close()
        two.close()


@serve_mark
def test_the_users_own_habit_moves_their_next_prediction(client) -> None:
    body = {**REQUEST, "user_id": "u-habit"}
    observed = lambda: client.get("/health").json()["deployments"]["ingress"]["personal_prior"]["observed"]  # noqa: E731
    before = observed()
    first = _predict(client, **body)
    habit = first["predictions"][-1]
    for _ in range(3):  # three times this user did the last-ranked call next
        pid = _predict(client, **body)["prediction_id"]
        r = client.post("/feedback", json={"prediction_id": pid, "actual_endpoint": habit["endpoint"]})
        assert r.status_code == 200, r.text
    deadline = time.monotonic() + 30
    while observed() < before + 3:
        assert time.monotonic() < deadline, "the prior never saw the outcomes"
        time.sleep(0.2)
    after = {p["endpoint"]: p for p in _predict(client, **body)["predictions"]}
    assert after[habit["endpoint"]]["score"] > habit["score"]
    assert "what you usually do next" in after[habit["endpoint"]]["why"]
    fresh = _predict(client, **{**body, "user_id": "u-no-habit"})["predictions"]
    other = {p["endpoint"]: p["score"] for p in fresh}
    assert other.get(habit["endpoint"], 0.0) == pytest.approx(habit["score"], abs=1e-3)


# -- the store actor (several nodes; tests/test_ops_nodes.py runs it on two) -------------------


@serve_mark
def test_the_store_actor_records_reads_and_streams(serve_cluster, tmp_path) -> None:
    """The client and the actor on the session's cluster: contexts batched to it, outcomes and
    their errors as the local store gives them, the outcome stream and erasures for followers."""
    import ray

    actor = ray.remote(FeedbackStoreActor).options(num_cpus=0).remote({"data_dir": str(tmp_path)})
    client = StoreClient(actor, wait_s=5.0)

    async def scenario() -> None:
        assert client.record_prediction(_ctx("s1")) and client.record_prediction(_ctx("s2", user="u2"))
        first = await client.arecord_outcome("s1", accepted=True)  # after this replica's contexts
        assert (first.recorded, first.rank, first.source) == (True, 1, "accepted")
        with pytest.raises(UnknownPrediction):
            await client.arecord_outcome("nope", accepted=True)
        with pytest.raises(OutcomeConflict, match="already has the outcome"):
            await client.arecord_outcome("s1", actual_endpoint="GET /v1/invoices")
        stored = await client.aprediction("s1")
        assert stored is not None and stored.source == "accepted"
        reader = client.follow()
        rows = reader.outcomes_after(0, 10)
        assert [(r[1], r[5]) for r in rows] == [("u1", SHOWN[0][0])]
        assert reader.spec(rows[0][2]).spec_hash == SPEC.spec_hash
        assert await client.aerase_user("u2") == {"predictions": 1, "outcomes": 0}
        assert [u for _, u in reader.erasures_after(0)] == ["u2"]

    try:
        asyncio.run(scenario())
        assert client.status()["predictions"] == 2 and not client.status()["failing"]
    finally:
        client.close()
        ray.kill(actor)
    reader = FeedbackReader(tmp_path / "feedback.sqlite")  # the actor's file: what a retrain reads
    assert reader.counts()["outcomes"] == 1 and reader.counts()["predictions"] == 1
    reader.close()


@serve_mark
def test_an_unreachable_store_actor_answers_503_and_keeps_the_contexts(serve_cluster, tmp_path) -> None:
    """An actor that is not placed (no node has its resource): feedback is refused with the
    reason within the deadline, never hangs; the context is kept to be sent again."""
    import ray

    actor = ray.remote(FeedbackStoreActor).options(num_cpus=0, resources={"no_such_node": 1}).remote(
        {"data_dir": str(tmp_path)})
    client = StoreClient(actor, wait_s=0.5)
    try:
        client.record_prediction(_ctx("x1"))
        with pytest.raises(FeedbackUnavailable, match="feedback store actor"):
            asyncio.run(client.arecord_outcome("x1", accepted=True))
        status = client.status()
        assert status["failing"] and status["queued"] == 1 and status["dropped"] == 0, status
    finally:
        client.close(timeout=1)
        ray.kill(actor)
