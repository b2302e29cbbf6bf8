"""The ASGI and WSGI drain middlewares behave the same: one table of cases, both twins."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from graylb.drain import DRAIN_HEADER, Drain
from graylb.drain_middleware import DrainASGIMiddleware, DrainWSGIMiddleware


def asgi_call(drain: Drain, method: str, path: str, client: str) -> tuple[int, dict[str, str], bytes, int]:
    calls = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        calls.append(drain.in_flight)  # counted while the app runs
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"app"})

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    async def receive() -> dict:
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "method": method, "path": path, "headers": [], "client": (client, 5000)}
    asyncio.run(DrainASGIMiddleware(app, drain)(scope, receive, send))
    headers = {k.decode(): v.decode() for k, v in sent[0]["headers"]}
    return sent[0]["status"], headers, b"".join(m.get("body", b"") for m in sent[1:]), len(calls)


def wsgi_call(drain: Drain, method: str, path: str, client: str) -> tuple[int, dict[str, str], bytes, int]:
    calls = []

    def app(environ: dict, start_response: Any) -> list[bytes]:
        calls.append(drain.in_flight)
        start_response("200 OK", [])
        return [b"app"]

    started: list[Any] = []
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "REMOTE_ADDR": client}
    body_iter = DrainWSGIMiddleware(app, drain)(environ, lambda status, headers: started.append((status, headers)))
    body = b"".join(body_iter)
    getattr(body_iter, "close", lambda: None)()
    status, headers = started[0]
    return int(status.split()[0]), {k.lower(): v for k, v in headers}, body, len(calls)


CASES = [
    # (drained first, method, path, client) -> (status, marker, app calls)
    pytest.param(False, "GET", "/x", "127.0.0.1", 200, None, 1, id="serving"),
    pytest.param(True, "POST", "/x", "127.0.0.1", 503, "1", 0, id="refusing-unprocessed"),
    pytest.param(False, "GET", "/graylb/drain", "127.0.0.1", 405, None, 0, id="hook-needs-post"),
    pytest.param(False, "POST", "/graylb/drain", "10.1.2.3", 403, None, 0, id="hook-loopback-only"),
    pytest.param(False, "POST", "/graylb/drain", "127.0.0.1", 200, None, 0, id="hook-drains"),
]


@pytest.mark.parametrize("call", [asgi_call, wsgi_call], ids=["asgi", "wsgi"])
@pytest.mark.parametrize(("drained", "method", "path", "client", "status", "marker", "app_calls"), CASES)
def test_drain_middleware(
    call: Any, drained: bool, method: str, path: str, client: str, status: int, marker: str | None, app_calls: int
) -> None:
    drain = Drain(grace=0)
    if drained:
        drain.drain()
    got_status, headers, body, calls = call(drain, method, path, client)
    assert (got_status, headers.get(DRAIN_HEADER), calls) == (status, marker, app_calls)
    assert drain.in_flight == 0  # released once the response is done
    if status == 503:
        assert headers["connection"] == "close" and headers["retry-after"] == "0"
    if path == "/graylb/drain" and status == 200:
        assert json.loads(body)["drained"] is True and drain.state == "drained"
    elif not drained:
        assert drain.state == "serving"


def test_the_asgi_twin_passes_other_scopes_through() -> None:
    seen = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    drain = Drain(grace=0)
    drain.drain()
    asyncio.run(DrainASGIMiddleware(app, drain)({"type": "lifespan"}, None, None))
    assert seen == ["lifespan"]
