"""The command line: ``opensesame <command>`` (installed script) or ``python -m tools.cli``.

    predict    a prediction from a JSON request file or flags: over HTTP (--url), through a Ray
               handle from another job (--address), or in this process (--in-process)
    feedback   tell the service what the user really did after a prediction
    train      train the ranker from the base data (python -m ranker.train)
    retrain    retrain on base data + recorded feedback, gate, promote (python -m tools.retrain)
    rollback   put the previous model version back (python -m tools.retrain rollback)
    models     the model versions and which one is current
    evaluate   ranking metrics of a model on the held-out APIs (and on recorded feedback);
               --plot FILE also draws them as bars
    bench      a bounded load against a running service (or the in-process pipeline)
    population what the population memory holds per API, and clearing an API (tools.population)

Every command has ``--help``; long work draws a progress bar on stderr; ``--json`` prints one
machine-readable document on stdout. An error is one line on stderr, never a traceback. Exit
status: 0 success; 1 the service answered an error or could not be reached (in process: the
error the service would have answered); 2 bad arguments, request or OPENSESAME_* settings;
3 a retrain refused by its gate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from core.errors import PredictorError, SpecInvalid
from core.settings import SettingsError
from core.spec.openapi import load_document
from tools.cluster import become_driver_of, leave_ray

__all__ = ["main", "parse_event", "build_request"]

DEFAULT_URL = "http://127.0.0.1:8000"
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_GATE = 0, 1, 2, 3


# -- predict / feedback --------------------------------------------------------------------------


def parse_event(text: str) -> dict[str, Any]:
    """``'PUT /v1/invoices/in_1/status {"status": "DRAFT"}'`` → an event (params optional)."""
    text = text.strip()
    brace = text.find("{")
    endpoint, params = (text, {}) if brace < 0 else (text[:brace].strip(), json.loads(text[brace:]))
    if not isinstance(params, dict):
        raise ValueError(f"event params must be a JSON object: {text!r}")
    return {"endpoint": endpoint, "params": params}


def build_request(args: argparse.Namespace) -> Any:
    """The :class:`PredictRequest` from ``--request FILE`` and/or flags (flags win)."""
    from deployments.serving.schemas import PredictRequest

    body: dict[str, Any] = {}
    if args.request:
        raw = sys.stdin.read() if args.request == "-" else Path(args.request).read_text()
        body = json.loads(raw)
    if args.user_id:
        body["user_id"] = args.user_id
    if args.event:
        body["events"] = [parse_event(e) for e in args.event]
    if args.prompt is not None:
        body["prompt"] = args.prompt
    if args.spec_url:
        body.pop("spec", None)
        body["spec_url"] = args.spec_url
    if args.spec:
        body.pop("spec_url", None)
        body["spec"] = _read_spec(args.spec)
    if args.k is not None:
        body["k"] = args.k
    return PredictRequest.model_validate(body)


def _read_spec(path: str) -> dict[str, Any]:
    """The document of ``--spec FILE``, read as the service reads one (JSON or YAML, aliases
    bounded); a file that is not one as a ``ValueError`` (bad input)."""
    try:
        return load_document(Path(path).read_bytes())
    except SpecInvalid as exc:
        raise ValueError(f"--spec {path} {exc.message.removeprefix('spec ')}") from None


def one_line(exc: Exception) -> str:
    """An input error as one line: a pydantic error as ``field: problem; …`` (as the service's
    422 says it), anything else by its first line."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            found = errors(include_url=False, include_input=False)
        except TypeError:
            found = None
        if found:
            return "; ".join(f"{'.'.join(str(p) for p in e['loc']) + ': ' if e['loc'] else ''}{e['msg']}"
                             for e in found[:5])
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _print_prediction(answer: dict[str, Any]) -> None:
    meta = answer["metadata"]
    print(f"prediction_id {answer['prediction_id']}  model {meta['model_version']}  "
          f"generator {meta['generator']}  {meta['timings_ms'].get('total', 0):.1f} ms"
          + ("  (cold start)" if meta.get("cold_start") else ""))
    for i, p in enumerate(answer["predictions"], 1):
        params = ", ".join(f"{k}={v}" for k, v in p["params"].items())
        missing = f" missing: {', '.join(p['missing_params'])}" if p.get("missing_params") else ""
        flag = " [destructive]" if p.get("destructive") else ""
        print(f"{i:>2}. {p['score']:.3f}  {p['endpoint']}{flag}  {params}{missing}\n      {p['why']}")


def _error(status: int | str, body: Any, as_json: bool) -> int:
    if as_json:
        print(json.dumps({"error": body, "status": status}))
    else:
        message = body.get("error", {}).get("message") if isinstance(body, dict) else body
        print(f"error {status}: {message}", file=sys.stderr)
    return 1


def cmd_predict(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    try:
        request = build_request(args)
    except (ValidationError, ValueError, OSError) as exc:
        print(f"invalid request: {one_line(exc)}", file=sys.stderr)
        return 2
    if args.in_process:
        try:
            answer = asyncio.run(_predict_in_process(request, args))
        except PredictorError as exc:  # what the service would answer, said the same way
            return _error(exc.status, {"error": {"status": exc.status, "message": exc.message}}, args.json)
    elif args.address:
        posted = _predict_by_handle(request, args)
        if isinstance(posted, int):
            return posted
        answer = posted
    else:
        posted = _post(args, "/predict", request.model_dump(mode="json", exclude_none=True))
        if isinstance(posted, int):
            return posted
        answer = posted
    if args.json:
        print(json.dumps(answer))
    else:
        _print_prediction(answer)
    return 0


def no_ray_at(address: str, *, timeout_s: float = 5.0) -> str | None:
    """Why nothing can be a Ray head at ``address`` (its port does not answer), or None."""
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=min(timeout_s, 5.0)).close()
    except (OSError, ValueError) as exc:
        return (f"no Ray cluster at {address} ({exc.strerror if isinstance(exc, OSError) else exc}); "
                "make run's head is 127.0.0.1:6390")
    return None


def connect_ray(address: str, *, timeout_s: float) -> str | None:
    """Join the Ray cluster at ``address`` as a driver, within ``timeout_s``; None once joined,
    else why not, in one line. Ray itself retries an absent GCS for minutes, logging as it goes:
    the port is tried first, Ray's own lines are held back while it connects, and a connection
    that still hangs ends the process when the time is up."""
    import tempfile

    become_driver_of(address)
    import ray

    absent = no_ray_at(address, timeout_s=timeout_s)
    if absent is not None:
        return absent
    sys.stderr.flush()
    stderr = os.dup(2)

    def give_up() -> None:
        os.write(stderr, f"error unreachable: Ray at {address} did not accept this driver within "
                         f"{timeout_s:g} s (a Ray head there? the same RAY_AUTH_MODE?)\n".encode())
        os._exit(EXIT_ERROR)

    watchdog = threading.Timer(timeout_s, give_up)
    watchdog.daemon = True
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)  # Ray's C++ core writes to fd 2 directly
        watchdog.start()
        try:
            ray.init(address=address, log_to_driver=False)
        except Exception as exc:  # noqa: BLE001 - said in one line below
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            return f"cannot join Ray at {address}: {first}"
        finally:
            watchdog.cancel()
            sys.stderr.flush()
            os.dup2(stderr, 2)
            os.close(stderr)
    return None


def _predict_by_handle(request: Any, args: argparse.Namespace) -> dict[str, Any] | int:
    """The answer through a DeploymentHandle, as another Ray job; or the exit code after one line."""
    problem = connect_ray(args.address, timeout_s=args.timeout)  # first: it sets Ray's environment
    from ray import serve

    if problem is not None:
        return _error("unreachable", problem, args.json)
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # no "Started <router…>" line
    try:
        answer: dict[str, Any] = serve.get_app_handle(args.app_name).predict.remote(request).result(
            timeout_s=args.timeout).model_dump(mode="json")
        return answer
    except Exception as exc:  # noqa: BLE001 - every failure is one line, with its status if known
        cause = getattr(exc, "cause", None) or exc  # a replica's error arrives wrapped in a RayTaskError
        if isinstance(cause, PredictorError):
            return _error(cause.status, {"error": {"status": cause.status, "message": cause.message}},
                          args.json)
        first = (str(cause).strip().splitlines() or [""])[0][:500]
        return _error("failed", f"{type(cause).__name__}: {first}", args.json)
    finally:
        leave_ray()


async def _predict_in_process(request: Any, args: argparse.Namespace) -> dict[str, Any]:
    from core.settings import load_settings
    from deployments.serving.pipeline import Pipeline

    # The service falls back to heuristics without a model; a model asked for and missing is an error.
    if args.model and not args.model.exists():
        raise FileNotFoundError(f"ranker model {args.model} not found")
    overrides: dict[str, Any] = {"model_path": str(args.model)} if args.model else {}
    pipeline = Pipeline(load_settings(**overrides))
    try:
        return (await pipeline.predict(request)).model_dump(mode="json")
    finally:
        await pipeline.aclose()


def _post(args: argparse.Namespace, path: str, body: dict[str, Any]) -> dict[str, Any] | int:
    """The service's JSON answer, or the exit code after printing why there is none."""
    import httpx

    try:
        r = httpx.post(args.url.rstrip("/") + path, json=body, timeout=args.timeout)
    except httpx.HTTPError as exc:
        return _error("unreachable", f"{args.url}: {exc}", args.json)
    if r.status_code != 200:
        return _error(r.status_code, _json_or_text(r), args.json)
    return r.json()


def _json_or_text(r: Any) -> Any:
    try:
        return r.json()
    except ValueError:
        return r.text[:1000]


def cmd_feedback(args: argparse.Namespace) -> int:
    from deployments.serving.schemas import FeedbackRequest

    body = {"prediction_id": args.prediction_id}
    if args.actual:
        body["actual_endpoint"] = args.actual
    if args.accepted:
        body["accepted"] = True
    try:
        FeedbackRequest.model_validate(body)
    except ValueError as exc:
        print(f"invalid feedback: {one_line(exc)}", file=sys.stderr)
        return 2
    answer = _post(args, "/feedback", body)
    if isinstance(answer, int):
        return answer
    if args.json:
        print(json.dumps(answer))
    else:
        rank = f"rank {answer['rank']}" if answer["rank"] else "not among the predictions"
        print(f"{'recorded' if answer['recorded'] else 'already recorded'}: "
              f"{answer['operation'] or answer['actual_endpoint']} ({rank}, {answer['source']})")
    return 0


# -- evaluate ------------------------------------------------------------------------------------


PLOT_METRICS = ("hit@1", "hit@3", "mrr")


def plot_evaluation(rows: dict[str, dict[str, float]], path: Path, *, model: str) -> Path:
    """evaluate's rows ("group: method" -> metrics) as bars of hit@1 / hit@3 / MRR per group."""
    from tools.plotting import metric_bars, split_rows

    panels = {("MRR" if m == "mrr" else m): v for m, v in split_rows(rows, PLOT_METRICS).items()}
    return metric_bars(panels, path,
                       title=f"opensesame evaluate: model {model} (held-out APIs; a target the "
                             "generator missed is a miss)")


def cmd_evaluate(args: argparse.Namespace) -> int:
    import hashlib

    import numpy as np

    if args.plot:
        from tools.plotting import PlotUnavailable, pyplot

        try:  # before the minutes of evaluation, not after
            pyplot()
        except PlotUnavailable as exc:
            print(exc, file=sys.stderr)
            return 2

    from core.candidates.retrieval import RetrievalGenerator
    from core.features import FeatureExtractor
    from core.priors.transitions import load_transitions
    from core.progress import track
    from core.scorer import HeuristicRanker, RankerModel
    from core.settings import load_settings
    from ranker.data import examples, load_workflows, split_of
    from ranker.evaluate import build_groups, metrics_table, ranking_metrics, ranks_from_scores

    settings = load_settings()
    model = RankerModel.load(args.model) if args.model else RankerModel.load(settings.model_path)
    transitions = load_transitions()
    generator = RetrievalGenerator(transitions=transitions)
    extractor = FeatureExtractor(transitions=transitions)
    rows: dict[str, dict[str, float]] = {}
    started = time.perf_counter()
    if not args.no_workflows:
        workflows = [w for w in load_workflows(args.jentic_dir or settings.jentic_dir, progress=False)
                     if split_of(w.api) == "valid"]
        if args.max_apis:
            ordered = sorted({w.api for w in workflows}, key=lambda a: hashlib.sha256(a.encode()).hexdigest())
            keep = set(ordered[: args.max_apis])
            workflows = [w for w in workflows if w.api in keep]
        items = list(examples(workflows))
        if args.synthetic_per_api:
            from ranker.synth import synthesize_for_apis

            synthetic = synthesize_for_apis(workflows, seed=args.seed, per_api=args.synthetic_per_api)
            items += list(examples(synthetic))
        groups = build_groups(track(items, "features", enabled=not args.quiet), generator=generator,
                              extractor=extractor)
        for source in ("real", "synthetic"):
            part = groups.select(groups.source == source)
            if not len(part):
                continue
            rows[f"{source}: generator order"] = ranking_metrics(part.gen_rank)
            rows[f"{source}: heuristic fallback"] = ranking_metrics(
                ranks_from_scores(part, HeuristicRanker().raw_scores(part.X)))
            rows[f"{source}: {model.version}"] = ranking_metrics(
                ranks_from_scores(part, model.raw_scores(part.X)))
    if args.feedback:
        from deployments.serving.feedback import FeedbackReader
        from ranker.retrain import feedback_groups

        reader = FeedbackReader(args.feedback)
        fb = feedback_groups(reader, list(reader.predictions()), extractor=extractor, holdout_fraction=0.0,
                             progress=not args.quiet)
        if len(fb.groups):
            rows["feedback: as served"] = ranking_metrics(fb.served_ranks)
            scores = model.raw_scores(fb.groups.X) if len(fb.groups.X) else np.zeros(0)
            rows[f"feedback: {model.version}"] = ranking_metrics(ranks_from_scores(fb.groups, scores))
    if not rows:
        print("nothing to evaluate", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"model": model.version, "metrics": rows,
                          "seconds": round(time.perf_counter() - started, 1)}))
    else:
        print(metrics_table(rows, title="held-out APIs (a target the generator missed is a miss)"))
    if args.plot:
        plot_evaluation(rows, args.plot, model=model.version)
        if not args.json:
            print(f"\nplot: {args.plot}")
    return 0


# -- bench ---------------------------------------------------------------------------------------


def _bench_bodies(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.request:
        doc = json.loads(Path(args.request).read_text())
        return doc if isinstance(doc, list) else [doc]
    spec = json.loads((Path(__file__).resolve().parent.parent / "examples" / "billing_spec.json").read_text())
    return [
        {"user_id": f"bench-{i}", "prompt": "get this invoice paid", "spec": spec, "k": 5,
         "events": [{"endpoint": "GET /v1/invoices"},
                    {"endpoint": f"PUT /v1/invoices/in_{i}/status", "params": {"status": "DRAFT"}}]}
        for i in range(16)
    ]


def cmd_bench(args: argparse.Namespace) -> int:
    from core.progress import Progress

    bodies = _bench_bodies(args)
    if args.requests is None and args.duration is None:
        args.duration = 10.0
    total = args.requests
    if args.in_process:
        summary = asyncio.run(_bench_in_process(bodies, args))
    else:
        from tools.loadgen import run_load

        lock = threading.Lock()
        with Progress("requests", total, enabled=not args.quiet) as bar:
            def tick() -> None:
                with lock:
                    bar.update()

            result = run_load(args.url.rstrip("/"), bodies, clients=args.clients, requests=args.requests,
                              duration_s=args.duration, on_request=tick, timeout_s=args.timeout)
        summary = {"target": args.url, "clients": args.clients, **result.summary()}
    if args.json:
        print(json.dumps(summary))
    else:
        lat = summary["latency_ms"]
        print(f"{summary['requests']} requests in {summary['seconds']:.1f}s "
              f"({summary['throughput_rps']:.1f}/s), errors {summary['errors']}; latency ms "
              f"p50 {lat['p50']:.1f} p95 {lat['p95']:.1f} p99 {lat['p99']:.1f} max {lat['max']:.1f}")
        if summary.get("error_samples"):
            print("first errors: " + " | ".join(summary["error_samples"][:3]), file=sys.stderr)
    return 0 if summary["errors"] == 0 else 1


async def _bench_in_process(bodies: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from core.progress import Progress
    from core.settings import load_settings
    from deployments.serving.pipeline import Pipeline
    from deployments.serving.schemas import PredictRequest

    requests = [PredictRequest.model_validate(b) for b in bodies]
    pipeline = Pipeline(load_settings())
    latencies: list[float] = []
    errors: list[str] = []
    start = time.perf_counter()
    try:
        with Progress("requests", args.requests, enabled=not args.quiet) as bar:
            n = 0
            while (args.requests is None or n < args.requests) and (
                    args.duration is None or time.perf_counter() - start < args.duration):
                t0 = time.perf_counter()
                try:
                    await pipeline.predict(requests[n % len(requests)])
                    latencies.append((time.perf_counter() - t0) * 1000)
                except Exception as exc:  # noqa: BLE001 - counted and reported
                    errors.append(f"{type(exc).__name__}: {exc}")
                n += 1
                bar.update()
    finally:
        await pipeline.aclose()
    seconds = time.perf_counter() - start
    lat = np.array(latencies or [0.0])
    return {
        "target": "in-process", "clients": 1, "requests": n, "errors": len(errors),
        "seconds": round(seconds, 3), "throughput_rps": round(n / seconds, 2) if seconds else 0.0,
        "latency_ms": {f"p{q}": round(float(np.percentile(lat, q)), 2) for q in (50, 90, 95, 99)}
        | {"max": round(float(lat.max()), 2)},
        "error_samples": errors[:5],
    }


# -- wiring --------------------------------------------------------------------------------------

_FORWARDED = {  # command: (module, its arguments first, its parser's prog, the one-line help)
    "train": ("ranker.train", [], "opensesame train", "train the ranker from the base data"),
    "retrain": ("tools.retrain", [], "opensesame retrain",
                "retrain on base data + recorded feedback, gate, promote"),
    # a subcommand of tools.retrain: its parser's prog is "<prog> <subcommand>"
    "rollback": ("tools.retrain", ["rollback"], "opensesame", "put the previous model version back"),
    "models": ("tools.retrain", ["models"], "opensesame", "the model versions and which one is current"),
    "population": ("tools.population", [], "opensesame population",
                   "what each API's population memory holds; clear one"),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="opensesame", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    out = argparse.ArgumentParser(add_help=False)
    out.add_argument("--json", action="store_true", help="one JSON document on stdout")
    out.add_argument("--timeout", type=float, default=30.0,
                     help="seconds per request, and to join Ray with --address (default 30)")

    p = sub.add_parser("predict", parents=[out], help="predict the next call",
                       description="Predict the next API call. The request comes from --request "
                       "(a /predict JSON body; - for stdin) and/or flags, which override it.")
    p.add_argument("--request", help="JSON request file, or - for stdin")
    p.add_argument("--user-id")
    p.add_argument("--event", action="append",
                   help="a past call, oldest first: 'METHOD /path' optionally followed by a JSON params "
                        "object; repeat for each")
    p.add_argument("--prompt")
    spec = p.add_mutually_exclusive_group()
    spec.add_argument("--spec-url")
    spec.add_argument("--spec", help="an OpenAPI file (JSON or YAML), sent inline")
    p.add_argument("-k", type=int)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--url", default=DEFAULT_URL, help="the service over HTTP (default %(default)s)")
    where.add_argument("--address", help="a Ray cluster: call the app through a handle, as another job")
    where.add_argument("--in-process", action="store_true", help="run the pipeline here, no service")
    p.add_argument("--app-name", default="opensesame")
    p.add_argument("--model", type=Path, help="with --in-process: the model to rank with")
    p.set_defaults(func=cmd_predict)

    f = sub.add_parser("feedback", parents=[out], help="record what the user really did",
                       description="Record the outcome of a prediction (POST /feedback).")
    f.add_argument("prediction_id")
    what = f.add_mutually_exclusive_group(required=True)
    what.add_argument("--actual", help="the call the user made, e.g. 'POST /v1/invoices/in_1/pay'")
    what.add_argument("--accepted", action="store_true", help="the user took the top prediction")
    f.add_argument("--url", default=DEFAULT_URL)
    f.set_defaults(func=cmd_feedback)

    e = sub.add_parser("evaluate", parents=[out], help="metrics on held-out APIs",
                       description="hit@1/3/5, MRR and NDCG@5 of a model on the validation APIs "
                       "(real workflows, optionally synthetic), beside the generator's order and "
                       "the heuristic fallback; with --feedback, also on recorded outcomes.")
    e.add_argument("--model", type=Path, help="model file or directory (default: the configured one)")
    e.add_argument("--jentic-dir", type=Path)
    e.add_argument("--max-apis", type=int, help="a deterministic subset of the validation APIs")
    e.add_argument("--synthetic-per-api", type=int, default=0)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--feedback", type=Path, help="a feedback store to evaluate on as well")
    e.add_argument("--no-workflows", action="store_true", help="only the feedback store")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.add_argument("--plot", type=Path, metavar="FILE",
                   help="also write a bar chart (PNG) of hit@1 / hit@3 / MRR per group (needs the "
                   "bench extra: matplotlib)")
    e.set_defaults(func=cmd_evaluate)

    b = sub.add_parser("bench", parents=[out], help="a bounded load against the service",
                       description="Closed-loop load: --clients concurrent clients, each sending "
                       "one request after another, for --requests or --duration (default 10 s).")
    b.add_argument("--url", default=DEFAULT_URL)
    b.add_argument("--in-process", action="store_true", help="the in-process pipeline, one client")
    b.add_argument("--request", help="a JSON request body, or a list of them (default: a built-in sample)")
    b.add_argument("--clients", type=int, default=4)
    b.add_argument("--requests", type=int)
    b.add_argument("--duration", type=float)
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.set_defaults(func=cmd_bench)

    for name, (_, _, _, said) in _FORWARDED.items():
        sub.add_parser(name, add_help=False, help=said)  # its options: opensesame NAME --help
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; a known error (bad settings, a PredictorError) is one line on stderr and
    its documented exit status, never a traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # The service's warnings (a refused spec host, a cache bypassed) are for its logs; here the
    # command's own line says what went wrong, once.
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    try:
        if argv and argv[0] in _FORWARDED:  # these keep their own parsers, progress and --json
            import importlib

            module, prefix, prog, _ = _FORWARDED[argv[0]]
            address = _option(argv, "--address")
            absent = no_ray_at(address) if address and "--help" not in argv and "-h" not in argv else None
            if absent is not None:  # a rollout would retry the address for minutes first
                print(f"error unreachable: {absent}", file=sys.stderr)
                return EXIT_ERROR
            return int(importlib.import_module(module).main([*prefix, *argv[1:]], prog=prog) or 0)
        args = _parser().parse_args(argv)
        return int(args.func(args))
    except SettingsError as exc:
        print(f"opensesame: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except PredictorError as exc:
        print(f"error {exc.status}: {exc.message}", file=sys.stderr)
        return EXIT_ERROR
    except FileNotFoundError as exc:  # a path given (or defaulted) that is not there: bad arguments
        print(f"opensesame: {one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        from tools.rollout import RolloutError  # imported already when a rollout ran

        if not isinstance(exc, RolloutError | subprocess.TimeoutExpired):
            raise
        print(f"rollout failed: {' '.join(str(exc).split())[:600]}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _option(argv: list[str], name: str) -> str | None:
    """The value of ``name`` in ``argv`` (``--name value`` or ``--name=value``), if given."""
    for i, word in enumerate(argv):
        if word == name and i + 1 < len(argv):
            return argv[i + 1]
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
    return None


if __name__ == "__main__":
    raise SystemExit(main())
