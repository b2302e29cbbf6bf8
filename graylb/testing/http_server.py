"""A small threaded HTTP/1.1 (keep-alive) WSGI server on 127.0.0.1, for tests, examples and the demo.

``stop()`` behaves like a process dying: the listening socket closes *and* every open keep-alive
connection is shut down, so clients see connection errors rather than a polite goodbye.
"""

from __future__ import annotations

import io
import socket
import sys
import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["WSGIServer", "serve_wsgi", "TrackingHTTPServer", "TrackedHandler"]

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class TrackedHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive handler whose connection the :class:`TrackingHTTPServer` can drop."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle on, delayed ACKs add ~40 ms a request.
    disable_nagle_algorithm = True
    server: TrackingHTTPServer

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self.connection)

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read their own output
        pass


class _Handler(TrackedHandler):
    server: _Server

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path, _, query = self.path.partition("?")
        environ: dict[str, Any] = {
            "REQUEST_METHOD": self.command,
            "SCRIPT_NAME": "",
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "SERVER_NAME": self.server.server_address[0],
            "SERVER_PORT": str(self.server.server_address[1]),
            "SERVER_PROTOCOL": self.request_version,
            "REMOTE_ADDR": self.client_address[0],
            "CONTENT_LENGTH": str(length),
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        for name, value in self.headers.items():
            key = "HTTP_" + name.upper().replace("-", "_")
            if key in ("HTTP_CONTENT_LENGTH", "HTTP_CONTENT_TYPE"):
                continue
            environ[key] = f"{environ[key]},{value}" if key in environ else value
        status_headers: list[Any] = []

        def start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Callable[[bytes], None]:
            status_headers[:] = [status, headers]
            return lambda data: None

        result = self.server.app(environ, start_response)
        try:
            payload = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close:
                close()
        status, headers = status_headers
        code, _, reason = status.partition(" ")
        self.send_response(int(code), reason)
        for name, value in headers:
            if name.lower() != "content-length":
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle


class TrackingHTTPServer(ThreadingHTTPServer):
    """A threaded HTTP server that remembers its open connections, so that stopping it can
    drop them all like a crashed process would (handlers call :meth:`track` / :meth:`untrack`).
    Shared by the test WSGI server and the fake registries."""

    # AF_INET (the default family; nothing here sets another): bound, it is getsockname()'s
    # (host, port), the host a str. typeshed's type also allows bytes hosts and IPv6 4-tuples.
    server_address: tuple[str, int]
    daemon_threads = True
    allow_reuse_address = True
    # The default listen backlog (5) drops connection bursts: hundreds of watchers connect at once.
    request_queue_size = 1024

    def __init__(self, addr: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(addr, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A connection the client (or kill_connections) dropped mid-response is what these
        # servers are for, not an error to print a traceback for.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)

    def track(self, conn: socket.socket) -> None:
        with self._conns_lock:
            self._conns.add(conn)

    def untrack(self, conn: socket.socket) -> None:
        with self._conns_lock:
            self._conns.discard(conn)

    def kill_connections(self) -> None:
        with self._conns_lock:
            conns, self._conns = list(self._conns), set()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Server(TrackingHTTPServer):
    def __init__(self, addr: tuple[str, int], app: WSGIApp) -> None:
        self.app = app
        super().__init__(addr, _Handler)


class WSGIServer:
    """A running server: ``url``, ``host``, ``port``; ``stop()`` (also on context exit)."""

    def __init__(self, app: WSGIApp, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = _Server((host, port), app)
        self.host, self.port = self._server.server_address[:2]
        self.url = f"http://{self.host}:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"graylb-http-{self.port}",
            daemon=True,
        )
        self._thread.start()
        self.running = True

    def stop(self) -> None:
        if not self.running:
            return
        self.running = False
        self._server.shutdown()
        self._server.server_close()
        self._server.kill_connections()
        self._thread.join(timeout=5)

    def __enter__(self) -> WSGIServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_wsgi(app: WSGIApp, host: str = "127.0.0.1", port: int = 0) -> WSGIServer:
    """Start ``app`` on ``host:port`` (port 0 = a free one) in a background thread."""
    return WSGIServer(app, host, port)
