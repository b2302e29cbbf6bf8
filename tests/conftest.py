from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

import graylb
from graylb.testing.http_server import WSGIServer, serve_wsgi

pytest_plugins = ["pytester"]  # tests/plugin drives graylb's pytest plugin in inner sessions


def version_app(
    service: str,
    version: str,
    *,
    status: Callable[[], int] = lambda: 200,
    lane: str | None = None,
    next_hop: str | None = None,
    client_box: dict | None = None,
):
    """A WSGI app that answers who it is and what gray context it saw; /chain calls next_hop."""

    def app(environ: dict, start_response: Callable) -> list[bytes]:
        ctx = graylb.current()
        body: dict[str, Any] = {
            "service": service,
            "version": version,
            "lane": lane,
            "seen_lane": ctx.lane,
            "seen_pins": dict(ctx.pins),
            "host_header": environ.get("HTTP_HOST"),
        }
        if environ["PATH_INFO"] == "/chain" and next_hop and client_box:
            body["next"] = client_box["client"].get(f"http://{next_hop}/chain").json()
        start_response(f"{status()} X", [("Content-Type", "application/json")])
        return [json.dumps(body).encode()]

    return graylb.GrayWSGIMiddleware(app)


class Fleet:
    """Real HTTP servers on 127.0.0.1 registered in a StaticDiscovery."""

    def __init__(self) -> None:
        self.registry = graylb.StaticDiscovery()
        self.servers: dict[str, WSGIServer] = {}
        self.client_box: dict[str, Any] = {}
        self.status: dict[str, int] = {}

    def start(
        self,
        key: str,
        service: str,
        version: str,
        *,
        lane: str | None = None,
        status: int = 200,
        next_hop: str | None = None,
        weight: int = 100,
    ) -> WSGIServer:
        self.status[key] = status
        server = serve_wsgi(
            version_app(
                service,
                version,
                status=lambda: self.status[key],
                lane=lane,
                next_hop=next_hop,
                client_box=self.client_box,
            )
        )
        self.servers[key] = server
        self.registry.add(
            {"host": server.host, "port": server.port, "version": version, "lane": lane, "weight": weight, "id": key},
            service=service,
        )
        return server

    def stop_all(self) -> None:
        for s in self.servers.values():
            s.stop()


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    f = Fleet()
    yield f
    f.stop_all()


class Sender:
    """Sends requests through GrayTransport (sync) or AsyncGrayTransport (async): the twins are
    tested from one table of cases."""

    def __init__(self, mode: str, balancer: graylb.Balancer) -> None:
        self.mode = mode
        self.balancer = balancer

    def many(
        self, requests: list[tuple[str, dict]], ctx: graylb.GrayContext | None = None
    ) -> list[httpx.Response | Exception]:
        if self.mode == "sync":
            out: list[httpx.Response | Exception] = []
            with httpx.Client(transport=graylb.GrayTransport(self.balancer), timeout=5) as client:
                with graylb.gray(lane=ctx.lane, pins=ctx.pins, values=ctx.values) if ctx else _null():
                    for url, headers in requests:
                        try:
                            out.append(client.get(url, headers=headers))
                        except Exception as exc:  # noqa: BLE001 - the test inspects it
                            out.append(exc)
            return out

        async def run() -> list[httpx.Response | Exception]:
            res: list[httpx.Response | Exception] = []
            async with httpx.AsyncClient(transport=graylb.AsyncGrayTransport(self.balancer), timeout=5) as client:
                with graylb.gray(lane=ctx.lane, pins=ctx.pins, values=ctx.values) if ctx else _null():
                    for url, headers in requests:
                        try:
                            res.append(await client.get(url, headers=headers))
                        except Exception as exc:  # noqa: BLE001
                            res.append(exc)
            return res

        return asyncio.run(run())

    def one(
        self, url: str, headers: dict | None = None, ctx: graylb.GrayContext | None = None
    ) -> httpx.Response | Exception:
        return self.many([(url, headers or {})], ctx)[0]


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


@pytest.fixture(params=["sync", "async"])
def mode(request) -> str:
    return request.param


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01, message: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``.
    For conditions that other threads make true (a registry watch, a TTL reaper)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {message or predicate}")
        time.sleep(interval)


class BackgroundTraffic:
    """Sends GET http://<service>/x through ``balancer`` from a thread until the block ends,
    every ``beta_every``-th request as a beta user; ``sent`` counts, ``failures`` collects."""

    def __init__(self, balancer: graylb.Balancer, service: str = "orders", beta_every: int = 2) -> None:
        import threading

        self.balancer, self.service, self.beta_every = balancer, service, beta_every
        self.sent = 0
        self.failures: list[Exception] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-traffic")

    def _run(self) -> None:
        with httpx.Client(transport=graylb.GrayTransport(self.balancer)) as client:
            while not self._stop.is_set():
                beta = "beta" if self.sent % self.beta_every == 0 else ""
                try:
                    client.get(f"http://{self.service}/x", headers={"user-group": beta}).raise_for_status()
                except Exception as exc:  # noqa: BLE001 - the test inspects them
                    self.failures.append(exc)
                self.sent += 1

    def wait_for_more(self, count: int) -> None:
        start = self.sent
        wait_until(lambda: self.sent > start + count, message=f"{count} more requests")

    def __enter__(self) -> BackgroundTraffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
