"""Versioned ranker models on disk, which one is current, and rolling back.

    <root>/<version>/ranker.txt, model_card.json   one immutable directory per version
    <root>/registry.json                            {"stack": [...], "events": [...]}

``stack`` lists promoted versions, oldest first; the current model is its top, and rolling back
pops it (back to the shipped model when the stack empties). Every promotion and rollback is
appended to ``events`` with its reason. Writes are atomic (temp file + rename) under a file lock,
so two processes cannot lose each other's update.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from core.scorer import CARD_FILE, MODEL_FILE, ModelCard

__all__ = ["ModelRegistry", "RegistryError"]

REGISTRY_FILE = "registry.json"


class RegistryError(ValueError):
    pass


def _now() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()


class ModelRegistry:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # -- reading --------------------------------------------------------------------------------

    def path(self, version: str) -> Path:
        if not version or "/" in version or version.startswith("."):
            raise RegistryError(f"not a version name: {version!r}")
        return self.root / version

    def versions(self) -> list[str]:
        """Every stored version, oldest first."""
        if not self.root.is_dir():
            return []
        found = [d for d in self.root.iterdir() if (d / CARD_FILE).is_file() and (d / MODEL_FILE).is_file()]
        return [d.name for d in sorted(found, key=lambda d: ((d / CARD_FILE).stat().st_mtime, d.name))]

    def card(self, version: str) -> ModelCard:
        return ModelCard.from_path(self.path(version) / CARD_FILE)

    def state(self) -> dict[str, Any]:
        try:
            doc = json.loads((self.root / REGISTRY_FILE).read_text())
        except FileNotFoundError:
            return {"stack": [], "events": []}
        if not isinstance(doc, dict) or not isinstance(doc.get("stack"), list):
            raise RegistryError(f"{self.root / REGISTRY_FILE} is not a model registry")
        return doc

    def current(self) -> str | None:
        """The promoted version in service, or None for the shipped model."""
        stack = self.state()["stack"]
        return stack[-1] if stack else None

    def current_path(self) -> Path | None:
        version = self.current()
        return self.path(version) if version else None

    # -- writing --------------------------------------------------------------------------------

    def add(self, source_dir: Path, version: str | None = None) -> str:
        """Copy a trained model directory in as a new version (its card's version by default)."""
        version = version or ModelCard.from_path(Path(source_dir) / CARD_FILE).version
        target = self.path(version)
        if target.exists():
            raise RegistryError(f"version {version} already exists in {self.root}; versions are immutable")
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=self.root))
        try:
            for name in (MODEL_FILE, CARD_FILE):
                shutil.copy2(Path(source_dir) / name, staging / name)
            os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return version

    def promote(self, version: str, *, reason: str = "") -> None:
        if not (self.path(version) / MODEL_FILE).is_file():
            raise RegistryError(f"no model version {version!r} in {self.root}")
        with self._locked() as doc:
            if doc["stack"] and doc["stack"][-1] == version:
                return
            doc["stack"].append(version)
            doc["events"].append({"at": _now(), "action": "promote", "version": version, "reason": reason})

    def rollback(self, *, reason: str = "") -> str | None:
        """Retire the current version; returns the one now current (None: the shipped model)."""
        with self._locked() as doc:
            if not doc["stack"]:
                raise RegistryError("nothing to roll back: the shipped model is already current")
            retired = doc["stack"].pop()
            now = doc["stack"][-1] if doc["stack"] else None
            doc["events"].append({"at": _now(), "action": "rollback", "version": now,
                                  "retired": retired, "reason": reason})
            return now

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".registry.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            doc = self.state()
            doc.setdefault("events", [])
            yield doc
            tmp = self.root / f".{REGISTRY_FILE}.{os.getpid()}"
            tmp.write_text(json.dumps(doc, indent=1) + "\n")
            os.replace(tmp, self.root / REGISTRY_FILE)
