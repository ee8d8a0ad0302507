"""Training groups for returning users: what teaches the ranker its personal features.

A served request of a user with recorded outcomes carries their transitions after its last call
(:class:`core.features.UserTransitions`: ``user_p_next``, ``user_n_context``,
``user_count_next``). The workflows alone are all cold users (zeros), so a model trained on them
could not learn what the features are worth. Here simulated users of an API replay routines
(its real workflows and synthetic sequences) session after session:

- a user *with habits* keeps to one or two routines — the features are right most of the time;
- a *wandering* user never runs the same routine twice — the features carry only what different
  routines of one API have in common, and the model must learn not to trust them blindly.

Each step's transitions come only from that user's outcomes *before* it (earlier sessions and
earlier steps of the same session), exactly as the serving prior learns them: a step never sees
its own target. A user's first session only builds the history and yields no group (those would
be copies of the cold groups). Half of the sessions go without the prompt: users of a product
rarely type one before every call.
"""

from __future__ import annotations

import dataclasses
import random
from collections import defaultdict
from collections.abc import Iterator, Sequence

from core.priors.personal import TransitionPrior, previous_of
from ranker.data import Example, Workflow, examples

__all__ = ["returning_users", "personal_examples"]

MIN_STEPS = 2


def returning_users(
    workflows: Sequence[Workflow], *, seed: int, sessions: int = 4, habits: bool = True,
    users_per_api: int = 1,
) -> list[tuple[str, list[Workflow]]]:
    """(user, the routines they run in order), per API with at least three routines."""
    if sessions < 2:
        raise ValueError(f"sessions must be >= 2 (the first only builds history), got {sessions}")
    pool: dict[str, list[Workflow]] = defaultdict(list)
    for w in workflows:
        if len(w.steps) >= MIN_STEPS:
            pool[w.api].append(w)
    out = []
    for api in sorted(pool):
        routines = sorted(pool[api], key=lambda w: w.workflow_id)
        if len(routines) < 3:
            continue
        rng = random.Random(f"{seed}|{api}|{habits}")
        for u in range(users_per_api):
            user = f"{'habit' if habits else 'wander'}-{api}-{u}"
            if habits:
                own = rng.sample(routines, k=rng.choice((1, 2)))
                out.append((user, [rng.choice(own) for _ in range(sessions)]))
            else:
                out.append((user, rng.sample(routines, k=min(len(routines), sessions))))
    return out


def personal_examples(
    workflows: Sequence[Workflow], *, seed: int = 0, habit_sessions: int = 4,
    wander_sessions: int = 3, users_per_api: int = 1, drop_prompt: float = 0.5,
) -> Iterator[Example]:
    """One group per step of every session after a user's first, ``source="personal"``, with
    the user's transitions from their earlier outcomes only."""
    for habits, sessions in ((True, habit_sessions), (False, wander_sessions)):
        for user, routines in returning_users(workflows, seed=seed, sessions=sessions, habits=habits,
                                              users_per_api=users_per_api):
            prior = TransitionPrior(weight=0.0)
            rng = random.Random(f"{seed}|{user}|prompt")
            for i, wf in enumerate(routines):
                with_prompt = rng.random() >= drop_prompt
                for ex in examples([wf]):
                    prev = previous_of(ex.history)
                    if i > 0:
                        yield dataclasses.replace(
                            ex, workflow_id=f"{user}/{i}/{wf.workflow_id}", source="personal",
                            prompt=ex.prompt if with_prompt else "",
                            personal=prior.transitions(user, ex.spec.spec_hash, prev),
                        )
                    prior.observe(user, ex.spec.spec_hash, prev, ex.target)
