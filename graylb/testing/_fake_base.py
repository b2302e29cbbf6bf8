"""What :class:`~graylb.testing.FakeConsul` and :class:`~graylb.testing.FakeNacos` share: the
HTTP plumbing (request bodies incl. chunked, response writing), start / stop on the same port
with a reaper thread, the request log and the failure / stall controls, and ``python -m``'s
serve-until-interrupted loop. Each fake keeps its own wire behaviour (routing, errors, stalls).
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
import time
import traceback
from collections.abc import Iterator
from typing import Any, ClassVar, Generic, TypeVar
from urllib.parse import parse_qs

from .http_server import TrackedHandler, TrackingHTTPServer

REAP_INTERVAL = 0.05

F = TypeVar("F", bound="FakeBase[Any]")
Rec = TypeVar("Rec")


@dataclasses.dataclass
class Response:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = dataclasses.field(default_factory=list)


class Killed(Exception):
    """The server stopped while this request was in flight: drop the connection, answer nothing."""


def split_request(target: str, headers: Any) -> tuple[str, dict[str, list[str]], dict[str, str]]:
    """A request target and its headers as (raw path, parsed query, headers by lower-case
    name — repeated headers joined with ", ")."""
    raw_path, _, raw_query = target.partition("?")
    query = parse_qs(raw_query, keep_blank_values=True)
    hdrs: dict[str, str] = {}
    for name, value in headers.items():
        name = name.lower()
        hdrs[name] = f"{hdrs[name]}, {value}" if name in hdrs else value
    return raw_path, query, hdrs


class FakeHandler(TrackedHandler):
    """Reads the body (Content-Length or chunked), hands the request to ``server.fake._dispatch``
    and writes its :class:`Response` — chunked above ``chunk_above`` bytes, like the real server."""

    server: FakeServer
    chunk_above: ClassVar[int]
    error_content_type: str  # of the traceback a bug in the fake answers with (500)

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        body = self._read_body()
        try:
            resp = self.server.fake._dispatch(self.command, self.path, self.headers, body)
        except Killed:
            self.close_connection = True
            return
        except Exception:  # noqa: BLE001 - a bug in the fake must not hang the client
            resp = Response(500, traceback.format_exc().encode(), [("Content-Type", self.error_content_type)])
        try:
            self.send_response_only(resp.status)
            self.send_header("Date", self.date_time_string())
            for name, value in resp.headers:
                self.send_header(name, value)
            chunked = len(resp.body) > self.chunk_above and self.request_version == "HTTP/1.1"
            if chunked:
                self.send_header("Transfer-Encoding", "chunked")
            else:
                self.send_header("Content-Length", str(len(resp.body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(resp.body), resp.body) if chunked else resp.body)
            self.wfile.flush()
        except OSError:
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle


class FakeServer(TrackingHTTPServer):
    def __init__(self, addr: tuple[str, int], fake: FakeBase[Any], handler: type[FakeHandler]) -> None:
        self.fake = fake
        super().__init__(addr, handler)


class FakeBase(Generic[Rec]):
    """Lifecycle and test controls of a fake registry. A subclass sets ``_handler`` and
    ``_thread_name``, calls :meth:`_init_base` early in ``__init__`` and implements
    ``_dispatch`` and ``_reap_once`` (plus the optional hooks)."""

    _handler: ClassVar[type[FakeHandler]]
    _thread_name: ClassVar[str]  # "fake-consul": threads "fake-consul-<port>", "fake-consul-reaper-<port>"

    def _init_base(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._lock = threading.RLock()
        self._gen = 0  # bumped by stop(): in-flight requests die
        self._requests: list[Rec] = []
        self._fail_queue: list[tuple[int, str | None]] = []
        self._fail_all: tuple[int, str | None] | None = None
        self._stall = 0.0
        self._server: FakeServer | None = None
        self._thread: threading.Thread | None = None
        self._reaper: threading.Thread | None = None
        self._reaper_stop = threading.Event()
        # Requests parked server-side (Consul blocking queries, Nacos long polls), so tests can
        # wait for a client to be parked before changing something.
        self._parked = threading.Condition(self._lock)
        self._held = 0

    @contextlib.contextmanager
    def _holding(self) -> Iterator[None]:
        """Count a request as parked for the block. Call with the lock held."""
        self._held += 1
        self._parked.notify_all()
        try:
            yield
        finally:
            self._held -= 1
            self._parked.notify_all()

    def _held_count(self) -> int:
        with self._lock:
            return self._held

    def _wait_held(self, count: int, timeout: float) -> bool:
        with self._lock:
            return self._parked.wait_for(lambda: self._held >= count, timeout)

    # ---- hooks ------------------------------------------------------------------------------

    _cond: threading.Condition  # set by the subclass on self._lock; stop() notifies it

    def _dispatch(self, method: str, target: str, headers: Any, body: bytes) -> Response:
        raise NotImplementedError

    def _reap_once(self) -> None:
        raise NotImplementedError

    def _make_server(self) -> FakeServer:
        return FakeServer((self.host, self.port), self, self._handler)

    def _restarted(self, now: float) -> None:
        """Called by :meth:`start` under the lock: restart the state's clocks."""

    def _stopped(self) -> None:
        """Called by :meth:`stop` once the connections are down, before joining the threads."""

    # ---- lifecycle --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self: F) -> F:
        """Bind and serve (again on the same port after :meth:`stop`)."""
        with self._lock:
            if self._server is not None:
                return self
            server = self._make_server()
            self.port = server.server_address[1]
            self._server = server
            self._restarted(time.monotonic())
            self._reaper_stop = threading.Event()
            self._reaper = threading.Thread(
                target=self._reap_loop,
                args=(self._reaper_stop,),
                name=f"{self._thread_name}-reaper-{self.port}",
                daemon=True,
            )
            self._thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"{self._thread_name}-{self.port}",
                daemon=True,
            )
        self._thread.start()
        self._reaper.start()
        return self

    def stop(self) -> None:
        """Close the listener and every connection, killing in-flight requests. State is kept."""
        with self._lock:
            server, self._server = self._server, None
            if server is None:
                return
            self._reaper_stop.set()
            self._gen += 1
            self._cond.notify_all()
        server.shutdown()
        server.server_close()
        server.kill_connections()
        self._stopped()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._reaper is not None:
            self._reaper.join(timeout=5)

    def __enter__(self: F) -> F:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _reap_loop(self, stop: threading.Event) -> None:
        while not stop.wait(REAP_INTERVAL):
            try:
                self._reap_once()
            except Exception:  # noqa: BLE001 - keep reaping
                traceback.print_exc()

    # ---- test controls ----------------------------------------------------------------------

    @property
    def requests(self) -> list[Rec]:
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def fail_next(self, status: int, count: int = 1, body: str | None = None) -> None:
        with self._lock:
            self._fail_queue.extend([(status, body)] * count)

    def fail_all(self, status: int, body: str | None = None) -> None:
        with self._lock:
            self._fail_all = (status, body)

    def heal(self) -> None:
        with self._lock:
            self._fail_all = None
            self._fail_queue.clear()

    def stall(self, seconds: float) -> None:
        with self._lock:
            self._stall = max(0.0, float(seconds))

    def _next_failure(self) -> tuple[int, str | None] | None:
        """The failure the next API call answers with (fail_next first, then fail_all), if any."""
        with self._lock:
            return self._fail_queue.pop(0) if self._fail_queue else self._fail_all


def serve_until_interrupted(fake: FakeBase[Any], banner: str) -> int:
    """``python -m``: print ``banner``, serve until SIGTERM / Ctrl-C, stop the fake."""
    print(banner, flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    fake.stop()
    return 0
