"""Composition only: the opensesame graph of four deployments.

serve run graph:app                      # defaults
serve run graph:build_app llm=false      # builder args
serve run serve_config.yaml              # what `make run` does
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from ray.serve import Application

from core.settings import ENV_PREFIX, load_settings
from deployments.candidate_generator import CandidateGeneratorDeployment
from deployments.feature_extractor import FeatureExtractorDeployment
from deployments.ingress import Ingress
from deployments.ranking import RankerDeployment

__all__ = ["AppArgs", "build_app", "app"]


class AppArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Overrides of core.settings.Settings fields, on top of OPENSESAME_* variables.
    settings: dict[str, Any] = Field(default_factory=dict)


def build_app(args: dict[str, Any] | AppArgs | None = None) -> Application:
    args = args if isinstance(args, AppArgs) else AppArgs.model_validate(args or {})
    load_settings(**args.settings)  # refuse bad settings here, not in four replicas later
    # The builder's OPENSESAME_* variables go to the replicas as constructor arguments: a
    # runtime_env would be replaced wholesale by a config file's ray_actor_options (so
    # `serve run serve_config.yaml` would lose them), and Ray's runtime-env agent logs env_vars in
    # clear (runtime_env_agent.log), where the LLM key must not appear. Arguments are pickled
    # and never logged.
    env = {k[len(ENV_PREFIX):].lower(): v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)}
    s = {**env, **args.settings}
    # @serve.deployment makes each class a Deployment; Ray's stub keeps the class type, hence
    # the ignores on .bind.
    generator = CandidateGeneratorDeployment.bind(s)  # type: ignore[attr-defined]
    extractor = FeatureExtractorDeployment.bind(s)  # type: ignore[attr-defined]
    ranker = RankerDeployment.bind(s)  # type: ignore[attr-defined]
    return Ingress.bind(generator, extractor, ranker, s)  # type: ignore[attr-defined]


app: Application = build_app()
