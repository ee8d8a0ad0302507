"""A real HTTP server on loopback that serves specs to the service under test."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Route:
    body: bytes
    content_type: str = "application/json"
    status: int = 200
    delay_s: float = 0.0
    redirect_to: str | None = None  # answer 302 to this URL
    hang: bool = False  # read the request, never answer (until the server stops)
    stream_bytes: int = 0  # then send this many more bytes, without a Content-Length
    headers: dict[str, str] | None = None  # more response headers (e.g. Content-Encoding)


class SpecServer:
    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.hits: dict[str, int] = {}
        self.stopping = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            # Headers and body go out in two writes; with Nagle on, each answer waits ~40 ms.
            disable_nagle_algorithm = True

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                route = server.routes.get(self.path)
                server.hits[self.path] = server.hits.get(self.path, 0) + 1
                if route is None:
                    self.send_error(404)
                    return
                if route.hang:
                    server.stopping.wait()
                    return
                time.sleep(route.delay_s)
                if route.redirect_to is not None:
                    self.send_response(302)
                    self.send_header("Location", route.redirect_to)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(route.status)
                self.send_header("Content-Type", route.content_type)
                for name, value in (route.headers or {}).items():
                    self.send_header(name, value)
                if not route.stream_bytes:
                    self.send_header("Content-Length", str(len(route.body)))
                self.end_headers()
                try:
                    self.wfile.write(route.body)
                    chunk = b" " * 65536
                    for _ in range(route.stream_bytes // len(chunk)):
                        self.wfile.write(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client stopped reading at its cap

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def add(self, path: str, body: bytes, **kw: object) -> str:
        self.routes[path] = Route(body, **kw)  # type: ignore[arg-type]
        return self.url(path)


@contextmanager
def spec_server() -> Iterator[SpecServer]:
    server = SpecServer()
    thread = threading.Thread(target=server.httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stopping.set()
        server.httpd.shutdown()
        server.httpd.server_close()


@contextmanager
def banner_server(banner: bytes, *, accept_timeout_s: float = 30.0) -> Iterator[int]:
    """A loopback port that is not HTTP: each connection's request is read and answered with
    ``banner`` where a status line should be. Yields the port; closed on exit."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        server.settimeout(accept_timeout_s)
        try:
            while True:
                conn, _ = server.accept()
                conn.recv(65536)  # the GET, then a banner where an HTTP status line should be
                conn.sendall(banner)
                time.sleep(0.5)
                conn.close()
        except OSError:
            return

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield server.getsockname()[1]
    finally:
        server.close()
