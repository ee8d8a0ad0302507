"""What users type, on APIs held out whole: direct asks, asks that must first find an id, and
workflow steps, each ranked by BM25 over the spec, by the generator's order and by the service.

    python -m benchmarks.requests [--jentic-dir DIR] [--model ranker/models/ranker.txt]
    python -m benchmarks.requests --dump-asks FILE   # the asks as JSON, for another checkout

Families (built from the VALIDATION APIs' workflows by :mod:`ranker.requests`; never trained on):

- ``direct``: a step's own description as the request, no history, target = that step;
- ``direct, one call``: the direct asks whose step needs no id that only an earlier step found
  (:func:`ranker.requests.needs_found_id`): the issue's "direct requests (one call)", reported
  beside ``direct``, not instead of it;
- ``direct, as typed``: the same asks cut to what a user types
  (:func:`ranker.requests.as_typed`: the first sentence, no parentheses, lower case, at most
  eight words: "retrieves full details of a specific client");
- ``direct + values``: the same, carrying the values of its path and id parameters (from the
  workflow's inputs, or found by earlier steps: "(project 8f3a…)");
- ``find id``: a later step's description whose id an earlier read yields and nobody has:
  target = that read, history = the steps before it;
- ``find id, named``: the find-id asks whose read takes a value that names the thing (a query,
  name, title … from the workflow's inputs), carrying that value too
  (:func:`ranker.requests.naming_values`): "who directed <film title>?"; reported beside
  ``find id``, not instead of it;
- ``workflow``: every step of the real workflows (history = the steps before, the summary).

Methods: ``bm25 (whole spec)`` (every operation by BM25 of the request), ``generator order``,
and ``service`` (generator → FeatureExtractor → shipped model, the serving code path; a target the
generator missed is a miss). Filled params on ``direct + values``: the target's ``params`` from
:func:`core.params.fill_params` against the values the step really passed.

Writes ``benchmarks/results/requests.json`` and ``requests.md``. With ``--dump-asks``, writes
only the asks of every family (:func:`dump_asks`) and ranks nothing: an older checkout's code
and model can then be scored on today's asks (docs/accuracy.md, "Find-id asks corrected").
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.ranking import bm25_rank, held_out
from core.candidates.retrieval import RetrievalGenerator
from core.features import FeatureExtractor
from core.params import fill_params, request_params
from core.scorer import RankerModel, default_model_path
from core.settings import load_settings
from ranker.data import Example, Workflow, examples
from ranker.evaluate import build_groups, metrics_table, ranking_metrics, ranks_from_scores
from ranker.requests import as_typed, known_values, needs_found_id, request_examples

RESULTS = Path(__file__).resolve().parent / "results"
COMMAND = "python -m benchmarks.requests"

# The service of the day issue 17 was filed (model lgbm-f9-20261202-f748ada6 with the code of
# commit f1dc448), ranking today's find-id asks: hit@1. Its target is 1.5× these
# (docs/accuracy.md, "Today's find id" and "The find-id target on the asks that name the thing").
FILED_HIT1 = {"find id": 0.172, "find id, named": 0.238}


def families(workflows: Sequence[Workflow]) -> dict[str, list[Example]]:
    by_id = {(w.api, w.workflow_id): w for w in workflows}
    direct = list(request_examples(workflows, "direct"))
    one_call = [e for e in direct if not needs_found_id(
        e.spec, by_id[(e.api, e.workflow_id)], e.position)]
    return {
        "direct": direct,
        "direct, one call": one_call,
        "direct, as typed": [replace(e, prompt=as_typed(e.prompt)) for e in one_call],
        "direct + values": list(request_examples(workflows, "direct_values")),
        "find id": list(request_examples(workflows, "find_id")),
        "find id, named": list(request_examples(workflows, "find_id_named")),
        "workflow": list(examples(workflows)),
    }


def dump_asks(workflows: Sequence[Workflow], *, jentic_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Every family's asks as plain JSON: the API, workflow, target step and spec file (relative
    to ``jentic_dir``), the prompt, the history as the events a client sends (``METHOD /path``
    and params, with the operation key this checkout resolved each to) and the target's key."""
    root = jentic_dir.resolve()
    spec_paths = {(w.api, w.workflow_id): Path(w.spec_path).resolve() for w in workflows}
    return {name: [{
        "api": e.api, "workflow_id": e.workflow_id, "position": e.position,
        "spec": str(spec_paths[(e.api, e.workflow_id)].relative_to(root)),
        "prompt": e.prompt,
        "history": [{"endpoint": f"{c.method} {c.path}", "params": c.params, "key": c.key}
                    for c in e.history],
        "target": e.target,
    } for e in items] for name, items in families(workflows).items()}


def params_quality(items: Sequence[Example], workflows: Sequence[Workflow]) -> dict[str, Any]:
    """Of the values the request carries for its target: filled right, filled wrong, not filled.
    A value the request gives in words (an enum member, an ISO code: :mod:`core.coded_values`)
    for a parameter the workflow takes from an input is unverifiable: the data holds no value
    for the input."""
    by_id = {(w.api, w.workflow_id): w for w in workflows}
    right = wrong = given = unverifiable = 0
    for ex in items:
        step = by_id[(ex.api, ex.workflow_id)].steps[ex.position]
        truth = {**step.params, **step.path_params}
        given += len(known_values(ex.spec, step, with_found=True))
        op = ex.spec.operations[ex.spec.by_key[ex.target]]
        params, _missing = fill_params(op, ex.history, prompt=ex.prompt, api_words=ex.spec.name_words)
        _named, coded = request_params(op, ex.prompt, api_words=ex.spec.name_words)
        for name, value in params.items():
            if name in coded and name in step.from_inputs:
                unverifiable += 1
            elif name in truth:
                right += str(value) == truth[name]
                wrong += str(value) != truth[name]
    filled = right + wrong
    return {"values_given": given, "filled": filled, "right": right, "wrong": wrong,
            "coded_unverifiable": unverifiable,
            "precision": right / filled if filled else float("nan"),
            "recall": right / given if given else float("nan")}


Scorer = Callable[[np.ndarray], np.ndarray]


def evaluate(
    workflows: Sequence[Workflow], *, generator: RetrievalGenerator, extractor: FeatureExtractor,
    score: Scorer,
) -> dict[str, dict[str, Any]]:
    """Per family: BM25 over the spec, the generator's order and ``score`` over the generator's
    candidates (the service's rows), each a :func:`ranking_metrics` dict."""
    out: dict[str, dict[str, Any]] = {}
    for name, items in families(workflows).items():
        groups = build_groups(items, generator=generator, extractor=extractor)
        out[name] = {
            "apis": len({e.api for e in items}),
            "bm25 (whole spec)": ranking_metrics([bm25_rank(generator, e) for e in items]),
            "generator order": ranking_metrics(groups.gen_rank),
            "service": ranking_metrics(ranks_from_scores(groups, score(groups.X))),
        }
    return out


def below_bm25(results: dict[str, dict[str, Any]]) -> list[str]:
    """The families whose service hit@1 is below BM25's: there must be none."""
    return [name for name, r in results.items()
            if r["service"]["hit@1"] < r["bm25 (whole spec)"]["hit@1"]]


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 17's targets, each with the value measured and whether it is met."""
    def hit1(family: str, method: str = "service") -> float:
        return float(results[family][method]["hit@1"])

    bm25 = hit1("direct, one call", "bm25 (whole spec)")
    rows = [{"target": "direct, one call: hit@1 ≥ BM25 + 0.15", "value": hit1("direct, one call"),
             "needed": bm25 + 0.15}]
    rows += [{"target": f"{family}: hit@1 ≥ 1.5× the {FILED_HIT1[family]} of the day filed",
              "value": hit1(family), "needed": 1.5 * FILED_HIT1[family]}
             for family in FILED_HIT1]
    workflow = results["workflow"]["service"]
    rows += [{"target": f"workflow: {m} ≥ {need}", "value": float(workflow[m]), "needed": need}
             for m, need in (("hit@1", 0.60), ("hit@3", 0.85), ("mrr", 0.70))]
    rows.append({"target": "params from the request: precision ≥ 0.98",
                 "value": float(results["params"]["precision"]), "needed": 0.98})
    for row in rows:
        row["met"] = row["value"] >= row["needed"] - 1e-9
    return rows


def run(*, jentic_dir: Path, model_path: Path) -> dict[str, Any]:
    started = time.perf_counter()
    data = held_out(jentic_dir)
    workflows = data.workflows
    model = RankerModel.load(model_path)
    results: dict[str, Any] = evaluate(workflows, generator=data.generator, extractor=data.extractor,
                                       score=model.raw_scores)
    tables = [metrics_table({k: v for k, v in r.items() if k != "apis"},
                            title=f"{name}, validation APIs ({r['apis']} APIs)")
              for name, r in results.items()]
    results["params"] = p = params_quality(list(request_examples(workflows, "direct_values")),
                                           workflows)
    results["below bm25 at hit@1"] = below_bm25({k: v for k, v in results.items() if k != "params"})
    results["targets"] = goals = targets(results)
    results["meta"] = {"model_version": model.version, "command": COMMAND,
                       "seconds": round(time.perf_counter() - started, 1)}
    tables.append(f"**params filled from the request (direct + values, the target's params)**\n\n"
                  f"values given {p['values_given']}, filled {p['filled']}, right {p['right']}, "
                  f"wrong {p['wrong']}: precision {p['precision']:.3f}, recall {p['recall']:.3f}; "
                  f"unverifiable {p['coded_unverifiable']} (an enum member or ISO code the request "
                  f"names, for a workflow input the data holds no value of)")
    tables.append("**issue 17's targets**\n\n| target | value | needed | met |\n|---|---:|---:|---|\n"
                  + "\n".join(f"| {g['target']} | {g['value']:.3f} | {g['needed']:.3f} | "
                              f"{'yes' if g['met'] else 'no'} |" for g in goals)
                  + f"\n\nfamilies below BM25 at hit@1: "
                  f"{', '.join(results['below bm25 at hit@1']) or 'none'}")
    results["markdown"] = "\n\n".join(tables)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("--jentic-dir", type=Path, default=None)
    parser.add_argument("--model", type=Path, default=default_model_path())
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--dump-asks", type=Path, default=None, metavar="FILE",
                        help="write every family's asks as JSON to FILE and rank nothing")
    args = parser.parse_args(argv)
    jentic_dir = args.jentic_dir or load_settings().jentic_dir
    if args.dump_asks:
        asks = dump_asks(held_out(jentic_dir).workflows, jentic_dir=jentic_dir)
        args.dump_asks.write_text(json.dumps(asks, indent=1) + "\n")
        print(f"wrote {args.dump_asks}: " + ", ".join(f"{k} {len(v)}" for k, v in asks.items()),
              file=sys.stderr)
        return 0
    results = run(jentic_dir=jentic_dir, model_path=args.model)
    markdown = results.pop("markdown")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "requests.json").write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    (args.out / "requests.md").write_text(
        f"`{COMMAND}` — model {results['meta']['model_version']}\n\n{markdown}\n")
    print(markdown)
    print(f"\nwrote {args.out / 'requests.json'} and requests.md ({results['meta']['seconds']}s)",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
