"""Grouped cross-validation over the TRAINING APIs: how to compare ranker settings without
looking at the validation APIs.

    python -m benchmarks.ranking_cv [--folds 3] [--params '{"feature_fraction": 0.5}']
                                    [--synthetic-weight 0.3] [--max-apis N]

The training APIs are cut into ``--folds`` folds by a hash of the API name (whole APIs, like the
train/validation split); each fold's real workflows are scored by a model trained on the other
folds, its number of trees chosen on APIs of those folds (:func:`ranker.train.fit_stopped`, as
``ranker.train`` chooses it): the scored fold chooses nothing. Groups, candidates, features and
the fit are those of ``ranker.train``. Prints
one row of hit@1/3/5, MRR and NDCG@5 over all held-out folds; with ~3,100 real steps its
standard error of hit@1 is about ±0.009, so differences below ~0.015 are noise. (The shipped
transition frequencies were learned on all training APIs, held-out folds included: a small, equal
advantage for every setting compared.)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from core.candidates.retrieval import RetrievalGenerator
from core.features import FeatureExtractor
from core.priors.transitions import load_transitions
from core.priors.word_vectors import load_word_vectors
from core.settings import load_settings
from ranker.data import load_workflows, split_of
from ranker.evaluate import Groups, build_groups, metrics_table, ranking_metrics, ranks_from_scores
from ranker.train import (
    PERSONAL_USERS_PER_API,
    SYNTHETIC_WEIGHT,
    FitConfig,
    base_examples,
    fit_stopped,
    source_weights,
    subset_apis,
)


def fold_of(api: str, folds: int) -> int:
    """A fold of whole APIs, independent of the train/validation hash."""
    return int(hashlib.sha256(f"cv{api}".encode()).hexdigest()[:8], 16) % folds


def cross_validate(
    groups: Groups, *, folds: int, params: dict | None, synthetic_weight: float
) -> np.ndarray:
    """Ranks of the real training-API steps, each from the model that did not train on its API."""
    fold = np.array([fold_of(a, folds) for a in groups.api])
    real = groups.source == "real"
    weight = source_weights(groups.source, synthetic_weight)
    ranks: list[np.ndarray] = []
    for k in range(folds):
        held = fold == k
        if not (held & real & groups.has_target).any() or len(set(groups.api[~held])) < 2:
            continue  # a fold with nothing to score or too little to learn from (tiny subsets)
        split = np.where(held, "valid", "train").astype(object)
        stopped = fit_stopped(replace(groups, split=split), weight, watched=real,
                              config=FitConfig(log_period=0), params=params)
        part = groups.select(held & real)
        scores = (stopped.booster.predict(part.X, num_iteration=stopped.best_iteration)
                  if len(part.X) else [])
        ranks.append(ranks_from_scores(part, np.asarray(scores)))
        print(f"  fold {k + 1}/{folds}: {len(part)} real steps, {stopped.best_iteration} trees",
              file=sys.stderr, flush=True)
    return np.concatenate(ranks) if ranks else np.zeros(0, int)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ranking_cv",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--jentic-dir", type=Path, default=None)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--params", type=json.loads, default=None,
                        help="LightGBM parameters over ranker.train.DEFAULT_PARAMS, as JSON")
    parser.add_argument("--synthetic-per-api", type=int, default=20)
    parser.add_argument("--synthetic-weight", type=float, default=SYNTHETIC_WEIGHT)
    parser.add_argument("--personal-users-per-api", type=int, default=PERSONAL_USERS_PER_API)
    parser.add_argument("--max-apis", type=int, default=None, help="a subset of APIs (smoke runs)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    jentic_dir = args.jentic_dir or load_settings().jentic_dir
    workflows = [w for w in subset_apis(load_workflows(jentic_dir, progress=False), args.max_apis)
                 if split_of(w.api) == "train"]  # the validation APIs are never read
    real, synthetic, personal = base_examples(
        workflows, synthetic_per_api=args.synthetic_per_api,
        personal_users_per_api=args.personal_users_per_api, seed=args.seed)
    transitions, word_vectors = load_transitions(), load_word_vectors()
    groups = build_groups(
        [*real, *synthetic, *personal], progress="features",
        generator=RetrievalGenerator(transitions=transitions, word_vectors=word_vectors),
        extractor=FeatureExtractor(transitions=transitions, word_vectors=word_vectors),
    )
    ranks = cross_validate(groups, folds=args.folds, params=args.params,
                           synthetic_weight=args.synthetic_weight)
    title = (f"{args.folds}-fold CV over {len(set(groups.api))} training APIs, real workflows "
             f"(params {json.dumps(args.params or {})}, synthetic weight {args.synthetic_weight})")
    print(metrics_table({"ranker": ranking_metrics(ranks)}, title=title))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
