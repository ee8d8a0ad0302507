"""Which ranker model a replica serves, and moving it to another one without a failed request.

The model is part of the Ranker's ``user_config`` (``model_path``), applied in ``reconfigure``:
the new model is first loaded, verified (its card's ``model_sha256`` is required, and the pin in
``user_config`` if given) and scored in a child process, so a file that crashes LightGBM's native
code kills that child, not the replica; then it is read and warmed up in a worker thread while
the replica keeps serving the old one, and the reference is switched in one assignment. A batch
that started before the switch finishes on the model it started with. A model that cannot be
loaded leaves the previous one serving, and the failure is logged and reported by ``/health``.

No Ray import: unit-tested on its own.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from core.scorer import (
    MODEL_FILE,
    HeuristicRanker,
    ModelMismatch,
    RankerModel,
    default_model_path,
    file_sha256,
)
from core.settings import PROJECT_ROOT, Settings
from deployments.serving.components import build_ranker
from deployments.serving.failures import without_paths
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
    # The file's sha256 as the operator saw it (tools/rollout.py writes it): a file changed
    # between the rollout and the load is refused.
    model_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")

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


CHECK_TIMEOUT_S = 120.0
_CHECK_FAILED = "MODEL-CHECK-FAILED "


class ModelRefused(Exception):
    """The model did not pass its check in a child process."""


def load_warm(path: Path, *, require_sha256: bool = False, pinned_sha256: str | None = None) -> RankerModel:
    """Load, check and warm up a model (blocking: run it in a thread)."""
    if pinned_sha256 is not None and file_sha256(path) != pinned_sha256:
        raise ModelMismatch("the model file is not the one rolled out (sha256 differs from the pin)")
    model = RankerModel.load(path)
    if require_sha256 and not model.card.data.get("model_sha256"):
        raise ModelMismatch("the model card has no model_sha256; a swap verifies the file against it")
    model.ensure_loaded()
    # One scored row: LightGBM's first predict allocates; a broken model fails here, not live.
    check_model_scores(model)
    return model


def check_in_child(path: Path, *, pinned_sha256: str | None = None,
                   timeout_s: float = CHECK_TIMEOUT_S) -> None:
    """Load, verify and score the model in a child process; raises :class:`ModelRefused`.

    LightGBM aborts the whole process on some malformed model files (``terminate called without
    an active exception``, SIGABRT): loaded in the replica, such a file killed it, and Serve's
    replacement read the same ``user_config`` and died again."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    cmd = [sys.executable, "-m", "deployments.serving.model_swap", str(path), pinned_sha256 or ""]
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env,
                             cwd=PROJECT_ROOT)
    except subprocess.TimeoutExpired:
        raise ModelRefused(f"checking the model took more than {timeout_s:g}s") from None
    if run.returncode < 0:
        name = signal.Signals(-run.returncode).name
        raise ModelRefused(f"the model crashed the process that loaded it ({name})")
    if run.returncode != 0:
        reasons = [line[len(_CHECK_FAILED):] for line in run.stdout.splitlines()
                   if line.startswith(_CHECK_FAILED)]
        if not reasons:
            log.warning("model check of %s exited %d: %s", path, run.returncode, run.stderr[-2000:])
        reason = reasons[-1] if reasons else f"exit {run.returncode}"
        raise ModelRefused(f"the model failed its check: {reason}")


def _check_main(argv: list[str]) -> int:
    path = Path(argv[0])
    try:
        load_warm(path, require_sha256=True, pinned_sha256=argv[1] if len(argv) > 1 and argv[1] else None)
    except Exception as exc:  # noqa: BLE001 - whatever it is, the parent refuses the model
        # The kind and our own message, without the directory the model sits in.
        text = str(exc).replace(str(path.parent), path.parent.name)[:300]
        print(f"{_CHECK_FAILED}{type(exc).__name__}: {text}", flush=True)
        return 1
    return 0


def _shown_reason(reason: str | None) -> str | None:
    return without_paths(reason) if reason else reason


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
            if not target.is_file():
                raise ModelRefused("no such model file")
            await asyncio.to_thread(check_in_child, target, pinned_sha256=config.model_sha256)
            model = await asyncio.to_thread(load_warm, target, require_sha256=True,
                                            pinned_sha256=config.model_sha256)
        except Exception as exc:  # noqa: BLE001 - any unusable model: keep serving the old one
            # /health names the model by its directory, never the full path (details in the log)
            shown = f"{target.parent.name}/{target.name}"
            why = str(exc) if isinstance(exc, ModelRefused) else type(exc).__name__
            self.last_error = f"model {shown} not loaded, still serving {self.ranker.version}: {why}"
            log.warning("ranker swap of %s refused: %r", target, exc)
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
            "model_path": f"{self.path.parent.name}/{self.path.name}" if self.path else None,
            "swaps": self.swaps,
            "previous_version": self.previous_version,
            "swap_error": self.last_error,
            # Why the heuristic ranker serves (no usable model at start), for /health.
            "heuristic_reason": _shown_reason(getattr(self.ranker, "reason", None)),
            "last_swap_s": self.last_swap_s,
        }


if __name__ == "__main__":
    sys.exit(_check_main(sys.argv[1:]))
