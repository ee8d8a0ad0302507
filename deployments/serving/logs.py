"""The replicas' logs: one JSON object a line, with Serve's context and the prediction id.

Serve writes each replica's log (``<ray temp dir>/session_latest/logs/serve/replica_*.log``) in the
encoding of ``serve_config.yaml``'s ``logging_config`` (``encoding: JSON`` here: timestamp, level,
message, deployment, replica, and ``request_id`` — the same id in every deployment a request went
through). Our modules' loggers are routed through Serve's handlers, so their lines are in that
file and format too rather than plain text on stderr. The Ingress logs one ``prediction`` line per
answer and one ``outcome`` line per feedback at INFO, with the ``prediction_id`` a user quotes:
with the access log on (``make run ACCESS_LOG=1``: Serve's access lines, level INFO) a support
question about a prediction id finds its request id, and through it every line of that request.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from deployments.serving.feedback import OutcomeResult
    from deployments.serving.schemas import PredictResponse

__all__ = ["route_to_serve", "log_prediction", "log_outcome"]

log = logging.getLogger("deployments.serving.requests")
_OURS = ("deployments", "core", "ranker")


def route_to_serve() -> None:
    """In a replica: our packages' loggers write through Serve's handlers, at Serve's level."""
    serve = logging.getLogger("ray.serve")
    if not serve.handlers:  # not in a Serve replica: leave logging as it is
        return
    for name in _OURS:
        logger = logging.getLogger(name)
        logger.handlers = list(serve.handlers)
        logger.propagate = False
        logger.setLevel(serve.level)


def log_prediction(response: PredictResponse) -> None:
    if log.isEnabledFor(logging.INFO):
        meta = response.metadata
        log.info("prediction", extra={
            "prediction_id": response.prediction_id, "model_version": meta.model_version,
            "generator": meta.generator, "fallback_reason": meta.fallback_reason,
            "top": response.predictions[0].endpoint if response.predictions else None,
            "timings_ms": meta.timings_ms,
        })


def log_outcome(result: OutcomeResult) -> None:
    if log.isEnabledFor(logging.INFO):
        log.info("outcome", extra={
            "prediction_id": result.prediction_id, "rank": result.rank, "source": result.source,
            "recorded": result.recorded,
        })
