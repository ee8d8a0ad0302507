"""Which ranker model a replica serves, and moving it to another one without a failed request.

The model is part of the Ranker's ``user_config`` (``model_path``), applied in ``reconfigure``:
the new model is first loaded, verified (its card's ``model_sha256`` is required, and the pin in
``user_config`` if given) and scored in a child process, so a file that crashes LightGBM's native
code kills that child, not the replica; then it is read and warmed up in a worker thread while
the replica keeps serving the old one, and the reference is switched in one assignment. A batch
that started before the switch finishes on the model it started with. A model that cannot be
loaded leaves the previous one serving, and the failure is logged and reported by ``/health``.

A replica starting does the same with the model its settings name (``model_path``): checked in a
child first, so a file that crashes LightGBM cannot crash-loop the Ranker (each replacement
would read the same settings and die again). A refused model is replaced by the shipped one,
checked the same way, and failing that by the heuristic ranker; ``/health`` says which and why
(``model_refused_at_start``) and the log names the file. A file whose bytes passed the check
once (its sha256, under ``data_dir/verified-models`` with the LightGBM version) is not checked
again: replicas restarting or scaling up pay ~2 ms; a new file pays the child's ~1 s and more
on a loaded node (``python -m benchmarks.model_start_check``).

No Ray import: unit-tested on its own.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
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


_NOT_PINNED = "the model file is not the one rolled out (sha256 differs from the pin)"


def load_warm(path: Path, *, require_sha256: bool = False, pinned_sha256: str | None = None) -> RankerModel:
    """Load, check and warm up a model (blocking: run it in a thread)."""
    if pinned_sha256 is not None and file_sha256(path) != pinned_sha256:
        raise ModelMismatch(_NOT_PINNED)
    model = RankerModel.load(path)
    if require_sha256 and not model.card.data.get("model_sha256"):
        raise ModelMismatch("the model card has no model_sha256; the file is verified against it")
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


def verify(path: Path, *, pinned_sha256: str | None = None, verified_dir: Path | None = None) -> str:
    """Check the model in a child process (:func:`check_in_child`) unless these very bytes
    passed it before under ``verified_dir``; returns the file's sha256, which the caller pins
    when it loads the file itself. Raises :class:`ModelRefused` or :class:`ModelMismatch`."""
    if not path.is_file():
        raise ModelRefused("no such model file")
    sha = file_sha256(path)
    if pinned_sha256 is not None and sha != pinned_sha256:
        raise ModelMismatch(_NOT_PINNED)
    # A crash depends on the bytes and on the LightGBM that parses them.
    marker = (verified_dir / f"{sha}-lightgbm-{importlib.metadata.version('lightgbm')}"
              if verified_dir is not None else None)
    if marker is not None and marker.is_file():
        return sha
    check_in_child(path, pinned_sha256=sha)
    if marker is not None:
        try:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
        except OSError as exc:  # not remembered: the next start checks again
            log.warning("could not record the verified model %s: %r", marker, exc)
    return sha


def _refusal(exc: BaseException) -> str:
    """What a refused model's error may say in /health: our own checks' messages without paths,
    otherwise the exception's kind (the log has the rest)."""
    if isinstance(exc, ModelRefused | ModelMismatch):
        return without_paths(str(exc))
    return type(exc).__name__


def _shown(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def start_model(settings: Settings, *, verified_dir: Path | None = None,
                ) -> tuple[RankerModel | HeuristicRanker, Path | None, str | None]:
    """The model a starting replica serves: (the model, its file or None, why the configured
    model was refused or None). The settings' model, else the shipped one, each verified in a
    child first; else the heuristic ranker."""
    configured = _model_file(settings.model_path or default_model_path())
    refused: list[str] = []
    for target in dict.fromkeys([configured, _model_file(default_model_path())]):
        try:
            sha = verify(target, verified_dir=verified_dir)
            model = load_warm(target, require_sha256=True, pinned_sha256=sha)
        except Exception as exc:  # noqa: BLE001 - any unusable model: try the next one
            log.warning("ranker model %s refused at start: %r", target, exc)
            refused.append(f"model {_shown(target)} refused at start: {_refusal(exc)}")
            continue
        if refused:
            log.warning("ranker serves %s (%s) instead: %s", model.version, target, "; ".join(refused))
        return model, target, "; ".join(refused) or None
    log.warning("no ranker model usable at start; serving the heuristic ranker: %s", "; ".join(refused))
    return HeuristicRanker(reason="; ".join(refused)), None, "; ".join(refused)


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
        self.verified_dir = settings.data_dir / "verified-models"
        self.default_path = _model_file(settings.model_path or default_model_path())
        started = time.perf_counter()
        self.ranker, self.path, self.refused_at_start = start_model(settings, verified_dir=self.verified_dir)
        self.start_check_s = round(time.perf_counter() - started, 3)
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
        if target == self.default_path and self.refused_at_start and not config.model_sha256:
            return False  # the settings' model, refused when this replica started: not again
        start = time.perf_counter()
        try:
            sha = await asyncio.to_thread(verify, target, pinned_sha256=config.model_sha256,
                                          verified_dir=self.verified_dir)
            model = await asyncio.to_thread(load_warm, target, require_sha256=True, pinned_sha256=sha)
        except Exception as exc:  # noqa: BLE001 - any unusable model: keep serving the old one
            # /health names the model by its directory, never the full path (details in the log)
            self.last_error = (f"model {_shown(target)} not loaded, still serving {self.ranker.version}: "
                               f"{_refusal(exc)}")
            log.warning("ranker swap of %s refused: %r", target, exc)
            return False
        previous, self.ranker = self.ranker, model  # the switch: one reference assignment
        self.previous_version, self.path = previous.version, target
        self.swaps += 1
        self.last_error = self.refused_at_start = None
        self.last_swap_s = time.perf_counter() - start
        log.warning("ranker swapped %s -> %s in %.2fs", previous.version, model.version, self.last_swap_s)
        return True

    @property
    def degraded(self) -> bool:
        """Not the model asked for: the heuristic, a refused swap, or a refused model at start."""
        return self.ranker.degraded or self.last_error is not None or self.refused_at_start is not None

    def status(self) -> dict[str, Any]:
        return {
            "model_version": self.ranker.version,
            "model_path": _shown(self.path) if self.path else None,
            "model_refused_at_start": self.refused_at_start,
            "start_check_s": self.start_check_s,
            "swaps": self.swaps,
            "previous_version": self.previous_version,
            "swap_error": self.last_error,
            # Why the heuristic ranker serves (no usable model at start), for /health.
            "heuristic_reason": _shown_reason(getattr(self.ranker, "reason", None)),
            "last_swap_s": self.last_swap_s,
        }


if __name__ == "__main__":
    sys.exit(_check_main(sys.argv[1:]))
