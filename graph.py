"""Composition only: the opensesame graph of four deployments.

serve run graph:app                      # defaults
serve run graph:build_app llm=false      # builder args
serve run serve_config.yaml              # what `make run` does
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from ray.serve import Application, Deployment

from deployments.candidate_generator import CandidateGeneratorDeployment
from deployments.feature_extractor import FeatureExtractorDeployment
from deployments.ingress import Ingress
from deployments.ranking import RankerDeployment
from deployments.settings import ENV_PREFIX, load_settings

__all__ = ["AppArgs", "build_app", "app"]


_SECRET_ENV = {ENV_PREFIX + "LLM_API_KEY": "llm_api_key"}  # variable -> settings field


class AppArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Overrides of deployments.settings.Settings fields, on top of OPENSESAME_* variables.
    settings: dict[str, Any] = Field(default_factory=dict)


def build_app(args: dict[str, Any] | AppArgs | None = None) -> Application:
    args = args if isinstance(args, AppArgs) else AppArgs.model_validate(args or {})
    load_settings(**args.settings)  # refuse bad settings here, not in four replicas later
    # Replicas read OPENSESAME_* from their own environment: hand them the builder's. Not the
    # secrets: Ray's runtime-env agent logs env_vars in clear (runtime_env_agent.log), so they go
    # in the constructor arguments, which are pickled and never logged.
    env = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX) and k not in _SECRET_ENV}
    s = {**{_SECRET_ENV[k]: v for k, v in os.environ.items() if k in _SECRET_ENV}, **args.settings}

    def with_env(deployment: Deployment) -> Deployment:
        if not env:
            return deployment
        actor = {**(deployment.ray_actor_options or {}), "runtime_env": {"env_vars": env}}
        return deployment.options(ray_actor_options=actor)

    generator = with_env(CandidateGeneratorDeployment).bind(s)
    extractor = with_env(FeatureExtractorDeployment).bind(s)
    ranker = with_env(RankerDeployment).bind(s)
    return with_env(Ingress).bind(generator, extractor, ranker, s)


app: Application = build_app()
