"""Runtime batching knobs, delivered as ``user_config`` and validated before they are applied."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = ["BatchConfig", "apply_batch_config"]


class BatchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_batch_size: int = Field(16, ge=1, le=256)
    batch_wait_timeout_s: float = Field(0.002, ge=0.0, le=0.1)


def apply_batch_config(method: Any, user_config: dict[str, Any] | None) -> BatchConfig:
    """Validate ``user_config`` and set it on a ``@serve.batch`` method; a bad value is refused."""
    try:
        config = BatchConfig.model_validate(user_config or {})
    except ValidationError as exc:
        raise ValueError(f"invalid batching user_config: {exc}") from None
    method.set_max_batch_size(config.max_batch_size)
    method.set_batch_wait_timeout_s(config.batch_wait_timeout_s)
    return config
