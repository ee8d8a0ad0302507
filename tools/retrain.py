"""Retrain, roll back and list model versions from the command line (also ``opensesame retrain``,
``opensesame rollback``, ``opensesame models``):

    python -m tools.retrain [--feedback var/feedback.sqlite] [--models-dir var/models] [--apply ...]
    python -m tools.retrain rollback [--apply ...]
    python -m tools.retrain models      (or list)

The work is :mod:`ranker.retrain`'s; this opens the feedback store for it, prints the validation
table (stdout; stderr with ``--json``) and the JSON summary, and with ``--apply`` moves the
running app to the result with a ``user_config`` change (:mod:`tools.rollout`).

Exit codes: 0 new version written, 3 refused by the gate, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from core.priors.transitions import DEFAULT_PATH as TRANSITIONS_PATH
from core.progress import step
from ranker.registry import RegistryError
from ranker.retrain import (
    FEEDBACK_WEIGHT,
    TOLERANCE,
    RetrainConfig,
    list_versions,
    retrain,
    rollback,
)
from ranker.train import DEFAULT_ROUNDS, EARLY_STOPPING, PERSONAL_USERS_PER_API, SYNTHETIC_WEIGHT

__all__ = ["main"]

EXIT_USAGE = 2
EXIT_REFUSED = 3
NO_ADDRESS = "--apply needs --address (or RAY_ADDRESS): the running Ray cluster"


def _rollout(args: argparse.Namespace, model_dir: Path | None, version: str | None) -> None:
    from tools.rollout import apply_config, wait_for_model, write_live_config

    live = write_live_config(args.serve_config, args.models_dir / "serve_config.live.yaml",
                             model_path=model_dir, app_name=args.app_name)
    step(f"      applying {live} to {args.address} (Ranker user_config.model_path = {model_dir})")
    apply_config(live, address=args.address, app_dir=args.app_dir)
    if args.url and version:
        health = wait_for_model(args.url, version=version)
        step(f"      serving {health['model_version']} (swap took {health.get('last_swap_s')}s)")


def cmd_retrain(args: argparse.Namespace) -> int:
    from deployments.serving.feedback import FeedbackReader

    if args.apply and not args.address:
        step(NO_ADDRESS)
        return EXIT_USAGE
    try:
        config = RetrainConfig(
            models_dir=args.models_dir, feedback_store=str(args.feedback), jentic_dir=args.jentic_dir,
            baseline=args.baseline, feedback_weight=args.feedback_weight,
            holdout_fraction=args.holdout_fraction, tolerance=args.tolerance, promote=args.promote,
            synthetic_per_api=args.synthetic_per_api, synthetic_weight=args.synthetic_weight,
            personal_users_per_api=args.personal_users_per_api, seed=args.seed,
            transitions=args.transitions, num_boost_round=args.num_boost_round,
            early_stopping=args.early_stopping, log_period=args.log_period,
        )
    except ValueError as exc:
        step(str(exc))
        return EXIT_USAGE
    started = time.perf_counter()
    reader = FeedbackReader(args.feedback) if args.feedback.is_file() else None
    try:
        result = retrain(config, outcomes=reader,
                         show_table=step if args.json else lambda table: print(table, flush=True))
    finally:
        if reader is not None:
            reader.close()
    summary = {
        "passed": result.passed, "reason": result.reason,
        "baseline": {"version": result.baseline_version, "path": result.baseline_path},
        "metrics": result.metrics,
        "feedback": {"train": result.feedback_train, "holdout": result.feedback_holdout,
                     "skipped": result.skipped},
        "version": result.version, "promoted": result.promoted, "applied": False,
    }
    if not result.passed:
        if args.json:
            print(json.dumps(summary, indent=1))
        return EXIT_REFUSED
    summary["path"] = str(result.path)
    if result.promoted and args.apply:
        _rollout(args, result.path, result.version)
        summary["applied"] = True
    step(f"      {time.perf_counter() - started:.0f}s in all")
    if args.json:
        print(json.dumps(summary, indent=1))
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    if args.apply and not args.address:
        step(NO_ADDRESS)
        return EXIT_USAGE
    try:
        result = rollback(args.models_dir, reason=args.reason)
    except RegistryError as exc:
        step(f"rollback refused: {exc}")
        return EXIT_USAGE
    step(f"rolled back {result.retired} -> {result.current or 'the shipped model'}")
    applied = False
    if args.apply:
        version = result.current
        if version is None:
            from core.scorer import RankerModel, default_model_path
            from core.settings import load_settings

            version = RankerModel.load(load_settings().model_path or default_model_path()).version
        _rollout(args, result.path, version)
        applied = True
    if args.json:
        print(json.dumps({"retired": result.retired, "current": result.current,
                          "path": str(result.path) if result.path else None, "applied": applied}))
    return 0


def _shipped_version() -> str:
    """``the shipped model <version>``: what serves while the registry has no current version."""
    from core.scorer import RankerModel, default_model_path
    from core.settings import load_settings

    path = load_settings().model_path or default_model_path()
    try:
        return f"the shipped model {RankerModel.load(path).version}"
    except (OSError, ValueError) as exc:
        return f"the shipped model, which cannot be loaded ({exc})"


def cmd_list(args: argparse.Namespace) -> int:
    listed = list_versions(args.models_dir)
    rows = [{"version": v.version, "current": v.current, "created": v.created, "hit@1": v.hit_at_1}
            for v in listed.versions]
    if args.json:
        print(json.dumps({"current": listed.current, "versions": rows, "events": listed.events}, indent=1))
    else:
        print(f"current: {listed.current or _shipped_version()}")
        for r in rows:
            mark = "*" if r["current"] else " "
            h = f"{r['hit@1']:.3f}" if isinstance(r["hit@1"], float) else "-"
            print(f" {mark} {r['version']}  created {r['created']}  real held-out hit@1 {h}")
    return 0


def _parser(prog: str) -> argparse.ArgumentParser:
    from core.settings import PROJECT_ROOT, load_settings

    settings = load_settings()
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--models-dir", type=Path, default=settings.model_registry_dir,
                        help="versioned models and registry.json (default: %(default)s)")
    common.add_argument("--json", action="store_true", help="machine-readable summary on stdout")
    rollout = argparse.ArgumentParser(add_help=False)
    rollout.add_argument("--apply", action="store_true",
                         help="move the running app to the result (a user_config change, no restart)")
    rollout.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                         help="Ray cluster of the running app (default: $RAY_ADDRESS)")
    rollout.add_argument("--serve-config", type=Path, default=PROJECT_ROOT / "serve_config.yaml",
                         help="the Serve config the app runs from (default: %(default)s)")
    rollout.add_argument("--app-name", default="opensesame")
    rollout.add_argument("--app-dir", type=Path, default=PROJECT_ROOT)
    rollout.add_argument("--url", default=None,
                         help="the service's HTTP address: wait until /health shows the new model")

    parser = argparse.ArgumentParser(
        prog=prog, parents=[common, rollout],
        description="Retrain the ranker on the base data plus recorded feedback; keep the new model "
                    "only if it is not worse on the held-out APIs; roll back in one command.")
    parser.add_argument("--feedback", type=Path, default=settings.feedback_db_path,
                        help="the feedback store (default: %(default)s)")
    parser.add_argument("--jentic-dir", type=Path, default=None, help="base workflows + specs")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="model to beat (default: the registry's current one, else the shipped one)")
    parser.add_argument("--feedback-weight", type=float, default=FEEDBACK_WEIGHT)
    parser.add_argument("--holdout-fraction", type=float, default=0.2,
                        help="latest share of feedback kept out of training, for evaluation")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE,
                        help="allowed drop of hit@1 and MRR on held-out APIs (absolute)")
    parser.add_argument("--no-promote", dest="promote", action="store_false",
                        help="write the version but keep the current one in service")
    parser.add_argument("--synthetic-per-api", type=int, default=20)
    parser.add_argument("--synthetic-weight", type=float, default=SYNTHETIC_WEIGHT)
    parser.add_argument("--personal-users-per-api", type=int, default=PERSONAL_USERS_PER_API)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--transitions", type=Path, default=TRANSITIONS_PATH)
    parser.add_argument("--num-boost-round", type=int, default=DEFAULT_ROUNDS)
    parser.add_argument("--early-stopping", type=int, default=EARLY_STOPPING)
    parser.add_argument("--log-period", type=int, default=50)
    parser.set_defaults(command=cmd_retrain)

    sub = parser.add_subparsers(dest="subcommand")
    rb = sub.add_parser("rollback", parents=[common, rollout], help="retire the current version")
    rb.add_argument("--reason", default="manual rollback")
    rb.set_defaults(command=cmd_rollback)
    ls = sub.add_parser("models", aliases=["list"], parents=[common], help="versions in the registry")
    ls.set_defaults(command=cmd_list)
    return parser


def main(argv: list[str] | None = None, *, prog: str = "python -m tools.retrain") -> int:
    args = _parser(prog).parse_args(argv)
    return int(args.command(args))


if __name__ == "__main__":
    raise SystemExit(main())
