"""The service's exception tree. Each error carries the HTTP status the ingress answers with."""

from __future__ import annotations

__all__ = [
    "PredictorError",
    "InvalidRequest",
    "SpecTooLarge",
    "SpecInvalid",
    "SpecFetchFailed",
    "SpecFetchTimeout",
    "SpecHostRefused",
    "SpecNotCached",
    "Overloaded",
    "UnknownPrediction",
    "OutcomeConflict",
    "FeedbackUnavailable",
    "ClientOverShare",
    "Unauthorized",
]


class PredictorError(Exception):
    """Base class: ``status`` is the HTTP status, ``str(exc)`` the message shown to the client."""

    status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(PredictorError):
    status = 422


class SpecTooLarge(PredictorError):
    status = 413


class SpecInvalid(PredictorError):
    """The spec was fetched but is not a usable OpenAPI/Swagger document."""

    status = 422


class SpecHostRefused(PredictorError):
    """The spec URL is not allowed (scheme, private address, ...)."""

    status = 422


class SpecFetchFailed(PredictorError):
    status = 502


class SpecFetchTimeout(PredictorError):
    status = 504


class SpecNotCached(PredictorError):
    """A replica was handed a spec hash that neither its L1 nor the node's L2 holds."""

    status = 503


class Overloaded(PredictorError):
    status = 503


class UnknownPrediction(PredictorError):
    """Feedback for a prediction id the store does not hold."""

    status = 404


class OutcomeConflict(PredictorError):
    """An explicit outcome different from the one already recorded for the prediction."""

    status = 409


class FeedbackUnavailable(PredictorError):
    """Outcomes are not recorded by this replica (switched off, or the store failed to open)."""

    status = 503


class ClientOverShare(PredictorError):
    """The client already has its share of requests in flight (``client_max_concurrent``)."""

    status = 429


class Unauthorized(PredictorError):
    """API keys are on and the request's bearer token is missing or not one of them."""

    status = 401
