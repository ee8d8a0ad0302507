"""Default replica resources: fractions of the 2-CPU / 4 GB node, so all four deployments and
Ray's own processes fit on it. ``serve_config.yaml`` states the same numbers for deployment."""

from __future__ import annotations

from typing import Any

__all__ = ["DEFAULT_OPTIONS"]

DEFAULT_OPTIONS: dict[str, Any] = {
    "ray_actor_options": {"num_cpus": 0.25, "memory": 400 * 1024 * 1024},
    "max_ongoing_requests": 64,
    "max_queued_requests": 256,
}
