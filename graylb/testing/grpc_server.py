"""Versioned gRPC ``graylb.demo.v1.Echo`` servers on 127.0.0.1, for tests, examples and the demo.

Every reply says who served it (``service``, ``version``, ``instance`` = "host:port", ``lane``) and
the gray context the server saw: ``seen_lane`` / ``seen_pins`` from :func:`graylb.current` (set by
graylb's server interceptors when they are installed) and ``seen_metadata``, the raw request
metadata whose keys start with ``x-gray-`` or ``baggage`` (repeated keys joined with ",").

* :func:`serve_echo` -- a started server with a synchronous API. ``aio=False`` runs a
  ``grpc.server`` on a ``ThreadPoolExecutor(max_workers=16)``; ``aio=True`` runs a
  ``grpc.aio.server`` on its own event loop in a background thread (same API, so sync tests can
  exercise async server-side code).
* :func:`serve_echo_aio` -- a ``grpc.aio.server`` on the *caller's* event loop:
  ``await server.start()`` / ``await server.stop()``, or ``async with serve_echo_aio(...)``.

Knobs, settable at any time: ``fail_with`` (a :class:`grpc.StatusCode`: every RPC aborts with it)
and ``delay`` (seconds to wait before answering, for deadline tests; the wait ends early when the
call is cancelled). ``calls`` counts the RPCs received. ``stop()`` with ``grace=None`` behaves like
a crash: in-flight RPCs are aborted, new calls fail with UNAVAILABLE.

The servicers are written the way users write them -- a plain function for ``Say``, a
(async) generator for ``Count`` that reads :func:`graylb.current` while it yields -- so server
interceptors are tested against the common shapes.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from concurrent import futures
from typing import Any, cast

import grpc
import grpc.aio

from .._proto.graylb.demo.v1 import echo_pb2, echo_pb2_grpc
from ..propagation.context import current

__all__ = ["AioEchoServer", "EchoServer", "serve_echo", "serve_echo_aio"]

# A test server must own its port: gRPC turns SO_REUSEPORT on by default, which would let two
# servers share one and make "who served this" ambiguous.
_OPTIONS = (("grpc.so_reuseport", 0),)
_METADATA_PREFIXES = ("x-gray-", "baggage")


def _gray_metadata(metadata: Iterable[tuple[str, Any]] | None) -> dict[str, str]:
    seen: dict[str, str] = {}
    for key, value in metadata or ():
        key = key.lower()
        if not key.startswith(_METADATA_PREFIXES):
            continue
        text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
        seen[key] = f"{seen[key]},{text}" if key in seen else text
    return seen


class _Echo:
    """What a server is and how it behaves; shared by the sync and aio variants."""

    def __init__(self, service: str, version: str, lane: str | None) -> None:
        self.service = service
        self.version = version
        self.lane = lane
        self.host = "127.0.0.1"
        self.port = 0
        self.fail_with: grpc.StatusCode | None = None
        self.delay: float = 0.0
        self.calls = 0
        self._calls_lock = threading.Lock()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def static_entry(self, **extra: Any) -> dict[str, Any]:
        """This server as a :class:`graylb.StaticDiscovery` entry: host, port, version (+ lane)."""
        entry: dict[str, Any] = {"host": self.host, "port": self.port, "version": self.version}
        if self.lane:
            entry["lane"] = self.lane
        entry.update(extra)
        return entry

    def _count_call(self) -> None:
        with self._calls_lock:
            self.calls += 1

    def _served(self, metadata: Iterable[tuple[str, Any]] | None) -> dict[str, Any]:
        ctx = current()
        return {
            "service": self.service,
            "version": self.version,
            "instance": self.address,
            "lane": self.lane or "",
            "seen_lane": ctx.lane or "",
            "seen_pins": dict(ctx.pins),
            "seen_metadata": _gray_metadata(metadata),
        }

    def _failure(self) -> tuple[grpc.StatusCode, str] | None:
        code = self.fail_with
        if code is None:
            return None
        return code, f"{self.service} {self.version} at {self.address}: fail_with={code.name}"


class _SyncServicer(echo_pb2_grpc.EchoServicer):
    def __init__(self, echo: _Echo) -> None:
        self._echo = echo

    def _gate(self, context: grpc.ServicerContext) -> None:
        echo = self._echo
        echo._count_call()
        if echo.delay > 0:
            done = threading.Event()
            if context.add_callback(done.set):  # False: the RPC is already over
                done.wait(echo.delay)
        failure = echo._failure()
        if failure:
            context.abort(*failure)

    def Say(self, request: echo_pb2.SayRequest, context: grpc.ServicerContext) -> echo_pb2.SayReply:
        self._gate(context)
        return echo_pb2.SayReply(text=request.text, **self._echo._served(context.invocation_metadata()))

    def Count(self, request: echo_pb2.CountRequest, context: grpc.ServicerContext) -> Iterator[echo_pb2.CountReply]:
        self._gate(context)
        pause = threading.Event()
        context.add_callback(pause.set)
        for seq in range(request.count):
            if seq and request.interval_ms and pause.wait(request.interval_ms / 1000):
                return  # cancelled
            yield echo_pb2.CountReply(seq=seq, **self._echo._served(context.invocation_metadata()))


class _AioServicer(echo_pb2_grpc.EchoServicer):
    def __init__(self, echo: _Echo) -> None:
        self._echo = echo

    async def _gate(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        echo = self._echo
        echo._count_call()
        if echo.delay > 0:
            await asyncio.sleep(echo.delay)
        failure = echo._failure()
        if failure:
            await context.abort(*failure)

    async def Say(
        self, request: echo_pb2.SayRequest, context: grpc.aio.ServicerContext[echo_pb2.SayRequest, echo_pb2.SayReply]
    ) -> echo_pb2.SayReply:
        await self._gate(context)
        return echo_pb2.SayReply(text=request.text, **self._echo._served(context.invocation_metadata()))

    async def Count(
        self,
        request: echo_pb2.CountRequest,
        context: grpc.aio.ServicerContext[echo_pb2.CountRequest, echo_pb2.CountReply],
    ) -> AsyncIterator[echo_pb2.CountReply]:
        await self._gate(context)
        for seq in range(request.count):
            if seq and request.interval_ms:
                await asyncio.sleep(request.interval_ms / 1000)
            yield echo_pb2.CountReply(seq=seq, **self._echo._served(context.invocation_metadata()))


class EchoServer(_Echo):
    """A started Echo server with a synchronous API: ``address``, ``host``, ``port``, ``stop()``
    (also on context exit), ``fail_with``, ``delay``, ``calls``, ``static_entry()``."""

    def __init__(
        self,
        service: str = "orders",
        version: str = "1.0.0",
        lane: str | None = None,
        *,
        aio: bool = False,
        interceptors: Sequence[Any] = (),
    ) -> None:
        super().__init__(service, version, lane)
        self.aio = aio
        self.running = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: grpc.Server | grpc.aio.Server  # a grpc.aio.Server (on self._loop) when aio
        if aio:
            self._start_aio(list(interceptors))
        else:
            self._server = grpc.server(
                futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="graylb-grpc"),
                interceptors=list(interceptors),
                options=_OPTIONS,
            )
            echo_pb2_grpc.add_EchoServicer_to_server(_SyncServicer(self), self._server)
            self.port = self._bind(self._server)
            self._server.start()
        self.running = True

    @staticmethod
    def _bind(server: grpc.Server | grpc.aio.Server) -> int:
        port = server.add_insecure_port("127.0.0.1:0")
        if not port:
            raise RuntimeError("could not bind a gRPC server on 127.0.0.1")
        return port

    def _start_aio(self, interceptors: list[Any]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="graylb-grpc-aio", daemon=True)
        self._thread.start()

        async def start() -> grpc.aio.Server:
            server = grpc.aio.server(interceptors=interceptors, options=_OPTIONS)
            echo_pb2_grpc.add_EchoServicer_to_server(_AioServicer(self), server)
            self.port = self._bind(server)
            await server.start()
            return server

        try:
            self._server = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=10)
        except BaseException:
            self._close_loop()
            raise

    def _close_loop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        if not thread.is_alive():
            loop.close()
        self._loop = self._thread = None

    def stop(self, grace: float | None = None) -> None:
        """Stop serving. ``grace=None`` (the default) is a crash: in-flight RPCs are aborted at
        once; otherwise they get ``grace`` seconds to finish. New calls fail with UNAVAILABLE."""
        if not self.running:
            return
        self.running = False
        wait = (grace or 0) + 5
        if self._loop is not None:
            try:
                aio_server = cast(grpc.aio.Server, self._server)  # a loop is only there for one
                asyncio.run_coroutine_threadsafe(aio_server.stop(grace), self._loop).result(timeout=wait)
            finally:
                self._close_loop()
        else:
            cast(grpc.Server, self._server).stop(grace).wait(timeout=wait)

    def __enter__(self) -> EchoServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (
            f"<EchoServer {self.service} {self.version} lane={self.lane} at "
            f"{self.address}{'' if self.running else ' stopped'}>"
        )


class AioEchoServer(_Echo):
    """A ``grpc.aio`` Echo server on the caller's event loop: ``await start()`` (binds a free port;
    ``address`` / ``port`` are known after it), ``await stop(grace=None)``, ``async with``."""

    def __init__(
        self,
        service: str = "orders",
        version: str = "1.0.0",
        lane: str | None = None,
        *,
        interceptors: Sequence[Any] = (),
    ) -> None:
        super().__init__(service, version, lane)
        self._interceptors = list(interceptors)
        self._server: grpc.aio.Server | None = None
        self.running = False

    async def start(self) -> AioEchoServer:
        if self._server is not None:
            return self
        server = grpc.aio.server(interceptors=self._interceptors, options=_OPTIONS)
        echo_pb2_grpc.add_EchoServicer_to_server(_AioServicer(self), server)
        self.port = EchoServer._bind(server)
        await server.start()
        self._server = server
        self.running = True
        return self

    async def stop(self, grace: float | None = None) -> None:
        """Like :meth:`EchoServer.stop`: ``grace=None`` aborts in-flight RPCs at once."""
        if not self.running or self._server is None:
            return
        self.running = False
        await self._server.stop(grace)

    async def __aenter__(self) -> AioEchoServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def __repr__(self) -> str:
        return (
            f"<AioEchoServer {self.service} {self.version} lane={self.lane} at "
            f"{self.address}{'' if self.running else ' stopped'}>"
        )


def serve_echo(
    service: str = "orders",
    version: str = "1.0.0",
    lane: str | None = None,
    *,
    aio: bool = False,
    interceptors: Sequence[Any] = (),
) -> EchoServer:
    """Start an Echo server for ``service`` at ``version`` (in ``lane``) on a free 127.0.0.1 port.

    ``aio=True`` serves with ``grpc.aio`` on a background event loop; the API stays synchronous.
    ``interceptors`` are server interceptors (``grpc.ServerInterceptor``, or
    ``grpc.aio.ServerInterceptor`` when ``aio``)."""
    return EchoServer(service, version, lane, aio=aio, interceptors=interceptors)


def serve_echo_aio(
    service: str = "orders", version: str = "1.0.0", lane: str | None = None, *, interceptors: Sequence[Any] = ()
) -> AioEchoServer:
    """An Echo server for the caller's event loop, not yet started: ``await server.start()`` or
    ``async with serve_echo_aio(...) as server:``."""
    return AioEchoServer(service, version, lane, interceptors=interceptors)
