"""The Echo proto, its committed stubs, and the versioned Echo test servers (sync, aio-in-thread,
aio-on-the-caller's-loop)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import grpc.aio
import pytest

import graylb
from graylb._proto.graylb.demo.v1 import echo_pb2, echo_pb2_grpc
from graylb.testing.grpc_server import EchoServer, serve_echo, serve_echo_aio

ROOT = Path(__file__).resolve().parents[2]
STUBS = ROOT / "graylb" / "_proto"
GRAY_METADATA = (
    ("x-gray-lane", "beta"),
    ("x-gray-pin", "orders=2.0.0"),
    ("baggage", "gray.user-group=beta"),
    ("x-other", "dropped"),
)


def test_stubs_import_from_the_graylb_proto_package() -> None:
    assert echo_pb2.DESCRIPTOR.name == "graylb/demo/v1/echo.proto"
    assert echo_pb2.DESCRIPTOR.package == "graylb.demo.v1"
    service = echo_pb2.DESCRIPTOR.services_by_name["Echo"]
    assert {m.name: (m.client_streaming, m.server_streaming) for m in service.methods} == {
        "Say": (False, False),
        "Count": (False, True),
    }
    source = (STUBS / "graylb/demo/v1/echo_pb2_grpc.py").read_text()
    assert "from graylb._proto.graylb.demo.v1 import echo_pb2" in source
    assert not re.search(r"^from graylb\.demo", source, re.M)
    reply = echo_pb2.SayReply(service="orders", seen_pins={"orders": "2.0.0"}, text="hi")
    assert echo_pb2.SayReply.FromString(reply.SerializeToString()) == reply


def test_committed_stubs_match_a_fresh_generation(tmp_path: Path) -> None:
    """What ``make proto`` does, into a temp dir: protoc, then rewrite ``from graylb.<pkg>`` to
    ``from graylb._proto.graylb.<pkg>``. Fails if someone edits the .proto without regenerating
    (or edits a stub by hand)."""
    pytest.importorskip("grpc_tools.protoc", reason="grpcio-tools (the dev extra) regenerates the stubs")

    protos = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "proto").rglob("*.proto"))
    assert protos == ["proto/graylb/demo/v1/echo.proto"], (
        "new .proto files: add them to PROTOS in the Makefile and here"
    )
    makefile = (ROOT / "Makefile").read_text()
    assert "PROTOS    := proto/graylb/demo/v1/echo.proto" in makefile
    out = str(tmp_path)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            "proto",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            *protos,
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    generated = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert [str(p.relative_to(tmp_path)) for p in generated] == [
        "graylb/demo/v1/echo_pb2.py",
        "graylb/demo/v1/echo_pb2.pyi",
        "graylb/demo/v1/echo_pb2_grpc.py",
    ]
    for path in generated:
        fresh = re.sub(rb"(?m)^from graylb\.([a-z])", rb"from graylb._proto.graylb.\1", path.read_bytes())
        committed = STUBS / path.relative_to(tmp_path)
        assert committed.read_bytes() == fresh, f"{committed} is stale: run `make proto`"


def _check_served(reply: object, server: EchoServer | object, *, lane: str = "") -> None:
    assert (reply.service, reply.version, reply.instance, reply.lane) == (
        server.service,
        server.version,
        server.address,
        lane,
    )


# ---------------------------------------------------------------------------------------------
# sync server (and the aio server on its background loop, same API)


@pytest.fixture(params=[False, True], ids=["sync", "aio-thread"])
def server(request: pytest.FixtureRequest) -> Iterator[EchoServer]:
    with serve_echo("orders", "2.0.0", lane="beta", aio=request.param) as s:
        yield s


@pytest.fixture
def stub(server: EchoServer) -> Iterator[echo_pb2_grpc.EchoStub]:
    with grpc.insecure_channel(server.address) as channel:
        yield echo_pb2_grpc.EchoStub(channel)


def test_unary_reply_says_who_served_and_what_it_saw(server: EchoServer, stub: echo_pb2_grpc.EchoStub) -> None:
    assert server.address == f"127.0.0.1:{server.port}" and server.host == "127.0.0.1" and server.port > 0
    reply = stub.Say(echo_pb2.SayRequest(text="hello"), timeout=5)
    _check_served(reply, server, lane="beta")
    assert reply.text == "hello"
    assert reply.seen_lane == "" and dict(reply.seen_pins) == {} and dict(reply.seen_metadata) == {}

    reply = stub.Say(
        echo_pb2.SayRequest(text="again"), metadata=(*GRAY_METADATA, ("x-gray-pin", "payments=1.0.0")), timeout=5
    )
    assert dict(reply.seen_metadata) == {
        "x-gray-lane": "beta",
        "x-gray-pin": "orders=2.0.0,payments=1.0.0",
        "baggage": "gray.user-group=beta",
    }
    assert server.calls == 2
    assert server.static_entry() == {"host": "127.0.0.1", "port": server.port, "version": "2.0.0", "lane": "beta"}


def test_streaming_replies_in_order(server: EchoServer, stub: echo_pb2_grpc.EchoStub) -> None:
    replies = list(stub.Count(echo_pb2.CountRequest(count=4, interval_ms=5), metadata=GRAY_METADATA, timeout=5))
    assert [r.seq for r in replies] == [0, 1, 2, 3]
    for reply in replies:
        _check_served(reply, server, lane="beta")
        assert reply.seen_metadata["x-gray-lane"] == "beta"
    assert list(stub.Count(echo_pb2.CountRequest(count=0), timeout=5)) == []


def test_gray_context_is_read_from_graylb_current() -> None:
    """An interceptor that binds a gray context around the handler: the reply reports it."""

    class Bind(grpc.ServerInterceptor):
        def intercept_service(self, continuation, details):  # type: ignore[no-untyped-def]
            handler = continuation(details)

            def unary(request, context):  # type: ignore[no-untyped-def]
                with graylb.gray(lane="beta", pins={"orders": "2.0.0"}):
                    return handler.unary_unary(request, context)

            return handler._replace(unary_unary=unary) if handler and handler.unary_unary else handler

    with serve_echo(interceptors=[Bind()]) as server, grpc.insecure_channel(server.address) as channel:
        reply = echo_pb2_grpc.EchoStub(channel).Say(echo_pb2.SayRequest(text="x"), timeout=5)
    assert reply.seen_lane == "beta" and dict(reply.seen_pins) == {"orders": "2.0.0"}


def test_fail_with_aborts_every_rpc(server: EchoServer, stub: echo_pb2_grpc.EchoStub) -> None:
    server.fail_with = grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(grpc.RpcError) as err:
        stub.Say(echo_pb2.SayRequest(text="x"), timeout=5)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "orders 2.0.0" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Count(echo_pb2.CountRequest(count=2), timeout=5))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    server.fail_with = None
    assert stub.Say(echo_pb2.SayRequest(text="ok"), timeout=5).text == "ok"


def test_delay_trips_the_client_deadline(server: EchoServer, stub: echo_pb2_grpc.EchoStub) -> None:
    server.delay = 0.5
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        stub.Say(echo_pb2.SayRequest(text="slow"), timeout=0.1)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 0.4
    started = time.monotonic()
    assert stub.Say(echo_pb2.SayRequest(text="patient"), timeout=5).text == "patient"
    assert time.monotonic() - started >= 0.45
    server.delay = 0


def test_stop_makes_new_calls_unavailable(server: EchoServer, stub: echo_pb2_grpc.EchoStub) -> None:
    assert stub.Say(echo_pb2.SayRequest(text="before"), timeout=5).text == "before"  # channel connected
    server.stop()
    assert not server.running
    server.stop()  # idempotent
    for _ in range(2):  # the already-connected channel, then a reconnect attempt
        with pytest.raises(grpc.RpcError) as err:
            stub.Say(echo_pb2.SayRequest(text="after"), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    with grpc.insecure_channel(server.address) as channel, pytest.raises(grpc.RpcError) as err:
        echo_pb2_grpc.EchoStub(channel).Say(echo_pb2.SayRequest(text="fresh"), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_crash_stop_aborts_in_flight_calls(server: EchoServer, stub: echo_pb2_grpc.EchoStub) -> None:
    server.delay = 5
    future = stub.Say.future(echo_pb2.SayRequest(text="in flight"), timeout=10)
    time.sleep(0.2)
    started = time.monotonic()
    server.stop()
    with pytest.raises(grpc.RpcError) as err:
        future.result(timeout=5)
    assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    assert time.monotonic() - started < 2


def test_servers_get_distinct_ports() -> None:
    servers = [serve_echo("orders", f"1.{i}.0") for i in range(4)]
    try:
        assert len({s.port for s in servers}) == 4
        for s in servers:
            with grpc.insecure_channel(s.address) as channel:
                assert echo_pb2_grpc.EchoStub(channel).Say(echo_pb2.SayRequest(), timeout=5).version == s.version
    finally:
        for s in servers:
            s.stop()


# ---------------------------------------------------------------------------------------------
# aio server on the caller's loop, grpc.aio client


async def test_aio_server_and_client() -> None:
    server = serve_echo_aio("inventory", "3.1.0")
    assert not server.running
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = echo_pb2_grpc.EchoStub(channel)
            reply = await stub.Say(echo_pb2.SayRequest(text="hi"), metadata=GRAY_METADATA, timeout=5)
            _check_served(reply, server)
            assert (
                reply.text == "hi"
                and reply.seen_metadata["x-gray-pin"] == "orders=2.0.0"
                and "x-other" not in reply.seen_metadata
            )
            seqs = [r.seq async for r in stub.Count(echo_pb2.CountRequest(count=3, interval_ms=5), timeout=5)]
            assert seqs == [0, 1, 2]

            server.fail_with = grpc.StatusCode.UNAVAILABLE
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Say(echo_pb2.SayRequest(), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            with pytest.raises(grpc.aio.AioRpcError) as err:
                _ = [r async for r in stub.Count(echo_pb2.CountRequest(count=2), timeout=5)]
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE

            server.fail_with, server.delay = None, 0.5
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Say(echo_pb2.SayRequest(), timeout=0.1)
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            server.delay = 0
            assert (await stub.Say(echo_pb2.SayRequest(text="ok"), timeout=5)).text == "ok"

            await server.stop()
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Say(echo_pb2.SayRequest(), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop()


async def test_aio_server_as_async_context_manager() -> None:
    async with serve_echo_aio("orders", "1.0.0", lane="feature-x") as server:
        async with grpc.aio.insecure_channel(server.address) as channel:
            reply = await echo_pb2_grpc.EchoStub(channel).Say(echo_pb2.SayRequest(text="x"), timeout=5)
        _check_served(reply, server, lane="feature-x")
    assert not server.running
