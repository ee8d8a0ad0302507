"""The user's own transitions as ranker features: zero for a cold user, what the recorded outcomes
say otherwise, learned without seeing the target, stored with each prediction (schema 2, and the
migration of a schema-1 file), rebuilt identically by retraining, and — through the plain
classes, no Ray — a habit moves that user's ranking and nobody else's."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.candidates.types import Candidate
from core.features import COLD, FEATURE_NAMES, PERSONAL_FEATURES, FeatureExtractor, UserTransitions
from core.priors.personal import START, TransitionPrior, user_transitions
from core.priors.transitions import load_transitions
from core.spec.openapi import parse_spec
from deployments.serving.feedback import SCHEMA_VERSION, FeedbackReader, FeedbackStore, PredictionContext
from deployments.serving.prior_feed import PriorFeed
from ranker.data import Step, Workflow
from ranker.returning_users import personal_examples
from tests.specs import billing_spec

SPEC = parse_spec(billing_spec())
COL = {n: i for i, n in enumerate(FEATURE_NAMES)}
LIST, PAY, CREATE = "GET /invoices", "POST /invoices/{invoice_id}/pay", "POST /invoices"


@pytest.fixture(scope="module")
def extractor() -> FeatureExtractor:
    return FeatureExtractor(transitions=load_transitions())


def _candidates(*keys: str) -> list[Candidate]:
    return [Candidate(index=SPEC.by_key[k]) for k in keys]


def _personal(X: np.ndarray) -> np.ndarray:
    return X[:, [COL[n] for n in PERSONAL_FEATURES]]


# -- the features --------------------------------------------------------------------------------


def test_personal_features_are_one_block_before_the_population_block() -> None:
    from core.priors.population import POPULATION_FEATURES

    assert FEATURE_NAMES[-len(PERSONAL_FEATURES) - len(POPULATION_FEATURES):-len(POPULATION_FEATURES)] \
        == PERSONAL_FEATURES
    assert FEATURE_NAMES[-len(POPULATION_FEATURES):] == POPULATION_FEATURES
    assert PERSONAL_FEATURES == ("user_p_next", "user_n_context", "user_count_next")


def test_zero_for_a_cold_user_and_the_users_counts_otherwise(extractor) -> None:
    history = [SPEC.resolve("GET /v1/invoices")]
    cands = _candidates(PAY, CREATE, "GET /invoices/{invoice_id}")
    cold = extractor.extract(SPEC, history, None, cands)
    assert (_personal(cold) == 0).all()
    np.testing.assert_array_equal(extractor.extract(SPEC, history, None, cands, COLD), cold)

    warm = extractor.extract(SPEC, history, None, cands, UserTransitions({CREATE: 3, "GET /elsewhere": 1}))
    np.testing.assert_allclose(_personal(warm), [[0, 4, 0], [0.75, 4, 3], [0, 4, 0]])
    others = [i for i in range(len(FEATURE_NAMES)) if FEATURE_NAMES[i] not in PERSONAL_FEATURES]
    np.testing.assert_array_equal(warm[:, others], cold[:, others])  # nothing else changes


def test_user_transitions_check_and_travel_as_wire() -> None:
    t = UserTransitions({PAY: 2, CREATE: 1})
    assert t.n == 3 and UserTransitions.from_wire(t.to_wire()) == t
    assert UserTransitions.from_wire(None) is COLD and COLD.to_wire() is None
    with pytest.raises(ValueError, match="counts must be str -> int >= 0"):
        UserTransitions({PAY: -1})


def test_the_prior_hands_out_only_this_users_context() -> None:
    prior = TransitionPrior(weight=0.0)
    for _ in range(2):
        prior.observe("u", SPEC.spec_hash, LIST, PAY)
    prior.observe("u", SPEC.spec_hash, START, LIST)
    prior.observe("v", SPEC.spec_hash, LIST, CREATE)
    events = [("GET /v1/invoices", {})]
    assert user_transitions(prior, user_id="u", spec=SPEC, events=events) == UserTransitions({PAY: 2})
    assert user_transitions(prior, user_id="u", spec=SPEC, events=[]) == UserTransitions({LIST: 1})
    assert user_transitions(prior, user_id="w", spec=SPEC, events=events) == COLD
    assert user_transitions(None, user_id="u", spec=SPEC, events=events) is None


# -- training groups of returning users ----------------------------------------------------------


def _routine(spec_path: Path, name: str, *keys: str) -> Workflow:
    steps = tuple(
        Step(key=k, path_params={"invoice_id": "in_1"} if "{invoice_id}" in k else {}, params={})
        for k in keys)
    return Workflow(api="billing", workflow_id=name, prompt="", spec_path=spec_path, steps=steps)


def test_returning_users_learn_only_from_their_earlier_outcomes(tmp_path) -> None:
    path = tmp_path / "billing.json"
    path.write_text(json.dumps(billing_spec()))
    routines = [_routine(path, "pay", LIST, PAY), _routine(path, "create", LIST, CREATE),
                _routine(path, "look", LIST, "GET /invoices/{invoice_id}")]
    groups = list(personal_examples(routines, seed=0, habit_sessions=4, wander_sessions=3))
    assert groups and all(g.source == "personal" for g in groups)
    habit = [g for g in groups if g.workflow_id.startswith("habit-")]
    # sessions 1..3 of 4 (the first only builds history), two steps each
    assert len(habit) == 6
    for g in habit:
        session = int(g.workflow_id.split("/")[1])
        assert g.personal is not None
        # after k earlier sessions (of one or two routines), k outcomes in this context: never
        # the current one
        assert g.personal.n == session
        if not g.history:
            assert g.personal.counts == {LIST: session}
    wander = [g for g in groups if g.workflow_id.startswith("wander-")]
    assert len({g.workflow_id.split("/")[2] for g in wander}) == 2  # never the same routine twice
    for g in wander:  # every routine starts with LIST, each target after it was new
        if g.history:
            assert g.personal is not None and g.target not in g.personal.counts


# -- stored with the prediction ------------------------------------------------------------------

_V1_SCHEMA = (
    "CREATE TABLE specs (spec_hash TEXT PRIMARY KEY, payload BLOB NOT NULL, created_at REAL NOT NULL)",
    "CREATE TABLE predictions (prediction_id TEXT PRIMARY KEY, user_id TEXT NOT NULL, spec_hash TEXT "
    "NOT NULL, created_at REAL NOT NULL, model_version TEXT NOT NULL, prompt TEXT, k INTEGER NOT NULL, "
    "events TEXT NOT NULL, candidates TEXT NOT NULL, shown TEXT NOT NULL)",
    "CREATE INDEX predictions_by_user ON predictions (user_id, spec_hash, created_at)",
    "CREATE TABLE outcomes (prediction_id TEXT PRIMARY KEY REFERENCES predictions (prediction_id), "
    "actual_endpoint TEXT NOT NULL, actual_key TEXT, rank INTEGER, source TEXT NOT NULL, "
    "recorded_at REAL NOT NULL)",
    "CREATE INDEX outcomes_by_time ON outcomes (recorded_at)",
)


def _ctx(pid: str, personal: dict[str, int] | None = None) -> PredictionContext:
    return PredictionContext(
        prediction_id=pid, user_id="u", spec=SPEC, events=[("GET /v1/invoices", {}, None)], prompt=None,
        k=3, candidates=[(SPEC.by_key[k], {"bm25": 1.0}, False) for k in (PAY, CREATE)],
        shown=[(PAY, 0.6), (CREATE, 0.3)], model_version="m", personal=personal)


def test_a_schema_1_store_is_migrated_in_place(tmp_path) -> None:
    path = tmp_path / "feedback.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode = WAL")
    for statement in _V1_SCHEMA:
        conn.execute(statement)
    conn.execute("INSERT INTO predictions VALUES ('old', 'u', 'h', 1.0, 'm0', NULL, 3, '[]', '[]', "
                 "'[[\"GET /invoices\", 0.5]]')")
    conn.execute("INSERT INTO outcomes VALUES ('old', 'GET /invoices', 'GET /invoices', 1, 'explicit', 2.0)")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()

    reader = FeedbackReader(path)  # a reader (retraining) brings it up to date too
    [old] = reader.predictions()
    assert old.prediction_id == "old" and old.personal is None and old.actual_key == "GET /invoices"
    reader.close()
    store = FeedbackStore(path)
    try:
        store.record_prediction(_ctx("new", {CREATE: 2}))
        store.record_prediction(_ctx("cold"))
        store.flush()
        assert store.prediction("new").personal == {CREATE: 2}
        assert store.prediction("cold").personal is None
        assert store.prediction("old").personal is None
    finally:
        store.close()
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    assert {"personal", "population"} <= {r[1] for r in check.execute("PRAGMA table_info(predictions)")}
    assert check.execute("SELECT count(*) FROM erasures").fetchone()[0] == 0
    check.close()
    FeedbackStore(path).close()  # opening a migrated file again changes nothing


def test_a_newer_schema_is_refused(tmp_path) -> None:
    from deployments.serving.feedback import FeedbackUnavailable

    path = tmp_path / "f.sqlite"
    FeedbackStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(FeedbackUnavailable, match="newer than this code"):
        FeedbackStore(path)


def test_retraining_rebuilds_the_served_features(tmp_path, extractor) -> None:
    from ranker.retrain import feedback_groups

    store = FeedbackStore(tmp_path / "f.sqlite")
    try:
        store.record_prediction(_ctx("p", {CREATE: 3, PAY: 1}))
        store.record_outcome("p", actual_endpoint="POST /v1/invoices")
        reader = FeedbackReader(store.path)
        fb = feedback_groups(reader, list(reader.predictions()), extractor=extractor,
                             holdout_fraction=0.0, progress=False)
    finally:
        store.close()
    served = extractor.extract(SPEC, SPEC.resolve_history([("GET /v1/invoices", {})]), None,
                               [Candidate.from_wire(c) for c in _ctx("p").candidates],
                               UserTransitions({CREATE: 3, PAY: 1}))
    np.testing.assert_array_equal(fb.groups.X, served)
    np.testing.assert_allclose(_personal(fb.groups.X), [[0.25, 4, 1], [0.75, 4, 3]])


# -- behaviour, through the plain classes --------------------------------------------------------


def test_a_users_habit_ranks_their_usual_next_call_higher(tmp_path) -> None:
    """A user who always goes from the list of invoices to C (not what a cold user is offered
    first) gets C ranked higher after a few outcomes than a cold user does."""
    from core.settings import load_settings
    from deployments.serving.pipeline import Pipeline
    from deployments.serving.schemas import PredictRequest

    settings = load_settings(data_dir=str(tmp_path), personal_prior_weight=0.0)
    assert settings.personal_prior_feature  # the default
    store = FeedbackStore(settings.feedback_db_path)
    feed = PriorFeed(TransitionPrior(weight=0.0), settings.feedback_db_path)
    pipeline = Pipeline(settings, feedback=store, prior=feed.prior)

    async def ask(user: str, k: int = 10) -> list[str]:
        request = PredictRequest(user_id=user, spec=billing_spec(), events=[{"endpoint": "GET /v1/invoices"}],
                                 k=k)
        return [p.endpoint for p in (await pipeline.predict(request)).predictions]

    async def scenario() -> tuple[list[str], list[str], list[str], str]:
        try:
            cold = await ask("cold")
            habit = cold[3]  # offered, but not first: not the generic favourite
            for _ in range(4):
                answer = await pipeline.predict(PredictRequest(
                    user_id="habitual", spec=billing_spec(), events=[{"endpoint": "GET /v1/invoices"}]))
                await store.arecord_outcome(answer.prediction_id, actual_endpoint=habit)
            assert feed.poll_once() == 4
            return cold, await ask("habitual"), await ask("someone else"), habit
        finally:
            await pipeline.aclose()

    try:
        cold, warm, other, habit = asyncio.run(scenario())
        assert warm.index(habit) < cold.index(habit), (cold, warm)
        assert other == cold  # one user's habit is theirs alone
        store.flush()
        last = list(store.predictions(with_outcome=False, user_id="habitual"))[-1]
        assert last.personal == {habit: 4}  # what the features were computed with
    finally:
        feed.stop()
        store.close()


def test_the_blend_after_the_model_explains_the_rows_it_moves_up(tmp_path) -> None:
    """With the prior blended after the model (the older way, kept as an option), a habit from
    outside the model's top k is shown, said to be the user's habit, and explained: only that
    row's contributions are computed on top of the model's own top k."""
    from core.settings import load_settings
    from deployments.serving.pipeline import Pipeline
    from deployments.serving.schemas import PredictRequest

    settings = load_settings(data_dir=str(tmp_path), personal_prior_feature=False,
                             personal_prior_weight=0.9)
    store = FeedbackStore(settings.feedback_db_path)
    feed = PriorFeed(TransitionPrior(weight=0.9, shrink=1.0), settings.feedback_db_path)
    pipeline = Pipeline(settings, feedback=store, prior=feed.prior)
    explained: list[int] = []
    # Every row explained, by the model's one pass (its top k) or afterwards, goes through the
    # leaf table (core/saabas.py).
    leaves = pipeline.c.ranker.ensure_loaded()._leaves
    contributions_of = leaves.contributions_of

    def counting(reached: np.ndarray) -> np.ndarray:
        explained.append(len(reached))
        return contributions_of(reached)

    leaves.contributions_of = counting  # type: ignore[method-assign]

    def request(user: str, k: int) -> PredictRequest:
        return PredictRequest(user_id=user, spec=billing_spec(), events=[{"endpoint": "GET /v1/invoices"}],
                              k=k)

    async def scenario() -> tuple[str, list[Any]]:
        try:
            habit = (await pipeline.predict(request("cold", 10))).predictions[4].endpoint
            for _ in range(6):
                answer = await pipeline.predict(request("habitual", 3))
                await store.arecord_outcome(answer.prediction_id, actual_endpoint=habit)
            assert feed.poll_once() == 6
            explained.clear()
            return habit, (await pipeline.predict(request("habitual", 3))).predictions
        finally:
            await pipeline.aclose()

    try:
        habit, shown = asyncio.run(scenario())
        mine = next(p for p in shown if p.endpoint == habit)
        assert mine.why.startswith("what you usually do next; ") and len(mine.why) > 26, mine.why
        assert explained == [3, 1]  # the model's top 3, then the row the blend moved up
    finally:
        feed.stop()
        store.close()
