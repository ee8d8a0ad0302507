"""Training groups that teach the ranker its ``pop_*`` features: what other users of the API did.

A served request on an API with traffic carries what its users did in that situation
(:class:`core.priors.population.PopulationView`). The workflows alone have no traffic (zeros:
the "none" amount), so here each real workflow's steps also see a memory built, by the very
:class:`PopulationMemory` serving uses, from *other* workflows of its API run by other users:

- out of fold: the API's workflows in :data:`FOLDS` folds; a workflow's steps see the memory of a
  share (:data:`TRAFFIC`) of the workflows of the other folds — several amounts of traffic, so
  the model learns how far to trust a little evidence, and that on an API whose flows differ
  the memory says little;
- the same flow by other users: with probability ``same_flow``, the memory also holds this
  workflow run by other users (never by the user being scored) — the case of a product whose
  users repeat a few flows, which a live service sees most.

An API's memories count a pattern from one of :data:`MIN_USERS` distinct users on, and each run
in them is by one of :data:`USERS_PER_RUN` distinct users: the counts a request sees then range
from one user's (a service configured with a threshold of 1, an API with little traffic) to
many users', and runs by fewer users than the threshold stay invisible unless other runs made the
same transitions — so the ``pop_n_*`` features take every value serving gives them, and the model
learns how much a small count is worth. A quarter of the groups go without the prompt.
"""

from __future__ import annotations

import dataclasses
import random
from collections import defaultdict
from collections.abc import Iterator, Sequence

from core.priors.population import PopulationConfig, PopulationMemory, api_key, observation
from ranker.data import Example, Workflow, examples

__all__ = ["population_examples", "memory_of", "FOLDS", "TRAFFIC", "MIN_USERS", "USERS_PER_RUN"]

FOLDS = 3
TRAFFIC = (0.25, 0.5, 1.0)  # share of the other folds' workflows the memory was built from
MIN_USERS = (1, 3)  # distinct-user thresholds of the memories (drawn per API)
USERS_PER_RUN = (1, 2, 3, 4, 6)
MIN_STEPS = 2


def memory_of(
    runs: Sequence[tuple[str, Workflow]], *, config: PopulationConfig | None = None, t: float = 0.0
) -> PopulationMemory:
    """A memory of ``runs`` (user, workflow): every step's outcome observed, as serving does."""
    memory = PopulationMemory(config)
    for user, wf in runs:
        for ex in examples([wf]):
            obs = observation(ex.spec, ex.history, ex.prompt, ex.target, user=user, t=t)
            if obs is not None:
                memory.observe(obs)
    return memory


def population_examples(
    workflows: Sequence[Workflow], *, seed: int = 0, same_flow: float = 0.5, drop_prompt: float = 0.25,
) -> Iterator[Example]:
    """Per real workflow of an API with other workflows: one group per step with an out-of-fold
    memory, and (with probability ``same_flow``) one more with the same flow run by others;
    ``source="population"``."""
    pool: dict[str, list[Workflow]] = defaultdict(list)
    for w in workflows:
        if len(w.steps) >= MIN_STEPS and w.source == "real":
            pool[w.api].append(w)
    for api in sorted(pool):
        flows = sorted(pool[api], key=lambda w: w.workflow_id)
        if len(flows) < 2:
            continue
        rng = random.Random(f"{seed}|{api}|population")
        fold = {w.workflow_id: i % FOLDS for i, w in enumerate(rng.sample(flows, len(flows)))}
        config = PopulationConfig(min_users=rng.choice(MIN_USERS))

        def runs(chosen: Sequence[Workflow], tag: str,
                 rng: random.Random = rng) -> list[tuple[str, Workflow]]:
            out = []
            for w in chosen:
                for u in range(rng.choice(USERS_PER_RUN)):
                    out.append((f"{tag}|{w.workflow_id}|{u}", w))
            return out

        memories: dict[tuple[int, float], PopulationMemory] = {}
        for f in range(FOLDS):
            others = [w for w in flows if fold[w.workflow_id] != f]
            for share in TRAFFIC:
                k = max(1, round(share * len(others))) if others else 0
                memories[(f, share)] = memory_of(runs(rng.sample(others, k), f"oof{f}"), config=config)
        everyone = memory_of(runs(flows, "all"), config=config)
        for w in flows:
            share = rng.choice(TRAFFIC)
            chosen = [("oof", memories[(fold[w.workflow_id], share)])]
            if rng.random() < same_flow:
                chosen.append(("same", everyone))
            for tag, memory in chosen:
                with_prompt = rng.random() >= drop_prompt
                for ex in examples([w]):
                    prompt = ex.prompt if with_prompt else ""
                    yield dataclasses.replace(
                        ex, workflow_id=f"{tag}/{w.workflow_id}", source="population", prompt=prompt,
                        population=memory.view(api_key(ex.spec), ex.history, prompt, now=0.0))
