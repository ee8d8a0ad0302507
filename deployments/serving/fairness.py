"""One client must not make another's requests fail: what the edge trusts, and a share per client.

Three things a client could otherwise use against everyone else (issue 19, RELIABILITY.md "Bounds"):

- Ray Serve 2.60 lets the client set its own request timeout (``x-request-timeout-seconds``;
  0 disables it) and turn off cancellation on disconnect (``x-request-disconnect-disabled: ?1``).
  Serve reads them before any of our code runs (``ray/serve/_private/proxy.py``,
  ``replica.py::_direct_ingress_asgi``), so they are removed by HAProxy, the production edge
  (:mod:`deployments.serving.admission`), and in any case the Ingress holds every request to
  its own deadline (:class:`EdgeGuard`), whatever the headers said.
- Slow requests (a spec host that answers after 10 s) hold the Ingress's slots: with 32 slots and
  32 queued, one client sending 64 of them made every other client's requests wait or fail.
  :class:`ClientShares` lets each client hold at most ``client_max_concurrent`` requests per
  Ingress replica; past it the client is answered 429 at once, and everyone else keeps theirs.
  Behind HAProxy (``make run``, the image) the same share is enforced first at the edge
  (:func:`deployments.serving.admission.client_share_lines`): a refusal here still costs a
  request's work in Serve and takes a slot of HAProxy's admission control while it lasts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.errors import ClientOverShare
from deployments.serving.admission import STRIPPED_HEADERS
from deployments.serving.http_errors import error_response

__all__ = ["ClientShares", "EdgeGuard", "client_key", "source_address"]

log = logging.getLogger(__name__)


def client_key(*, tenant: str | None, user_id: str | None, address: str | None) -> str:
    """Who a request counts against: the tenant (API key) when there are keys; without keys the
    client is only what it says, so its user id and source address together."""
    if tenant is not None:
        return f"tenant:{tenant}"
    return f"anon:{address or '?'}:{user_id or ''}"


def source_address(request: Request) -> str | None:
    """The peer's address as Serve hands it over (behind HAProxy: HAProxy's own)."""
    return request.client.host if request.client is not None else None


class ClientShares:
    """Requests in flight per client, at most ``limit`` each; counts only, no queue.

    Refusing rather than queueing: a request waiting here would still hold one of Serve's
    slots of the replica (``max_ongoing_requests``), which is what the share protects.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"a client's share must be at least 1 request, got {limit}")
        self.limit = limit
        self._in_flight: dict[str, int] = {}
        self.refused = 0

    @contextlib.contextmanager
    def hold(self, key: str) -> Iterator[None]:
        held = self._in_flight.get(key, 0)
        if held >= self.limit:
            self.refused += 1
            raise ClientOverShare(
                f"this client already has {held} requests in flight here, its share "
                f"(client_max_concurrent = {self.limit}); retry when one has finished"
            )
        self._in_flight[key] = held + 1
        try:
            yield
        finally:
            left = self._in_flight[key] - 1
            if left:
                self._in_flight[key] = left
            else:  # no entry per client that came once: memory follows what is in flight
                del self._in_flight[key]

    def status(self) -> dict[str, int]:
        return {"limit": self.limit, "clients": len(self._in_flight), "refused": self.refused}


@dataclass
class _Deadline:
    seconds: float = 30.0


class EdgeGuard:
    """ASGI middleware: drops Serve's client-controlled headers and answers 504 at the deadline.

    Install with :meth:`install` when the FastAPI app is built; the deadline is set later from the
    replica's settings (``request_timeout_s``).
    """

    def __init__(self, app: ASGIApp, *, deadline: _Deadline) -> None:
        self.app = app
        self.deadline = deadline

    @staticmethod
    def install(app: object) -> _Deadline:
        deadline = _Deadline()
        app.add_middleware(EdgeGuard, deadline=deadline)  # type: ignore[attr-defined]
        return deadline

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope["headers"] = [(k, v) for k, v in scope.get("headers", ()) if k.lower() not in STRIPPED_HEADERS]
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            async with asyncio.timeout(self.deadline.seconds):
                await self.app(scope, receive, tracked)
        except TimeoutError:
            log.warning("request to %s cut at the %.1fs deadline", scope.get("path"), self.deadline.seconds)
            if started:
                return  # part of the answer went out: the connection is closed instead
            response = error_response(
                504, f"the request took more than {self.deadline.seconds:g}s (request_timeout_s)")
            await response(scope, receive, send)
