"""The FastAPI app's error envelope: every error is JSON ``{"error": {status, message, ...}}``.

Bad input is a 4xx with a message naming the problem; overload is a 503 with ``Retry-After``;
an unexpected fault is logged with its traceback and answered without one.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray.exceptions import RayError
from ray.serve.exceptions import BackPressureError, RayServeException
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.errors import PredictorError
from deployments.serving.admission import body_over_cap

__all__ = ["install_error_handlers", "BodySizeLimit", "error_response"]

log = logging.getLogger(__name__)
RETRY_AFTER_S = "1"


def error_response(status: int, message: str, details: list[dict[str, Any]] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"status": status, "message": message}
    if details:
        body["details"] = details
    headers = {"Retry-After": RETRY_AFTER_S} if status in (429, 503) else None
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def _validation_details(exc: RequestValidationError) -> list[dict[str, Any]]:
    # No "input" echo: it may be a 25 MB spec, or a secret the client pasted by mistake.
    return [
        {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": e.get("type")}
        for e in exc.errors()[:20]
    ]


def _first_problem(first: dict[str, Any]) -> str:
    where = ".".join(first["loc"][1:] if first["loc"][:1] == ["body"] else first["loc"])
    return f"invalid request: {where + ': ' if where else ''}{first['msg']}"


def _body_problem(request: Request, exc: RequestValidationError) -> str | None:
    """What is wrong with the body as a whole, said so a person can fix it: not JSON (the content
    type), or JSON broken at a line and column."""
    errors = exc.errors()
    if not errors or list(errors[0].get("loc", ()))[:1] != ["body"]:
        return None
    first = errors[0]
    if first.get("type") == "json_invalid":
        pos = first["loc"][1] if len(first["loc"]) > 1 and isinstance(first["loc"][1], int) else None
        reason = str((first.get("ctx") or {}).get("error", "not valid JSON"))
        body = getattr(request, "_body", None)  # read by FastAPI already; never read again here
        if pos is None or not isinstance(body, bytes):
            return f"invalid request: the body is not valid JSON ({reason})"
        line = body.count(b"\n", 0, pos) + 1
        column = pos - (body.rfind(b"\n", 0, pos) + 1) + 1
        return f"invalid request: the body is not valid JSON: {reason} at line {line}, column {column}"
    if len(first["loc"]) == 1 and first.get("type") in ("model_attributes_type", "dict_type", "missing"):
        ctype = request.headers.get("content-type", "")
        if "json" not in ctype.lower():
            got = f"content-type {ctype!r}" if ctype else "no content-type"
            return f"invalid request: the body must be JSON sent with content-type: application/json ({got})"
    return None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(PredictorError)
    async def _predictor_error(_: Request, exc: PredictorError) -> JSONResponse:
        return error_response(exc.status, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = _validation_details(exc)
        first = details[0] if details else {"loc": [], "msg": "invalid request"}
        message = _body_problem(request, exc) or _first_problem(first)
        return error_response(422, message, details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(BackPressureError)
    async def _backpressure(_: Request, exc: BackPressureError) -> JSONResponse:
        return error_response(503, "the service is overloaded; retry shortly")

    @app.exception_handler(RayError)
    async def _ray(_: Request, exc: RayError) -> JSONResponse:
        log.warning("backend replica failed: %s", type(exc).__name__)
        return error_response(503, "a backend replica failed; retry shortly")

    @app.exception_handler(RayServeException)
    async def _serve(_: Request, exc: RayServeException) -> JSONResponse:
        log.warning("serve error: %s", type(exc).__name__)
        return error_response(503, "the service is temporarily unavailable; retry shortly")

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return error_response(500, "internal error")


class BodySizeLimit:
    """Refuse request bodies over ``max_bytes`` with 413, by Content-Length or while streaming."""

    def __init__(self, app: ASGIApp, *, limit: _Limit) -> None:
        self.app = app
        self.limit = limit

    @property
    def max_bytes(self) -> int:
        return self.limit.max_bytes

    @staticmethod
    def install(app: FastAPI, max_bytes: int = 26 * 1024 * 1024) -> _Limit:
        """Add the middleware; the returned object's ``max_bytes`` can be changed later."""
        limit = _Limit(max_bytes)
        app.add_middleware(BodySizeLimit, limit=limit)
        return limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = error_response(413, body_over_cap(self.max_bytes))
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await too_large(scope, receive, send)
                return
        seen, exceeded, answered = 0, False, False

        async def limited() -> Message:
            nonlocal seen, exceeded
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                exceeded = True
                raise _BodyTooLarge
            return message

        async def guarded(message: Message) -> None:
            # FastAPI turns any error while reading the body into its own 400: once the body
            # went over the cap, that answer is dropped and the 413 below sent instead.
            nonlocal answered
            if not exceeded:
                answered = True
                await send(message)

        try:
            await self.app(scope, limited, guarded)
        except _BodyTooLarge:
            pass
        if exceeded and not answered:
            await too_large(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


class _Limit:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
