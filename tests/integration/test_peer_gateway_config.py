"""benchmarks/peer_gateway.py compares like with like: its nginx gateway and its graylb rules route
the same way (about 5 % of distinct users on the canary, beta users all on it), and its nginx is
stopped when the benchmark is done. nginx is Debian's from the real-registries cache; without
it the nginx test is skipped."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import graylb
from graylb.testing.http_server import WSGIServer, serve_wsgi

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench() -> Any:
    spec = importlib.util.spec_from_file_location("graylb_peer_gateway", REPO / "benchmarks" / "peer_gateway.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def upstreams(bench: Any) -> Iterator[dict[str, WSGIServer]]:
    servers = {name: serve_wsgi(bench.upstream_app(name)) for name in bench.UPSTREAMS}
    yield servers
    for server in servers.values():
        server.stop()


def assert_gray_split(bench: Any, check: tuple[Any, int, int]) -> None:
    split, beta, beta_canary = check
    canary = sum(split[c] for c in bench.CANARY)
    assert 0.02 <= canary / sum(split.values()) <= 0.09, split
    assert all(split[u] > 300 for u in bench.UPSTREAMS if u not in bench.CANARY), split  # both stable ones serve
    assert beta_canary == beta > 0


def test_graylb_rules_route_like_a_gray_gateway(bench: Any, upstreams: dict[str, WSGIServer]) -> None:
    registry = graylb.StaticDiscovery(
        {
            "orders": [
                {"host": s.host, "port": s.port, "version": bench.UPSTREAMS[name], "id": name}
                for name, s in upstreams.items()
            ]
        }
    )
    with graylb.Balancer(registry, bench.RULES) as balancer:
        with httpx.Client(transport=graylb.GrayTransport(balancer)) as client:
            assert_gray_split(bench, bench.routing_check(client, "http://orders/"))


def test_nginx_gateway_splits_the_same_and_stops(bench: Any, upstreams: dict[str, WSGIServer]) -> None:
    binary, why = bench.nginx_from_cache()
    if binary is None:
        pytest.skip(f"nginx: {why}")
    stable = [s.port for name, s in upstreams.items() if name not in bench.CANARY]
    canary = [s.port for name, s in upstreams.items() if name in bench.CANARY]
    with bench.nginx_gateway(binary, stable, canary) as url, httpx.Client() as client:
        assert_gray_split(bench, bench.routing_check(client, url + "/"))
    with pytest.raises(httpx.TransportError):
        httpx.get(url + "/", timeout=2)  # nginx is gone once the benchmark is done with it
