"""A lane and a pin survive HTTP -> gRPC -> HTTP: gateway (WSGI) -> orders (gRPC) -> inventory (WSGI)."""

from __future__ import annotations

import json
from concurrent import futures

import grpc
import httpx

import graylb
from graylb._proto.graylb.demo.v1 import echo_pb2, echo_pb2_grpc
from graylb.testing.http_server import serve_wsgi
from graylb.transports.grpc import GrayChannel
from graylb.transports.grpc_interceptors import GrayServerInterceptor
from tests.conftest import version_app


class OrdersServicer(echo_pb2_grpc.EchoServicer):
    """orders over gRPC: answers with inventory's reply (fetched over HTTP through graylb)."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client

    def Say(self, request, context):
        inventory = self.client.get("http://inventory/x").json()
        return echo_pb2.SayReply(
            service="orders", version="1.0.0", seen_lane=graylb.current().lane or "", text=json.dumps(inventory)
        )


def test_lane_and_pin_cross_http_grpc_http() -> None:
    registry = graylb.StaticDiscovery()
    balancer = graylb.Balancer(registry, services=["gateway", "orders", "inventory"])
    client = httpx.Client(transport=graylb.GrayTransport(balancer), timeout=5)
    servers = []
    inv = serve_wsgi(version_app("inventory", "3.1.0"))
    inv_lane = serve_wsgi(version_app("inventory", "3.2.0-dev", lane="feature-x"))
    servers += [inv, inv_lane]
    registry.add({"host": inv.host, "port": inv.port, "version": "3.1.0"}, service="inventory")
    registry.add(
        {"host": inv_lane.host, "port": inv_lane.port, "version": "3.2.0-dev", "lane": "feature-x"}, service="inventory"
    )

    grpc_server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8),
        interceptors=[GrayServerInterceptor()],
        options=[("grpc.so_reuseport", 0)],
    )
    echo_pb2_grpc.add_EchoServicer_to_server(OrdersServicer(client), grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    registry.add({"host": "127.0.0.1", "port": port, "version": "1.0.0"}, service="orders")
    channel = GrayChannel(balancer, "orders")
    stub = echo_pb2_grpc.EchoStub(channel)

    def gateway(environ, start_response):
        reply = stub.Say(echo_pb2.SayRequest(text="x"), timeout=5)
        start_response("200 OK", [("Content-Type", "application/json")])
        return [
            json.dumps(
                {
                    "gateway_lane": graylb.current().lane,
                    "orders_lane": reply.seen_lane,
                    "inventory": json.loads(reply.text),
                }
            ).encode()
        ]

    gw = serve_wsgi(graylb.GrayWSGIMiddleware(gateway))
    servers.append(gw)
    registry.add({"host": gw.host, "port": gw.port, "version": "1.0.0"}, service="gateway")
    try:
        plain = client.get("http://gateway/").json()
        with graylb.gray(lane="feature-x"):
            laned = client.get("http://gateway/").json()
        with graylb.gray(pins={"inventory": "3.1.0"}, lane="feature-x"):
            pinned = client.get("http://gateway/").json()
    finally:
        channel.close()
        grpc_server.stop(None)
        client.close()
        for s in servers:
            s.stop()
    assert plain["inventory"]["version"] == "3.1.0" and plain["orders_lane"] == ""
    assert laned["gateway_lane"] == "feature-x" and laned["orders_lane"] == "feature-x"
    assert laned["inventory"]["version"] == "3.2.0-dev" and laned["inventory"]["seen_lane"] == "feature-x"
    assert pinned["inventory"]["version"] == "3.1.0" and pinned["inventory"]["seen_pins"] == {"inventory": "3.1.0"}
