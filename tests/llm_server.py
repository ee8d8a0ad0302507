"""A scriptable OpenAI chat-completions server on loopback, for tests of the LLM backend.

It is a real HTTP/1.1 server (keep-alive) in a background thread on an ephemeral port. Each test
queues the replies it wants (a good answer, an HTTP 500, a slow or hanging answer, a dropped
connection, any content) and then reads back the requests the server received.

    with FakeLLMServer() as server:
        server.script(Reply.predictions([{"endpoint": "GET /a", "confidence": 0.9}]))
        ... settings.llm_base_url = server.base_url ...
        assert server.requests[0].json["model"] == "m"
"""

from __future__ import annotations

import json
import socket
import threading
from collections import deque
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["FakeLLMServer", "RecordedRequest", "Reply", "dead_port"]


@dataclass(frozen=True)
class Reply:
    """What the server does with one request."""

    status: int = 200
    content: str | None = '{"predictions": []}'  # the assistant message, inside the envelope
    body: bytes | None = None  # raw response body, replacing the whole envelope
    delay_s: float = 0.0  # wait this long before answering
    hang: bool = False  # read the request, then never answer (until the server stops)
    drop: bool = False  # read the request, then close the connection without a response

    @classmethod
    def predictions(cls, items: list[dict[str, Any]], *, fenced: bool = False) -> Reply:
        text = json.dumps({"predictions": items})
        return cls(content=f"```json\n{text}\n```" if fenced else text)

    @classmethod
    def text(cls, content: str | None) -> Reply:
        return cls(content=content)

    @classmethod
    def error(cls, status: int = 500) -> Reply:
        return cls(status=status, body=json.dumps({"error": {"message": "boom"}}).encode())

    @classmethod
    def raw(cls, body: bytes) -> Reply:
        return cls(body=body)

    @classmethod
    def slow(cls, delay_s: float, then: Reply | None = None) -> Reply:
        return replace(then or cls(), delay_s=delay_s)

    @classmethod
    def hanging(cls) -> Reply:
        return cls(hang=True)

    @classmethod
    def dropped(cls) -> Reply:
        return cls(drop=True)


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes = field(repr=False)
    client_port: int = 0  # the same port on two requests means a reused connection

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def user_message(self) -> str:
        return next(m["content"] for m in self.json["messages"] if m["role"] == "user")


def _envelope(content: str | None, model: str) -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        }
    ).encode()


class FakeLLMServer:
    """Serves ``POST {base_url}/chat/completions`` with the scripted replies, then ``default``."""

    def __init__(self, *, default: Reply | None = None, prefix: str = "/v1", port: int = 0) -> None:
        self.default = default or Reply()
        self.prefix = prefix
        self._queue: deque[Reply] = deque()
        self._requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._connections: set[socket.socket] = set()  # closed at stop: a stopped server refuses
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler_class())
        self._httpd.daemon_threads = True
        # A short poll interval keeps shutdown (one per test) fast.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.prefix}"

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def script(self, *replies: Reply) -> None:
        """Queue replies for the next requests, in order."""
        with self._lock:
            self._queue.extend(replies)

    def start(self) -> FakeLLMServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()  # releases hanging and slow handlers
        self._httpd.shutdown()
        self._httpd.server_close()
        self._httpd.handle_error = lambda request, client_address: None  # resets we cause now
        with self._lock:  # pooled keep-alive connections too, not only the listening socket
            for conn in self._connections:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _next_reply(self, request: RecordedRequest) -> Reply:
        with self._lock:
            self._requests.append(request)
            return self._queue.popleft() if self._queue else self.default

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like a real server
            # Headers and body go out in two writes; with Nagle on, the body waits ~40 ms for
            # the client's delayed ACK.
            disable_nagle_algorithm = True

            def setup(self) -> None:
                super().setup()
                with server._lock:
                    server._connections.add(self.connection)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                recorded = RecordedRequest(
                    method="POST",
                    path=self.path,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                    client_port=int(self.client_address[1]),
                )
                if self.path != f"{server.prefix}/chat/completions":
                    self._send(404, b'{"error": "not found"}')
                    return
                reply = server._next_reply(recorded)
                if reply.hang:
                    server._stop.wait()
                    self.close_connection = True
                    return
                if reply.drop:
                    self.close_connection = True
                    return
                if reply.delay_s and server._stop.wait(reply.delay_s):
                    self.close_connection = True
                    return
                model = json.loads(body or b"{}").get("model", "")
                payload = reply.body if reply.body is not None else _envelope(reply.content, model)
                self._send(reply.status, payload)

            def _send(self, status: int, payload: bytes) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    # The client gave up (its budget ran out) before we answered.
                    self.close_connection = True

            def log_message(self, format: str, *args: Any) -> None:
                return  # keep test output clean

        return Handler


def dead_port() -> int:
    """A loopback port nothing listens on (bound, read, released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
