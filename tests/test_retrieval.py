"""The embedded candidate generator on small hand-written specs, and on one real spec."""

from __future__ import annotations

import json
from typing import Any

import pytest

from core.candidates.retrieval import (
    CANDIDATE_LIMIT,
    HISTORY_CANDIDATE_LIMIT,
    RetrievalGenerator,
    candidate_limit,
)
from core.priors.transitions import load_transitions
from core.spec.index import SpecIndex
from core.spec.openapi import parse_spec
from core.vocabulary import index_stem, wants_destructive


def _op(op_id: str, summary: str, *, params: tuple[str, ...] = (), returns: tuple[str, ...] = (),
        tags: tuple[str, ...] = ()) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": op_id, "summary": summary, "tags": list(tags),
        "parameters": [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                       for p in params],
        "responses": {"200": {"description": "ok"}},
    }
    if returns:
        op["responses"]["200"]["content"] = {"application/json": {"schema": {
            "type": "array", "items": {"type": "object",
                                       "properties": {r: {"type": "string"} for r in returns}}}}}
    return op


SPEC = parse_spec({
    "openapi": "3.0.0",
    "info": {"title": "People and billing", "version": "1"},
    "paths": {
        "/search/person": {"get": _op("searchPerson", "Search people by name", returns=("id",))},
        "/person/{person_id}": {
            "get": _op("getPerson", "Get a person's details", params=("person_id",)),
            "delete": _op("deletePerson", "Delete a person", params=("person_id",)),
        },
        "/person/{person_id}/credits": {
            "get": _op("getPersonCredits", "Movie credits of a person", params=("person_id",)),
        },
        "/invoices": {
            "get": _op("listInvoices", "List all invoices", returns=("id",), tags=("billing",)),
            "post": _op("createInvoice", "Create an invoice", tags=("billing",)),
        },
        "/invoices/{invoice_id}": {
            "get": _op("getInvoice", "Retrieve an invoice", params=("invoice_id",)),
            "patch": _op("updateInvoice", "Update an invoice", params=("invoice_id",)),
        },
        "/invoices/{invoice_id}/void": {
            "post": _op("voidInvoice", "Void an invoice", params=("invoice_id",)),
        },
        "/invoices/{invoice_id}/pay": {
            "post": _op("payInvoice", "Pay an invoice", params=("invoice_id",)),
        },
        "/movies/popular": {"get": _op("popularMovies", "Popular movies right now")},
        "/genres": {"get": _op("listGenres", "List movie genres")},
    },
})


def _keys(spec: SpecIndex, candidates: list[Any]) -> list[str]:
    return [spec.operations[c.index].key for c in candidates]


@pytest.fixture(scope="module")
def generator() -> RetrievalGenerator:
    return RetrievalGenerator()


def test_bm25_ranks_the_obviously_matching_operation_first(generator: RetrievalGenerator) -> None:
    index = generator.index_for(SPEC)
    from core.vocabulary import tokenize

    scores = index.bm25(tokenize("which movies are popular right now?"))
    assert SPEC.operations[int(scores.argmax())].key == "GET /movies/popular"
    top = generator.generate(SPEC, [], "show me the popular movies")[0]
    assert SPEC.operations[top.index].key == "GET /movies/popular"
    assert "bm25" in top.sources and "entry" in top.sources


def test_dataflow_proposes_the_operation_consuming_the_returned_id(
    generator: RetrievalGenerator,
) -> None:
    history = [SPEC.resolve("GET /search/person", {"query": "Tom Hanks"})]
    candidates = generator.generate(SPEC, history, None)
    by_key = dict(zip(_keys(SPEC, candidates), candidates, strict=True))
    assert by_key["GET /person/{person_id}"].sources["dataflow"] > 0
    assert by_key["GET /person/{person_id}/credits"].sources["dataflow"] > 0
    assert "dataflow" not in by_key.get("GET /invoices/{invoice_id}", by_key["GET /genres"]).sources
    # An id the user has in a path counts too: /invoices/in_1 -> everything under that invoice.
    history = [SPEC.resolve("GET /invoices/in_1")]
    keys = _keys(SPEC, generator.generate(SPEC, history, "pay it", limit=3))
    assert keys[0] == "POST /invoices/{invoice_id}/pay"


def test_destructive_operations_only_when_asked_and_flagged(generator: RetrievalGenerator) -> None:
    history = [SPEC.resolve("GET /person/p_1")]
    plain = generator.generate(SPEC, history, "tell me about this person", limit=50)
    assert "DELETE /person/{person_id}" not in _keys(SPEC, plain)
    assert "POST /invoices/{invoice_id}/void" not in _keys(SPEC, plain)
    assert not any(c.destructive for c in plain)
    asked = generator.generate(SPEC, history, "please delete this person", limit=5)
    flagged = {SPEC.operations[c.index].key: c.destructive for c in asked}
    assert flagged.get("DELETE /person/{person_id}") is True
    assert wants_destructive("Cancel my subscription") and wants_destructive("removing old rows")
    assert not wants_destructive("list my invoices") and not wants_destructive(None)


def test_cold_start_offers_entry_points(generator: RetrievalGenerator) -> None:
    candidates = generator.generate(SPEC, [], None, limit=5)
    assert candidates and all(not SPEC.operations[c.index].path_params for c in candidates)
    assert all("entry" in c.sources for c in candidates)
    keys = _keys(SPEC, generator.generate(SPEC, [], "create an invoice", limit=3))
    assert keys[0] == "POST /invoices"


def test_candidates_are_unique_merge_sources_and_respect_limit(
    generator: RetrievalGenerator,
) -> None:
    history = [SPEC.resolve("GET /invoices"), SPEC.resolve("GET /invoices/in_7")]
    candidates = generator.generate(SPEC, history, "update the invoice", limit=4)
    indices = [c.index for c in candidates]
    assert len(indices) == len(set(indices)) <= 4
    top = candidates[0]
    assert SPEC.operations[top.index].key == "PATCH /invoices/{invoice_id}"
    assert {"bm25", "dataflow", "neighbour"} <= set(top.sources)
    assert all(0 < v <= 1 for c in candidates for v in c.sources.values())
    with pytest.raises(ValueError, match="limit"):
        generator.generate(SPEC, history, None, limit=0)


def test_the_pool_is_larger_after_a_history(generator: RetrievalGenerator) -> None:
    spec = parse_spec({
        "openapi": "3.0.0", "info": {"title": "Widgets", "version": "1"},
        "paths": {f"/widgets/w{n}": {"get": _op(f"getWidget{n}", f"Get widget report {n}")}
                  for n in range(80)},
    })
    history = [spec.resolve("GET /widgets/w3")]

    assert (candidate_limit([]), candidate_limit(history)) == (CANDIDATE_LIMIT, HISTORY_CANDIDATE_LIMIT)
    assert len(generator.generate(spec, [], "get the widget report")) == CANDIDATE_LIMIT
    assert len(generator.generate(spec, history, "get the widget report")) == HISTORY_CANDIDATE_LIMIT
    assert len(generator.generate(spec, history, "get the widget report", limit=7)) == 7


def test_output_is_deterministic_and_the_index_cache_is_bounded() -> None:
    transitions = load_transitions()
    history = [SPEC.resolve("GET /invoices")]
    a = RetrievalGenerator(transitions=transitions).generate(SPEC, history, "pay the invoice")
    b = RetrievalGenerator(transitions=transitions).generate(SPEC, history, "pay the invoice")
    assert [c.to_wire() for c in a] == [c.to_wire() for c in b]
    assert any("transition" in c.sources for c in a)
    small = RetrievalGenerator(cache_size=2)
    specs = [SpecIndex(operations=SPEC.operations[:k], spec_hash=f"h{k}") for k in (3, 4, 5)]
    for spec in specs:
        small.index_for(spec)
    assert len(small._cache) == 2 and "h3" not in small._cache
    assert small.index_for(specs[2]) is small.index_for(specs[2])
    with pytest.raises(ValueError, match="unknown source weights"):
        RetrievalGenerator(weights={"magic": 1.0})


def test_stemming_meets_word_forms() -> None:
    assert index_stem("creating") == index_stem("create") == index_stem("creation")
    assert index_stem("assignment") == index_stem("assign")
    assert index_stem("billing") == index_stem("bill")


def test_a_real_workflow_target_is_among_the_candidates() -> None:
    from core.settings import load_settings
    from ranker.data import examples, parse_workflow_document

    root = load_settings().jentic_dir
    path = root / "workflows/1password.local~connect/workflows.arazzo.json"
    if not path.exists():
        pytest.skip(f"no jentic data at {root}")
    workflows = parse_workflow_document(json.loads(path.read_text()),
                                        api="1password.local~connect", root=root)
    generator = RetrievalGenerator(transitions=load_transitions())
    found = list(examples(workflows))
    hits = 0
    for ex in found:
        keys = _keys(ex.spec, generator.generate(ex.spec, ex.history, ex.prompt, limit=10))
        hits += ex.target in keys
    assert hits / len(found) >= 0.8


def test_the_semantic_source_finds_what_the_prompt_says_in_other_words() -> None:
    generator = RetrievalGenerator(transitions=load_transitions())
    history = [SPEC.resolve("GET /invoices/in_1")]
    candidates = generator.generate(SPEC, history, "get this one paid", limit=5)
    by_key = dict(zip(_keys(SPEC, candidates), candidates, strict=True))
    pay = by_key["POST /invoices/{invoice_id}/pay"]
    assert pay.sources["semantic"] == max(c.sources.get("semantic", 0) for c in candidates)
    assert "bm25" not in pay.sources or pay.sources["bm25"] < pay.sources["semantic"]
    # switched off: no semantic source at all
    off = RetrievalGenerator(transitions=load_transitions(), word_vectors=None)
    assert not any("semantic" in c.sources for c in off.generate(SPEC, history, "get this one paid"))
    assert off.index_for(SPEC).op_vectors is None


def test_destructive_intent_phrases() -> None:
    for prompt in ("log the user out", "expire it now", "unmount the snapshot", "get rid of it",
                   "tear down the cluster", "drop the table"):
        assert wants_destructive(prompt), prompt
    for prompt in ("upload to dropbox", "list droplets", "sort by expiration date", "sign up",
                   "read the catalog", "book rides"):
        assert not wants_destructive(prompt), prompt


def test_version_segments_and_rfc6570_path_parameters() -> None:
    from core.spec.operations import Operation
    from core.vocabulary import path_param_names

    op = Operation("GET", "/v1beta1/{+name}/instances/{instanceId}")
    assert op.path_params == ("name", "instanceId")
    assert op.literal_segments == ("instances",) and op.resource == "instance"
    assert path_param_names("/files/{path*}/{+rest}/{#frag}/{x:3}") == ["path", "rest", "frag", "x"]
    spec = parse_spec({
        "openapi": "3.0.0", "info": {"title": "g", "version": "1"},
        "paths": {"/v2/{+name}/adcode": {"get": _op("getAdcode", "Get the ad code",
                                                      params=("name",))}},
    })
    call = spec.resolve("GET /v2/accounts%2Fpub-1/adcode")
    assert call.operation is not None and call.path_params == {"name": "accounts/pub-1"}


def _reports_op(k: int) -> dict[str, Any]:
    op = _op(f"salesReport{k}", f"Sales report number {k}")
    op["parameters"] = [{"name": "access_token", "in": "query", "required": True,
                         "schema": {"type": "string"}}]
    return op


# A spec whose prompt-matching operations outnumber the candidate limit, with the calls a session
# makes first that no prompt names: who the user is, and getting the token everything requires.
SETUP_SPEC = parse_spec({
    "openapi": "3.0.0",
    "info": {"title": "Reports", "version": "1"},
    "paths": {
        "/me": {"get": _op("getMe", "Who is signed in")},
        "/oauth/token": {"post": _op("createToken", "Create a token", returns=("access_token",))},
        "/settings": {"get": _op("getSettings", "Account settings")},
        **{f"/reports/sales_{k}": {"get": _reports_op(k)} for k in range(12)},
    },
})


def test_setup_calls_the_prompt_never_names_keep_a_place() -> None:
    generator = RetrievalGenerator(transitions=load_transitions())
    index = generator.index_for(SETUP_SPEC)
    setup = {SETUP_SPEC.operations[i].key: float(v) for i, v in enumerate(index.setup)}
    # named for who the user is; the token by the id twelve operations require; nothing else
    assert setup["GET /me"] > 0 and setup["POST /oauth/token"] > 0
    assert setup["GET /settings"] == 0 and setup["GET /reports/sales_0"] == 0

    candidates = generator.generate(SETUP_SPEC, [], "show the sales report", limit=5)
    keys = _keys(SETUP_SPEC, candidates)
    assert len(keys) == len(set(keys)) == 5
    assert all(k.startswith("GET /reports/") for k in keys[:3])  # the prompt's order on top
    by_key = dict(zip(keys, candidates, strict=True))
    assert "setup" in by_key["GET /me"].sources and "setup" in by_key["POST /oauth/token"].sources

    # made once, not proposed again; and not at all once the session is under way
    me = [SETUP_SPEC.resolve("GET /me")]
    scores = generator.scores(SETUP_SPEC, me, "show the sales report")["setup"]
    assert scores[SETUP_SPEC.by_key["GET /me"]] == 0 and scores[SETUP_SPEC.by_key["POST /oauth/token"]] > 0
    long = [SETUP_SPEC.resolve("GET /settings")] * 4
    assert not generator.scores(SETUP_SPEC, long, "show the sales report")["setup"].any()


STATUS_SPEC = parse_spec({
    "openapi": "3.0.0",
    "info": {"title": "Cloud", "version": "1"},
    "paths": {
        "/servers": {"post": _op("createServer", "Create a server", returns=("id",)),
                     "get": _op("listServers", "List servers", returns=("id",))},
        "/servers/{id}": {"get": _op("getServer", "Get a server", params=("id",))},
        **{f"/servers/{{id}}/actions/{verb}": {
            "post": _op(f"{verb}Server", f"{verb.capitalize()} a server", params=("id",))}
           for verb in ("poweron", "poweroff", "reboot", "rebuild", "resize")},
        "/actions": {"get": _op("listActions", "List all actions")},
        "/actions/{id}": {"get": _op("getAction", "Get an action", params=("id",))},
        "/servers/actions/{id}": {"get": _op("getServerAction", "Get a server action",
                                             params=("id",))},
        "/certificates/actions/{id}": {"get": _op("getCertAction", "Get a certificate action",
                                                  params=("id",))},
        "/volumes/{id}/actions/{action_id}": {"get": _op(
            "getVolumeAction", "Get a volume action", params=("id", "action_id"))},
    },
})


def test_after_a_write_the_status_check_of_what_it_started_keeps_a_place() -> None:
    generator = RetrievalGenerator(transitions=load_transitions())
    history = [STATUS_SPEC.resolve("POST /servers")]
    prompt = "create a server, power it on, reboot, rebuild and resize the server"
    status = generator.scores(STATUS_SPEC, history, prompt)["status"]
    of = {STATUS_SPEC.operations[i].key: float(v) for i, v in enumerate(status)}
    # the API's global check and the written resource's, by the id the write returned, first;
    # then the list; the checks of other resources last
    assert of["GET /actions/{id}"] == of["GET /servers/actions/{id}"] == 1.0
    assert of["GET /actions/{id}"] > of["GET /actions"] > of["GET /certificates/actions/{id}"] > 0
    assert of["GET /servers/{id}"] == 0
    candidates = generator.generate(STATUS_SPEC, history, prompt, limit=4)
    keys = _keys(STATUS_SPEC, candidates)
    assert "GET /actions/{id}" in keys and len(keys) == len(set(keys)) == 4
    assert "status" in candidates[keys.index("GET /actions/{id}")].sources
    # a read started nothing
    read = [STATUS_SPEC.resolve("GET /servers/s_1")]
    assert not generator.scores(STATUS_SPEC, read, prompt)["status"].any()
