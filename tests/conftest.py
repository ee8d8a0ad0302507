from __future__ import annotations

from pathlib import Path

import pytest

from deployments.settings import load_settings


@pytest.fixture(scope="session")
def jentic_dir() -> Path:
    path = load_settings().jentic_dir
    if not path.is_dir():
        pytest.fail(f"jentic data not found at {path}; set OPENSESAME_JENTIC_DIR")
    return path
