from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.cluster import free_port
from core.settings import load_settings

# Local clusters in tests run without Ray's token auth (ray-serve-2.60-notes.md).
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(scope="session")
def jentic_dir() -> Path:
    path = load_settings().jentic_dir
    if not path.is_dir():
        pytest.fail(f"jentic data not found at {path}; set OPENSESAME_JENTIC_DIR")
    return path


@pytest.fixture(scope="session")
def serve_cluster() -> Iterator[str]:
    """One real Ray cluster with Serve for the whole session (startup costs seconds).

    Yields the HTTP base URL. Test modules deploy their own app on it with ``serve.run``.
    """
    import ray
    from ray import serve

    port = free_port()
    # address="local": a cluster of our own, never one a `make run` left on this machine.
    ray.init(
        address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
        object_store_memory=200_000_000,
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()
