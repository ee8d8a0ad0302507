"""Does the per-user transition prior (:mod:`core.priors.personal`) improve hit@1?

    python -m benchmarks.personalisation                      # simulate users, record, replay
    python -m benchmarks.personalisation --feedback var/feedback.sqlite   # replay a real store

Replay: every recorded outcome in time order is re-ranked by the model in service (features
rebuilt from the stored context, as retraining does) three ways — no personalisation (the user's
features cold), the post-model blend (``personal_prior_weight``), and the user's transitions as
model features (``personal_prior_feature``, the default) — each with the prior learned from the
outcomes recorded before it; then its own outcome is added to the prior. Nothing is scored with
a prior that knew its answer.

There are no real recorded sessions yet, so by default sessions are simulated on the held-out
APIs (never trained on) and recorded through the in-process pipeline and the real feedback
store, exactly as serving records them:

- ``habits``: each user has one or two routines (real workflows or synthetic sequences of their
  API) and repeats them — the case a personal prior is meant for;
- ``no repeats``: no user ever runs the same routine twice — the control: the prior can only
  carry what a user's different routines on one API have in common.

Each with and without the prompt (users of a product rarely type one for every call). The model
learned its personal features from users simulated the same way on the training APIs
(:mod:`ranker.returning_users`), so read the gains as "on users like these". Writes
``benchmarks/results/personalisation.{json,md}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from core.candidates.types import Candidate
from core.features import FeatureExtractor
from core.priors.personal import TransitionPrior, previous_key
from core.priors.transitions import load_transitions
from core.progress import Progress, track
from core.scorer import RankerModel
from core.settings import load_settings
from deployments.serving.feedback import FeedbackReader, FeedbackStore
from ranker.data import Workflow, concrete_endpoint, load_spec, load_workflows, split_of
from ranker.evaluate import MISS, metrics_table, ranking_metrics

RESULTS = Path(__file__).resolve().parent / "results"


# -- simulation ----------------------------------------------------------------------------------


def _sessions(
    workflows: list[Workflow], *, habits: bool, users_per_api: int, sessions_per_user: int,
    synthetic_per_api: int, seed: int,
) -> list[tuple[str, Workflow]]:
    """(user, routine) in the order users run them: users interleaved, as traffic would be."""
    from ranker.synth import synthesize_for_apis

    rng = random.Random(seed)
    pool: dict[str, list[Workflow]] = defaultdict(list)
    for w in [*workflows, *synthesize_for_apis(workflows, seed=seed, per_api=synthetic_per_api)]:
        if len(w.steps) >= 2:
            pool[w.api].append(w)
    per_user: list[list[tuple[str, Workflow]]] = []
    for api in sorted(pool):
        routines = pool[api]
        if len(routines) < 3:
            continue
        for u in range(users_per_api):
            user = f"{'h' if habits else 'n'}-{api}-{u}"
            if habits:
                own = rng.sample(routines, k=min(len(routines), rng.choice((1, 2))))
                per_user.append([(user, rng.choice(own)) for _ in range(sessions_per_user)])
            else:
                fresh = rng.sample(routines, k=min(len(routines), sessions_per_user))
                per_user.append([(user, w) for w in fresh])
    out: list[tuple[str, Workflow]] = []
    for i in range(sessions_per_user):
        batch = [s[i] for s in per_user if i < len(s)]
        rng.shuffle(batch)
        out.extend(batch)
    return out


def _spec_document(path: Path) -> dict[str, Any]:
    raw = path.read_bytes()
    try:
        return json.loads(raw)
    except ValueError:
        import yaml

        return yaml.safe_load(raw)


async def record_sessions(sessions: list[tuple[str, Workflow]], db: Path, *, with_prompt: bool) -> int:
    """Run every step of every session through the in-process pipeline with a feedback store,
    and record what the user did next as an explicit outcome. Returns predictions made."""
    from deployments.serving.pipeline import Pipeline
    from deployments.serving.schemas import PredictRequest

    settings = load_settings(data_dir=str(db.parent), feedback_path=str(db))
    store = FeedbackStore(db)
    pipeline = Pipeline(settings, feedback=store)
    documents: dict[Path, dict[str, Any]] = {}
    made = 0
    try:
        total = sum(len(w.steps) for _, w in sessions)
        with Progress("recording sessions", total) as bar:
            for user, wf in sessions:
                spec = load_spec(wf.spec_path)
                if wf.spec_path not in documents:
                    documents[wf.spec_path] = _spec_document(wf.spec_path)
                doc = documents[wf.spec_path]
                events: list[dict[str, Any]] = []
                for step in wf.steps:
                    request = PredictRequest(user_id=user, events=events[-20:], spec=doc, k=5,
                                             prompt=wf.prompt if with_prompt and wf.prompt else None)
                    response = await pipeline.predict(request)
                    actual = concrete_endpoint(spec, step)
                    await store.arecord_outcome(response.prediction_id, actual_endpoint=actual)
                    events.append({"endpoint": actual, "params": dict(step.params)})
                    made += 1
                    bar.update()
    finally:
        await pipeline.aclose()
        store.close()
    return made


# -- replay --------------------------------------------------------------------------------------

# What is compared, on the same outcomes in the same order (the model: the one in service):
#   none     cold features (the user_* features zero), no blend
#   blend    cold features, blended after the model with the prior (weight BLEND_WEIGHT)
#   feature  the user's transitions as features (as served by default), no blend
VARIANTS = ("none", "blend", "feature")
BLEND_WEIGHT = 0.5


def replay(db: Path, *, model: RankerModel, scope: str = "user", shrink: float = 3.0,
           blend_weight: float = BLEND_WEIGHT) -> dict[str, Any]:
    """Ranks of the actual next call under each of :data:`VARIANTS`, in time order: every
    outcome is scored with the prior learned from the outcomes before it, then added to it."""
    reader = FeedbackReader(db)
    extractor = FeatureExtractor(transitions=load_transitions())
    prior = TransitionPrior(weight=blend_weight, scope=scope, shrink=shrink)  # type: ignore[arg-type]
    ranks: dict[str, list[int]] = {v: [] for v in VARIANTS}
    informed: list[bool] = []  # whether the prior had seen this (user, previous call) before
    stored = [s for s in reader.predictions() if s.actual_key is not None]
    for s in track(stored, "replaying outcomes"):
        spec = reader.spec(s.spec_hash)
        cands = [Candidate.from_wire(c) for c in s.candidates if 0 <= c[0] < len(spec.operations)]
        keys = [spec.operations[c.index].key for c in cands]
        prev = previous_key(spec, s.events)
        mine = prior.transitions(s.user_id, s.spec_hash, prev)
        informed.append(bool(mine.counts))
        target = keys.index(s.actual_key) if s.actual_key in keys else None
        if cands:
            history = spec.resolve_history(s.history)
            cold = extractor.extract(spec, history, s.prompt, cands)
            warm = extractor.extract(spec, history, s.prompt, cands, mine)
            [(p_cold, _), (p_warm, _)] = model.score_groups([cold, warm], contributions=False)
            scores = {"none": p_cold, "blend": prior.blend(s.user_id, s.spec_hash, prev, keys, p_cold),
                      "feature": p_warm}
        for v in VARIANTS:
            if target is None:
                ranks[v].append(MISS)
                continue
            order = np.argsort(-np.asarray(scores[v], np.float64), kind="stable")
            ranks[v].append(int(np.flatnonzero(order == target)[0]))
        prior.observe(s.user_id, s.spec_hash, prev, s.actual_key)
    mask = np.array(informed, bool)
    out: dict[str, Any] = {"n": len(stored), "with_prior_evidence": int(mask.sum()), "by_variant": {}}
    for v in VARIANTS:
        r = np.array(ranks[v])
        out["by_variant"][v] = {"all": ranking_metrics(r),
                                "with_prior_evidence": ranking_metrics(r[mask]) if mask.any() else None}
    return out


# -- main ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.personalisation",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--feedback", type=Path, help="replay this store instead of simulating")
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--scope", choices=("user", "tenant"), default="user")
    parser.add_argument("--shrink", type=float, default=3.0)
    parser.add_argument("--blend-weight", type=float, default=BLEND_WEIGHT,
                        help="weight of the post-model blend compared (default: %(default)s)")
    parser.add_argument("--users-per-api", type=int, default=2)
    parser.add_argument("--sessions-per-user", type=int, default=5)
    parser.add_argument("--synthetic-per-api", type=int, default=6)
    parser.add_argument("--max-apis", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", choices=("valid", "train"), default="valid",
                        help="whose workflows to simulate users on (default: held-out APIs)")
    parser.add_argument("--record", type=Path, default=None,
                        help="only record the 'habits, with prompt' sessions into this store (demo data "
                             "for the retraining loop) and stop")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    settings = load_settings()
    model = RankerModel.load(args.model or settings.model_path)
    results: dict[str, Any] = {"model": model.version, "scope": args.scope, "shrink": args.shrink,
                               "blend_weight": args.blend_weight, "runs": {}}
    if args.feedback:
        results["runs"]["recorded"] = replay(args.feedback, model=model, scope=args.scope, shrink=args.shrink,
                                             blend_weight=args.blend_weight)
    else:
        workflows = [w for w in load_workflows(settings.jentic_dir, progress=False)
                     if split_of(w.api) == args.split]
        if args.max_apis:
            keep = set(sorted({w.api for w in workflows})[: args.max_apis])
            workflows = [w for w in workflows if w.api in keep]
        if args.record:
            sessions = _sessions(workflows, habits=True, users_per_api=args.users_per_api,
                                 sessions_per_user=args.sessions_per_user,
                                 synthetic_per_api=args.synthetic_per_api, seed=args.seed)
            made = asyncio.run(record_sessions(sessions, args.record, with_prompt=True))
            print(f"recorded {made} predictions with their outcomes in {args.record}")
            return 0
        for habits in (True, False):
            sessions = _sessions(workflows, habits=habits, users_per_api=args.users_per_api,
                                 sessions_per_user=args.sessions_per_user,
                                 synthetic_per_api=args.synthetic_per_api, seed=args.seed)
            for with_prompt in (True, False):
                name = f"{'habits' if habits else 'no repeats'}, {'with' if with_prompt else 'no'} prompt"
                print(f"== {name}: {len(sessions)} sessions", file=sys.stderr, flush=True)
                with tempfile.TemporaryDirectory() as tmp:
                    db = Path(tmp) / "feedback.sqlite"
                    asyncio.run(record_sessions(sessions, db, with_prompt=with_prompt))
                    results["runs"][name] = replay(db, model=model, scope=args.scope, shrink=args.shrink,
                                                   blend_weight=args.blend_weight)
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["machine"] = {"python": platform.python_version(), "cpus": __import__("os").cpu_count()}
    labels = {"none": "no personalisation", "blend": f"post-model blend (w {args.blend_weight})",
              "feature": "model feature"}
    rows = {f"{name}: {labels[v]}": m["all"] for name, run in results["runs"].items()
            for v, m in run["by_variant"].items()}
    informed = {f"{name}: {labels[v]}": m["with_prior_evidence"] for name, run in results["runs"].items()
                for v, m in run["by_variant"].items() if m["with_prior_evidence"] is not None}
    title = f"next call on replayed sessions, held-out APIs, {args.scope} prior (model {model.version})"
    table = metrics_table(rows, title=title)
    table_informed = metrics_table(
        informed, title="the same, only outcomes where the user had been in that situation before")
    evidence = "\n".join(f"- {name}: {run['n']} outcomes, {run['with_prior_evidence']} with prior evidence"
                         for name, run in results["runs"].items())
    print(table + "\n\n" + table_informed + "\n\n" + evidence)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "personalisation.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "personalisation.md").write_text(
        "# Personal transition prior: replay benchmark\n\n`python -m benchmarks.personalisation`"
        f" ({results['seconds']}s)\n\n{table}\n\n{table_informed}\n\n{evidence}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
