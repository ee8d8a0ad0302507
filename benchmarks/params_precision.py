"""How often the params a prediction fills in are right: ``fill_params`` against the values the
real workflow step passed.

    python -m benchmarks.params_precision [--jentic-dir DIR] [--k 5]

On every real step of the VALIDATION APIs whose target operation the embedded generator and the
shipped model put in the top ``k`` (what a user would see), the target's filled params are
compared with the step's own values, per location (path / query / body):

* **filled**: params given a value; **correct** / **wrong**: the value is / is not the step's;
* **unverifiable**: filled, but the step's value is unknown: the workflow does not pass the param,
  or passes an expression the data cannot resolve (``$response...``, a dangling ``$steps`` ref,
  text with an embedded expression); or the filled value is one the data made up for an earlier
  step (a response's value, an undeclared path input), which may or may not be the step's; or a
  value the request gives in words (an enum member, an ISO code: :mod:`core.coded_values`) for a
  parameter the workflow takes from an input, whose value the data does not hold. These count
  neither way;
* **missing_but_known**: not filled, though the step passes a known value that an earlier call of
  the history shows (the value was there to take);
* **from the request**: of the filled (and of the wrong), those the request itself names
  (:func:`core.request.request_fills`: the workflow's prompt); the rest come from the events.

``wrong_rate`` = wrong / (correct + wrong). Of the wrong, two kinds are told apart, as the data
may be what is wrong: **event misresolved** (the value came from an event that ``SpecIndex.resolve``
placed on another operation than its step's) and **another input** (the value is the workflow
input of another name: ``Sid`` for ``SimSid``, ``$inputs.pickup_lat`` for ``destination_lat``).
``wrong_rate_rest`` counts only the rest. A step's value is known when the workflow writes it
(a literal), takes it from a workflow input (``$inputs.x``: the same value wherever that input is
used) or from an earlier step (``$steps.s.outputs.y``). A path parameter the step does not declare
is unknown (the data gives it a made-up input of its own name).

Writes ``benchmarks/results/params_precision.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.candidates.retrieval import RetrievalGenerator
from core.features import FeatureExtractor
from core.params import fill_params, param_sources, request_params
from core.priors.transitions import load_transitions
from core.scorer import RankerModel, default_model_path
from core.settings import load_settings
from core.spec.index import Call
from core.spec.operations import Operation
from ranker.data import Step, Workflow, examples, load_workflows, split_of, synthetic_id

RESULTS = Path(__file__).resolve().parent / "results"
LOCATIONS = ("path", "query", "body")
_KEYS = ("filled", "filled_from_request", "correct", "wrong", "wrong_from_request",
         "wrong_misresolved_event", "wrong_other_input", "unverifiable", "missing_but_known")
_STEP_REF = re.compile(r"\$steps\.([^.\s}]+)\.outputs\.([A-Za-z0-9_\-]+)")
_INPUT_REF = re.compile(r"\$inputs\.([A-Za-z0-9_\-]+)")
_REQUEST_REF = re.compile(r"\$request\.(?:path|query|body)[.#/]+([A-Za-z0-9_\-]+)")


def _location(op_params: Mapping[str, str], name: str) -> str:
    loc = op_params.get(name, "body")
    return "body" if loc in ("body", "formData") else loc if loc in LOCATIONS else "other"


def _known(expr: Any, position: int, index_of: Mapping[str, int],
           raw: Sequence[Mapping[str, Any]], steps: Sequence[Step]) -> bool:
    """Whether the data gives ``expr`` (a raw Arazzo value of step ``position``) a true value that
    a history could show: a literal, a workflow input, or an earlier step's output that is one of
    that step's own request values (``$request.path.id``). An output read from a response
    (``$response.body#/id``) is not: ranker.data makes one up (or takes a request value of the
    same name), where the real value may well be another id the history shows."""
    if isinstance(expr, dict):
        return all(_known(v, position, index_of, raw, steps) for v in expr.values())
    if isinstance(expr, list):
        return all(_known(v, position, index_of, raw, steps) for v in expr)
    if not isinstance(expr, str):
        return True
    text = expr.strip()
    if text.startswith("$steps."):
        m = _STEP_REF.match(text)
        j = index_of.get(m.group(1), position) if m else position
        if m is None or j >= position:
            return False
        output = (raw[j].get("outputs") or {}).get(m.group(2))
        tables = (steps[j].path_params, steps[j].params)
        req = _REQUEST_REF.match(output) if isinstance(output, str) else None
        return req is not None and any(req.group(1) in t for t in tables)
    if text.startswith("$inputs."):
        return True
    return "$" not in text  # other runtime expressions, or text with one embedded


def _raw_steps(root: Path, wf: Workflow, used: Counter[tuple[str, str]]) -> list[dict[str, Any]] | None:
    """The Arazzo steps behind ``wf`` (the first of each stepId, as ranker.data keeps them)."""
    doc = json.loads((root / "workflows" / wf.api / "workflows.arazzo.json").read_text())
    matches: list[list[dict[str, Any]]] = []
    for raw in doc.get("workflows") or []:
        if not isinstance(raw, dict) or str(raw.get("workflowId") or "") != wf.workflow_id:
            continue
        seen: set[str] = set()
        steps: list[dict[str, Any]] = []
        for s in raw.get("steps") or []:
            if isinstance(s, dict):
                sid = str(s.get("stepId") or f"#{len(steps)}")
                if sid not in seen:
                    seen.add(sid)
                    steps.append(s)
        if len(steps) == len(wf.steps):
            matches.append(steps)
    n = used[(wf.api, wf.workflow_id)]
    used[(wf.api, wf.workflow_id)] += 1
    return matches[n] if n < len(matches) else None


def _truth(raw: Sequence[dict[str, Any]], steps: Sequence[Step], i: int,
           path_names: Sequence[str]) -> dict[str, bool]:
    """For each param step ``i`` passes: whether its value is known."""
    index_of = {str(s.get("stepId") or f"#{j}"): j for j, s in enumerate(raw)}
    out: dict[str, bool] = {}
    for p in raw[i].get("parameters") or []:
        if isinstance(p, dict) and isinstance(p.get("name"), str) and "value" in p:
            out.setdefault(p["name"], _known(p["value"], i, index_of, raw, steps))
    body = raw[i].get("requestBody")
    payload = body.get("payload") if isinstance(body, dict) else None
    if isinstance(payload, dict):
        for name, expr in payload.items():
            out.setdefault(str(name), _known(expr, i, index_of, raw, steps))
    for name in path_names:
        out.setdefault(name, False)  # undeclared: a made-up input
    return out


def _source(name: str, op: Operation, history: Sequence[Call]) -> str:
    """Where a filled value came from, as far as :func:`param_sources` tells (path params)."""
    src, _ = param_sources(op, history).get(name, (None, False))
    return f"{src.origin} {src.name} of {src.call_key} ({src.age} back)" if src else "?"


def measure(jentic_dir: Path, k: int = 5, split: str = "valid") -> dict[str, Any]:
    started = time.perf_counter()
    transitions = load_transitions()
    generator = RetrievalGenerator(transitions=transitions)
    extractor = FeatureExtractor(transitions=transitions)
    model = RankerModel.load(default_model_path())
    workflows = [w for w in load_workflows(jentic_dir, progress=False)
                 if w.source == "real" and split in ("all", split_of(w.api))]
    counts = {loc: Counter[str]() for loc in (*LOCATIONS, "other")}
    wrong_examples: list[dict[str, Any]] = []
    steps = shown = unaligned = 0
    used: Counter[tuple[str, str]] = Counter()
    for wf in workflows:
        raw = _raw_steps(jentic_dir, wf, used)
        made: list[set[str]] = []
        sure: list[set[str]] = []
        for j, st in enumerate(wf.steps):
            flags = _truth(raw, wf.steps, j, tuple(st.path_params)) if raw else {}
            values = {**st.params, **st.path_params}
            made.append({str(v) for n, v in values.items() if not flags.get(n, False)})
            sure.append({str(v) for n, v in values.items() if flags.get(n, False)})
        inputs = {synthetic_id(wf.api, wf.workflow_id, "inputs", n)
                  for n in {*_INPUT_REF.findall(json.dumps(raw)),
                            *(n for s in wf.steps for n in s.path_params)}}
        for ex in examples([wf]):
            steps += 1
            candidates = generator.generate(ex.spec, ex.history, ex.prompt)
            x = extractor.extract(ex.spec, ex.history, ex.prompt, candidates, ex.personal)
            [(probs, _)] = model.score_groups([x], contributions=False)
            order = np.argsort(-probs, kind="stable")[:k]
            top = [ex.spec.operations[candidates[r].index].key for r in order]
            if ex.target not in top:
                continue
            shown += 1
            if raw is None:
                unaligned += 1
                continue
            step = wf.steps[ex.position]
            op = ex.spec.operations[ex.spec.by_key[ex.target]]
            locations = {p.name: p.location for p in op.params}
            locations.update({n: "path" for n in op.path_params})
            known = _truth(raw, wf.steps, ex.position, op.path_params)
            true = {**step.params, **step.path_params}
            seen = {str(v) for c in ex.history for v in (*c.path_params.values(), *c.params.values())}
            # values of the events resolved to the operation their step really called
            resolved = {str(v) for c, s in zip(ex.history, wf.steps, strict=False) if c.key == s.key
                        for v in (*c.path_params.values(), *c.params.values())}
            # the history's values the data made up (a response's, an undeclared input), which
            # may or may not be the step's: a fill that takes one can't be judged
            made_up = set().union(*made[: ex.position]) - set().union(*sure[: ex.position])
            params, _missing = fill_params(op, ex.history, prompt=ex.prompt, api_words=ex.spec.name_words)
            named, coded = request_params(op, ex.prompt, api_words=ex.spec.name_words)
            asked = {**named, **coded}
            for name, value in params.items():
                c = counts[_location(locations, name)]
                c["filled"] += 1
                c["filled_from_request"] += name in asked
                if name not in true or not known.get(name, False) or (
                        str(value) != str(true[name]) and str(value) in made_up) or (
                        name in coded and str(true[name]) in inputs):
                    c["unverifiable"] += 1
                elif str(value) == str(true[name]):
                    c["correct"] += 1
                else:
                    c["wrong"] += 1
                    c["wrong_from_request"] += name in asked
                    kind = "other"
                    if str(value) not in resolved:
                        kind = "misresolved_event"
                    elif str(value) in inputs and str(true[name]) in inputs:
                        kind = "other_input"
                    if kind != "other":
                        c[f"wrong_{kind}"] += 1
                    if len(wrong_examples) < 60:
                        wrong_examples.append({"api": wf.api, "workflow": wf.workflow_id,
                                               "target": ex.target, "param": name, "kind": kind,
                                               "from_request": name in asked,
                                               "filled": str(value)[:40], "true": str(true[name])[:40],
                                               "from": "the request" if name in asked
                                               else _source(name, op, ex.history),
                                               "history": [h.key for h in ex.history]})
            for name, value in true.items():
                if (name not in params and name in locations and known.get(name, False)
                        and str(value) in seen):
                    counts[_location(locations, name)]["missing_but_known"] += 1
    table = {loc: _row(c) for loc, c in counts.items() if loc != "other" or c}
    table["all"] = _row(sum(counts.values(), Counter[str]()))
    return {"split": split, "apis": len({w.api for w in workflows}), "steps": steps,
            f"target_in_top{k}": shown, "steps_without_raw_workflow": unaligned,
            "by_location": table, "wrong_examples": wrong_examples,
            "seconds": round(time.perf_counter() - started, 1)}


def _row(c: Counter[str]) -> dict[str, Any]:
    decided = c["correct"] + c["wrong"]
    rest = c["wrong"] - c["wrong_misresolved_event"] - c["wrong_other_input"]
    row: dict[str, Any] = {key: c[key] for key in _KEYS}
    row["wrong_rate"] = round(c["wrong"] / decided, 4) if decided else 0.0
    row["wrong_rate_rest"] = round(rest / decided, 4) if decided else 0.0
    return row


def to_markdown(result: Mapping[str, Any], k: int) -> str:
    which = {"valid": "validation", "train": "training"}.get(result["split"], "all")
    flag = "" if result["split"] == "valid" else f" --split {result['split']}"
    lines = [
        f"# Params precision ({which} APIs)",
        "",
        f"`python -m benchmarks.params_precision{flag}`: {result['steps']} real steps of "
        f"{result['apis']} {'' if which == 'all' else which + ' '}APIs; the target is in the top {k} on "
        f"{result[f'target_in_top{k}']}, and its filled params are compared with the step's.",
        "",
        "| location | filled | of the filled: from the request | correct | wrong "
        "| of the wrong: from the request | wrong rate | of the wrong: event misresolved "
        "| of the wrong: another input | wrong rate of the rest | unverifiable | missing but known |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for loc, r in result["by_location"].items():
        lines.append(f"| {loc} | {r['filled']} | {r['filled_from_request']} | {r['correct']} | "
                     f"{r['wrong']} | {r['wrong_from_request']} | "
                     f"{100 * r['wrong_rate']:.1f} % | {r['wrong_misresolved_event']} | "
                     f"{r['wrong_other_input']} | {100 * r['wrong_rate_rest']:.1f} % | "
                     f"{r['unverifiable']} | {r['missing_but_known']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.params_precision",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--jentic-dir", type=Path, default=None)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--split", choices=("valid", "train", "all"), default="valid",
                        help="whose APIs (fill_params learns nothing, so any split is fair)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    result = measure(args.jentic_dir or load_settings().jentic_dir, args.k, args.split)
    args.out.mkdir(exist_ok=True)
    name = "params_precision" + ("" if args.split == "valid" else f"_{args.split}")
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / f"{name}.md").write_text(to_markdown(result, args.k))
    print(to_markdown(result, args.k))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
