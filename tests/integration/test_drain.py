"""Leaving without losing a request: the drain (serving side) and what a graylb caller does with
a leaving instance, over real loopback HTTP servers."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import graylb
from graylb.consul import ConsulConfig, ConsulRegistration
from graylb.drain import DRAIN_HEADER, DRAINED, DRAINING, REFUSING, Drain
from graylb.drain_middleware import DrainWSGIMiddleware
from graylb.testing import serve_wsgi
from graylb.testing.fake_consul import FakeConsul
from graylb.testing.http_server import WSGIServer
from tests.conftest import wait_until


class Backend:
    """One instance: a WSGI app behind the drain middleware that counts what it processed."""

    def __init__(self, name: str, drain: Drain | None = None, status: str = "200 OK") -> None:
        self.name = name
        self.drain = drain if drain is not None else Drain(grace=0)
        self.status = status
        self.processed: Counter[str] = Counter()
        self.hold: threading.Event | None = None  # set: requests wait for it (in flight)
        self.server: WSGIServer = serve_wsgi(DrainWSGIMiddleware(self.app, self.drain))

    def app(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if self.hold is not None:
            self.hold.wait(10)
        self.processed[environ.get("HTTP_X_REQUEST_ID", "?")] += 1
        start_response(self.status, [("content-type", "text/plain")])
        return [self.name.encode()]

    def instance(self) -> dict[str, Any]:
        return {"host": "127.0.0.1", "port": self.server.port, "version": "1.0.0", "id": self.name}


@pytest.fixture
def backends() -> Iterator[list[Backend]]:
    made: list[Backend] = []
    yield made
    for b in made:
        b.server.stop()


def client_for(instances: list[dict[str, Any]], rules: dict | None = None) -> httpx.Client:
    balancer = graylb.Balancer(graylb.StaticDiscovery({"orders": instances}), rules, services=["orders"])
    return httpx.Client(transport=graylb.GrayTransport(balancer), timeout=10)


def test_a_post_refused_by_a_draining_instance_is_processed_once_elsewhere(backends: list[Backend]) -> None:
    a, b = Backend("a"), Backend("b")
    backends += [a, b]
    assert a.drain.drain(grace=0).clean  # nothing in flight: drained at once, refusing from now on
    with client_for([a.instance(), b.instance()]) as client:
        responses = [client.post("http://orders/pay", headers={"x-request-id": f"r{i}"}) for i in range(30)]
    assert [r.status_code for r in responses] == [200] * 30
    assert {r.text for r in responses} == {"b"}
    # every POST processed exactly once, all by b; a processed none
    assert b.processed == Counter({f"r{i}": 1 for i in range(30)}) and not a.processed
    # the first refusal took a out of this caller's picks: it saw at most one request
    assert a.drain._refused <= 1
    served = [r.extensions["graylb"] for r in responses]
    assert sum(s.attempts for s in served) <= 31


def test_a_plain_503_is_not_resent_for_a_post(backends: list[Backend]) -> None:
    a = Backend("a", status="503 Service Unavailable")
    backends.append(a)
    with client_for([a.instance()]) as client:
        response = client.post("http://orders/pay", headers={"x-request-id": "only"})
    assert response.status_code == 503 and DRAIN_HEADER not in response.headers
    assert a.processed == Counter({"only": 1})  # processed, maybe: never sent twice


def test_a_connection_refused_instance_is_out_of_picks_at_once(backends: list[Backend]) -> None:
    a, gone = Backend("a"), Backend("gone")
    backends += [a, gone]
    gone.server.stop()  # nothing listens at its port any more: connection refused
    with client_for([a.instance(), gone.instance()]) as client:
        served = [client.post("http://orders/pay").extensions["graylb"] for _ in range(30)]
    assert {s.instance for s in served} == {"a"}
    assert sum(s.attempts for s in served) <= 31  # refused once, then never picked again


def test_the_drain_serves_through_the_grace_period_then_refuses_and_waits_for_requests_in_flight(
    backends: list[Backend],
) -> None:
    a = Backend("a", Drain(grace=60))
    backends.append(a)
    results: list[Any] = []
    drainer = threading.Thread(target=lambda: results.append(a.drain.drain()))
    drainer.start()
    wait_until(lambda: a.drain.state == DRAINING)
    assert httpx.get(a.server.url + "/").status_code == 200  # callers have not noticed yet: served

    a.hold = threading.Event()
    slow: list[httpx.Response] = []
    in_flight = threading.Thread(target=lambda: slow.append(httpx.get(a.server.url + "/", timeout=10)))
    in_flight.start()
    wait_until(lambda: a.drain.in_flight == 1)
    a.drain.end_grace()
    wait_until(lambda: a.drain.state == REFUSING)
    refused = httpx.get(a.server.url + "/")
    assert (refused.status_code, refused.headers[DRAIN_HEADER], refused.headers["retry-after"]) == (503, "1", "0")
    assert drainer.is_alive()  # still waiting for the request in flight

    a.hold.set()
    in_flight.join(10)
    drainer.join(10)
    assert slow[0].status_code == 200  # the request in flight finished normally
    [result] = results
    assert a.drain.state == DRAINED and result.clean and result.refused == 1
    assert a.drain.drain() is result  # idempotent: a second caller gets the same result


def test_the_drain_gives_up_on_requests_in_flight_after_its_timeout(backends: list[Backend]) -> None:
    a = Backend("a", Drain(grace=0, timeout=0.2))
    backends.append(a)
    a.hold = threading.Event()
    stuck = threading.Thread(target=lambda: httpx.get(a.server.url + "/", timeout=10))
    stuck.start()
    wait_until(lambda: a.drain.in_flight == 1)
    result = a.drain.drain()
    assert (result.clean, result.in_flight_left) == (False, 1)
    a.hold.set()
    stuck.join(10)


def test_the_pre_stop_hook_drains_and_answers_when_done(backends: list[Backend]) -> None:
    a = Backend("a", Drain(grace=0))
    backends.append(a)
    assert httpx.get(a.server.url + "/graylb/drain").status_code == 405
    assert a.drain.state == "serving"
    answer = httpx.post(a.server.url + "/graylb/drain", timeout=10)
    assert answer.status_code == 200
    assert answer.json() | {"seconds": 0} == {
        "drained": True,
        "in_flight_left": 0,
        "refused": 0,
        "grace": 0.0,
        "seconds": 0,
        "deregistered": False,
    }
    assert a.drain.state == DRAINED
    assert httpx.get(a.server.url + "/").status_code == 503


def test_the_pre_stop_hook_is_for_loopback_callers_only(backends: list[Backend]) -> None:
    drain = Drain(grace=0)
    app = DrainWSGIMiddleware(Backend("x", drain).app, drain, hook_trust=graylb.trust_networks("10.0.0.0/8"))
    server = serve_wsgi(app)
    try:
        assert httpx.post(server.url + "/graylb/drain").status_code == 403
        assert drain.state == "serving"
    finally:
        server.stop()
        backends.append(Backend("unused"))  # the fixture stops the Backend's own server


def test_registration_drain_deregisters_first_and_waits_the_grace_period() -> None:
    with FakeConsul() as fake:
        reg = ConsulRegistration(
            ConsulConfig(fake.url), "orders", address="127.0.0.1", port=9001, version="2.0.0", ttl=0.6, env={}
        )
        reg.register()
        drain = reg.drainer
        assert drain is reg.drainer and reg.propagation_time() == 2.0
        seen: list[Any] = []
        thread = threading.Thread(target=lambda: seen.append(reg.drain(grace=30)))
        thread.start()
        wait_until(lambda: drain.state == DRAINING)
        wait_until(lambda: httpx.get(f"{fake.url}/v1/health/service/orders").json() == [])
        assert not reg.registered and thread.is_alive()  # gone from the registry, still serving
        drain.end_grace()
        thread.join(10)
        assert seen[0].deregistered and seen[0].clean and drain.state == DRAINED


# -- gRPC ------------------------------------------------------------------------------------------


def grpc_pair(first: Any, second: Any) -> Any:
    """A GrayChannel stub over two Echo servers, named ``first`` / ``second`` by their ids."""
    from graylb._proto.graylb.demo.v1 import echo_pb2_grpc
    from graylb.transports.grpc import GrayChannel

    static = graylb.StaticDiscovery(
        {"orders": [{"host": s.host, "port": s.port, "version": "1.0.0", "id": n} for n, s in (first, second)]}
    )
    channel = GrayChannel(graylb.Balancer(static), "orders")
    return channel, echo_pb2_grpc.EchoStub(channel)


def test_a_grpc_call_refused_by_a_draining_server_runs_once_elsewhere_and_the_server_is_out_of_picks() -> None:
    from graylb._proto.graylb.demo.v1 import echo_pb2
    from graylb.drain_middleware import DrainServerInterceptor
    from graylb.testing.grpc_server import serve_echo

    leaving_drain = Drain(grace=0)
    leaving = serve_echo("orders", "1.0.0", interceptors=[DrainServerInterceptor(leaving_drain)])
    staying = serve_echo("orders", "1.0.0")
    try:
        channel, stub = grpc_pair(("leaving", leaving), ("staying", staying))
        stub.Say(echo_pb2.SayRequest(text="warm"))  # served while not draining: counted, released
        assert leaving_drain.in_flight == 0
        assert leaving_drain.drain().clean
        served = [stub.Say.with_call(echo_pb2.SayRequest(text=f"r{i}"))[1].graylb for i in range(30)]
        assert {s.instance for s in served} == {"staying"}
        assert leaving_drain._refused <= 1 and sum(s.attempts for s in served) <= 31
        channel.close()
    finally:
        leaving.stop()
        staying.stop()


@pytest.mark.parametrize("aio", [False, True], ids=["grpc-server", "grpc-aio-server"])
def test_a_refused_grpc_call_carries_the_drain_marker(aio: bool) -> None:
    import grpc

    from graylb._proto.graylb.demo.v1 import echo_pb2, echo_pb2_grpc
    from graylb.drain_middleware import AioDrainServerInterceptor, DrainServerInterceptor
    from graylb.testing.grpc_server import serve_echo

    drain = Drain(grace=0)
    interceptor = AioDrainServerInterceptor(drain) if aio else DrainServerInterceptor(drain)
    server = serve_echo("orders", "1.0.0", aio=aio, interceptors=[interceptor])
    try:
        with grpc.insecure_channel(server.address) as plain:
            stub = echo_pb2_grpc.EchoStub(plain)
            assert stub.Say(echo_pb2.SayRequest(text="x")).text
            assert drain.in_flight == 0  # counted while it ran, released after
            drain.drain()
            with pytest.raises(grpc.RpcError) as refused:
                stub.Say(echo_pb2.SayRequest(text="x"))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert (DRAIN_HEADER, "1") in tuple(refused.value.trailing_metadata())
    finally:
        server.stop()


def test_a_grpc_server_refusing_connections_is_out_of_picks_at_once() -> None:
    from graylb._proto.graylb.demo.v1 import echo_pb2
    from graylb.testing.grpc_server import serve_echo

    gone, staying = serve_echo("orders", "1.0.0"), serve_echo("orders", "1.0.0")
    gone.stop()  # nothing listens at its port any more
    try:
        channel, stub = grpc_pair(("gone", gone), ("staying", staying))
        served = [stub.Say.with_call(echo_pb2.SayRequest(text=f"r{i}"))[1].graylb for i in range(30)]
        assert {s.instance for s in served} == {"staying"}
        assert sum(s.attempts for s in served) <= 31  # refused once, then never picked again
        channel.close()
    finally:
        staying.stop()


@pytest.mark.parametrize("aio", [False, True], ids=["grpc-server", "grpc-aio-server"])
def test_a_streamed_grpc_response_is_in_flight_until_its_last_message(aio: bool) -> None:
    import grpc

    from graylb._proto.graylb.demo.v1 import echo_pb2, echo_pb2_grpc
    from graylb.drain_middleware import AioDrainServerInterceptor, DrainServerInterceptor
    from graylb.testing.grpc_server import serve_echo

    drain = Drain(grace=0, timeout=10)
    interceptor = AioDrainServerInterceptor(drain) if aio else DrainServerInterceptor(drain)
    server = serve_echo("orders", "1.0.0", aio=aio, interceptors=[interceptor])
    try:
        with grpc.insecure_channel(server.address) as plain:
            stream = echo_pb2_grpc.EchoStub(plain).Count(echo_pb2.CountRequest(count=3, interval_ms=50))
            first = next(stream)
            wait_until(lambda: drain.in_flight == 1)
            results: list[Any] = []
            drainer = threading.Thread(target=lambda: results.append(drain.drain()))
            drainer.start()
            wait_until(lambda: drain.state == REFUSING)
            rest = list(stream)  # the stream in flight runs to its end while the drain waits
            drainer.join(10)
        assert [first.seq, *(r.seq for r in rest)] == [0, 1, 2]
        assert results[0].clean and drain.state == DRAINED
    finally:
        server.stop()


# -- warm-up over real servers ---------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


WARMUP_RULES = {"services": {"orders": {"warmup": {"window": "100s", "min_share": 0.1}}}}


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_a_new_instance_warms_up_over_real_servers(transport: str, backends: list[Backend]) -> None:
    import random

    from graylb._proto.graylb.demo.v1 import echo_pb2, echo_pb2_grpc
    from graylb.testing.grpc_server import serve_echo
    from graylb.transports.grpc import GrayChannel

    random.seed(3)  # the picks draw from random.random: the same draws every run
    clock = FakeClock()
    if transport == "http":
        servers = [Backend(n) for n in ("a", "b", "new")]
        backends += servers
        addresses = [(s.name, s.server.port) for s in servers]
    else:
        echo = {n: serve_echo("orders", "1.0.0") for n in ("a", "b", "new")}
        addresses = [(n, s.port) for n, s in echo.items()]
    static = graylb.StaticDiscovery(
        {"orders": [{"host": "127.0.0.1", "port": p, "version": "1.0.0", "id": n} for n, p in addresses[:2]]}
    )
    balancer = graylb.Balancer(static, WARMUP_RULES, clock=clock)
    if transport == "http":
        client = httpx.Client(transport=graylb.GrayTransport(balancer), timeout=10)

        def served_by() -> str:
            return client.get("http://orders/").extensions["graylb"].instance
    else:
        channel = GrayChannel(balancer, "orders")
        stub = echo_pb2_grpc.EchoStub(channel)

        def served_by() -> str:
            return stub.Say.with_call(echo_pb2.SayRequest(text="x"))[1].graylb.instance

    try:
        served_by()
        name, port = addresses[2]
        static.add({"host": "127.0.0.1", "port": port, "version": "1.0.0", "id": name}, "orders")
        shares = []
        for elapsed in (0, 50, 100):
            clock.now = 1000.0 + elapsed
            picks = Counter(served_by() for _ in range(1500))
            shares.append(picks["new"] / 1500)
        # weight share 0.1 -> 4.8 % of calls, 0.5 -> 20 %, 1 -> 33 %
        assert shares == [pytest.approx(x, abs=0.03) for x in (0.1 / 2.1, 0.5 / 2.5, 1 / 3)]
    finally:
        if transport == "http":
            client.close()
        else:
            channel.close()
            for s in echo.values():
                s.stop()


def test_graylb_drain_from_the_command_line(backends: list[Backend], capsys: pytest.CaptureFixture[str]) -> None:
    from graylb.cli import main

    a, b = Backend("a", Drain(grace=0)), Backend("b")
    backends += [a, b]
    assert main(["drain", a.server.url]) == 0
    assert "drained: True in" in capsys.readouterr().out and a.drain.state == DRAINED
    assert main(["drain", b.server.url, "--path", "/elsewhere"]) == 2  # the app's own 200 is no drain answer
    assert "not a graylb drain hook" in capsys.readouterr().err and b.drain.state == "serving"
