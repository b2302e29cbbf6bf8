"""gRPC gray-context interceptors against real servers on 127.0.0.1, from one table of cases.

Each case runs twice: on the sync stack (``grpc.server`` + ``grpc.intercept_channel`` with
:class:`GrayClientInterceptor`) and on the asyncio stack (``grpc.aio.server`` +
``grpc.aio.insecure_channel(interceptors=aio_client_interceptors())``, driven from a loop in a
background thread so the test code is the same). Servers use generic handlers with raw bytes, no
proto: every handler answers, as JSON, the gray context it saw and the gray metadata it was
given.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import grpc.aio
import pytest

from graylb.propagation import EMPTY, GrayContext, HeaderCodec, attach, current, detach, gray, trust_networks
from graylb.transports.grpc_interceptors import (
    AioGrayClientInterceptor,
    AioGrayServerInterceptor,
    GrayClientInterceptor,
    GrayServerInterceptor,
    aio_client_interceptors,
    peer_address,
)

SERVICE = "graylb.test.Echo"
KINDS = ("unary", "server_stream", "client_stream", "bidi")
GRAY_KEYS = ("x-gray-lane", "x-gray-pin", "baggage")
OPTIONS = (("grpc.so_reuseport", 0),)  # each test server owns its port
WAIT = 10.0  # seconds; every wait in this file is bounded by it
TOGETHER = 6  # concurrent calls that must all be in flight at once


def method(name: str) -> str:
    return f"/{SERVICE}/{name}"


def context_json(ctx: GrayContext) -> dict[str, Any]:
    return {"lane": ctx.lane, "lane_forced": ctx.lane_forced, "pins": dict(ctx.pins), "values": dict(ctx.values)}


def expect(lane=None, lane_forced=False, pins=None, values=None) -> dict[str, Any]:
    return {"lane": lane, "lane_forced": lane_forced, "pins": pins or {}, "values": values or {}}


def seen(servicer_context: Any, **extra: Any) -> bytes:
    """What the handler observes: graylb.current() and its (possibly stripped) metadata."""
    metadata: dict[str, list[str]] = {}
    for key, value in servicer_context.invocation_metadata():
        if key in GRAY_KEYS or key.endswith("-bin") or key.startswith("x-"):
            metadata.setdefault(key, []).append(value.hex() if isinstance(value, bytes) else value)
    return json.dumps({"ctx": context_json(current()), "md": metadata, **extra}).encode()


# ---------------------------------------------------------------------------- sync server


class SyncService:
    def __init__(self, downstream: Callable[[], Any] | None) -> None:
        self.downstream = downstream
        self.barrier = threading.Barrier(TOGETHER, timeout=WAIT)

    def unary(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        return seen(context)

    def server_stream(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        yield seen(context, step=0)
        with gray(values={"inner": "yes"}):  # a handler's own context spans its yield
            yield seen(context, step=1)
        yield seen(context, step=2)

    def client_stream(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        return seen(context, n=sum(1 for _ in requests))

    def bidi(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        for _ in requests:
            yield seen(context)

    def chain(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        downstream = json.loads(self.downstream().unary_unary(method("Unary"))(b"", timeout=WAIT))
        return seen(context, next=downstream)

    def together(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self.barrier.wait()  # all TOGETHER calls are in flight at once (BrokenBarrierError after WAIT)
        return seen(context)

    def fail(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        raise RuntimeError("handler failed on purpose")

    def sloppy(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        attach(GrayContext(lane="leaked"))  # never detached
        return seen(context)


def generic_handler(service: Any) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(service.unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(service.server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(service.client_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(service.bidi),
            "Chain": grpc.unary_unary_rpc_method_handler(service.chain),
            "Together": grpc.unary_unary_rpc_method_handler(service.together),
            "Fail": grpc.unary_unary_rpc_method_handler(service.fail),
            "Sloppy": grpc.unary_unary_rpc_method_handler(service.sloppy),
        },
    )


# ---------------------------------------------------------------------------- aio server


class AioService:
    def __init__(self, downstream: Callable[[], Any] | None) -> None:
        self.downstream = downstream
        self.arrived = 0
        self.all_here = asyncio.Event()

    async def unary(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await asyncio.sleep(0)
        return seen(context)

    async def server_stream(self, request: bytes, context: grpc.aio.ServicerContext):
        yield seen(context, step=0)
        with gray(values={"inner": "yes"}):
            yield seen(context, step=1)
        yield seen(context, step=2)

    async def client_stream(self, requests: Any, context: grpc.aio.ServicerContext) -> bytes:
        n = 0
        async for _ in requests:
            n += 1
        return seen(context, n=n)

    async def bidi(self, requests: Any, context: grpc.aio.ServicerContext):
        async for _ in requests:
            yield seen(context)

    async def chain(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        downstream = json.loads(await self.downstream().unary_unary(method("Unary"))(b"", timeout=WAIT))
        return seen(context, next=downstream)

    async def together(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.arrived += 1
        if self.arrived == TOGETHER:
            self.all_here.set()
        await asyncio.wait_for(self.all_here.wait(), WAIT)
        return seen(context)

    async def fail(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        raise RuntimeError("handler failed on purpose")

    async def sloppy(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        attach(GrayContext(lane="leaked"))  # never detached
        return seen(context)


# ---------------------------------------------------------------------------- stacks


def bind(server: Any) -> str:
    port = server.add_insecure_port("127.0.0.1:0")
    assert port, "could not bind a gRPC server on 127.0.0.1"
    return f"127.0.0.1:{port}"


def decode(replies: list[bytes]) -> list[dict[str, Any]]:
    return [json.loads(r) for r in replies]


class SyncStack:
    """grpc.server + grpc.intercept_channel(GrayClientInterceptor)."""

    name = "sync"

    def __init__(self) -> None:
        self.servers: list[grpc.Server] = []
        self.channels: dict[str, grpc.Channel] = {}
        self.raw: list[grpc.Channel] = []

    def channel(self, target: str) -> grpc.Channel:
        if target not in self.channels:
            raw = grpc.insecure_channel(target, options=OPTIONS)
            self.raw.append(raw)
            self.channels[target] = grpc.intercept_channel(raw, GrayClientInterceptor())
        return self.channels[target]

    def serve(self, *, trust: Any = True, downstream: str | None = None) -> str:
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=TOGETHER + 2),
            interceptors=[GrayServerInterceptor(trust=trust)],
            options=OPTIONS,
        )
        next_hop = (lambda: self.channel(downstream)) if downstream else None
        server.add_generic_rpc_handlers((generic_handler(SyncService(next_hop)),))
        target = bind(server)
        server.start()
        self.servers.append(server)
        return target

    def call(self, target: str, kind: str, metadata: Any = None) -> list[dict[str, Any]]:
        """One RPC with the calling thread's gray context; the decoded replies."""
        ch = self.channel(target)
        requests = [b"a", b"b"]
        if kind == "server_stream":
            return decode(list(ch.unary_stream(method("ServerStream"))(b"", metadata=metadata, timeout=WAIT)))
        if kind == "client_stream":
            return decode([ch.stream_unary(method("ClientStream"))(iter(requests), metadata=metadata, timeout=WAIT)])
        if kind == "bidi":
            return decode(list(ch.stream_stream(method("Bidi"))(iter(requests), metadata=metadata, timeout=WAIT)))
        name = {"unary": "Unary", "chain": "Chain", "together": "Together", "fail": "Fail", "sloppy": "Sloppy"}[kind]
        return decode([ch.unary_unary(method(name))(b"", metadata=metadata, timeout=WAIT)])

    def concurrently(self, target: str, kind: str, contexts: list[GrayContext]) -> list[list[dict[str, Any]]]:
        def one(ctx: GrayContext) -> list[dict[str, Any]]:
            token = attach(ctx)
            try:
                return self.call(target, kind)
            finally:
                detach(token)

        with futures.ThreadPoolExecutor(max_workers=len(contexts)) as pool:
            return [f.result(timeout=WAIT * 2) for f in [pool.submit(one, c) for c in contexts]]

    def close(self) -> None:
        for ch in self.raw:
            ch.close()
        for server in self.servers:
            server.stop(None).wait(WAIT)


class AioStack:
    """grpc.aio.server + grpc.aio.insecure_channel(interceptors=aio_client_interceptors()), on
    an event loop in a background thread; calls carry the test thread's gray context over."""

    name = "aio"

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="grpc-aio-test", daemon=True)
        self.thread.start()
        self.servers: list[grpc.aio.Server] = []
        self.channels: dict[str, grpc.aio.Channel] = {}

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=WAIT * 2)

    def channel(self, target: str) -> grpc.aio.Channel:  # called on the loop
        if target not in self.channels:
            self.channels[target] = grpc.aio.insecure_channel(
                target, options=OPTIONS, interceptors=aio_client_interceptors()
            )
        return self.channels[target]

    def serve(self, *, trust: Any = True, downstream: str | None = None) -> str:
        async def start() -> str:
            server = grpc.aio.server(interceptors=[AioGrayServerInterceptor(trust=trust)], options=OPTIONS)
            next_hop = (lambda: self.channel(downstream)) if downstream else None
            server.add_generic_rpc_handlers((generic_handler(AioService(next_hop)),))
            target = bind(server)
            await server.start()
            self.servers.append(server)
            return target

        return self.run(start())

    async def _call(self, ctx: GrayContext, target: str, kind: str, metadata: Any) -> list[dict[str, Any]]:
        attach(ctx)  # this coroutine runs in its own task: its context is private
        ch = self.channel(target)

        async def requests():
            for r in (b"a", b"b"):
                yield r

        if kind == "server_stream":
            return decode(
                [r async for r in ch.unary_stream(method("ServerStream"))(b"", metadata=metadata, timeout=WAIT)]
            )
        if kind == "client_stream":
            return decode([await ch.stream_unary(method("ClientStream"))(requests(), metadata=metadata, timeout=WAIT)])
        if kind == "bidi":
            return decode(
                [r async for r in ch.stream_stream(method("Bidi"))(requests(), metadata=metadata, timeout=WAIT)]
            )
        name = {"unary": "Unary", "chain": "Chain", "together": "Together", "fail": "Fail", "sloppy": "Sloppy"}[kind]
        return decode([await ch.unary_unary(method(name))(b"", metadata=metadata, timeout=WAIT)])

    def call(self, target: str, kind: str, metadata: Any = None) -> list[dict[str, Any]]:
        return self.run(self._call(current(), target, kind, metadata))

    def concurrently(self, target: str, kind: str, contexts: list[GrayContext]) -> list[list[dict[str, Any]]]:
        async def all_calls() -> list[list[dict[str, Any]]]:
            return await asyncio.gather(*(self._call(c, target, kind, None) for c in contexts))

        return self.run(all_calls())

    def close(self) -> None:
        async def stop() -> None:
            for ch in self.channels.values():
                await ch.close()
            for server in self.servers:
                await server.stop(None)

        try:
            self.run(stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(WAIT)
            self.loop.close()


@pytest.fixture(params=["sync", "aio"])
def stack(request: pytest.FixtureRequest) -> Iterator[SyncStack | AioStack]:
    s = SyncStack() if request.param == "sync" else AioStack()
    try:
        yield s
    finally:
        s.close()


def rpc_error(stack: Any, target: str, kind: str, metadata: Any = None) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        stack.call(target, kind, metadata)
    return info.value


BETA = dict(
    lane="beta",
    force_lane=True,
    pins={"orders": ">=1.2,<2", "payments": "2.0.0+build.1"},
    values={"user-group": "beta"},
)
BETA_SEEN = expect("beta", True, {"orders": ">=1.2,<2", "payments": "2.0.0+build.1"}, {"user-group": "beta"})


# ---------------------------------------------------------------------------- cases


@pytest.mark.parametrize("kind", KINDS)
def test_lane_pins_and_values_round_trip(stack, kind):
    target = stack.serve()
    with gray(**BETA):
        replies = stack.call(target, kind)
    assert len(replies) == {"unary": 1, "server_stream": 3, "client_stream": 1, "bidi": 2}[kind]
    for reply in replies:
        seen_ctx = dict(reply["ctx"], values={k: v for k, v in reply["ctx"]["values"].items() if k != "inner"})
        assert seen_ctx == BETA_SEEN
    assert replies[0]["md"]["x-gray-lane"] == ["beta;forced"]
    if kind == "client_stream":
        assert replies[0]["n"] == 2


@pytest.mark.parametrize("kind", KINDS)
def test_no_context_sends_no_gray_metadata(stack, kind):
    target = stack.serve()
    for reply in stack.call(target, kind):
        assert reply["ctx"] in (expect(), expect(values={"inner": "yes"})) and reply["md"] == {}


def test_streaming_handler_keeps_context_across_yields(stack):
    target = stack.serve()
    with gray(lane="beta"):
        replies = stack.call(target, "server_stream")
    assert [r["ctx"] for r in replies] == [expect("beta"), expect("beta", values={"inner": "yes"}), expect("beta")]


def test_foreign_baggage_is_kept_and_stale_gray_members_replaced(stack):
    target = stack.serve()
    metadata = (("baggage", "k1=v1,gray.lane=stale,gray.pin.orders=9.9.9"), ("baggage", "k2=v2"))
    with gray(lane="beta"):
        (reply,) = stack.call(target, "unary", metadata)
    assert reply["ctx"] == expect("beta")
    assert reply["md"]["baggage"] == ["k1=v1,k2=v2,gray.lane=beta"]
    assert reply["md"]["x-gray-lane"] == ["beta"]


def test_empty_context_still_strips_stale_gray_baggage(stack):
    target = stack.serve()
    (reply,) = stack.call(target, "unary", (("baggage", "k1=v1,gray.lane=stale"),))
    assert reply["ctx"] == expect() and reply["md"] == {"baggage": ["k1=v1"]}
    (reply,) = stack.call(target, "server_stream", (("baggage", "gray.lane=stale,gray.user-group=x"),))[:1]
    assert reply["ctx"] == expect() and reply["md"] == {}  # an emptied baggage entry is dropped


def test_context_replaces_gray_keys_the_caller_set(stack):
    target = stack.serve()
    with gray(lane="beta"):
        (reply,) = stack.call(target, "unary", (("x-gray-lane", "old"), ("x-other", "kept")))
    assert reply["md"] == {"x-other": ["kept"], "x-gray-lane": ["beta"], "baggage": ["gray.lane=beta"]}
    assert reply["ctx"] == expect("beta")


def test_binary_metadata_passes_untouched(stack):
    target = stack.serve()
    with gray(lane="beta"):
        (reply,) = stack.call(target, "unary", (("trace-bin", b"\x00\xff\x10"), ("x-gray-lane-bin", b"\x01")))
    assert reply["md"]["trace-bin"] == ["00ff10"] and reply["md"]["x-gray-lane-bin"] == ["01"]
    assert reply["ctx"] == expect("beta")


@pytest.mark.parametrize("kind", KINDS)
def test_untrusted_caller_gets_empty_context_and_stripped_metadata(stack, kind):
    target = stack.serve(trust=False)
    metadata = (("baggage", "k1=v1,gray.lane=evil,GRAY.pin.orders=6.6.6"), ("x-gray-pin", "orders=6.6.6"))
    with gray(**BETA):
        replies = stack.call(target, kind, metadata)
    for reply in replies:
        assert reply["ctx"]["lane"] is None and reply["ctx"]["pins"] == {}
        assert reply["md"] == {"baggage": ["k1=v1"]}


@pytest.mark.parametrize(
    ("trust", "trusted"),
    [
        (trust_networks("127.0.0.0/8"), True),
        (trust_networks("10.0.0.0/8", "::1/128"), False),
        (lambda sc: dict(sc.invocation_metadata()).get("x-staff") == "yes", True),
        (lambda sc: dict(sc.invocation_metadata()).get("x-staff") == "no", False),
        (lambda sc: peer_address(sc.peer()) == "127.0.0.1", True),
        (lambda sc: 1 / 0, False),  # a failing predicate means untrusted
    ],
    ids=["networks-in", "networks-out", "metadata-yes", "metadata-no", "peer", "raises"],
)
def test_trust_predicate_sees_the_servicer_context(stack, trust, trusted):
    target = stack.serve(trust=trust)
    with gray(lane="beta"):
        for kind in ("unary", "server_stream"):
            reply = stack.call(target, kind, (("x-staff", "yes"),))[0]
            assert reply["ctx"] == (expect("beta") if trusted else expect())
            assert ("x-gray-lane" in reply["md"]) is trusted


def test_chain_keeps_the_lane_across_hops(stack):
    b = stack.serve()
    a = stack.serve(downstream=b)
    with gray(lane="beta", pins={"orders": "2.0.0"}):
        (reply,) = stack.call(a, "chain", (("baggage", "tenant=acme"),))
    assert reply["ctx"] == expect("beta", pins={"orders": "2.0.0"})
    assert reply["next"]["ctx"] == expect("beta", pins={"orders": "2.0.0"})
    # the client interceptor in A's handler re-injected what A had; A's caller's baggage stays there
    assert reply["next"]["md"]["x-gray-lane"] == ["beta"]


def test_chain_through_an_untrusted_edge_drops_the_lane(stack):
    b = stack.serve()
    edge = stack.serve(trust=False, downstream=b)
    with gray(lane="beta"):
        (reply,) = stack.call(edge, "chain")
    assert reply["ctx"] == expect() and reply["next"]["ctx"] == expect() and reply["next"]["md"] == {}


GARBAGE = [
    (("x-gray-lane", "!!!;;;" * 20),),
    (("x-gray-lane", "a" * 5000),),
    (("x-gray-pin", "=,=,%zz,orders=%,," * 250),),
    (("baggage", ",".join(["gray.lane=%%%", "gray.pin.=x", "gray.=", "=", ";;", "gray.x=" + "%41" * 400] * 6)),),
    (("x-gray-lane", "beta"), ("x-gray-lane", "gamma"), ("x-gray-pin", "orders=1.0.0"), ("x-gray-pin", "orders=\x7e")),
    (("x-gray-lane-bin", b"\x00\xff"), ("baggage-bin", b"\xfe"), ("x-gray-pin", "")),
]


@pytest.mark.parametrize("metadata", GARBAGE, ids=[f"garbage{i}" for i in range(len(GARBAGE))])
def test_garbage_metadata_is_harmless(stack, metadata):
    target = stack.serve()
    for kind in ("unary", "server_stream"):
        reply = stack.call(target, kind, metadata)[0]
        assert reply["ctx"]["lane"] is None  # two lanes joined make an invalid lane
        assert reply["ctx"]["pins"] in ({}, {"orders": "1.0.0"}, {"orders": "~"})


def test_garbage_with_one_valid_item_keeps_the_valid_item(stack):
    target = stack.serve()
    (reply,) = stack.call(target, "unary", (("x-gray-lane", "beta"), ("x-gray-pin", "bad member,orders=2.0.0,%%%")))
    assert reply["ctx"] == expect("beta", pins={"orders": "2.0.0"})


def test_concurrent_calls_do_not_share_context(stack):
    target = stack.serve()
    contexts = [GrayContext(lane=f"lane-{i}", pins={"orders": f"{i}.0.0"}) for i in range(TOGETHER - 1)] + [EMPTY]
    results = stack.concurrently(target, "together", contexts)
    assert [r[0]["ctx"] for r in results] == [context_json(c) for c in contexts]
    # afterwards, pooled server threads / tasks carry nothing over
    for _ in range(2 * TOGETHER):
        assert stack.call(target, "unary")[0]["ctx"] == expect()


def test_failing_or_sloppy_handler_leaves_nothing_behind(stack):
    target = stack.serve()
    with gray(lane="beta"):
        for _ in range(3):
            assert rpc_error(stack, target, "fail").code() == grpc.StatusCode.UNKNOWN
    for _ in range(2 * TOGETHER):
        assert stack.call(target, "sloppy")[0]["ctx"] == expect("leaked")
    for _ in range(2 * TOGETHER):
        assert stack.call(target, "unary")[0]["ctx"] == expect()


# ---------------------------------------------------------------------------- sync handlers on an aio server


def test_sync_handlers_on_an_aio_server():
    """grpc.aio runs sync handlers in its migration thread pool; they get the context too."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    pool = futures.ThreadPoolExecutor(max_workers=2)

    def run(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=WAIT)

    async def start() -> tuple[grpc.aio.Server, str]:
        server = grpc.aio.server(pool, interceptors=[AioGrayServerInterceptor()], options=OPTIONS)
        server.add_generic_rpc_handlers((generic_handler(SyncService(None)),))
        target = bind(server)
        await server.start()
        return server, target

    server, target = run(start())
    try:
        with grpc.insecure_channel(target, options=OPTIONS) as raw:
            ch = grpc.intercept_channel(raw, GrayClientInterceptor())
            with gray(lane="beta"):
                unary = json.loads(ch.unary_unary(method("Unary"))(b"", timeout=WAIT))
                stream = [json.loads(r) for r in ch.unary_stream(method("ServerStream"))(b"", timeout=WAIT)]
            empty = json.loads(ch.unary_unary(method("Unary"))(b"", timeout=WAIT))
        assert unary["ctx"] == expect("beta")
        assert [r["ctx"] for r in stream] == [expect("beta"), expect("beta", values={"inner": "yes"}), expect("beta")]
        assert empty["ctx"] == expect()
    finally:
        run(server.stop(None))
        loop.call_soon_threadsafe(loop.stop)
        thread.join(WAIT)
        loop.close()
        pool.shutdown(wait=False)


# ---------------------------------------------------------------------------- API details


def test_aio_per_kind_interceptors_share_the_codec_and_cover_every_kind():
    codec = HeaderCodec(lane_header="x-lane")
    interceptors = aio_client_interceptors(codec)
    kinds = (
        grpc.aio.UnaryUnaryClientInterceptor,
        grpc.aio.UnaryStreamClientInterceptor,
        grpc.aio.StreamUnaryClientInterceptor,
        grpc.aio.StreamStreamClientInterceptor,
    )
    # one kind each: grpc.aio files an interceptor under the first kind it implements only
    assert [[isinstance(i, k) for k in kinds] for i in interceptors] == [[j == i for j in range(4)] for i in range(4)]
    assert all(i.codec is codec for i in interceptors)
    combined = AioGrayClientInterceptor(codec)
    assert all(isinstance(combined, k) for k in kinds)


async def test_aio_combined_interceptor_injects_for_every_kind():
    interceptor = AioGrayClientInterceptor()
    details = grpc.aio.ClientCallDetails(method("Unary"), 5.0, grpc.aio.Metadata(("baggage", "k=v")), None, True)
    sent: list[Any] = []

    async def continuation(call_details, request):
        sent.append(call_details)
        return "call"

    with gray(lane="beta"):
        for name in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
            assert await getattr(interceptor, f"intercept_{name}")(continuation, details, b"") == "call"
    for d in sent:
        assert isinstance(d, grpc.aio.ClientCallDetails) and isinstance(d.metadata, grpc.aio.Metadata)
        assert (d.method, d.timeout, d.wait_for_ready) == (method("Unary"), 5.0, True)
        assert list(d.metadata) == [("x-gray-lane", "beta"), ("baggage", "k=v,gray.lane=beta")]


def test_sync_client_interceptor_leaves_details_alone_without_gray_data():
    interceptor = GrayClientInterceptor()
    sent: list[Any] = []
    details = type("D", (), {"method": "/m", "timeout": None, "metadata": [("x-a", "1")], "credentials": None})()
    interceptor.intercept_unary_unary(lambda d, r: sent.append(d), details, b"")
    assert sent == [details]  # nothing to add, nothing to strip: the same object goes on
    with gray(lane="beta"):
        interceptor.intercept_unary_unary(lambda d, r: sent.append(d), details, b"")
    assert isinstance(sent[1], grpc.ClientCallDetails)
    assert sent[1].metadata == [("x-a", "1"), ("x-gray-lane", "beta"), ("baggage", "gray.lane=beta")]
    assert (sent[1].wait_for_ready, sent[1].compression) == (None, None)


@pytest.mark.parametrize("name", ["x-gray-lane-bin", "grpc-lane"])
def test_codecs_that_cannot_travel_in_grpc_metadata_are_refused(name):
    with pytest.raises(ValueError, match="gRPC metadata"):
        GrayClientInterceptor(HeaderCodec(lane_header=name))
    with pytest.raises(ValueError, match="gRPC metadata"):
        AioGrayServerInterceptor(HeaderCodec(lane_header=name))


def test_trust_must_be_bool_or_callable():
    with pytest.raises(TypeError, match="servicer_context"):
        GrayServerInterceptor(trust="yes")


@pytest.mark.parametrize(
    ("peer", "address"),
    [
        ("ipv4:127.0.0.1:5678", "127.0.0.1"),
        ("ipv6:[::1]:5678", "::1"),
        ("ipv6:%5B::ffff:10.1.2.3%5D:80", "::ffff:10.1.2.3"),
        ("unix:/tmp/sock", None),
        ("unix-abstract:x", None),
        ("ipv6:[::1", None),
        ("", None),
        (None, None),
    ],
)
def test_peer_address(peer, address):
    assert peer_address(peer) == address


def test_trust_networks_checks_the_grpc_peer():
    from graylb.transports.grpc_interceptors import _server_trust_check

    check = _server_trust_check(trust_networks("10.0.0.0/8"))

    class Peer:
        def __init__(self, peer: str) -> None:
            self._peer = peer

        def peer(self) -> str:
            return self._peer

    assert check(Peer("ipv4:10.2.3.4:1")) and check(Peer("ipv6:%5B::ffff:10.2.3.4%5D:1"))
    assert not check(Peer("ipv4:11.2.3.4:1")) and not check(Peer("unix:/x"))


def test_stripped_servicer_context_delegates_everything_else():
    from graylb.transports import grpc_interceptors as gi

    class Inner:
        def invocation_metadata(self):
            return (("x-gray-lane", "beta"), ("baggage", "gray.lane=beta,k=v"), ("x-a", "1"))

        def peer(self):
            return "ipv4:1.2.3.4:5"

        custom = "extra"

    for cls in (gi._StrippedServicerContext, gi._AioStrippedServicerContext):
        proxy = cls(Inner(), HeaderCodec())
        assert proxy.invocation_metadata() == (("baggage", "k=v"), ("x-a", "1"))
        assert proxy.peer() == "ipv4:1.2.3.4:5" and proxy.custom == "extra"
    assert isinstance(gi._StrippedServicerContext(Inner(), HeaderCodec()), grpc.ServicerContext)
    assert isinstance(gi._AioStrippedServicerContext(Inner(), HeaderCodec()), grpc.aio.ServicerContext)
