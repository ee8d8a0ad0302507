"""The population memory: privacy guards, decay and versions on the plain class; the serving store
on real SQLite files (a restart, two processes' worth of stores on one file, clearing); the same
features in training and serving. No Ray."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pytest

from core.features import FEATURE_NAMES
from core.priors.population import (
    POPULATION_FEATURES,
    PopulationConfig,
    PopulationMemory,
    PopulationView,
    api_key,
    decayed,
    observation,
    operation_id,
    population_columns,
)
from core.settings import PROJECT_ROOT
from core.spec.openapi import parse_spec
from deployments.serving.feedback import FeedbackStore, PredictionContext
from deployments.serving.population_store import PopulationFeed, PopulationStore
from tests.specs import billing_spec

SPEC = parse_spec(billing_spec())
LIST, GET, PAY, CREATE = "GET /invoices", "GET /invoices/{invoice_id}", "POST /invoices/{invoice_id}/pay", \
    "POST /invoices"
DAY = 86400.0


def _run(memory: PopulationMemory, user: str, keys: list[str], *, prompt: str = "get it paid",
         t: float = 0.0, spec=SPEC) -> None:
    """One session of ``keys`` by ``user``, every step's outcome observed."""
    history = []
    for key in keys:
        obs = observation(spec, history, prompt, key, user=user, t=t)
        assert obs is not None
        memory.observe(obs)
        history.append(spec.resolve(key.replace("{invoice_id}", "in_1")))


def _view(memory: PopulationMemory, keys: list[str], *, prompt: str = "get it paid", t: float = 0.0,
          spec=SPEC) -> PopulationView:
    history = [spec.resolve(k.replace("{invoice_id}", "in_1")) for k in keys]
    return memory.view(api_key(spec), history, prompt, now=t)


def _pid(op: str) -> str:
    return operation_id(SPEC.operations[SPEC.by_key[op]])


# -- privacy ---------------------------------------------------------------------------------------


def test_below_the_distinct_user_threshold_nothing_is_used() -> None:
    memory = PopulationMemory(PopulationConfig(min_users=3))
    for user in ("a", "b"):
        _run(memory, user, [LIST, GET, PAY])
    assert _view(memory, [LIST, GET]).empty  # two users: invisible
    _run(memory, "c", [LIST, GET, PAY])
    seen = _view(memory, [LIST, GET])
    assert seen.prev == {_pid(PAY): pytest.approx(3.0)}
    assert seen.prev2 == {_pid(PAY): pytest.approx(3.0)}


def test_the_threshold_is_a_setting() -> None:
    memory = PopulationMemory(PopulationConfig(min_users=5))
    for user in "abcd":
        _run(memory, user, [LIST, GET, PAY])
    assert _view(memory, [LIST, GET]).empty
    _run(memory, "e", [LIST, GET, PAY])
    assert not _view(memory, [LIST, GET]).empty


def test_a_flood_from_one_user_moves_nothing_another_user_sees() -> None:
    memory = PopulationMemory()
    for user in ("a", "b", "c"):
        _run(memory, user, [LIST, GET, PAY])
    before = _view(memory, [LIST, GET])
    # a new client replays another flow 10,000 times, and one of the three replays theirs
    for _ in range(10_000):
        _run(memory, "flooder", [LIST, GET, CREATE])
        _run(memory, "a", [LIST, GET, PAY])
    after = _view(memory, [LIST, GET])
    assert after == before
    X_before = population_columns(before, list(SPEC.operations))
    X_after = population_columns(after, list(SPEC.operations))
    np.testing.assert_array_equal(X_before, X_after)


def test_a_users_contribution_is_capped_not_ignored() -> None:
    memory = PopulationMemory(PopulationConfig(user_cap=1.0))
    for user in ("a", "b", "c"):
        _run(memory, user, [LIST, GET, PAY])
    for user in ("d", "e", "f"):
        _run(memory, user, [LIST, GET, CREATE])
        _run(memory, user, [LIST, GET, CREATE])  # twice: still one each
    seen = _view(memory, [LIST, GET])
    assert seen.prev == {_pid(PAY): pytest.approx(3.0), _pid(CREATE): pytest.approx(3.0)}


# -- decay and versions ----------------------------------------------------------------------------


def test_decay_halves_a_count_at_its_half_life() -> None:
    config = PopulationConfig(half_life_s=7 * DAY)
    memory = PopulationMemory(config)
    for user in ("a", "b", "c", "d"):
        _run(memory, user, [LIST, GET, PAY], t=100.0)
    now = _view(memory, [LIST, GET], t=100.0).prev[_pid(PAY)]
    later = _view(memory, [LIST, GET], t=100.0 + 7 * DAY).prev[_pid(PAY)]
    assert now == pytest.approx(4.0)
    assert later == pytest.approx(2.0)
    assert decayed(8.0, 0.0, 14 * DAY, 7 * DAY) == pytest.approx(2.0)


def test_new_traffic_outweighs_faded_traffic() -> None:
    memory = PopulationMemory(PopulationConfig(half_life_s=7 * DAY))
    for user in "abcdef":
        _run(memory, user, [LIST, GET, PAY], t=0.0)
    for user in "ghi":
        _run(memory, user, [LIST, GET, CREATE], t=28 * DAY)
    seen = _view(memory, [LIST, GET], t=28 * DAY)
    assert seen.prev[_pid(CREATE)] > seen.prev[_pid(PAY)]


def test_a_new_version_keeps_what_was_learned_for_operations_that_still_exist() -> None:
    v2_doc = billing_spec(base="https://api.example.com/v2")
    v2_doc["info"]["version"] = "2"
    v2_doc["paths"] = {p: item for p, item in v2_doc["paths"].items() if not p.endswith("/pay")}
    renamed = json.dumps(v2_doc).replace("{invoice_id}", "{id}").replace('"invoice_id"', '"id"')
    v2 = parse_spec(renamed.encode())
    assert v2.spec_hash != SPEC.spec_hash and api_key(v2) == api_key(SPEC)
    memory = PopulationMemory()
    for user in ("a", "b", "c"):
        _run(memory, user, [LIST, GET, PAY])
        _run(memory, user, [LIST, CREATE])
    seen = memory.view(api_key(v2), [v2.resolve("GET /invoices")], "get it paid", now=0.0)
    X = population_columns(seen, list(v2.operations))
    col = POPULATION_FEATURES.index("pop_p_next")
    shares = {op.key: X[i, col] for i, op in enumerate(v2.operations)}
    assert shares["GET /invoices/{id}"] == pytest.approx(0.5)
    assert shares["POST /invoices"] == pytest.approx(0.5)


def test_the_kind_of_request_tells_flows_after_the_same_call_apart() -> None:
    memory = PopulationMemory()
    for user in ("a", "b", "c"):
        _run(memory, user, [LIST, GET, PAY], prompt="settle the invoice payment")
        _run(memory, user, [LIST, GET, CREATE], prompt="draft a new invoice")
    paying = _view(memory, [LIST, GET], prompt="payment for the invoice")
    drafting = _view(memory, [LIST, GET], prompt="a new draft")
    assert paying.prev[_pid(PAY)] == paying.prev[_pid(CREATE)]  # after the call alone: a tie
    assert paying.prompt[_pid(PAY)] > paying.prompt.get(_pid(CREATE), 0.0)
    assert drafting.prompt[_pid(CREATE)] > drafting.prompt.get(_pid(PAY), 0.0)


# -- the serving store -----------------------------------------------------------------------------


def _record(store: FeedbackStore, user: str, keys: list[str], *, prompt: str = "get it paid") -> None:
    events: list[tuple[str, dict, None]] = []
    for i, key in enumerate(keys):
        pid = f"{user}-{len(events)}-{i}-{key}"
        store.record_prediction(PredictionContext(
            prediction_id=pid, user_id=user, spec=SPEC, events=list(events), prompt=prompt, k=3,
            candidates=[(SPEC.by_key[k], {"bm25": 1.0}, False) for k in (GET, PAY, CREATE)],
            shown=[(GET, 0.5)], model_version="m1"))
        concrete = key.replace("{invoice_id}", "in_1")
        store.record_outcome(pid, actual_endpoint=concrete)
        events.append((concrete, {}, None))


AFTER_LIST_GET = [SPEC.resolve("GET /invoices"), SPEC.resolve("GET /invoices/in_1")]


def _three_users(path, feedback: FeedbackStore) -> tuple[PopulationStore, PopulationFeed]:
    """A store at ``path`` that learned LIST, GET, PAY from three users."""
    store = PopulationStore(path)
    feed = PopulationFeed(store, feedback.path)
    for user in ("a", "b", "c"):
        _record(feedback, user, [LIST, GET, PAY])
    feed.sync()
    return store, feed


@pytest.fixture
def feedback(tmp_path) -> Iterator[FeedbackStore]:
    s = FeedbackStore(tmp_path / "feedback.sqlite")
    yield s
    s.close()


def test_the_store_learns_from_outcomes_and_survives_a_restart(tmp_path, feedback) -> None:
    path = tmp_path / "population.sqlite"
    store = PopulationStore(path)
    feed = PopulationFeed(store, feedback.path)
    for user in ("a", "b", "c"):
        _record(feedback, user, [LIST, GET, PAY])
    assert feed.sync() == 9
    history = [SPEC.resolve("GET /invoices"), SPEC.resolve("GET /invoices/in_1")]
    seen = store.view(SPEC, history, "get it paid", now=1e10)
    assert set(seen.prev) == {_pid(PAY)}
    feed.stop()
    # a fresh process on the same file: the same memory, and nothing counted twice
    again = PopulationStore(path)
    assert again.view(SPEC, history, "get it paid", now=1e10) == seen
    assert PopulationFeed(again, feedback.path).sync() == 0
    assert again.memory.status()[api_key(SPEC)]["usable"] > 0
    # in another OS process too
    code = ("from deployments.serving.population_store import PopulationStore; "
            f"s = PopulationStore({str(path)!r}); print(sum(v['usable'] for v in s.apis().values()))")
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True,
                         check=True, env={"PYTHONPATH": str(PROJECT_ROOT)})
    assert int(out.stdout) == again.memory.status()[api_key(SPEC)]["usable"]
    again.close()


def test_replicas_share_one_file_and_each_outcome_counts_once(tmp_path, feedback) -> None:
    path = tmp_path / "population.sqlite"
    one, two = PopulationStore(path), PopulationStore(path)
    feeds = [PopulationFeed(one, feedback.path), PopulationFeed(two, feedback.path)]
    for user in ("a", "b"):
        _record(feedback, user, [LIST, GET, PAY])
    feeds[0].sync()
    _record(feedback, "c", [LIST, GET, PAY])
    feeds[1].sync()  # reads what `one` wrote, then adds c's outcomes
    feeds[0].sync()  # mirrors `two`'s commit
    history = [SPEC.resolve("GET /invoices"), SPEC.resolve("GET /invoices/in_1")]
    assert one.view(SPEC, history, None, now=0) == two.view(SPEC, history, None, now=0)
    assert one.view(SPEC, history, None).prev[_pid(PAY)] == pytest.approx(3.0, rel=1e-6)
    # clearing the API in one replica clears it in the other on its next look
    assert one.clear(api_key(SPEC)) > 0
    assert one.view(SPEC, history, None).empty
    feeds[1].sync()
    _record(feedback, "d", [LIST])  # something new to read
    feeds[1].sync()
    assert two.view(SPEC, history, None).empty
    for f in feeds:
        f.stop()


def test_a_flood_through_the_store_moves_nothing(tmp_path, feedback) -> None:
    store, feed = _three_users(tmp_path / "population.sqlite", feedback)
    history = AFTER_LIST_GET
    before = store.view(SPEC, history, "get it paid", now=1e10)
    for _ in range(300):  # through the real store: fewer than 10,000 replays, the same guard
        _record(feedback, "flooder", [LIST, GET, CREATE])
    feed.sync()
    assert store.view(SPEC, history, "get it paid", now=1e10) == before
    feed.stop()


# -- one code path for training and serving --------------------------------------------------------


def test_features_are_the_same_in_training_and_serving(tmp_path, feedback) -> None:
    """The serving store, fed by recorded outcomes, and the training memory (ranker.population),
    fed by the same runs, give the same view, and the same features whether the view is handed
    over directly (training) or over the wire (the FeatureExtractor deployment)."""
    from core.candidates.types import Candidate
    from core.settings import load_settings
    from deployments.serving.components import build_extractor
    from ranker.population import memory_of

    store = PopulationStore(tmp_path / "population.sqlite", config=PopulationConfig(half_life_s=1e12))
    feed = PopulationFeed(store, feedback.path)
    flows = {"a": [LIST, GET, PAY], "b": [LIST, GET, PAY], "c": [LIST, GET, CREATE], "d": [LIST, GET, PAY],
             "e": [LIST, GET, CREATE], "f": [LIST, GET, CREATE]}
    for user, keys in flows.items():
        _record(feedback, user, keys)
    feed.sync()
    training = PopulationMemory(PopulationConfig(half_life_s=1e12))
    for user, keys in flows.items():
        _run(training, user, keys)
    history = [SPEC.resolve("GET /invoices"), SPEC.resolve("GET /invoices/in_1")]
    served = store.view(SPEC, history, "get it paid", now=0)
    trained = _view(training, [LIST, GET])
    assert set(served.prev) == set(trained.prev) == {_pid(PAY), _pid(CREATE)}
    for a, b in ((served.prev, trained.prev), (served.prompt, trained.prompt)):
        assert a == pytest.approx(b, rel=1e-9)
    extractor = build_extractor(load_settings())
    cands = [Candidate(index=SPEC.by_key[k], sources={"bm25": 1.0}) for k in (GET, PAY, CREATE)]
    direct = extractor.extract(SPEC, history, "get it paid", cands, None, trained)
    wired = extractor.extract(SPEC, history, "get it paid", cands, None,
                              PopulationView.from_wire(json.loads(json.dumps(trained.to_wire()))))
    np.testing.assert_array_equal(direct, wired)
    cols = [FEATURE_NAMES.index(n) for n in POPULATION_FEATURES]
    assert direct[1, cols[0]] == pytest.approx(0.5) and direct[0, cols[0]] == 0
    assert memory_of([]).status() == {}
    feed.stop()


def test_retraining_rebuilds_the_population_features_that_were_served(feedback) -> None:
    """The view a prediction's features used is stored with it (feedback schema 4), so the
    retrain's features of a recorded outcome are the served ones."""
    from core.candidates.types import Candidate
    from core.settings import load_settings
    from deployments.serving.components import build_extractor
    from deployments.serving.feedback import FeedbackReader

    memory = PopulationMemory()
    for user in ("a", "b", "c", "d"):
        _run(memory, user, [LIST, GET, PAY if user != "d" else CREATE])
    served = _view(memory, [LIST, GET])
    feedback.record_prediction(PredictionContext(
        prediction_id="p1", user_id="u", spec=SPEC, events=[("GET /invoices", {}, None),
                                                             ("GET /invoices/in_1", {}, None)],
        prompt="get it paid", k=3, candidates=[(SPEC.by_key[k], {"bm25": 1.0}, False) for k in (PAY, CREATE)],
        shown=[(PAY, 0.5)], model_version="m1", population=served.to_wire()))
    feedback.record_outcome("p1", actual_endpoint="POST /invoices/in_1/pay")
    stored = FeedbackReader(feedback.path).prediction("p1")
    assert stored is not None and PopulationView.from_wire(stored.population) == served
    extractor = build_extractor(load_settings())
    history = SPEC.resolve_history(stored.history)
    cands = [Candidate.from_wire(c) for c in stored.candidates]
    np.testing.assert_array_equal(
        extractor.extract(SPEC, history, stored.prompt, cands, None, served),
        extractor.extract(SPEC, history, stored.prompt, cands, None,
                          PopulationView.from_wire(stored.population)))


def test_the_command_lists_and_clears_an_apis_memory(tmp_path, feedback, capsys) -> None:
    from tools.population import main

    path = tmp_path / "population.sqlite"
    _three_users(path, feedback)[1].stop()
    assert main(["--path", str(path), "list"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed[api_key(SPEC)]["usable"] > 0
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(billing_spec(base="https://api.example.com/v9")))  # another version
    assert main(["--path", str(path), "clear", "--spec", str(spec_file)]) == 0
    assert json.loads(capsys.readouterr().out)["counts_removed"] == listed[api_key(SPEC)]["counts"]
    assert PopulationStore(path).apis() == {}


def test_an_erased_user_leaves_every_count(tmp_path, feedback) -> None:
    import asyncio

    store, feed = _three_users(tmp_path / "population.sqlite", feedback)
    history = AFTER_LIST_GET
    assert store.view(SPEC, history, None, now=1e10).prev
    asyncio.run(feedback.aerase_user("a"))
    feed.sync()
    assert store.view(SPEC, history, None, now=1e10).empty  # two users left: below the threshold
    again = PopulationStore(tmp_path / "population.sqlite")  # and so it stays, on the file
    assert again.view(SPEC, history, None, now=1e10).empty
    assert all(len(c.users) <= 2 for row in again.memory._cells.values() for c in row.values())
    feed.stop()


def test_the_counts_health_shows_follow_every_change(tmp_path, feedback) -> None:
    """status() is kept as cells change (no walk on /health): it must equal a walk, after
    observing, mirroring another replica, erasing, forgetting and clearing."""
    import asyncio

    def walked(memory: PopulationMemory) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for (api, _kind, _ctx), row in memory._cells.items():
            for cell in row.values():
                s = out.setdefault(api, {"counts": 0, "usable": 0})
                s["counts"] += 1
                s["usable"] += len(cell.users) >= memory.config.min_users
        return out

    path = tmp_path / "population.sqlite"
    one, feed = _three_users(path, feedback)
    two = PopulationStore(path)
    _record(feedback, "d", [LIST, CREATE])
    asyncio.run(feedback.aerase_user("b"))
    feed.sync()
    PopulationFeed(two, feedback.path).sync()  # mirrors one's commits
    for store in (one, two):
        assert store.memory.status() == walked(store.memory) != {}
    assert one.memory.status() == two.memory.status()
    one.memory.forget_faded(now=1e12)  # everything faded
    assert one.memory.status() == walked(one.memory)
    assert one.memory.status()[api_key(SPEC)]["usable"] == 0
    two.clear(api_key(SPEC))
    assert two.memory.status() == walked(two.memory) == {}
    feed.stop()


def test_with_api_keys_each_tenant_has_its_own_memory(tmp_path, feedback) -> None:
    store = PopulationStore(tmp_path / "population.sqlite", tenants=True)
    feed = PopulationFeed(store, feedback.path)
    for user in ("acme/a", "acme/b", "acme/c"):  # as the ingress stores a tenant's users
        _record(feedback, user, [LIST, GET, PAY])
    feed.sync()
    assert store.view(SPEC, AFTER_LIST_GET, None, user_id="acme/new", now=1e10).prev
    assert store.view(SPEC, AFTER_LIST_GET, None, user_id="globex/new", now=1e10).empty
    assert store.view(SPEC, AFTER_LIST_GET, None, now=1e10).empty
    feed.stop()


def test_training_memories_hold_every_amount_of_traffic_serving_sees(tmp_path) -> None:
    """The training groups (ranker.population) see counts from a single user's (a threshold of 1,
    an API with little traffic) to many users': the ``pop_n_*`` features take the values serving
    gives them, not only those of runs by at least the default threshold's 3 users."""
    from ranker.data import Step, Workflow
    from ranker.population import population_examples

    path = tmp_path / "billing.json"
    path.write_text(json.dumps(billing_spec()))

    def flow(name: str, *keys: str) -> Workflow:
        steps = tuple(Step(key=k, path_params={"invoice_id": "in_1"} if "{invoice_id}" in k else {},
                           params={}) for k in keys)
        return Workflow(api="billing", workflow_id=name, prompt="get it paid", spec_path=path, steps=steps)

    flows = [flow(f"w{i}", LIST, GET, PAY if i % 2 else CREATE) for i in range(6)]
    totals: set[float] = set()
    for seed in range(8):
        for g in population_examples(flows, seed=seed):
            assert g.source == "population"
            if g.population is not None:
                totals |= {round(c) for c in g.population.prev.values()}
    assert min(totals) < PopulationConfig().min_users and max(totals) >= 6
