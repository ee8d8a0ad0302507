"""The ``why`` a person reads: no doubled words ('the issue id or id'), no plural of an empty or
verb noun ('a list of as', 'creating a create'), no sentence said of every cold start."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import numpy as np
import pytest

from core.candidates.retrieval import RetrievalGenerator
from core.explain import explain
from core.features import FEATURE_NAMES, FeatureExtractor
from core.priors.transitions import load_transitions
from core.scorer import RankerModel
from core.spec.index import SpecIndex
from core.spec.openapi import parse_spec
from ranker.data import examples, load_workflows, split_of

_OK = {"200": {"description": "ok"}}
_COL = {n: i for i, n in enumerate(FEATURE_NAMES)}


def _broken(text: str) -> str | None:
    """The broken form in a ``why``, if any."""
    plain = re.sub(r"'[^']*'", "'W'", text)  # the user's own words, as typed, are theirs
    checks = {
        "doubled word": r"\b(\w+)(?: (?:or|and|of))? \1\b",
        "plural or article of an empty noun": r"\b(?:a|an|the|of|for) (?:s|es|ies|as)(?=$|;| \()",
        "article before nothing": r"\b(?:a|an|the)(?: |$)(?:[;(]|$)",
        "empty noun": r"\b(?:a|an|the)  |\s{2,}| \(\)",
        "'an' before a consonant sound": r"\ban (?:us|uni)",
        "cold-start filler": r"a usual first call",
    }
    for what, pattern in checks.items():
        if re.search(pattern, plain):
            return what
    return None


@pytest.fixture(scope="module")
def whys(jentic_dir) -> list[tuple[bool, str]]:
    """(cold start?, why) of the top 5 of every step of 40 validation workflows."""
    transitions = load_transitions()
    generator = RetrievalGenerator(transitions=transitions)
    extractor = FeatureExtractor(transitions=transitions)
    model = RankerModel.load()
    workflows = [w for w in load_workflows(jentic_dir, progress=False)
                 if w.source == "real" and split_of(w.api) == "valid"][::10][:40]
    out = []
    for ex in examples(workflows):
        cands = generator.generate(ex.spec, ex.history, ex.prompt)
        x = extractor.extract(ex.spec, ex.history, ex.prompt, cands)
        [(probs, contribs)] = model.score_groups([x])
        for r in np.argsort(-probs, kind="stable")[:5]:
            op = ex.spec.operations[cands[r].index]
            out.append((not ex.history, explain(op, x[r], contribs[r], history=ex.history,
                                                prompt=ex.prompt)))
    return out


def test_validation_whys_have_no_broken_forms(whys) -> None:
    assert len(whys) >= 300
    broken = [(what, text) for _, text in whys if (what := _broken(text))]
    assert not broken, broken[:10]


def test_no_reason_is_said_of_most_cold_starts(whys) -> None:
    phrases = Counter(p for cold, text in whys if cold for p in text.split("; ")
                      if "'" not in p)  # a phrase with the user's words is their request's
    cold = sum(cold for cold, _ in whys)
    assert cold >= 50
    assert max(phrases.values()) <= cold / 2, phrases.most_common(3)


def test_the_broken_forms_are_caught() -> None:
    for text in ("uses the issue id or id PROJ-123 from your last call",
                 "usually follows a list of as", "usually follows creating an user",
                 "a usual first call", "works on the same  as your last call"):
        assert _broken(text), text
    assert _broken("matches 'pay' and 'pay' in your request") is None


@pytest.fixture(scope="module")
def spec() -> SpecIndex:
    def get(*params: str) -> dict[str, Any]:
        return {"get": {"parameters": [{"name": p, "in": "path", "required": True,
                                        "schema": {"type": "string"}} for p in params],
                        "responses": _OK}}
    return parse_spec({
        "openapi": "3.0.3", "info": {"title": "t", "version": "1"},
        "paths": {"/issues/{issueIdOrKey}": get("issueIdOrKey"),
                  "/issues/{issueIdOrKey}/comments": get("issueIdOrKey"),
                  "/a": {"get": {"responses": _OK}}, "/a/{id}": get("id"),
                  "/v1/create": {"post": {"responses": _OK}},
                  "/v1beta1/{+name}": get("name"), "/v1beta1/{+name}:export": get("name")},
    })


def _why(spec: SpecIndex, key: str, history: list, feature: str) -> str:
    op = spec.operations[spec.by_key[key]]
    contrib = np.zeros(len(FEATURE_NAMES) + 1)
    contrib[_COL[feature]] = 1.0
    return explain(op, np.zeros(len(FEATURE_NAMES)), contrib, history=history, prompt=None)


def test_ids_are_said_once_and_never_by_a_version(spec) -> None:
    why = _why(spec, "GET /issues/{issueIdOrKey}/comments", [spec.resolve("GET /issues/PROJ-123")],
               "params_from_history")
    assert why == "uses the issue id or key PROJ-123 from your last call"
    why = _why(spec, "GET /v1beta1/{+name}:export", [spec.resolve("GET /v1beta1/ds_1")],
               "params_from_history")
    assert why == "uses the name ds_1 from your last call"


def test_a_call_whose_path_names_no_thing_is_said_as_the_call(spec) -> None:
    assert _why(spec, "GET /a/{id}", [spec.resolve("GET /a")], "p_role") == (
        "usually follows GET /a")
    assert _why(spec, "GET /a", [spec.resolve("POST /v1/create")], "p_role") == (
        "usually follows POST /v1/create")
