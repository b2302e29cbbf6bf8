"""Gray channel vs a plain grpc channel to one server, unary, sync and aio (target: >= 90 % of
plain throughput); sub-channel count and memory with 100 instances.

    python benchmarks/grpc_overhead.py [--quick]

The echo server runs in a child process. "plain" is grpc.insecure_channel(server); "graylb" is
GrayChannel(balancer, "orders") with a sticky 95/5 split whose subsets both point at that server.
"""

from __future__ import annotations

import asyncio
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import grpc
from _util import InChildProcess, machine, median, table

import graylb
from graylb._proto.graylb.demo.v1 import echo_pb2, echo_pb2_grpc
from graylb.transports.grpc import AioGrayChannel, GrayChannel

RULES = {
    "services": {
        "orders": {
            "subsets": {"stable": {"version": "^1"}, "canary": {"version": "^2"}},
            "default": "stable",
            "routes": [
                {
                    "name": "split",
                    "to": [{"subset": "canary", "weight": 5}, {"subset": "stable", "weight": 95}],
                    "sticky": {"header": "x-user-id"},
                }
            ],
        }
    }
}


class _Served:
    def __init__(self) -> None:
        from graylb.testing.grpc_server import serve_echo

        self._server = serve_echo("orders", "1.0.0")
        self.url = self._server.address

    def stop(self) -> None:
        self._server.stop()


def start_server() -> _Served:
    return _Served()


def sync_round(stub, n: int) -> float:
    req = echo_pb2.SayRequest(text="x")
    t0 = time.perf_counter()
    for i in range(n):
        stub.Say(req, metadata=(("x-user-id", f"u{i}"),), timeout=5)
    return n / (time.perf_counter() - t0)


async def aio_round(stub, n: int, concurrency: int = 8) -> float:
    req = echo_pb2.SayRequest(text="x")

    async def worker(count: int) -> None:
        for i in range(count):
            await stub.Say(req, metadata=(("x-user-id", f"u{i}"),), timeout=5)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(n // concurrency) for _ in range(concurrency)))
    return n // concurrency * concurrency / (time.perf_counter() - t0)


def rss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main() -> None:
    quick = "--quick" in sys.argv
    n, rounds = (300, 3) if quick else (2000, 7)
    rows = []
    with InChildProcess(start_server) as server:
        host, port = server.url.rsplit(":", 1)
        registry = graylb.StaticDiscovery(
            {
                "orders": [
                    {"host": host, "port": int(port), "version": "1.0.0", "id": "v1"},
                    {"host": host, "port": int(port), "version": "2.0.0", "id": "v2"},
                ]
            }
        )
        balancer = graylb.Balancer(registry, RULES)
        with grpc.insecure_channel(server.url) as plain_ch, GrayChannel(balancer, "orders") as gray_ch:
            plain, gray = echo_pb2_grpc.EchoStub(plain_ch), echo_pb2_grpc.EchoStub(gray_ch)
            sync_round(plain, 100), sync_round(gray, 100)
            p, g = [], []
            for r in range(rounds):  # alternate which goes first, so drift favours neither
                if r % 2:
                    g.append(sync_round(gray, n))
                    p.append(sync_round(plain, n))
                else:
                    p.append(sync_round(plain, n))
                    g.append(sync_round(gray, n))
            rows.append(["sync unary", f"{median(p):.0f}", f"{median(g):.0f}", f"{median(g) / median(p):.1%}"])

        async def run_aio() -> None:
            async with grpc.aio.insecure_channel(server.url) as plain_ch, AioGrayChannel(balancer, "orders") as gray_ch:
                plain, gray = echo_pb2_grpc.EchoStub(plain_ch), echo_pb2_grpc.EchoStub(gray_ch)
                await aio_round(plain, 96), await aio_round(gray, 96)
                p, g = [], []
                for r in range(rounds):
                    if r % 2:
                        g.append(await aio_round(gray, n))
                        p.append(await aio_round(plain, n))
                    else:
                        p.append(await aio_round(plain, n))
                        g.append(await aio_round(gray, n))
                rows.append(
                    ["aio unary (8 concurrent)", f"{median(p):.0f}", f"{median(g):.0f}", f"{median(g) / median(p):.1%}"]
                )

        asyncio.run(run_aio())
        print(
            table(
                f"gRPC unary throughput, RPCs/s, {n} RPCs x {rounds} rounds ({machine()})",
                ["mode", "plain channel", "GrayChannel", "graylb / plain"],
                rows,
            )
        )

        # 100 instances (all the same server, distinct ids): one sub-channel each.
        many = graylb.StaticDiscovery(
            {"orders": [{"host": host, "port": int(port), "version": "1.0.0", "id": f"i{k}"} for k in range(100)]}
        )
        before = rss_kb()
        with GrayChannel(
            graylb.Balancer(many, {"services": {"orders": {"load_balancer": "round_robin"}}}), "orders"
        ) as ch:
            stub = echo_pb2_grpc.EchoStub(ch)
            for _ in range(200):
                stub.Say(echo_pb2.SayRequest(text="x"), timeout=5)
            count, after = ch.subchannel_count, rss_kb()
        print(
            table(
                "GrayChannel with 100 instances, 200 round-robin RPCs",
                ["measure", "value"],
                [
                    ["sub-channels", str(count)],
                    [
                        "max RSS growth",
                        f"{after - before} kB ({(after - before) / max(count, 1):.0f} kB per sub-channel)",
                    ],
                ],
            )
        )


if __name__ == "__main__":
    main()
