"""GrayASGIMiddleware and GrayWSGIMiddleware over real sockets, from one table of cases.

The ASGI twin runs behind a tiny HTTP/1.1 server written here (uvicorn is not a dependency);
the WSGI twin behind ``wsgiref``. Both echo ``graylb.current()`` and the gray headers the app
saw as JSON, so each case asserts what a user of either server would observe.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socketserver
import threading
from collections.abc import Callable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

import pytest

import graylb
from graylb.propagation import (
    EMPTY,
    GrayASGIMiddleware,
    GrayContext,
    GrayWSGIMiddleware,
    HeaderCodec,
    current,
    gray,
    trust_networks,
)

GRAY_HEADERS = ("x-gray-lane", "x-gray-pin", "baggage")


def context_json(ctx: GrayContext) -> dict[str, Any]:
    return {"lane": ctx.lane, "lane_forced": ctx.lane_forced, "pins": dict(ctx.pins), "values": dict(ctx.values)}


def expect(lane=None, lane_forced=False, pins=None, values=None) -> dict[str, Any]:
    return {"lane": lane, "lane_forced": lane_forced, "pins": pins or {}, "values": values or {}}


# ---------------------------------------------------------------------------- echo apps


async def echo_asgi(scope, receive, send):
    assert scope["type"] == "http"
    await receive()
    seen: dict[str, str] = {}
    for name, value in scope["headers"]:
        if name.decode() in GRAY_HEADERS:  # repeats joined with ",", as WSGI servers do
            seen[name.decode()] = ",".join(filter(None, (seen.get(name.decode()), value.decode())))
    # a task started by the app inherits the request's context
    in_task = await asyncio.create_task(asyncio.sleep(0, result=context_json(current())))
    body = json.dumps({"ctx": context_json(graylb.current()), "headers": seen, "task": in_task}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def echo_wsgi(environ, start_response):
    seen = {name: environ[key] for name in GRAY_HEADERS if (key := "HTTP_" + name.upper().replace("-", "_")) in environ}
    start_response("200 OK", [("Content-Type", "application/json")])

    def body() -> Iterator[bytes]:
        # generated lazily, after the app returned: the context must still be in force here
        ctx = context_json(graylb.current())
        yield json.dumps({"ctx": ctx, "headers": seen, "task": ctx}).encode()

    return body()


# ---------------------------------------------------------------------------- servers


class AsgiTestServer:
    """A minimal HTTP/1.1 server for an ASGI app: one request per connection, response
    buffered and sent with Content-Length. Runs its own event loop in a thread; ``start``
    returns once the socket is bound and listening."""

    def __init__(self, app) -> None:
        self.app = app
        self.port = 0
        self.errors: list[BaseException] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="asgi-test-server", daemon=True)
        self._ready = threading.Event()
        self._server: asyncio.AbstractServer | None = None

    def start(self) -> AsgiTestServer:
        self._thread.start()
        if not self._ready.wait(timeout=10) or self._server is None:
            raise RuntimeError(f"ASGI test server did not start: {self.errors}")
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
            self.port = self._server.sockets[0].getsockname()[1]
        except BaseException as exc:  # reported by start()
            self.errors.append(exc)
        finally:
            self._ready.set()
        if self._server is None:
            return
        self._loop.run_forever()
        self._server.close()
        self._loop.run_until_complete(self._server.wait_closed())
        self._loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            request_line, *lines = head.split("\r\n")
            method, target, _version = request_line.split(" ", 2)
            headers = []
            for line in lines:
                if line:
                    name, _, value = line.partition(":")
                    headers.append((name.strip().lower().encode("latin-1"), value.strip().encode("latin-1")))
            length = int(dict(headers).get(b"content-length", b"0"))
            body = await reader.readexactly(length) if length else b""
            path, _, query = target.partition("?")
            peer = writer.get_extra_info("peername")
            scope = {
                "type": "http",
                "asgi": {"version": "3.0", "spec_version": "2.3"},
                "http_version": "1.1",
                "method": method,
                "scheme": "http",
                "path": path,
                "raw_path": path.encode("latin-1"),
                "query_string": query.encode("latin-1"),
                "root_path": "",
                "headers": headers,
                "client": (peer[0], peer[1]),
                "server": ("127.0.0.1", self.port),
            }
            response_done = asyncio.Event()
            request_sent = False

            async def receive() -> dict:
                nonlocal request_sent
                if not request_sent:
                    request_sent = True
                    return {"type": "http.request", "body": body, "more_body": False}
                await response_done.wait()
                return {"type": "http.disconnect"}

            status, response_headers, chunks = 500, [], []

            async def send(message: dict) -> None:
                nonlocal status, response_headers
                if message["type"] == "http.response.start":
                    status, response_headers = message["status"], list(message.get("headers", []))
                elif message["type"] == "http.response.body":
                    chunks.append(message.get("body", b""))

            try:
                await self.app(scope, receive, send)
            except Exception as exc:
                self.errors.append(exc)
                status, response_headers, chunks = 500, [], [repr(exc).encode()]
            response_done.set()
            payload = b"".join(chunks)
            out = [f"HTTP/1.1 {status} X".encode()]
            out += [name + b": " + value for name, value in response_headers]
            out += [f"content-length: {len(payload)}".encode(), b"connection: close", b"", payload]
            writer.write(b"\r\n".join(out))
            await writer.drain()
        except Exception as exc:
            self.errors.append(exc)
        finally:
            writer.close()


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass


class _LocalWSGIServer(WSGIServer):
    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name (socket.getfqdn), which can stall on
        # machines with slow DNS; a test server on 127.0.0.1 does not need it.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]
        self.setup_environ()


class WsgiTestServer:
    """wsgiref on 127.0.0.1:0; the socket is bound and listening when the constructor returns."""

    def __init__(self, app) -> None:
        self.errors: list[BaseException] = []
        self._server = _LocalWSGIServer(("127.0.0.1", 0), _QuietHandler)
        self._server.set_app(app)
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def start(self) -> WsgiTestServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


def get(port: int, headers: list[tuple[str, str]]) -> dict[str, Any]:
    """GET / with exactly these header lines (repeats allowed), returning the echoed JSON."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("GET", "/", skip_accept_encoding=True)
        for name, value in headers:
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200, body
        return json.loads(body)
    finally:
        conn.close()


# ---------------------------------------------------------------------------- the twins


TRUST = {
    "trusted": True,
    "untrusted": False,
    "loopback-network": trust_networks("127.0.0.1/8"),
    "other-networks": trust_networks("10.0.0.0/8", "192.168.0.0/16", "::1/128"),
}


@pytest.fixture(params=["asgi", "wsgi"])
def serve(request) -> Iterator[Callable[..., int]]:
    """``serve(trust=..., codec=...) -> port``: the echo app behind the middleware under test,
    over a real socket; servers are stopped when the test ends."""
    servers: list[Any] = []

    def start(**middleware_kwargs: Any) -> int:
        if request.param == "asgi":
            server = AsgiTestServer(GrayASGIMiddleware(echo_asgi, **middleware_kwargs)).start()
        else:
            server = WsgiTestServer(GrayWSGIMiddleware(echo_wsgi, **middleware_kwargs)).start()
        servers.append(server)
        return server.port

    yield start
    for server in servers:
        server.stop()
        assert not server.errors, server.errors


CASES = [
    pytest.param("trusted", [], expect(), {}, id="no-headers"),
    pytest.param("trusted", [("X-Gray-Lane", "beta")], expect("beta"), {"x-gray-lane": "beta"}, id="lane"),
    pytest.param(
        "trusted",
        [("x-gray-lane", "beta;forced")],
        expect("beta", True),
        {"x-gray-lane": "beta;forced"},
        id="forced-lane",
    ),
    pytest.param(
        "trusted",
        [("x-gray-pin", "orders=2.0.0,payments=%3E%3D1.2%2C%3C2")],
        expect(pins={"orders": "2.0.0", "payments": ">=1.2,<2"}),
        {"x-gray-pin": "orders=2.0.0,payments=%3E%3D1.2%2C%3C2"},
        id="range-pins",
    ),
    pytest.param(
        "trusted",
        [("baggage", "session=abc,gray.lane=alpha,gray.user-group=staff")],
        expect("alpha", values={"user-group": "staff"}),
        {"baggage": "session=abc,gray.lane=alpha,gray.user-group=staff"},
        id="baggage",
    ),
    pytest.param(
        "trusted",
        [("x-gray-lane", "beta"), ("baggage", "gray.lane=alpha,gray.lane.forced=1")],
        expect("beta"),
        {"x-gray-lane": "beta", "baggage": "gray.lane=alpha,gray.lane.forced=1"},
        id="plain-wins-over-baggage",
    ),
    pytest.param(
        "trusted",
        [("x-gray-pin", "orders=2.0.0"), ("x-gray-pin", "users=%5E1")],
        expect(pins={"orders": "2.0.0", "users": "^1"}),
        {"x-gray-pin": "orders=2.0.0,users=%5E1"},
        id="repeated-pin-headers-combine",
    ),
    pytest.param(
        "trusted",
        [("x-gray-lane", "beta"), ("x-gray-lane", "alpha")],
        expect(),
        {"x-gray-lane": "beta,alpha"},
        id="repeated-lane-headers-are-ambiguous",
    ),
    pytest.param(
        "trusted",
        [("x-gray-lane", "%%garbage;;=="), ("x-gray-pin", "=,=,%zz"), ("baggage", "gray.=,=,,gray.lane")],
        expect(),
        {"x-gray-lane": "%%garbage;;==", "x-gray-pin": "=,=,%zz", "baggage": "gray.=,=,,gray.lane"},
        id="garbage",
    ),
    pytest.param(
        "untrusted",
        [("x-gray-lane", "beta"), ("x-gray-pin", "orders=2.0.0"), ("baggage", "session=abc,gray.lane=beta")],
        expect(),
        {"baggage": "session=abc"},
        id="untrusted-caller-is-stripped",
    ),
    pytest.param(
        "untrusted", [("baggage", "gray.lane=beta,gray.pin.orders=1")], expect(), {}, id="untrusted-baggage-all-gray"
    ),
    pytest.param(
        "loopback-network", [("x-gray-lane", "beta")], expect("beta"), {"x-gray-lane": "beta"}, id="trusted-network"
    ),
    pytest.param("other-networks", [("x-gray-lane", "beta")], expect(), {}, id="untrusted-network"),
]


@pytest.mark.parametrize("trust, headers, expected_ctx, expected_headers", CASES)
def test_app_sees_the_gray_context_its_caller_may_send(serve, trust, headers, expected_ctx, expected_headers):
    port = serve(trust=TRUST[trust])
    echoed = get(port, headers)
    assert echoed["ctx"] == expected_ctx
    assert echoed["task"] == expected_ctx
    assert echoed["headers"] == expected_headers


def test_requests_do_not_leak_context_into_each_other(serve):
    port = serve()
    assert get(port, [("x-gray-lane", "beta")])["ctx"] == expect("beta")
    assert get(port, [])["ctx"] == expect()  # same server thread / loop, no lane left behind
    assert get(port, [("x-gray-pin", "orders=1.0.0")])["ctx"] == expect(pins={"orders": "1.0.0"})


def test_custom_codec_names(serve):
    port = serve(codec=HeaderCodec(lane_header="x-lane", baggage=False))
    echoed = get(port, [("x-lane", "beta"), ("x-gray-lane", "alpha"), ("baggage", "gray.user-group=staff")])
    assert echoed["ctx"] == expect("beta")


def test_a_trust_predicate_that_raises_means_untrusted(serve):
    def broken(_carrier: Any) -> bool:
        raise RuntimeError("directory down")

    port = serve(trust=broken)
    echoed = get(port, [("x-gray-lane", "beta")])
    assert echoed["ctx"] == expect() and echoed["headers"] == {}


# ---------------------------------------------------------------------------- ASGI without sockets


async def _call(app, scope: dict) -> None:
    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        pass

    await app(scope, receive, send)


async def test_asgi_websocket_scope_gets_the_context():
    seen = []

    async def app(scope, receive, send):
        seen.append(current())

    await _call(GrayASGIMiddleware(app), {"type": "websocket", "headers": [(b"x-gray-lane", b"beta")]})
    assert seen == [GrayContext(lane="beta")]
    assert current() is EMPTY


async def test_asgi_lifespan_passes_through_untouched():
    seen = []

    async def app(scope, receive, send):
        seen.append((scope, current()))

    scope = {"type": "lifespan", "headers": [(b"x-gray-lane", b"beta")]}
    with gray(lane="outer"):
        await _call(GrayASGIMiddleware(app, trust=False), scope)
    assert seen[0][0] is scope and seen[0][1].lane == "outer"


async def test_asgi_untrusted_app_gets_a_stripped_copy_and_the_server_scope_is_unchanged():
    seen = []

    async def app(scope, receive, send):
        seen.append((scope["headers"], current()))

    original = [(b"x-gray-lane", b"beta"), (b"host", b"svc")]
    scope = {"type": "http", "headers": list(original)}
    await _call(GrayASGIMiddleware(app, trust=False), scope)
    assert seen == [([(b"host", b"svc")], EMPTY)]
    assert scope["headers"] == original


async def test_asgi_context_is_detached_when_the_app_raises():
    async def app(scope, receive, send):
        raise ValueError("app failed")

    with pytest.raises(ValueError):
        await _call(GrayASGIMiddleware(app), {"type": "http", "headers": [(b"x-gray-lane", b"beta")]})
    assert current() is EMPTY


async def test_asgi_malformed_headers_do_not_break_the_request():
    seen = []

    async def app(scope, receive, send):
        seen.append(current())

    await _call(GrayASGIMiddleware(app), {"type": "http", "headers": [(b"x-gray-lane",), None]})
    await _call(GrayASGIMiddleware(app), {"type": "http"})
    assert seen == [EMPTY, EMPTY]


def test_trust_networks_reads_asgi_scopes_and_wsgi_environs():
    trusted = trust_networks("127.0.0.1/8", "fd00::/8")
    assert trusted({"type": "http", "client": ("127.0.0.1", 5000)})
    assert trusted({"REMOTE_ADDR": "127.8.9.10"})
    assert trusted({"REMOTE_ADDR": "::ffff:127.0.0.1"})
    assert trusted({"client": ("fd00::1%eth0", 1)})
    assert not trusted({"type": "http", "client": ("10.1.2.3", 5000)})
    assert not trusted({"REMOTE_ADDR": "203.0.113.9"})
    assert not trusted({"type": "http", "client": None})  # unix socket
    assert not trusted({"REMOTE_ADDR": "not-an-address"})
    assert not trusted({})
    with pytest.raises(ValueError):
        trust_networks("10.0.0.0/33")


def test_trust_must_be_bool_or_callable():
    with pytest.raises(TypeError):
        GrayASGIMiddleware(echo_asgi, trust="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        GrayWSGIMiddleware(echo_wsgi, trust=1)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- WSGI body handling


def _environ(**headers: str) -> dict[str, Any]:
    return {"REQUEST_METHOD": "GET", "REMOTE_ADDR": "127.0.0.1", **{f"HTTP_{k.upper()}": v for k, v in headers.items()}}


def _start_response(status, headers, exc_info=None):
    return lambda data: None


class _TrackingBody:
    """A lazy body that records the gray lane at each step, including close()."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str | None]] = []

    def __iter__(self) -> Iterator[bytes]:
        for i in range(2):
            self.events.append((f"chunk{i}", current().lane))
            yield b"x"

    def close(self) -> None:
        self.events.append(("close", current().lane))


def test_wsgi_context_holds_while_the_body_is_consumed_and_close_is_passed_through():
    body = _TrackingBody()
    app = GrayWSGIMiddleware(lambda environ, start_response: body)
    result = app(_environ(x_gray_lane="beta"), _start_response)
    assert current() is EMPTY  # the server's own context is never touched
    chunks = []
    for chunk in result:
        assert current() is EMPTY  # between chunks the server runs in its own context
        chunks.append(chunk)
    result.close()
    assert chunks == [b"x", b"x"]
    assert body.events == [("chunk0", "beta"), ("chunk1", "beta"), ("close", "beta")]
    assert current() is EMPTY


def test_wsgi_body_consumed_in_another_thread_still_sees_the_context():
    body = _TrackingBody()
    result = GrayWSGIMiddleware(lambda environ, start_response: body)(_environ(x_gray_lane="beta"), _start_response)
    worker = threading.Thread(target=lambda: (list(result), result.close()))
    worker.start()
    worker.join(timeout=10)
    assert body.events == [("chunk0", "beta"), ("chunk1", "beta"), ("close", "beta")]


def test_wsgi_gray_block_spanning_a_yield_keeps_working():
    def app(environ, start_response):
        def body():
            with gray(values={"step": "inner"}):
                yield current().value("step").encode()
                yield (current().lane + "/" + current().value("step")).encode()

        return body()

    result = GrayWSGIMiddleware(app)(_environ(x_gray_lane="beta"), _start_response)
    assert list(result) == [b"inner", b"beta/inner"]


def test_wsgi_generator_cleanup_runs_in_the_context_on_close():
    seen = []

    def app(environ, start_response):
        def body():
            try:
                yield b"first"
                yield b"never"
            finally:
                seen.append(current().lane)

        return body()

    result = GrayWSGIMiddleware(app)(_environ(x_gray_lane="beta"), _start_response)
    assert next(iter(result)) == b"first"
    result.close()  # the server stops early (client went away): cleanup still sees the lane
    assert seen == ["beta"]


def test_wsgi_list_and_file_bodies_are_returned_as_they_are():
    listed = [b"hello"]
    assert GrayWSGIMiddleware(lambda e, s: listed)(_environ(), _start_response) is listed

    class FileWrapper:
        def __init__(self, filelike, blksize=8192):
            self.filelike = filelike

    wrapped = FileWrapper(object())
    environ = {**_environ(), "wsgi.file_wrapper": FileWrapper}
    assert GrayWSGIMiddleware(lambda e, s: wrapped)(environ, _start_response) is wrapped


def test_wsgi_untrusted_headers_are_deleted_from_environ():
    environ = _environ(x_gray_lane="beta", x_gray_pin="orders=1", baggage="a=1,gray.lane=beta", host="svc")
    seen = []
    GrayWSGIMiddleware(lambda e, s: seen.append((dict(e), current())) or [], trust=False)(environ, _start_response)
    app_environ, ctx = seen[0]
    assert ctx is EMPTY
    assert "HTTP_X_GRAY_LANE" not in app_environ and "HTTP_X_GRAY_PIN" not in app_environ
    assert app_environ["HTTP_BAGGAGE"] == "a=1" and app_environ["HTTP_HOST"] == "svc"


def test_wsgi_app_exception_propagates_and_leaves_no_context():
    def app(environ, start_response):
        raise KeyError("boom")

    with pytest.raises(KeyError):
        GrayWSGIMiddleware(app)(_environ(x_gray_lane="beta"), _start_response)
    assert current() is EMPTY
