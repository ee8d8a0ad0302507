"""Workflow data: Arazzo workflows of ../shared/data/jentic mapped onto their OpenAPI specs.

A workflow of n resolved steps is a sequence of ``METHOD /path/template`` calls with a prompt (its
summary). Each step gets concrete path values the way real events carry them: a deterministic
synthetic id per input, and, where a step takes a value from an earlier step's output
(``$steps.<id>.outputs.<name>``), the very same value, so the dataflow of ids between calls is
visible in the history exactly as the service would see it.

The data is read from ``settings.jentic_dir`` and never copied into the repository.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote, unquote

from core.errors import SpecInvalid
from core.spec.index import Call, SpecIndex
from core.spec.openapi import parse_spec
from core.vocabulary import path_param_names

if TYPE_CHECKING:
    from core.features import UserTransitions
    from core.priors.population import PopulationView

__all__ = [
    "Step",
    "Workflow",
    "Example",
    "Source",
    "Split",
    "RequestKind",
    "load_workflows",
    "load_spec",
    "parse_workflow_document",
    "examples",
    "concrete_endpoint",
    "split_of",
    "stopping_apis",
    "history_of",
    "summary",
]

# "personal": a simulated returning user's step, with their earlier outcomes (ranker.returning_users)
# "population": a step that sees what other users of its API did (ranker.population)
# "request": one step asked for on its own (its description as the prompt, ranker.requests)
Source = Literal["real", "synthetic", "personal", "population", "request"]
# which kind of request a "request" example is (ranker.requests)
RequestKind = Literal["direct", "direct_values", "find_id", "find_id_named"]
Split = Literal["train", "valid"]

_STEP_REF = re.compile(r"\$steps\.([^.\s}]+)\.outputs\.([A-Za-z0-9_\-]+)")
_INPUT_REF = re.compile(r"^\$inputs\.([A-Za-z0-9_\-.]+)$")
_PATH_PARAM = re.compile(r"\{([^{}]+)\}")
_HTTP_METHODS = frozenset("get put post delete patch head options trace".split())


@dataclass(frozen=True)
class Step:
    key: str  # "METHOD /template" exactly as in the spec's paths
    path_params: dict[str, str]  # every template parameter -> its concrete value
    params: dict[str, str]  # non-header parameters and top-level body keys -> value string
    uses_steps: tuple[int, ...] = ()  # indices of earlier steps whose outputs this step uses
    description: str = ""  # the step's own description: a direct ask of this one call
    # parameter -> the earlier step whose output it takes ($steps.<id>.outputs.x), and the
    # parameters the user gives up front ($inputs.x): what a request for this call knows
    from_steps: tuple[tuple[str, int], ...] = ()
    from_inputs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Workflow:
    api: str
    workflow_id: str
    prompt: str
    spec_path: Path
    steps: tuple[Step, ...]
    source: Source = "real"


@dataclass(frozen=True)
class Example:
    """One ranking group: what the user did (history), what they said (prompt), what came next."""

    api: str
    workflow_id: str
    spec: SpecIndex = field(repr=False)
    history: tuple[Call, ...]
    prompt: str
    target: str  # operation key of the next call
    source: Source = "real"
    position: int = 0  # index of the target step in its workflow
    personal: UserTransitions | None = None  # the user's own earlier transitions (None: cold)
    population: PopulationView | None = None  # what other users of the API did (None: nothing)
    request: RequestKind | None = None  # source "request": which kind of ask


# -- specs -------------------------------------------------------------------------------------


@cache
def load_spec(path: Path) -> SpecIndex:
    """The parsed operation index of a spec file, parsed once per process."""
    return parse_spec(Path(path).read_bytes())


# -- loading -----------------------------------------------------------------------------------

_LAST_STATS: dict[str, Any] | None = None


def load_workflows(jentic_dir: Path | str, *, progress: bool = True) -> list[Workflow]:
    """Every workflow of ``jentic_dir/workflows/*/workflows.arazzo.json`` whose steps resolve.

    Dropped workflows are counted by reason; :func:`summary` reports the counts of the last call.
    """
    global _LAST_STATS
    root = Path(jentic_dir)
    files = sorted((root / "workflows").glob("*/workflows.arazzo.json"))
    if not files:
        raise FileNotFoundError(f"no workflows under {root / 'workflows'} (is jentic_dir right?)")
    stats: Counter[str] = Counter()
    out: list[Workflow] = []
    for n, file in enumerate(files, 1):
        api = file.parent.name
        try:
            doc = json.loads(file.read_text())
        except (OSError, ValueError):
            stats["files_unreadable"] += 1
            continue
        out.extend(parse_workflow_document(doc, api=api, root=root, stats=stats))
        if progress and (n % 50 == 0 or n == len(files)):
            print(f"workflows: {n}/{len(files)} files read, {len(out)} workflows kept",
                  file=sys.stderr, flush=True)
    stats["files"] = len(files)
    stats["workflows_kept"] = len(out)
    stats["steps_kept"] = sum(len(w.steps) for w in out)
    stats["apis_kept"] = len({w.api for w in out})
    _LAST_STATS = dict(stats)
    return out


def summary() -> dict[str, Any]:
    """Counts of the last :func:`load_workflows`: workflows, steps, and dropped ones by reason."""
    if _LAST_STATS is None:
        raise RuntimeError("summary() needs a load_workflows() call first")
    return dict(sorted(_LAST_STATS.items()))


def parse_workflow_document(
    doc: Mapping[str, Any],
    *,
    api: str,
    root: Path,
    stats: Counter[str] | None = None,
    spec_loader: Any = None,
) -> list[Workflow]:
    """The resolvable workflows of one Arazzo document; ``root`` is what its source URLs are
    relative to. ``spec_loader(path) -> SpecIndex`` defaults to :func:`load_spec`."""
    stats = Counter() if stats is None else stats
    loader = spec_loader or load_spec
    sources: dict[str, Path] = {}
    for sd in doc.get("sourceDescriptions") or []:
        if isinstance(sd, dict) and isinstance(sd.get("url"), str) and sd.get("type", "openapi") == "openapi":
            sources[str(sd.get("name") or "")] = (root / sd["url"]).resolve()
    workflows = [w for w in doc.get("workflows") or [] if isinstance(w, dict)]
    stats["workflows_total"] += len(workflows)
    stats["steps_total"] += sum(len(w.get("steps") or []) for w in workflows)
    if not sources:
        stats["dropped_no_openapi_source"] += len(workflows)
        return []
    specs: dict[str, SpecIndex] = {}
    for name, path in sources.items():
        try:
            specs[name] = loader(path)
        except (OSError, SpecInvalid):
            pass
    if not specs:
        stats["dropped_spec_unreadable"] += len(workflows)
        return []
    default = next(iter(specs))
    resolvers = {name: _Resolver(spec) for name, spec in specs.items()}
    out = []
    for wf in workflows:
        reason, workflow = _build_workflow(
            wf, api=api, specs=specs, resolvers=resolvers, paths=sources, default=default
        )
        if workflow is None:
            stats[f"dropped_{reason}"] += 1
        else:
            stats["steps_duplicate_alternatives_dropped"] += int(reason or 0)
            out.append(workflow)
    return out


class _Resolver:
    """operationId / operationPath → operation key of one spec."""

    def __init__(self, spec: SpecIndex) -> None:
        self.spec = spec
        exact: dict[str, list[str]] = {}
        folded: dict[str, list[str]] = {}
        for op in spec.operations:
            if op.operation_id:
                exact.setdefault(op.operation_id, []).append(op.key)
                folded.setdefault(op.operation_id.lower(), []).append(op.key)
        self.exact, self.folded = exact, folded
        self.keys_folded: dict[str, list[str]] = {}
        for op in spec.operations:
            self.keys_folded.setdefault(_fold_key(op.key), []).append(op.key)

    def by_operation_id(self, operation_id: str) -> tuple[str | None, str]:
        oid = operation_id
        if oid.startswith("$sourceDescriptions."):  # qualified: $sourceDescriptions.<name>.<id>
            oid = oid.rsplit(".", 1)[-1]
        for table, name in ((self.exact, oid), (self.folded, oid.lower())):
            keys = table.get(name)
            if keys:
                return (keys[0], "") if len(keys) == 1 else (None, "ambiguous_operation_id")
        return None, "unknown_operation_id"

    def by_operation_path(self, pointer_ref: str) -> tuple[str | None, str]:
        _, _, pointer = pointer_ref.partition("#")
        parts = [unquote(p).replace("~1", "/").replace("~0", "~") for p in pointer.split("/")]
        # ['', 'paths', '/items/{id}', 'get']
        if len(parts) != 4 or parts[1] != "paths" or parts[3].lower() not in _HTTP_METHODS:
            return None, "malformed_operation_path"
        key = f"{parts[3].upper()} {parts[2]}"
        if key in self.spec.by_key:
            return key, ""
        keys = self.keys_folded.get(_fold_key(key)) or []
        if len(keys) == 1:
            return keys[0], ""
        return None, "ambiguous_operation_path" if keys else "unknown_operation_path"


def _fold_key(key: str) -> str:
    return key.lower().rstrip("/")


def _source_of(step: Mapping[str, Any], default: str) -> str:
    ref = str(step.get("operationPath") or step.get("operationId") or "")
    m = re.match(r"\{?\$sourceDescriptions\.([^.}]+)", ref)
    if m:
        return m.group(1)
    head = ref.partition("#")[0]
    return head if head and "#" in ref and not head.startswith(("{", ".", "/")) else default


def _build_workflow(
    wf: Mapping[str, Any],
    *,
    api: str,
    specs: Mapping[str, SpecIndex],
    resolvers: Mapping[str, _Resolver],
    paths: Mapping[str, Path],
    default: str,
) -> tuple[str, Workflow | None]:
    workflow_id = str(wf.get("workflowId") or "")
    prompt = " ".join(str(wf.get("summary") or wf.get("description") or "").split())
    raw_steps = [s for s in wf.get("steps") or [] if isinstance(s, dict)]
    # Steps sharing a stepId are alternatives of one another: keep the first.
    seen: set[str] = set()
    kept_raw: list[tuple[str, Mapping[str, Any]]] = []
    for s in raw_steps:
        sid = str(s.get("stepId") or f"#{len(kept_raw)}")
        if sid in seen:
            continue
        seen.add(sid)
        kept_raw.append((sid, s))
    alternatives = len(raw_steps) - len(kept_raw)
    source_name = None
    keys: list[str] = []
    for _sid, step in kept_raw:
        if "workflowId" in step and not ("operationId" in step or "operationPath" in step):
            return "nested_workflow_step", None
        name = _source_of(step, default)
        if name not in resolvers:
            name = default
        source_name = source_name or name
        if name != source_name:
            return "steps_span_several_specs", None
        resolver = resolvers[name]
        if "operationPath" in step:
            key, why = resolver.by_operation_path(str(step["operationPath"]))
        elif "operationId" in step:
            key, why = resolver.by_operation_id(str(step["operationId"]))
        else:
            key, why = None, "step_without_operation"
        if key is None:
            return why, None
        keys.append(key)
    if len(keys) < 2:
        return "fewer_than_2_steps", None
    assert source_name is not None
    spec = specs[source_name]
    steps = _concrete_steps(api, workflow_id, spec, kept_raw, keys)
    return str(alternatives), Workflow(
        api=api, workflow_id=workflow_id, prompt=prompt, spec_path=paths[source_name],
        steps=tuple(steps), source="real",
    )


# -- concrete values ---------------------------------------------------------------------------


def synthetic_id(*parts: object) -> str:
    """A deterministic opaque id: no name in it, so it says nothing the history doesn't."""
    return hashlib.sha1("|".join(map(str, parts)).encode()).hexdigest()[:10]


def _concrete_steps(
    api: str,
    workflow_id: str,
    spec: SpecIndex,
    raw: Sequence[tuple[str, Mapping[str, Any]]],
    keys: Sequence[str],
) -> list[Step]:
    index_of = {sid: i for i, (sid, _) in enumerate(raw)}
    steps: list[Step] = []

    def value_of(expr: Any, uses: set[int], i: int) -> str:
        """The concrete string for a parameter value expression of step ``i``."""
        if isinstance(expr, str):
            m = _STEP_REF.fullmatch(expr.strip()) or _STEP_REF.match(expr.strip())
            if m and expr.strip().startswith("$steps."):
                j = index_of.get(m.group(1))
                if j is not None and j < i:
                    uses.add(j)
                    return _output_value(j, m.group(2))
                return synthetic_id(api, workflow_id, "dangling", m.group(1), m.group(2))
            for m in _STEP_REF.finditer(expr):  # embedded, e.g. "Bearer $steps.login..."
                j = index_of.get(m.group(1))
                if j is not None and j < i:
                    uses.add(j)
            mi = _INPUT_REF.match(expr.strip())
            if mi:
                return synthetic_id(api, workflow_id, "inputs", mi.group(1).split(".")[0])
            if expr.startswith("$"):
                return synthetic_id(api, workflow_id, "expr", expr)
            return expr
        if isinstance(expr, dict | list):
            return json.dumps(_substitute(expr, uses, i), sort_keys=True)[:200]
        return json.dumps(expr) if isinstance(expr, bool) or expr is None else str(expr)

    def _substitute(node: Any, uses: set[int], i: int) -> Any:
        if isinstance(node, dict):
            return {k: _substitute(v, uses, i) for k, v in node.items()}
        if isinstance(node, list):
            return [_substitute(v, uses, i) for v in node]
        return value_of(node, uses, i) if isinstance(node, str) else node

    def _output_value(j: int, output: str) -> str:
        """What step j's output ``output`` is: the step's own id when it names one of its
        parameters (``$request.path.x`` or the same name), else a fresh id returned by it."""
        step, (_, raw_j) = steps[j], raw[j]
        expr = (raw_j.get("outputs") or {}).get(output)
        if isinstance(expr, str):
            m = re.match(r"\$request\.(?:path|query|body)[.#/]+([A-Za-z0-9_\-]+)", expr)
            if m:
                for table in (step.path_params, step.params):
                    if m.group(1) in table:
                        return table[m.group(1)]
        for table in (step.path_params, step.params):
            for name, value in table.items():
                if name.lower() == output.lower():
                    return value
        return synthetic_id(api, workflow_id, "steps", raw[j][0], output)

    for i, ((_sid, s), key) in enumerate(zip(raw, keys, strict=True)):
        op = spec.operations[spec.by_key[key]]
        uses: set[int] = set()
        declared: dict[str, tuple[str, Any]] = {}
        for p in s.get("parameters") or []:
            if isinstance(p, dict) and isinstance(p.get("name"), str) and "value" in p:
                declared[p["name"]] = (str(p.get("in") or ""), p["value"])
        path_params: dict[str, str] = {}
        params: dict[str, str] = {}
        from_steps: dict[str, int] = {}
        from_inputs: list[str] = []

        def origin(name: str, expr: Any, i: int = i, from_steps: dict[str, int] = from_steps,
                   from_inputs: list[str] = from_inputs) -> None:
            """Record where parameter ``name`` of step ``i`` takes its value from."""
            if not isinstance(expr, str):
                return
            m = _STEP_REF.match(expr.strip())
            if m and expr.strip().startswith("$steps.") and index_of.get(m.group(1), i) < i:
                from_steps.setdefault(name, index_of[m.group(1)])
            elif _INPUT_REF.match(expr.strip()):
                from_inputs.append(name)

        for name in op.path_params:
            if name in declared:
                value = value_of(declared[name][1], uses, i)
                origin(name, declared[name][1])
            else:
                value = synthetic_id(api, workflow_id, "inputs", name)
            path_params[name] = value
        for name, (location, expr) in declared.items():
            if location == "header":
                value_of(expr, uses, i)  # an auth token from a login step is still dataflow
            elif name not in path_params:
                params[name] = value_of(expr, uses, i)
                origin(name, expr)
        body = s.get("requestBody")
        payload = body.get("payload") if isinstance(body, dict) else None
        if isinstance(payload, dict):
            for name, expr in payload.items():
                if str(name) not in params:
                    params[str(name)] = value_of(expr, uses, i)
                    origin(str(name), expr)
        elif payload is not None:
            value_of(payload, uses, i)
        steps.append(Step(key=key, path_params=path_params, params=params,
                          uses_steps=tuple(sorted(uses)),
                          description=" ".join(str(s.get("description") or "").split()),
                          from_steps=tuple(sorted(from_steps.items())),
                          from_inputs=tuple(dict.fromkeys(from_inputs))))
    return steps


def concrete_endpoint(
    spec: SpecIndex, step: Step, *, with_base: bool = False
) -> str:
    """``METHOD /concrete/path`` of a step, optionally behind the spec's first base path."""
    method, template = step.key.split(" ", 1)

    def fill(m: re.Match[str]) -> str:
        (name,) = path_param_names(m.group(0))  # {+name} → name, as Operation.path_params
        return quote(step.path_params.get(name, synthetic_id("missing", name)), safe="")

    path = _PATH_PARAM.sub(fill, template)
    if with_base and spec.base_paths:
        path = spec.base_paths[0].rstrip("/") + path
    return f"{method} {path}"


def _uses_base(api: str, workflow_id: str, position: int) -> bool:
    return hashlib.sha1(f"base|{api}|{workflow_id}|{position}".encode()).digest()[0] % 2 == 0


# -- examples and splits -----------------------------------------------------------------------


def examples(
    workflows: Iterable[Workflow], *, specs: Mapping[Path, SpecIndex] | None = None
) -> Iterator[Example]:
    """n examples per workflow of n steps: history = the steps before (the first is a cold start).

    The history is resolved by ``SpecIndex.resolve`` on the concrete endpoints, exactly as serving
    resolves events. ``specs`` supplies indexes not on disk (e.g. synthetic tests); otherwise
    :func:`load_spec` reads ``workflow.spec_path``.
    """
    for wf in workflows:
        spec = specs[wf.spec_path] if specs and wf.spec_path in specs else load_spec(wf.spec_path)
        history: list[Call] = []
        for i, step in enumerate(wf.steps):
            yield Example(
                api=wf.api, workflow_id=wf.workflow_id, spec=spec, history=tuple(history),
                prompt=wf.prompt, target=step.key, source=wf.source, position=i,
            )
            endpoint = concrete_endpoint(spec, step, with_base=_uses_base(wf.api, wf.workflow_id, i))
            history.append(spec.resolve(endpoint, dict(step.params)))


def history_of(wf: Workflow, spec: SpecIndex, upto: int) -> tuple[Call, ...]:
    """The calls of ``wf``'s steps before ``upto``, resolved as :func:`examples` resolves them."""
    history = []
    for i, step in enumerate(wf.steps[:upto]):
        endpoint = concrete_endpoint(spec, step, with_base=_uses_base(wf.api, wf.workflow_id, i))
        history.append(spec.resolve(endpoint, dict(step.params)))
    return tuple(history)


def split_of(api: str, *, valid_fraction: float = 0.2) -> Split:
    """Train or validation, by a stable hash of the whole API's name (never by step)."""
    if not 0.0 <= valid_fraction <= 1.0:
        raise ValueError(f"valid_fraction must be in [0, 1], got {valid_fraction}")
    h = int.from_bytes(hashlib.sha256(api.encode()).digest()[:8], "big") / 2**64
    return "valid" if h < valid_fraction else "train"


def stopping_apis(train_apis: Iterable[str], *, fraction: float = 0.2) -> frozenset[str]:
    """The training APIs held out of the first fit to choose its number of trees and to fit the
    calibration, so that neither is chosen on the validation APIs whose numbers are quoted: a
    ``fraction`` of them (at least one, never all), by a stable hash of the API's name of its own
    (a different order from :func:`split_of`'s)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    apis = sorted(set(train_apis), key=lambda a: hashlib.sha256(f"stop:{a}".encode()).digest())
    if len(apis) < 2:
        raise ValueError(f"need at least 2 training APIs to hold one out for stopping, got {len(apis)}")
    return frozenset(apis[: min(len(apis) - 1, max(1, round(fraction * len(apis))))])
