"""Every RPC of a gray channel ends its attempt exactly once: ``Call.done`` with the right ``ok``,
so the balancer's in-flight counts (what the least_request picker reads) come back to 0.

All shapes, sync and aio: unary (``__call__``, ``with_call``, ``future``), unary-stream,
stream-unary (``__call__``, ``with_call``, ``future``), stream-stream; answered, failed (INTERNAL:
``ok=False``), cancelled and past their deadline (``ok=True``: not the instance's fault); aio
streaming calls made before the service's first snapshot too.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator

import grpc
import pytest

import graylb
from graylb.call import Call
from graylb.transports.grpc import AioGrayChannel, GrayChannel
from tests.integration.grpc_shapes import (
    AIO_OPS,
    AIO_STREAM_CALLS,
    BIDI,
    CLIENT_STREAM,
    SYNC_CANCELLABLE,
    SYNC_OPS,
    WAIT,
    DoneLog,
    Shapes,
    finish,
    inflight,
    run_in_loop,
)

RULES = {"services": {"shapes": {"load_balancer": "round_robin"}}}
OK, FAIL = 4, 2  # answered and failed calls per shape


@pytest.fixture(scope="module")
def shapes() -> Iterator[Shapes]:
    s = Shapes({"a": "1.0.0", "b": "1.0.0", "c": "2.0.0"})
    yield s
    s.stop()


@pytest.fixture
def done_log(monkeypatch: pytest.MonkeyPatch) -> DoneLog:
    log = DoneLog()
    original = Call.done

    def done(self: Call, instance: graylb.Instance, ok: bool, outcome: str | int | None = None) -> None:
        original(self, instance, ok, outcome)
        log.add(instance.id, ok)

    monkeypatch.setattr(Call, "done", done)
    return log


def balancer_for(shapes: Shapes) -> graylb.Balancer:
    return graylb.Balancer(shapes.registry("shapes"), RULES)


def assert_settled(balancer: graylb.Balancer, shapes: Shapes, log: DoneLog, expected: Counter) -> None:
    entries = log.wait(sum(expected.values()))
    assert Counter(ok for _, ok in entries) == expected
    assert inflight(balancer, shapes) == {key: 0 for key in shapes.servers}
    assert len(log.entries) == sum(expected.values())  # nothing reported twice


# ------------------------------------------------------------------------------------ sync


@pytest.mark.parametrize("op", list(SYNC_OPS))
def test_sync_answered_and_failed_calls_end_once(shapes: Shapes, done_log: DoneLog, op: str) -> None:
    balancer = balancer_for(shapes)
    call = SYNC_OPS[op]
    with GrayChannel(balancer, "shapes") as channel:
        for n in range(OK):
            assert call(channel, b"ok", WAIT)
            done_log.wait(n + 1)  # one call at a time: each ends before the next begins
        for n in range(FAIL):
            with pytest.raises(grpc.RpcError) as err:
                call(channel, b"fail", WAIT)
            assert err.value.code() == grpc.StatusCode.INTERNAL
            done_log.wait(OK + n + 1)
    assert_settled(balancer, shapes, done_log, Counter({True: OK, False: FAIL}))


@pytest.mark.parametrize("op", list(SYNC_CANCELLABLE))
def test_sync_cancelled_calls_end_once(shapes: Shapes, done_log: DoneLog, op: str) -> None:
    balancer = balancer_for(shapes)
    with GrayChannel(balancer, "shapes") as channel:
        for n in range(3):
            rpc = SYNC_CANCELLABLE[op](channel)
            shapes.wait_arrived()
            assert sum(inflight(balancer, shapes).values()) == 1
            assert rpc.cancel()
            done_log.wait(n + 1)
    assert_settled(balancer, shapes, done_log, Counter({True: 3}))


@pytest.mark.parametrize(
    "op", ["unary", "unary.with_call", "stream_unary", "stream_unary.with_call", "unary_stream", "stream_stream"]
)
def test_sync_calls_past_their_deadline_end_once(shapes: Shapes, done_log: DoneLog, op: str) -> None:
    balancer = balancer_for(shapes)
    with GrayChannel(balancer, "shapes") as channel:
        for n in range(2):
            with pytest.raises(grpc.RpcError) as err:
                SYNC_OPS[op](channel, b"slow", 0.1)
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            done_log.wait(n + 1)
    assert_settled(balancer, shapes, done_log, Counter({True: 2}))


def test_streaming_multicallables_offer_only_what_grpc_offers(shapes: Shapes, done_log: DoneLog) -> None:
    """unary-stream and stream-stream have no ``with_call``/``future`` in grpc: asking for one
    must fail before an instance is picked, not leave an attempt open."""
    balancer = balancer_for(shapes)
    with GrayChannel(balancer, "shapes") as channel:
        for mc in (
            channel.unary_stream("/graylb.test.Shapes/ServerStream"),
            channel.stream_stream("/graylb.test.Shapes/Bidi"),
        ):
            for name in ("with_call", "future"):
                with pytest.raises(AttributeError):
                    getattr(mc, name)(iter([b"ok"]), timeout=WAIT)
    assert inflight(balancer, shapes) == {key: 0 for key in shapes.servers} and done_log.entries == []


# ------------------------------------------------------------------------------------ aio


@pytest.mark.parametrize("op", list(AIO_OPS))
def test_aio_answered_and_failed_calls_end_once(shapes: Shapes, done_log: DoneLog, op: str) -> None:
    balancer = balancer_for(shapes)
    call = AIO_OPS[op]

    async def run() -> None:
        async with AioGrayChannel(balancer, "shapes") as channel:
            for n in range(OK):
                assert await call(channel, b"ok", WAIT)
                await asyncio.to_thread(done_log.wait, n + 1)
            for n in range(FAIL):
                with pytest.raises(grpc.RpcError) as err:
                    await call(channel, b"fail", WAIT)
                assert err.value.code() == grpc.StatusCode.INTERNAL
                await asyncio.to_thread(done_log.wait, OK + n + 1)

    run_in_loop(run())
    assert_settled(balancer, shapes, done_log, Counter({True: OK, False: FAIL}))


def test_aio_request_streaming_calls_take_their_options_positionally(shapes: Shapes, done_log: DoneLog) -> None:
    """grpc.aio's stream-unary and stream-stream multicallables take ``timeout``, ``metadata``, ...
    positionally (only the unary-request ones make them keyword-only): so do the gray channel's."""
    balancer = balancer_for(shapes)

    async def run() -> None:
        async with AioGrayChannel(balancer, "shapes") as channel:
            metadata = (("x-test", "1"),)
            assert await channel.stream_unary(CLIENT_STREAM)(iter([b"ok"]), WAIT, metadata) in {b"a", b"b", b"c"}
            assert len([r async for r in channel.stream_stream(BIDI)(iter([b"ok", b"x"]), WAIT, metadata)]) == 2
            await asyncio.to_thread(done_log.wait, 2)

    run_in_loop(run())
    assert_settled(balancer, shapes, done_log, Counter({True: 2}))


def test_aio_cancelled_unary_call_ends_once(shapes: Shapes, done_log: DoneLog) -> None:
    balancer = balancer_for(shapes)

    async def run() -> None:
        async with AioGrayChannel(balancer, "shapes") as channel:
            for n in range(3):
                task = asyncio.ensure_future(AIO_OPS["unary"](channel, b"hold", WAIT))
                await asyncio.to_thread(shapes.wait_arrived)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                await asyncio.to_thread(done_log.wait, n + 1)

    run_in_loop(run())
    assert_settled(balancer, shapes, done_log, Counter({True: 3}))


@pytest.mark.parametrize("kind", list(AIO_STREAM_CALLS))
def test_aio_cancelled_streaming_call_ends_once(shapes: Shapes, done_log: DoneLog, kind: str) -> None:
    balancer = balancer_for(shapes)

    async def run() -> None:
        async with AioGrayChannel(balancer, "shapes") as channel:
            for n in range(3):
                call = AIO_STREAM_CALLS[kind](channel, b"hold")
                await asyncio.to_thread(shapes.wait_arrived)
                assert call.cancel()
                assert isinstance(await finish(kind, call), (asyncio.CancelledError, grpc.RpcError)) or call.cancelled()
                await asyncio.to_thread(done_log.wait, n + 1)

    run_in_loop(run())
    assert_settled(balancer, shapes, done_log, Counter({True: 3}))


@pytest.mark.parametrize("kind", list(AIO_STREAM_CALLS))
def test_aio_streaming_calls_made_before_the_first_snapshot_end_once(
    shapes: Shapes, done_log: DoneLog, kind: str
) -> None:
    """Before the first snapshot a streaming call is a _DeferredAioCall that starts the RPC
    once the snapshot is here: answered, failed and cancelled ones all end their attempt;
    one cancelled before the snapshot never started one."""
    discovery = shapes.late_registry("shapes")
    balancer = graylb.Balancer(discovery, RULES)

    async def run() -> list:
        async with AioGrayChannel(balancer, "shapes") as channel:
            make = AIO_STREAM_CALLS[kind]
            answered, failed, held, never = (
                make(channel, b"ok"),
                make(channel, b"fail"),
                make(channel, b"hold"),
                make(channel, b"ok"),
            )
            assert never.cancel()  # before the snapshot: nothing was picked
            discovery.release()
            results = [await finish(kind, answered), await finish(kind, failed)]
            await asyncio.to_thread(shapes.wait_arrived)
            assert held.cancel()
            results.append(await finish(kind, held))
            await asyncio.to_thread(done_log.wait, 3)
            return results

    answered, failed, _ = run_in_loop(run())
    assert not isinstance(answered, Exception) and failed.code() == grpc.StatusCode.INTERNAL
    assert_settled(balancer, shapes, done_log, Counter({True: 2, False: 1}))


@pytest.mark.parametrize("deferred", [False, True], ids=["started", "deferred"])
@pytest.mark.parametrize("kind", list(AIO_STREAM_CALLS))
def test_aio_stream_has_ended_its_attempt_when_the_caller_sees_its_end(
    shapes: Shapes, done_log: DoneLog, kind: str, deferred: bool
) -> None:
    """No task in between: by the time ``async for`` / ``await`` returns, the attempt is over, so
    a loop that ends right after (``asyncio.run`` cancelling what is left) leaks nothing."""
    discovery = shapes.late_registry("shapes") if deferred else shapes.registry("shapes")
    balancer = graylb.Balancer(discovery, RULES)

    async def run() -> tuple[dict, list]:
        channel = AioGrayChannel(balancer, "shapes")
        call = AIO_STREAM_CALLS[kind](channel, b"ok")
        if deferred:
            discovery.release()
        result = await finish(kind, call)
        seen = inflight(balancer, shapes), list(done_log.entries)  # no await since the end
        assert not isinstance(result, BaseException)
        await channel.close()
        return seen

    counts, entries = run_in_loop(run())
    assert counts == {key: 0 for key in shapes.servers}
    assert [ok for _, ok in entries] == [True]
