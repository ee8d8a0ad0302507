"""Which ranker model a replica serves, and moving it to another one without a failed request.

The model is part of the Ranker's ``user_config`` (``model_path``), applied in ``reconfigure``:
the new model is read, checked and warmed up in a worker thread while the replica keeps serving
the old one, then the reference is switched in one assignment. A batch that started before the
switch finishes on the model it started with. A model that cannot be loaded leaves the previous
one serving, and the failure is logged and reported by ``/health``.

No Ray import: unit-tested on its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from core.scorer import MODEL_FILE, HeuristicRanker, RankerModel, default_model_path
from core.settings import Settings
from deployments.serving.components import build_ranker
from deployments.serving.probes import check_model_scores

__all__ = ["ModelConfig", "RankerSlot", "split_model_config"]

log = logging.getLogger(__name__)


class ModelConfig(BaseModel):
    """The model part of the Ranker's ``user_config``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # A model directory (ranker.txt + model_card.json) or a ranker.txt; None: settings.model_path.
    model_path: Path | None = None
    # Or a version of the registry (settings.model_registry_dir / version), e.g. from
    # `opensesame models`; at most one of the two.
    model_version: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")

    @model_validator(mode="after")
    def _one(self) -> ModelConfig:
        if self.model_path is not None and self.model_version is not None:
            raise ValueError("give model_path or model_version, not both")
        return self


def split_model_config(user_config: dict[str, Any] | None) -> tuple[ModelConfig, dict[str, Any]]:
    """(the validated model keys, the rest of ``user_config``); bad model keys are refused."""
    rest = dict(user_config or {})
    mine = {name: rest.pop(name) for name in ModelConfig.model_fields if name in rest}
    try:
        return ModelConfig.model_validate(mine), rest
    except ValidationError as exc:
        raise ValueError(f"invalid model user_config: {exc}") from None


def _model_file(path: Path) -> Path:
    path = Path(path).expanduser()
    return (path / MODEL_FILE if path.is_dir() else path).resolve()


def load_warm(path: Path) -> RankerModel:
    """Load, check and warm up a model (blocking: run it in a thread)."""
    model = RankerModel.load(path).ensure_loaded()
    # One scored row: LightGBM's first predict allocates; a broken model fails here, not live.
    check_model_scores(model)
    return model


class RankerSlot:
    """The ranker a replica serves now. Read ``slot.ranker`` once per batch."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.default_path = _model_file(settings.model_path or default_model_path())
        self.ranker: RankerModel | HeuristicRanker = build_ranker(settings)
        self.path: Path | None = self.default_path if isinstance(self.ranker, RankerModel) else None
        self.swaps = 0
        self.previous_version: str | None = None
        self.last_error: str | None = None
        self.last_swap_s: float | None = None

    async def apply(self, config: ModelConfig) -> bool:
        """Serve the model ``config`` names; True if the model changed. Never raises for a
        model that cannot be loaded: the current one keeps serving and the error is kept."""
        if config.model_version:
            target = _model_file(self.settings.model_registry_dir / config.model_version)
        else:
            target = _model_file(config.model_path) if config.model_path else self.default_path
        if target == self.path:
            self.last_error = None
            return False
        start = time.perf_counter()
        try:
            model = await asyncio.to_thread(load_warm, target)
        except Exception as exc:  # noqa: BLE001 - any unusable model: keep serving the old one
            self.last_error = f"model {target} not loaded, still serving {self.ranker.version}: " \
                              f"{type(exc).__name__}: {str(exc)[:300]}"
            log.warning("ranker swap refused: %s", self.last_error)
            return False
        previous, self.ranker = self.ranker, model  # the switch: one reference assignment
        self.previous_version, self.path = previous.version, target
        self.swaps += 1
        self.last_error = None
        self.last_swap_s = time.perf_counter() - start
        log.warning("ranker swapped %s -> %s in %.2fs", previous.version, model.version, self.last_swap_s)
        return True

    def status(self) -> dict[str, Any]:
        return {
            "model_version": self.ranker.version,
            "model_path": str(self.path) if self.path else None,
            "swaps": self.swaps,
            "previous_version": self.previous_version,
            "swap_error": self.last_error,
            # Why the heuristic ranker serves (no usable model at start), for /health.
            "heuristic_reason": getattr(self.ranker, "reason", None),
            "last_swap_s": self.last_swap_s,
        }
