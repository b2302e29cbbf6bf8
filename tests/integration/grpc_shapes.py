"""Every RPC shape of GrayChannel / AioGrayChannel against real servers, for the in-flight and
telemetry tests.

A :class:`ShapeServer` is a sync ``grpc.server`` with generic raw-bytes handlers for the four
kinds (no proto). The first request message decides what the handler does: ``b"ok"`` answers
(server streams send 3 messages), ``b"fail"`` aborts with INTERNAL (a failure that feeds outlier
detection), ``b"hold"`` signals its arrival and waits until the client cancels or its deadline
passes, ``b"slow"`` waits the same way without signalling (for deadline tests). Unary and
client-streaming calls answer the instance id. :data:`SYNC_OPS` / :data:`AIO_OPS` make one call
of each shape through a gray channel.
:class:`DoneLog` records every ``Call.done(instance, ok)`` and lets a test wait for them (a future
or a stream reports from grpc's thread or a callback, after the caller saw the end).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc
import grpc.aio

import graylb
from graylb.discovery.base import Discovery, ServiceWatch
from graylb.instance import Instance

SERVICE = "graylb.test.Shapes"
UNARY, SERVER_STREAM, CLIENT_STREAM, BIDI = (
    f"/{SERVICE}/{n}" for n in ("Unary", "ServerStream", "ClientStream", "Bidi")
)
WAIT = 10.0  # seconds; every wait here is bounded by it
OPTIONS = (("grpc.so_reuseport", 0),)


class ShapeServer:
    """A started raw-bytes server for the four RPC kinds, on 127.0.0.1."""

    def __init__(self, key: str, version: str, arrived: threading.Semaphore) -> None:
        self.key, self.version = key, version
        self._arrived = arrived  # released once per held call that reached a handler
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=OPTIONS)
        self._server.add_generic_rpc_handlers((self._handlers(),))
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        assert self.port, "could not bind a gRPC server on 127.0.0.1"
        self._server.start()

    def entry(self) -> dict[str, Any]:
        return {"host": "127.0.0.1", "port": self.port, "version": self.version, "id": self.key}

    def _act(self, first: bytes, context: grpc.ServicerContext) -> None:
        if first == b"fail":
            context.abort(grpc.StatusCode.INTERNAL, "failed on purpose")
        if first in (b"hold", b"slow"):
            released = threading.Event()
            if first == b"hold":
                self._arrived.release()
            if context.add_callback(released.set):  # called when the RPC ends (cancel, deadline)
                released.wait(WAIT)
            context.abort(grpc.StatusCode.ABORTED, "held call released")

    def _handlers(self) -> grpc.GenericRpcHandler:
        def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
            self._act(request, context)
            return self.key.encode()

        def server_stream(request: bytes, context: grpc.ServicerContext):
            self._act(request, context)
            for _ in range(3):
                yield self.key.encode()

        def client_stream(requests, context: grpc.ServicerContext) -> bytes:
            self._act(next(requests, b"ok"), context)
            for _ in requests:
                pass
            return self.key.encode()

        def bidi(requests, context: grpc.ServicerContext):
            first = next(requests, b"ok")
            self._act(first, context)
            yield first
            yield from requests

        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Unary": grpc.unary_unary_rpc_method_handler(unary),
                "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
                "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
                "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
            },
        )

    def stop(self) -> None:
        self._server.stop(None).wait(WAIT)


class Shapes:
    """Started servers keyed by instance id, and a registry for them under any service name."""

    def __init__(self, versions: dict[str, str]) -> None:
        self._arrived = threading.Semaphore(0)
        self.servers = {key: ShapeServer(key, version, self._arrived) for key, version in versions.items()}

    def registry(self, service: str) -> graylb.StaticDiscovery:
        return graylb.StaticDiscovery({service: [s.entry() for s in self.servers.values()]})

    def late_registry(self, service: str) -> LateDiscovery:
        return LateDiscovery(service, [s.entry() for s in self.servers.values()])

    def wait_arrived(self) -> None:
        """Wait until a ``hold`` call reached a handler (once per held call)."""
        assert self._arrived.acquire(timeout=WAIT), "the held call never reached a server"

    def stop(self) -> None:
        for s in self.servers.values():
            s.stop()


class LateDiscovery(Discovery):
    """One service whose first snapshot arrives only when the test calls :meth:`release`."""

    name = "late"

    def __init__(self, service: str, entries: list[dict[str, Any]]) -> None:
        super().__init__()
        self._instances = [Instance.from_mapping(service, e) for e in entries]
        self._held: list[ServiceWatch] = []

    def _start_watch(self, watch: ServiceWatch) -> None:
        self._held.append(watch)

    def release(self) -> None:
        for watch in self._held:
            watch.publish([i for i in self._instances if i.service == watch.service], source=self.name)


class DoneLog:
    """Every ``Call.done(instance, ok)`` while installed, as (instance id, ok) pairs."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, bool]] = []
        self._cond = threading.Condition()

    def add(self, instance_id: str, ok: bool) -> None:
        with self._cond:
            self.entries.append((instance_id, ok))
            self._cond.notify_all()

    def wait(self, count: int) -> list[tuple[str, bool]]:
        """The first ``count`` entries, once there; fails the test after :data:`WAIT`."""
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.entries) >= count, WAIT), (
                f"{len(self.entries)} of {count} calls reported done: {self.entries}"
            )
            return list(self.entries)


def inflight(balancer: graylb.Balancer, shapes: Shapes) -> dict[str, int]:
    return {key: balancer.stats.inflight(key) for key in shapes.servers}


# One call of each shape, sync. ``payload`` is the first request message; the result is what the
# caller got back (the call has ended for the caller when it returns, or it raised).
SyncOp = Callable[[grpc.Channel, bytes, float], Any]

SYNC_OPS: dict[str, SyncOp] = {
    "unary": lambda ch, p, t: ch.unary_unary(UNARY)(p, timeout=t),
    "unary.with_call": lambda ch, p, t: ch.unary_unary(UNARY).with_call(p, timeout=t)[0],
    "unary.future": lambda ch, p, t: ch.unary_unary(UNARY).future(p, timeout=t).result(),
    "unary_stream": lambda ch, p, t: list(ch.unary_stream(SERVER_STREAM)(p, timeout=t)),
    "stream_unary": lambda ch, p, t: ch.stream_unary(CLIENT_STREAM)(iter([p, b"x"]), timeout=t),
    "stream_unary.with_call": lambda ch, p, t: ch.stream_unary(CLIENT_STREAM).with_call(iter([p, b"x"]), timeout=t)[0],
    "stream_unary.future": lambda ch, p, t: ch.stream_unary(CLIENT_STREAM).future(iter([p, b"x"]), timeout=t).result(),
    "stream_stream": lambda ch, p, t: list(ch.stream_stream(BIDI)(iter([p, b"x"]), timeout=t)),
}

# The sync shapes that hand back a call object before the RPC ends: (start it, cancel it).
SYNC_CANCELLABLE: dict[str, Callable[[grpc.Channel], Any]] = {
    "unary.future": lambda ch: ch.unary_unary(UNARY).future(b"hold", timeout=WAIT),
    "unary_stream": lambda ch: ch.unary_stream(SERVER_STREAM)(b"hold", timeout=WAIT),
    "stream_unary.future": lambda ch: ch.stream_unary(CLIENT_STREAM).future(iter([b"hold"]), timeout=WAIT),
    "stream_stream": lambda ch: ch.stream_stream(BIDI)(iter([b"hold"]), timeout=WAIT),
}


async def _requests(first: bytes):
    yield first
    yield b"x"


async def _aio_unary(ch: Any, p: bytes, t: float) -> Any:
    return await ch.unary_unary(UNARY)(p, timeout=t)


async def _aio_unary_stream(ch: Any, p: bytes, t: float) -> Any:
    return [r async for r in ch.unary_stream(SERVER_STREAM)(p, timeout=t)]


async def _aio_stream_unary(ch: Any, p: bytes, t: float) -> Any:
    return await ch.stream_unary(CLIENT_STREAM)(_requests(p), timeout=t)


async def _aio_stream_stream(ch: Any, p: bytes, t: float) -> Any:
    return [r async for r in ch.stream_stream(BIDI)(_requests(p), timeout=t)]


async def _aio_stream_stream_rw(ch: Any, p: bytes, t: float) -> Any:
    call = ch.stream_stream(BIDI)(timeout=t)
    await call.write(p)
    await call.done_writing()
    return [r async for r in call]


AIO_OPS = {
    "unary": _aio_unary,
    "unary_stream": _aio_unary_stream,
    "stream_unary": _aio_stream_unary,
    "stream_stream": _aio_stream_stream,
    "stream_stream.write": _aio_stream_stream_rw,
}

# aio streaming calls: the call object, handed back at once (a _DeferredAioCall before the first
# snapshot).
AIO_STREAM_CALLS: dict[str, Callable[[Any, bytes], Any]] = {
    "unary_stream": lambda ch, p: ch.unary_stream(SERVER_STREAM)(p, timeout=WAIT),
    "stream_unary": lambda ch, p: ch.stream_unary(CLIENT_STREAM)(_requests(p), timeout=WAIT),
    "stream_stream": lambda ch, p: ch.stream_stream(BIDI)(_requests(p), timeout=WAIT),
}


async def finish(kind: str, call: Any) -> Any:
    """Drive an aio streaming call object of ``kind`` to its end: what the caller got, or the
    error."""
    try:
        if kind == "stream_unary":
            return await call
        return [r async for r in call]
    except (grpc.RpcError, asyncio.CancelledError) as exc:  # the call's end, not this task's
        return exc


def run_in_loop(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, WAIT * 2))
