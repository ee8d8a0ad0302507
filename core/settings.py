"""One settings object, read from ``OPENSESAME_*`` environment variables when asked for.

Nothing is read at import time: replicas call :func:`load_settings` in their constructors, so a
test or a driver can set the environment first.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

__all__ = ["Settings", "SettingsError", "load_settings", "PROJECT_ROOT", "SHIPPED_MODELS_DIR"]

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# The model, word vectors and transition statistics that training writes and serving ships with.
SHIPPED_MODELS_DIR = PROJECT_ROOT / "ranker" / "models"
ENV_PREFIX = "OPENSESAME_"


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    data_dir: Path = PROJECT_ROOT / "var"
    cache_path: Path | None = None  # default: data_dir / "spec_cache.sqlite"
    jentic_dir: Path = PROJECT_ROOT.parent / "shared" / "data" / "jentic"
    model_path: Path | None = None  # default: the model shipped in ranker/models
    models_dir: Path | None = None  # retrained versions; default: data_dir / "models"

    # Outcomes of predictions (deployments/serving/feedback.py); default: data_dir / "feedback.sqlite"
    feedback_path: Path | None = None
    feedback_enabled: bool = True
    feedback_implicit_window_s: float = Field(3600.0, gt=0)
    feedback_queue_max: int = Field(10_000, gt=0)
    # Predictions (prompt, user id, params) and their outcomes are deleted after this many days.
    feedback_retention_days: float = Field(90.0, gt=0)
    # How long POST /feedback and GET /feedback/{id} wait for the writer's commit before a 503.
    feedback_wait_s: float = Field(5.0, gt=0)
    # Who writes the file: "local", each Ingress replica's own writer on its node's disk (one
    # node); "actor", one writer actor on the node with the `opensesame_data` resource, which the
    # replicas of every node call (several nodes: deployments/serving/store_actor.py).
    feedback_store: Literal["local", "actor"] = "local"
    # The per-user transition prior learned from outcomes (core/priors/personal.py): as
    # the ranker's user_* features, and/or blended after the model with this weight (0: off);
    # measured by `python -m benchmarks.personalisation` (benchmarks/results/personalisation.md).
    personal_prior_feature: bool = True
    personal_prior_weight: float = Field(0.0, ge=0, le=1)
    # How many of the latest outcomes a starting replica replays into that prior.
    personal_prior_replay_max: int = Field(200_000, gt=0)

    # Every request is answered within this, whatever Serve's x-request-timeout-seconds said
    # (deployments/serving/fairness.py); each client may have this many in flight per Ingress
    # replica (per API key; without keys per user id and source address), the rest get 429.
    request_timeout_s: float = Field(30.0, gt=0)
    client_max_concurrent: int = Field(8, gt=0)
    # Spec host names are resolved in threads of their own, each look-up held to the timeout.
    dns_threads: int = Field(4, gt=0)
    dns_timeout_s: float = Field(2.0, gt=0)
    # A replica's GIL switch interval while one of its threads parses a spec (Python's default,
    # 5 ms, otherwise): how long its event loop (/health, refusals) may wait for the GIL then.
    parse_switch_interval_ms: float = Field(0.5, gt=0, le=5)

    # API keys (deployments/serving/identity.py): "tenant=token,..." and/or a file of
    # "tenant sha256-of-token" lines; with neither, clients are trusted to say who they are.
    api_keys: SecretStr | None = None
    api_keys_file: Path | None = None

    # What all the users of an API did next (core/priors/population.py), learned from the
    # recorded outcomes into population_path (default data_dir / "population.sqlite") and given
    # to the ranker as its pop_* features; a count is used once population_min_users distinct
    # users made it, one user adds at most population_user_cap to it, and it halves every
    # population_half_life_days. With API keys, each tenant has its own.
    population_enabled: bool = True
    population_path: Path | None = None
    population_min_users: int = Field(3, ge=1)
    population_user_cap: float = Field(1.0, gt=0)
    population_half_life_days: float = Field(30.0, gt=0)

    spec_max_bytes: int = Field(25 * 1024 * 1024, gt=0)
    spec_fetch_timeout_s: float = Field(10.0, gt=0)
    spec_max_redirects: int = Field(5, ge=0)
    allow_private_spec_hosts: bool = False
    spec_l1_ttl_s: float = Field(300.0, gt=0)
    spec_l1_max_entries: int = Field(64, gt=0)
    spec_l2_ttl_s: float = Field(3600.0, gt=0)
    # An unusable L2 (locked, full, unwritable) is bypassed this long before it is tried again.
    spec_l2_retry_s: float = Field(60.0, gt=0)

    llm_base_url: str | None = None
    llm_model: str | None = None
    llm_api_key: SecretStr | None = None
    llm_budget_s: float = Field(0.8, gt=0)
    llm_connect_timeout_s: float = Field(0.3, gt=0)
    llm_max_connections: int = Field(20, gt=0)
    llm_keepalive_s: float = Field(30.0, gt=0)
    llm_shortlist: int = Field(40, gt=0, le=200)
    llm_cache_ttl_s: float = Field(3600.0, gt=0)
    llm_breaker_failures: int = Field(3, gt=0)
    llm_breaker_reset_s: float = Field(30.0, gt=0)
    # How much the LLM's proposals count after the model (core/scoring.py blend_llm; 0: they
    # only widen the candidates). Choose it for your LLM with `python -m benchmarks.llm_path`.
    llm_weight: float = Field(0.3, ge=0, le=1)

    # Prometheus metrics through ray.serve.metrics (deployments/serving/metrics.py; README, Operations).
    metrics: bool = True

    @field_validator("llm_base_url")
    @classmethod
    def _http_only(cls, v: str | None) -> str | None:
        if v and not v.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return v.rstrip("/") if v else None

    @property
    def spec_cache_path(self) -> Path:
        return self.cache_path or self.data_dir / "spec_cache.sqlite"

    @property
    def feedback_db_path(self) -> Path:
        return self.feedback_path or self.data_dir / "feedback.sqlite"

    @property
    def population_db_path(self) -> Path:
        return self.population_path or self.data_dir / "population.sqlite"

    @property
    def model_registry_dir(self) -> Path:
        return self.models_dir or self.data_dir / "models"

    @property
    def request_body_max_bytes(self) -> int:
        """The largest request body taken: one spec at its cap and 1 MiB for the rest (events,
        prompt). The Ingress refuses past it, and HAProxy by Content-Length before any body."""
        return self.spec_max_bytes + 1024 * 1024

    @property
    def llm_enabled(self) -> bool:
        return bool(self.llm_base_url and self.llm_model)


class SettingsError(ValueError):
    """An ``OPENSESAME_*`` variable that is unknown or has a bad value; the message is one line
    naming it."""


def load_settings(environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
    """Settings from ``OPENSESAME_<FIELD>`` variables, then keyword overrides.

    An unknown or malformed variable raises :class:`SettingsError` naming it, rather than being
    ignored.
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for key, raw in env.items():
        if not key.startswith(ENV_PREFIX):
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if name not in Settings.model_fields:
            close = difflib.get_close_matches(key, _env_names(), n=1, cutoff=0.8)
            hint = f"did you mean {close[0]}?" if close else f"known: {', '.join(_env_names())}"
            raise SettingsError(f"unknown setting {key}; {hint}")
        values[name] = raw
    values.update(overrides)
    try:
        return Settings(**values)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else ""
            source = ENV_PREFIX + field.upper() if field in values and field not in overrides else field
            given = f"={values[field]!r}" if field in values and "key" not in field else ""  # no secrets
            problems.append(f"{source}{given}: {error['msg']}")
        raise SettingsError("invalid setting " + "; ".join(problems)) from None


def _env_names() -> list[str]:
    return [ENV_PREFIX + n.upper() for n in Settings.model_fields]
