"""The gray context: immutability, gray() scoping, and how it follows asyncio tasks and threads."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import types
from concurrent.futures import ThreadPoolExecutor

import pytest

import graylb
from graylb.propagation import EMPTY, GrayContext, HeaderCodec, attach, bind, current, detach, gray


def snapshot() -> tuple:
    ctx = current()
    return ctx.lane, ctx.lane_forced, dict(ctx.pins), dict(ctx.values)


# ---------------------------------------------------------------------------- the value


def test_default_is_empty():
    assert current() is EMPTY and EMPTY.is_empty


def test_context_is_immutable_and_copies_its_input():
    pins = {"orders": "2.0.0"}
    ctx = GrayContext(lane="beta", pins=pins)
    pins["orders"] = "9.9.9"
    assert ctx.pins["orders"] == "2.0.0"
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.lane = "alpha"  # type: ignore[misc]
    with pytest.raises(TypeError):
        ctx.pins["orders"] = "1.0.0"  # type: ignore[index]


def test_equality_and_hash_ignore_the_wire_cache():
    a, b = GrayContext(lane="beta", pins={"o": "1"}), GrayContext(lane="beta", pins={"o": "1"})
    HeaderCodec().inject(a)
    assert a == b and hash(a) == hash(b)
    assert GrayContext(lane="") == EMPTY


def test_value_answers_lane_and_values():
    ctx = GrayContext(lane="beta", values={"user-group": "staff"})
    assert ctx.value("lane") == "beta"
    assert ctx.value("user-group") == "staff"
    assert ctx.value("missing") is None


def test_replace_does_not_inherit_serialised_headers():
    codec = HeaderCodec()
    alpha = GrayContext(lane="alpha")
    codec.inject(alpha)
    beta = dataclasses.replace(alpha, lane="beta")
    assert dict(codec.inject(beta))["x-gray-lane"] == "beta"


def test_a_read_only_view_argument_is_copied_too():
    backing = {"orders": "1.0.0"}
    ctx = GrayContext(pins=types.MappingProxyType(backing))
    backing["orders"] = "2.0.0"
    assert ctx.pins["orders"] == "1.0.0"


# ---------------------------------------------------------------------------- gray()


def test_gray_sets_context_for_the_block_and_restores_it():
    with gray(lane="beta", pins={"orders": "2.0.0"}, values={"user-group": "staff"}) as ctx:
        assert current() is ctx
        assert snapshot() == ("beta", False, {"orders": "2.0.0"}, {"user-group": "staff"})
    assert current() is EMPTY


def test_gray_nests_by_adding_to_the_outer_context():
    with gray(lane="beta", pins={"orders": "2.0.0"}, force_lane=True):
        with gray(pins={"users": "^1"}, values={"k": "v"}):
            assert snapshot() == ("beta", True, {"orders": "2.0.0", "users": "^1"}, {"k": "v"})
        with gray(lane="alpha", pins={"orders": "3.0.0"}, force_lane=False):
            assert snapshot() == ("alpha", False, {"orders": "3.0.0"}, {})
        with gray(pins={"users": "1"}, replace=True):
            assert snapshot() == (None, False, {"users": "1"}, {})
        assert snapshot() == ("beta", True, {"orders": "2.0.0"}, {})


def test_gray_restores_on_exception():
    with pytest.raises(RuntimeError):
        with gray(lane="beta"):
            raise RuntimeError
    assert current() is EMPTY


def test_attach_and_detach_pair_up():
    ctx = GrayContext(lane="beta")
    token = attach(ctx)
    assert current() is ctx
    detach(token)
    assert current() is EMPTY


def test_top_level_package_exports():
    assert graylb.current is current and graylb.gray is gray and graylb.bind is bind


# ---------------------------------------------------------------------------- asyncio


async def test_tasks_inherit_the_context_at_creation():
    async def child() -> tuple:
        await asyncio.sleep(0)
        return snapshot()

    with gray(lane="beta"):
        task = asyncio.create_task(child())
    # the task copied the context when it was created; leaving the block does not change it
    assert await task == ("beta", False, {}, {})


async def test_tasks_are_isolated_from_each_other_and_from_the_parent():
    started = asyncio.Event()
    proceed = asyncio.Event()

    async def worker(lane: str) -> list:
        seen = []
        with gray(lane=lane):
            started.set()
            await proceed.wait()  # all workers are inside their gray() block at the same time
            seen.append(current().lane)
        seen.append(current().lane)
        return seen

    tasks = [asyncio.create_task(worker(f"lane{i}")) for i in range(5)]
    await started.wait()
    await asyncio.sleep(0)
    proceed.set()
    results = await asyncio.gather(*tasks)
    assert results == [[f"lane{i}", None] for i in range(5)]
    assert current() is EMPTY


async def test_a_child_setting_context_does_not_leak_into_the_parent():
    async def child() -> None:
        attach(GrayContext(lane="child"))  # never detached: dies with the task's context copy

    with gray(lane="parent"):
        await asyncio.create_task(child())
        assert current().lane == "parent"


# ---------------------------------------------------------------------------- threads


def test_threads_are_isolated():
    seen: dict[str, str | None] = {}
    barrier = threading.Barrier(2)

    def worker(name: str) -> None:
        with gray(lane=name):
            barrier.wait(timeout=10)  # both threads hold their own lane at once
            seen[name] = current().lane

    with gray(lane="main"):
        threads = [threading.Thread(target=worker, args=(n,)) for n in ("t1", "t2")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=10)
        assert current().lane == "main"
    assert seen == {"t1": "t1", "t2": "t2"}


def test_bind_carries_the_context_into_a_thread_pool():
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(lambda: None).result()  # create the worker thread outside any gray block
        with gray(lane="beta", pins={"orders": "2.0.0"}):
            bound = pool.submit(bind(snapshot)).result()
            unbound = pool.submit(snapshot).result()
        after = pool.submit(snapshot).result()
    assert bound == ("beta", False, {"orders": "2.0.0"}, {})
    assert unbound == (None, False, {}, {})  # the pool does not copy contextvars by itself
    assert after == (None, False, {}, {})  # and bind() left the worker thread as it found it


def test_bind_captures_at_wrap_time_not_call_time():
    with gray(lane="captured"):
        fn = bind(lambda: current().lane)
    with gray(lane="caller"):
        assert fn() == "captured"
        assert current().lane == "caller"


def test_bind_restores_the_context_when_the_function_raises():
    with gray(lane="beta"):
        fn = bind(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        fn()
    assert current() is EMPTY


def test_bind_passes_arguments_and_keeps_metadata():
    def add(a: int, b: int = 0) -> int:
        """adds"""
        return a + b

    bound = bind(add)
    assert bound(1, b=2) == 3 and bound.__name__ == "add" and bound.__doc__ == "adds"


async def test_bind_carries_the_context_through_run_in_executor():
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(max_workers=2) as pool:
        await loop.run_in_executor(pool, lambda: None)
        with gray(lane="beta", values={"user-group": "staff"}):
            bound = await loop.run_in_executor(pool, bind(snapshot))
            unbound = await loop.run_in_executor(pool, snapshot)
    assert bound == ("beta", False, {}, {"user-group": "staff"})
    assert unbound == (None, False, {}, {})


async def test_to_thread_copies_the_context_without_bind():
    # asyncio.to_thread copies contextvars itself; documented here so users know bind() is
    # for executors and raw threads, not for to_thread.
    with gray(lane="beta"):
        assert await asyncio.to_thread(lambda: current().lane) == "beta"


async def test_concurrent_executor_calls_each_see_their_own_context():
    loop = asyncio.get_running_loop()
    barrier = threading.Barrier(4)

    def work() -> str | None:
        barrier.wait(timeout=10)  # all four run at once on different threads
        return current().lane

    futures = []
    with ThreadPoolExecutor(max_workers=4) as pool:
        for i in range(4):
            with gray(lane=f"lane{i}"):
                futures.append(loop.run_in_executor(pool, bind(work)))
        assert await asyncio.gather(*futures) == [f"lane{i}" for i in range(4)]
