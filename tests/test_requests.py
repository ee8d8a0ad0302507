"""Requests as users type them (issue 17): what the request carries and names, the shipped model
on the kinds of asks that went wrong, and the guard that no family of requests ranks below BM25."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.candidates.retrieval import RetrievalGenerator
from core.features import FeatureExtractor
from core.params import fill_params
from core.priors.transitions import load_transitions
from core.request import request_fills, request_values
from core.scorer import RankerModel
from core.spec.index import SpecIndex
from core.spec.openapi import parse_spec
from core.vocabulary import wants_destructive


def _op(summary: str, params: list[dict[str, Any]] | None = None, op_id: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"summary": summary, "responses": {"200": {"description": "ok"}}}
    if op_id:
        out["operationId"] = op_id
    if params:
        out["parameters"] = params
    return out


def _path(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _query(name: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": True, "schema": {"type": "string"}}


def _spec(paths: dict[str, Any]) -> SpecIndex:
    doc = {"openapi": "3.0.3", "info": {"title": "t", "version": "1"}, "paths": paths}
    return parse_spec(json.dumps(doc).encode())


# -- reading the request ------------------------------------------------------------------------


def test_values_fill_the_parameters_they_are_named_for() -> None:
    spec = _spec({"/channels/{channel_id}/messages/{message_id}": {
        "delete": _op("Delete a message", [_path("channel_id"), _path("message_id")])}})
    op = spec.operations[0]
    prompt = "delete the message 1234567 in channel 998877"
    assert request_fills(op, request_values(prompt)) == {"message_id": "1234567",
                                                         "channel_id": "998877"}
    params, missing = fill_params(op, [], prompt=prompt)
    assert params == {"message_id": "1234567", "channel_id": "998877"} and missing == []


def test_text_with_a_space_is_no_id() -> None:
    # "the message 'hello team'" names the message's text: an id has no space, so the PATCH of
    # a message is not made callable with message_id "hello team"
    spec = _spec({"/channels/{channel_id}/messages/{message_id}": {
        "patch": _op("Edit a message", [_path("channel_id"), _path("message_id")])},
        "/projects": {"get": _op("Find projects", [_query("project_name")])},
        "/projects/{project_key}": {"get": _op("Get a project", [_path("project_key")])}})
    patch, find, get = spec.operations
    prompt = "send the message 'hello team' to channel 998877"
    assert request_fills(patch, request_values(prompt)) == {"channel_id": "998877"}
    params, missing = fill_params(patch, [], prompt=prompt)
    assert params == {"channel_id": "998877"} and missing == ["message_id"]
    # a name may have one; a key may not
    assert request_fills(find, request_values("projects with project name 'Apollo 11'")) == {
        "project_name": "Apollo 11"}
    assert request_fills(get, request_values("the project key 'Apollo 11'")) == {}
    assert request_fills(get, request_values("the project key 'APOLLO-11'")) == {"project_key": "APOLLO-11"}
    # named by its entity alone, a title is no id, whatever the id is called; by its own name,
    # a path parameter takes text
    games = _spec({"/games/{game_pk}/stores": {"get": _op("Game stores", [_path("game_pk")])},
                   "/banner/{text}": {"get": _op("Make a banner", [_path("text")])},
                   "/games": {"get": _op("List games", [{**_query("search"), "required": False}])}})
    stores, banner, listing = games.operations
    assert request_fills(stores, request_values("find the game 'The Witcher 3'")) == {}
    # ... it is what the list of games looks the game up by; an id is not
    assert request_fills(listing, request_values("find the game 'The Witcher 3'")) == {
        "search": "The Witcher 3"}
    assert request_fills(listing, request_values("find the game 3498")) == {}
    # a lookup on no collection ("GET /?q=") looks up nothing, and reads no empty word
    root = _spec({"/": {"get": _op("Search", [{**_query("q"), "required": False}])}}).operations[0]
    assert request_fills(root, request_values("find the film 'Blade Runner'")) == {}
    assert request_fills(stores, request_values("stores of the game 3498")) == {"game_pk": "3498"}
    assert request_fills(banner, request_values("put the text 'Happy birthday' on a banner")) == {
        "text": "Happy birthday"}


def _flights() -> SpecIndex:
    return _spec({
        "/airports": {"get": _op("List airports", op_id="listAirports")},
        "/airports/{code}": {"get": _op("Get an airport", [_path("code")])},
        "/flights/{from}/{to}/{date}": {"get": _op(
            "Find flights between two airports on a date",
            [_path("from"), _path("to"), _path("date")], op_id="findFlights")},
        "/bookings": {"post": _op("Book a flight", op_id="createBooking")},
        "/invoices": {"get": _op("List invoices", [_query("from"), _query("to")])},
    })


def test_places_after_from_and_to_and_a_day_fill_what_they_name() -> None:
    # "from Lisbon to Oslo on 2027-03-02": the names after from / to fill `from` and `to`, the
    # day fills `date`; "on" a day names no end of a range
    spec = _flights()
    flights, invoices = spec.operations[2], spec.operations[4]
    for prompt, places in (("Flights from Lisbon to Oslo on 2027-03-02", ("Lisbon", "Oslo")),
                           ("flights from LIS to OSL on 2027-03-02", ("LIS", "OSL")),
                           ("flights from New York to Oslo on 2027-03-02", ("New York", "Oslo"))):
        assert fill_params(flights, [], prompt=prompt) == (
            {"from": places[0], "to": places[1], "date": "2027-03-02"}, []), prompt
    assert request_fills(invoices, request_values("invoices on 2027-03-02")) == {}
    assert request_fills(invoices, request_values("invoices from 2027-01-01 to 2027-02-01")) == {
        "from": "2027-01-01", "to": "2027-02-01"}
    # a place is no record's id
    transfers = _spec({"/transfers": {"post": _op("Make a transfer", [_query("to_id")])}})
    assert request_fills(transfers.operations[0], request_values("send 5 EUR to Lisbon")) == {}
    # elsewhere a capital word is a sentence's first word or a product, no value
    assert [v.value for v in request_values("Send the Stripe invoice to the customer")] == []


def _written(*fields: str) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": {
        "type": "object", "properties": {f: {"type": "string"} for f in fields}}}}}


def test_quoted_words_are_the_text_a_write_sends() -> None:
    spec = _spec({
        "/channels/{channel_id}/messages": {"post": {
            **_op("Create a message", [_path("channel_id")]), "requestBody": _written("content")}},
        "/docs": {"post": {**_op("Create a doc"), "requestBody": _written("title", "body")}},
        "/logs": {"get": _op("Read the logs", [{**_query("message"), "required": False}])},
    })
    send, doc, logs = spec.operations
    assert request_fills(send, request_values("send 'hello team' to channel 998877")) == {
        "channel_id": "998877", "content": "hello team"}
    # named for another field, the quoted words go there
    assert request_fills(doc, request_values("create a doc with title 'Q3 report'")) == {
        "title": "Q3 report"}
    assert request_fills(doc, request_values("add 'call me' to a new doc")) == {"body": "call me"}
    assert request_fills(send, request_values("post the message 'hi all' in channel 5")) == {
        "channel_id": "5", "content": "hi all"}
    # quoted after no verb that writes, nor the thing written, they name something else; one
    # quoted word names which text, not what it says
    assert request_fills(doc, request_values("rewrite it using the 'pretty spinner'")) == {}
    assert request_fills(doc, request_values("update the 'About' text of the doc")) == {}
    # a read sends nothing
    assert request_fills(logs, request_values("find 'disk full' in the logs")) == {}


def test_a_thing_named_so_is_named_not_identified() -> None:
    # "a droplet named web-1": web-1 is the droplet's name, which fills its name, never its id
    body = {"content": {"application/json": {"schema": {
        "type": "object", "required": ["name"],
        "properties": {"name": {"type": "string"}, "region": {"type": "string"}}}}}}
    spec = _spec({"/droplets": {"post": {**_op("Create a droplet"), "requestBody": body}},
                  "/droplets/{droplet_id}": {"get": _op("Get a droplet", [_path("droplet_id")])}})
    create, get = spec.operations
    prompt = "create a droplet named web-1 in region nyc3"
    assert request_fills(create, request_values(prompt)) == {"name": "web-1", "region": "nyc3"}
    assert request_fills(get, request_values(prompt)) == {}
    assert request_fills(get, request_values("show the droplet web-1")) == {"droplet_id": "web-1"}


_WORDS = ("find", "the", "game", "games", "named", "called", "project", "id", "key", "search",
          "text", "name", "who", "how many", "is", "to", "in", "'The Witcher 3'", "'x'", "\"a b\"",
          "42", "in_77", "a@b.cc", "2027-01-01", "?", ",", "(", "“c d”", "'")
_PATHS = _spec({
    "/": {"get": _op("Search", [{**_query("q"), "required": False}])},
    "/{id}": {"get": _op("Get one", [_path("id")])},
    "/games": {"get": _op("List games", [{**_query("search"), "required": False},
                                         {**_query("name"), "required": False}])},
    "/games/{game_pk}/stores": {"get": _op("Game stores", [_path("game_pk")])},
    "/projects/{project_key}/texts/{text}": {"put": _op("Set a text", [_path("project_key"),
                                                                         _path("text")])},
})


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_WORDS), max_size=12))
def test_what_a_request_fills_is_written_in_it(words: list[str]) -> None:
    # whatever the request, reading it raises nothing and fills only values written in it, never
    # text with a space into a reference
    prompt = " ".join(words)
    values = request_values(prompt)
    for op in _PATHS.operations:
        fills = request_fills(op, values)
        assert all(v in prompt for v in fills.values()), (op.key, fills)
        for name in ("id", "project_key", "game_pk"):
            assert " " not in fills.get(name, ""), (op.key, fills)


def test_a_value_named_by_nothing_fills_nothing() -> None:
    spec = _spec({"/roles/{id}": {"delete": _op("Delete a role", [_path("id")])},
                  "/users/{user_id}": {"get": _op("Get a user", [_path("user_id")])}})
    role, user = spec.operations
    assert request_fills(role, request_values("delete the role role456")) == {"id": "role456"}
    # the role's id is no user's; a bare number named by nothing stays missing
    assert request_fills(user, request_values("delete the role role456")) == {}
    params, missing = fill_params(user, [], prompt="show me 42")
    assert params == {} and missing == ["user_id"]
    # one word of a request is no list: the ``messages`` array of a bulk delete stays empty
    bulk = _spec({"/messages/bulk-delete": {"post": {
        "summary": "Delete messages", "responses": {"200": {"description": "ok"}},
        "requestBody": {"content": {"application/json": {"schema": {
            "type": "object", "required": ["messages"],
            "properties": {"messages": {"type": "array", "items": {"type": "string"}}}}}}}}}})
    assert request_fills(bulk.operations[0], request_values("delete the message 1234567")) == {}
    # a quoted word across a clause or after a small word names nothing
    assert request_fills(role, request_values("set the role to 'admin'")) == {}


def test_the_destructive_vocabulary_covers_what_users_regret() -> None:
    for prompt in ("mark this ticket as spam", "redact the comment", "suspend the account",
                   "ban that user", "revoke the key", "archive the project"):
        assert wants_destructive(prompt), prompt
    for prompt in ("reply and mark the ticket as solved", "open a bank account",
                   "update the banner", "show the tickets"):
        assert not wants_destructive(prompt), prompt
    spec = _spec({
        "/tickets/{ticket_id}/mark_as_spam": {"put": _op("Mark a ticket as spam",
                                                         [_path("ticket_id")])},
        "/comments/{id}/redact": {"post": _op("Redact a comment", [_path("id")])},
        "/users/{id}/suspend": {"post": _op("Suspend a user", [_path("id")])},
        "/projects/{id}/archive": {"post": _op("Archive a project", [_path("id")])},
        "/tickets/{ticket_id}": {"put": _op("Update a ticket", [_path("ticket_id")])},
    })
    assert [op.destructive for op in spec.operations] == [True, True, True, True, False]


# -- the asks built from workflows (ranker.requests) ---------------------------------------------


def _workflow_asks(tmp_path) -> list[Any]:
    """Four workflows on one spec; in each the second step takes an id from the first's output."""
    from ranker.data import parse_workflow_document

    ok = {"200": {"description": "ok"}}
    paths = {
        "/dns_zones": {"get": {"operationId": "listZones", "summary": "List DNS zones",
                               "responses": ok}},
        "/dns_zones/{zone_id}": {"get": _op("Get a DNS zone", [_path("zone_id")], "getZone")},
        "/dns_zones/{zone_id}/dns_records": {"get": _op("List the DNS records of a zone",
                                                        [_path("zone_id")], "listRecords")},
        "/servers/{id}": {"get": _op("Get a server", [_path("id")], "getServer")},
        "/servers/{id}/actions/shutdown": {"post": {
            **_op("Shut a server down", [_path("id")], "shutdown"),
            "requestBody": {"content": {"application/json": {"schema": {
                "type": "object", "properties": {"server_id": {"type": "string"}}}}}}}},
        "/sentences/{id}": {"get": _op("Get a sentence", [_path("id")], "getSentence")},
        "/books/{id}/sentences": {"get": _op("List a book's sentences", [_path("id")],
                                             "bookSentences")},
    }
    spec_file = tmp_path / "openapi.json"
    spec_file.write_text(json.dumps({"openapi": "3.0.3", "info": {"title": "t", "version": "1"},
                                     "paths": paths}))

    def step(sid: str, op: str, params: dict[str, str], outputs: dict[str, str] | None = None,
             body: dict[str, str] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"stepId": sid, "operationId": op, "description": f"Do {sid}.",
                               "parameters": [{"name": n, "in": "path", "value": v}
                                              for n, v in params.items()]}
        if outputs:
            out["outputs"] = outputs
        if body:
            out["requestBody"] = {"contentType": "application/json", "payload": body}
        return out

    def workflow(wid: str, *steps: dict[str, Any]) -> dict[str, Any]:
        return {"workflowId": wid, "summary": wid, "steps": list(steps)}

    doc = {"sourceDescriptions": [{"name": "s", "url": "./openapi.json", "type": "openapi"}],
           "workflows": [
        # the zone read by the id the user gives, its output that very id: nothing is found
        workflow("echo", step("zone", "getZone", {"zone_id": "$inputs.zone_id"},
                              {"zone_id": "$response.body#/id"}),
                 step("records", "listRecords", {"zone_id": "$steps.zone.outputs.zone_id"})),
        # the server read by its id, its output the server's id: the user had it
        workflow("same", step("server", "getServer", {"id": "$inputs.id"},
                              {"server_id": "$response.body#/id"}),
                 step("stop", "shutdown", {"id": "$inputs.id"},
                      body={"server_id": "$steps.server.outputs.server_id"})),
        # the zones listed: the zone's id is found
        workflow("list", step("zones", "listZones", {}, {"zone_id": "$response.body#/0/id"}),
                 step("records", "listRecords", {"zone_id": "$steps.zones.outputs.zone_id"})),
        # a sentence read by its id gives its book's id: another thing's id is found
        workflow("other", step("sentence", "getSentence", {"id": "$inputs.id"},
                                {"book_id": "$response.body#/book/id"}),
                 step("book", "bookSentences", {"id": "$steps.sentence.outputs.book_id"})),
    ]}
    return parse_workflow_document(doc, api="t", root=tmp_path)


def test_an_ask_as_typed_is_its_first_plain_words() -> None:
    from ranker.requests import as_typed

    assert as_typed("Retrieves full details of a specific client, including their name.") == (
        "retrieves full details of a specific client")
    assert as_typed("Check the status (queued or done) of the job. Repeat until done.") == (
        "check the status of the job")
    assert as_typed("Lists every invoice of the account that is still open for payment today") == (
        "lists every invoice of the account that is")
    assert as_typed("Send the v1.2 report!") == "send the v1.2 report"


def test_issue_targets_say_met_only_at_the_bar() -> None:
    from benchmarks.requests import FILED_HIT1, targets

    def fam(hit1: float, **more: float) -> dict[str, Any]:
        return {"service": {"hit@1": hit1, **more}, "bm25 (whole spec)": {"hit@1": 0.5}}

    results = {"direct, one call": fam(0.65), "find id": fam(1.5 * FILED_HIT1["find id"]),
               "find id, named": fam(0.2),
               "workflow": fam(0.6, **{"hit@3": 0.84, "mrr": 0.71}), "params": {"precision": 0.99}}
    rows = targets(results)
    # direct 0.65 ≥ 0.5 + 0.15; find id at 1.5× exactly; named 0.2 < 1.5 × 0.238; workflow hit@1
    # and MRR at or over the bar, hit@3 under it; precision 0.99 ≥ 0.98
    assert [row["met"] for row in rows] == [True, True, False, True, False, True, True], rows


def test_an_id_the_finder_was_given_is_no_find(tmp_path) -> None:
    """A find-id ask's read gives an id nobody had: not one the read was itself called with
    (its output echoing it, or a read of one thing by its id giving that thing's id)."""
    from ranker.data import load_spec
    from ranker.requests import needs_found_id, request_examples

    workflows = _workflow_asks(tmp_path)
    asks = list(request_examples(workflows, "find_id"))
    assert [(e.workflow_id, e.target) for e in asks] == [
        ("list", "GET /dns_zones"), ("other", "GET /sentences/{id}")]
    assert {e.request for e in asks} == {"find_id"}
    spec = load_spec(workflows[0].spec_path)
    assert [needs_found_id(spec, wf, 1) for wf in workflows] == [False, False, True, True]


def test_a_named_find_id_ask_carries_what_the_read_looks_the_thing_up_by(tmp_path) -> None:
    """A read that takes a name from the workflow's inputs (a string, no enum, not an id) makes a
    find-id ask that also carries that name, after the parameter's words; paging, enum and id
    inputs name nothing, and a read without such an input makes no named ask. Training takes
    them only when asked to."""
    from ranker.data import parse_workflow_document
    from ranker.requests import request_examples

    def query(name: str, **schema: Any) -> dict[str, Any]:
        return {"name": name, "in": "query", "schema": {"type": "string", **schema}}

    ok = {"200": {"description": "ok"}}
    paths = {
        "/movies": {"get": {"operationId": "searchMovies", "summary": "Search movies",
                            "parameters": [query("title"), query("sort", enum=["asc", "desc"]),
                                           {"name": "limit", "in": "query",
                                            "schema": {"type": "integer"}}],
                            "responses": ok}},
        "/people": {"get": {"operationId": "listPeople", "summary": "List people",
                            "responses": ok}},
        "/movies/{movie_id}/credits": {"get": _op("Get a movie's credits", [_path("movie_id")],
                                                  "credits")},
        "/people/{person_id}": {"get": _op("Get a person", [_path("person_id")], "person")},
    }
    (tmp_path / "openapi.json").write_text(json.dumps(
        {"openapi": "3.0.3", "info": {"title": "t", "version": "1"}, "paths": paths}))

    def read(sid: str, op: str, params: dict[str, str], out: str) -> dict[str, Any]:
        return {"stepId": sid, "operationId": op, "description": f"Find {sid}.",
                "parameters": [{"name": n, "in": "query", "value": v} for n, v in params.items()],
                "outputs": {out: "$response.body#/0/id"}}

    def then(sid: str, op: str, name: str, ref: str) -> dict[str, Any]:
        return {"stepId": sid, "operationId": op, "description": "Who directed it?",
                "parameters": [{"name": name, "in": "path", "value": ref}]}

    doc = {"sourceDescriptions": [{"name": "s", "url": "./openapi.json", "type": "openapi"}],
           "workflows": [
        {"workflowId": "named", "summary": "s", "steps": [
            read("movie", "searchMovies", {"title": "$inputs.title", "sort": "$inputs.sort",
                                           "limit": "$inputs.limit"}, "movie_id"),
            then("credits", "credits", "movie_id", "$steps.movie.outputs.movie_id")]},
        {"workflowId": "unnamed", "summary": "s", "steps": [
            read("people", "listPeople", {}, "person_id"),
            then("person", "person", "person_id", "$steps.people.outputs.person_id")]},
    ]}
    workflows = parse_workflow_document(doc, api="t", root=tmp_path)
    plain = list(request_examples(workflows, "find_id"))
    named = list(request_examples(workflows, "find_id_named"))
    assert [e.target for e in plain] == ["GET /movies", "GET /people"]
    [ask] = named
    assert (ask.target, ask.request, ask.history) == ("GET /movies", "find_id_named", ())
    title = workflows[0].steps[0].params["title"]
    assert ask.prompt == f"Who directed it? (title {title})"
    def trained(**named: bool) -> list[str | None]:
        return [e.request for e in request_examples(workflows, "training", **named)
                if (e.request or "").startswith("find")]

    assert trained() == ["find_id", "find_id"]  # ranker.train --named-find-id adds them
    assert trained(named=True) == ["find_id", "find_id_named", "find_id"]


# -- the shipped model on the kinds of asks that went wrong ---------------------------------------


@pytest.fixture(scope="module")
def served():
    transitions = load_transitions()
    generator = RetrievalGenerator(transitions=transitions)
    extractor = FeatureExtractor(transitions=transitions)
    model = RankerModel.load()

    def rank(spec: SpecIndex, prompt: str, history=()) -> list[str]:
        cands = generator.generate(spec, list(history), prompt)
        X = extractor.extract(spec, list(history), prompt, cands)
        [(probs, _)] = model.score_groups([X])
        return [spec.operations[cands[j].index].key for j in np.argsort(-probs, kind="stable")]

    return rank


def test_count_asked_puts_the_count_first(served) -> None:
    spec = _spec({
        "/products": {"get": _op("List products", op_id="listProducts"),
                      "post": _op("Create a product", op_id="createProduct")},
        "/products/count": {"get": _op("Count products", op_id="countProducts")},
        "/products/{product_id}": {"get": _op("Get a product", [_path("product_id")])},
        "/categories": {"get": _op("List categories")},
    })
    assert served(spec, "How many products are in the catalogue?")[0] == "GET /products/count"


def test_a_value_given_outranks_the_list(served) -> None:
    spec = _spec({
        "/banners": {"get": _op("List banners", op_id="listBanners")},
        "/banner/{text}": {"get": _op("Render a banner with a text", [_path("text")],
                                      op_id="getBanner")},
        "/fonts": {"get": _op("List fonts")},
    })
    ranked = served(spec, "Put the text 'Happy birthday' on a banner")
    assert ranked.index("GET /banner/{text}") < ranked.index("GET /banners"), ranked


def test_a_named_thing_without_id_is_searched_first(served) -> None:
    spec = _spec({
        "/search/movie": {"get": _op("Search movies by title", [_query("query")],
                                     op_id="searchMovie")},
        "/movie/{movie_id}": {"get": _op("Get the details of a movie", [_path("movie_id")])},
        "/movie/{movie_id}/credits": {"get": _op("Get the cast and crew of a movie",
                                                 [_path("movie_id")])},
        "/movie/popular": {"get": _op("List popular movies")},
        "/person/{person_id}": {"get": _op("Get a person", [_path("person_id")])},
    })
    ranked = served(spec, "Who directed the movie Heat? Show its cast and crew")
    assert ranked.index("GET /search/movie") < ranked.index("GET /movie/{movie_id}/credits"), ranked


def test_a_call_the_request_fills_whole_comes_first(served) -> None:
    # the issue's "Flights from Lisbon to Oslo on 2027-03-02": all three values are given
    ranked = served(_flights(), "Flights from Lisbon to Oslo on 2027-03-02")
    assert ranked[0] == "GET /flights/{from}/{to}/{date}", ranked


def test_the_issues_discord_asks(served, jentic_dir) -> None:
    # issue 17's own examples on the Discord spec of ../shared (217 operations, no history):
    # sending quoted words is a message; "who is in" a guild asks for its members
    from ranker.data import load_spec

    spec = load_spec(jentic_dir / "apis/openapi/discord.com/main/10/openapi.json")
    sent = served(spec, "send 'hello team' to channel 998877")
    assert sent[0] == "POST /channels/{channel_id}/messages", sent[:3]
    members = served(spec, "who is in the guild 4455?")
    assert members[0] == "GET /guilds/{guild_id}/members", members[:3]
    deleted = served(spec, "delete the message 1234567 in channel 998877")
    assert deleted[0] == "DELETE /channels/{channel_id}/messages/{message_id}", deleted[:3]


def test_an_explicit_delete_ask_puts_the_delete_first(served) -> None:
    spec = _spec({
        "/roles": {"get": _op("List roles", op_id="listRoles"),
                   "post": _op("Create a role", op_id="createRole")},
        "/roles/{id}": {"get": _op("Get a role", [_path("id")], op_id="getRole"),
                        "patch": _op("Update a role", [_path("id")], op_id="updateRole"),
                        "delete": _op("Delete a role", [_path("id")], op_id="deleteRole")},
    })
    assert served(spec, "I no longer need the role role456, delete it")[0] == "DELETE /roles/{id}"
    assert "DELETE /roles/{id}" not in served(spec, "I no longer need the role role456")[:1]


def test_a_reading_verb_puts_the_read_before_the_create(served) -> None:
    """The request's first verb reads: the list of the thing, not its create (the shipped model
    before the lead-verb features put ``POST /employees`` first)."""
    spec = _spec({
        "/employees": {"get": _op("List employees", op_id="listEmployees"),
                       "post": _op("Create an employee", op_id="createEmployee")},
        "/employees/{id}": {"get": _op("Get an employee", [_path("id")]),
                            "delete": _op("Delete an employee", [_path("id")])},
        "/departments": {"get": _op("List departments")},
    })
    ranked = served(spec, "Find the employee using filter parameters.")
    assert ranked[0] == "GET /employees", ranked


# -- no family of requests below BM25 (validation APIs, never trained on) -------------------------


@pytest.fixture(scope="module")
def validation(jentic_dir):
    from benchmarks.ranking import held_out

    return held_out(jentic_dir)


def test_no_family_of_requests_below_bm25(validation) -> None:
    """Direct asks, asks with values, find-the-id asks and workflow steps: the service's hit@1 is
    at least BM25's over the whole spec on each."""
    from benchmarks.requests import below_bm25, evaluate

    generator, extractor = validation.generator, validation.extractor
    model = RankerModel.load()
    results = evaluate(validation.workflows, generator=generator, extractor=extractor,
                       score=model.raw_scores)
    assert set(results) == {"direct", "direct, one call", "direct, as typed", "direct + values",
                            "find id", "find id, named", "workflow"}
    assert all(r["service"]["n"] > 150 for k, r in results.items() if k != "find id, named"), results
    assert results["find id, named"]["service"]["n"] > 30, results
    assert below_bm25(results) == [], results
    # the guard can fail: ranking against the generator's own order is below BM25 on some family
    worst = evaluate(validation.workflows, generator=generator, extractor=extractor,
                     score=lambda X: np.asarray(model.raw_scores(X)) * -1.0)
    assert below_bm25(worst), worst


# -- what the request asks for, read by the features ----------------------------------------------


def _games() -> SpecIndex:
    return _spec({
        "/games": {"get": _op("Get a list of games", op_id="listGames"),
                   "post": _op("Create a game", op_id="createGame")},
        "/games/{game_pk}": {"get": _op("Get details of the game", [_path("game_pk")])},
        "/games/{game_pk}/game-series": {"get": _op(
            "Get a list of games that are part of the same series", [_path("game_pk")])},
        "/platforms": {"get": _op("Get a list of platforms")},
    })


def _row(spec: SpecIndex, prompt: str, history=()) -> dict[str, dict[str, float]]:
    """Every operation as a candidate: its request features by operation key."""
    from core.candidates.types import Candidate
    from core.features import FEATURE_NAMES

    extractor = FeatureExtractor(transitions=load_transitions(), word_vectors=None)
    cands = [Candidate(index=i, sources={}) for i in range(len(spec.operations))]
    X = extractor.extract(spec, list(history), prompt, cands)
    names = ("lead_role", "lead_read_get", "asked_needs_id", "yields_asked_id", "prompt_words")
    return {op.key: {n: float(X[i, FEATURE_NAMES.index(n)]) for n in names}
            for i, op in enumerate(spec.operations)}


def test_the_asked_call_needs_an_id_and_its_collection_gives_it() -> None:
    spec = _games()
    rows = _row(spec, "List the games of the same series as the game")
    assert all(r["asked_needs_id"] == 1.0 for r in rows.values())
    # the collection before {game_pk} gives it; a call on another collection, a create, or one
    # that itself needs the id does not
    assert rows["GET /games"]["yields_asked_id"] == 1.0
    for key in ("POST /games", "GET /platforms", "GET /games/{game_pk}"):
        assert rows[key]["yields_asked_id"] == 0.0, key
    # the request gives the id, or an earlier call did: nothing is missing
    given = _row(spec, "List the games of the same series as the game 3498")
    assert given["GET /games"]["asked_needs_id"] == 0.0
    assert given["GET /games"]["yields_asked_id"] == 0.0
    had = _row(spec, "List the games of the same series as the game",
               [spec.resolve("GET /games/3498")])
    assert had["GET /games"]["asked_needs_id"] == 0.0


def test_the_first_verb_says_read_or_write() -> None:
    spec = _games()
    rows = _row(spec, "Find the game using filters, then create a copy")
    assert rows["GET /games"]["lead_read_get"] == 1.0 and rows["POST /games"]["lead_read_get"] == 0.0
    rows = _row(spec, "Create a game")
    assert rows["POST /games"]["lead_role"] == 1.0 and rows["GET /games"]["lead_role"] == 0.0
    assert rows["POST /games"]["lead_read_get"] == 1.0
    # a question asks to read, whatever verb follows; "how do I" asks how to do it
    rows = _row(spec, "Who created the game 3498?")
    assert rows["GET /games"]["lead_read_get"] == 1.0 and rows["POST /games"]["lead_read_get"] == 0.0
    assert rows["POST /games"]["lead_role"] == 0.0
    rows = _row(spec, "How do I create a game?")
    assert rows["POST /games"]["lead_role"] == 1.0 and rows["POST /games"]["lead_read_get"] == 1.0
    rows = _row(spec, "games and platforms")  # no verb; "and" is no word of the request's
    assert np.isnan(rows["GET /games"]["lead_role"]) and rows["GET /games"]["prompt_words"] == 2
