"""GrayTransport vs plain httpx to the same loopback server, sync and async, in one run
(target: >= 90% of plain httpx throughput).

    python benchmarks/http_overhead.py [--quick]

One server on 127.0.0.1 (graylb.testing's keep-alive HTTP/1.1 server) in a child process, so
the client's own cost is what differs between the columns. "plain" sends to
http://127.0.0.1:PORT/, "graylb" to http://orders/ routed by a rules document with a sticky
95/5 split (both subsets on the same server, so the network part is identical). Rounds
alternate plain/graylb so drift hits both equally; the figure is the median round.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import httpx
from _util import InChildProcess, machine, median, table

import graylb
from graylb.testing.http_server import serve_wsgi

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


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def start_server():
    return serve_wsgi(app)


def sync_round(client: httpx.Client, url: str, n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        client.get(url, headers={"x-user-id": f"u{i}"})
    return n / (time.perf_counter() - t0)


async def async_round(client: httpx.AsyncClient, url: str, n: int, concurrency: int = 8) -> float:
    async def worker(count: int) -> None:
        for i in range(count):
            await client.get(url, headers={"x-user-id": f"u{i}"})

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(n // concurrency) for _ in range(concurrency)))
    return (n // concurrency * concurrency) / (time.perf_counter() - t0)


def main() -> None:
    quick = "--quick" in sys.argv
    n, rounds = (300, 3) if quick else (2000, 7)
    with InChildProcess(start_server) as server:
        registry = graylb.StaticDiscovery(
            {
                "orders": [
                    {"host": server.host, "port": server.port, "version": "1.0.0", "id": "v1"},
                    {"host": server.host, "port": server.port, "version": "2.0.0", "id": "v2"},
                ]
            }
        )
        balancer = graylb.Balancer(registry, RULES)
        plain_url, gray_url = f"{server.url}/", "http://orders/"
        rows = []

        with httpx.Client() as plain, httpx.Client(transport=graylb.GrayTransport(balancer)) as gray:
            sync_round(plain, plain_url, 100), sync_round(gray, gray_url, 100)
            p, g = [], []
            for r in range(rounds):  # alternate which goes first, so drift favours neither
                if r % 2:
                    g.append(sync_round(gray, gray_url, n))
                    p.append(sync_round(plain, plain_url, n))
                else:
                    p.append(sync_round(plain, plain_url, n))
                    g.append(sync_round(gray, gray_url, n))
            rows.append(["sync", f"{median(p):.0f}", f"{median(g):.0f}", f"{median(g) / median(p):.1%}"])

        async def run_async() -> None:
            async with (
                httpx.AsyncClient() as plain,
                httpx.AsyncClient(transport=graylb.AsyncGrayTransport(balancer)) as gray,
            ):
                await async_round(plain, plain_url, 96), await async_round(gray, gray_url, 96)
                p, g = [], []
                for r in range(rounds):
                    if r % 2:
                        g.append(await async_round(gray, gray_url, n))
                        p.append(await async_round(plain, plain_url, n))
                    else:
                        p.append(await async_round(plain, plain_url, n))
                        g.append(await async_round(gray, gray_url, n))
                rows.append(
                    ["async (8 concurrent)", f"{median(p):.0f}", f"{median(g):.0f}", f"{median(g) / median(p):.1%}"]
                )

        asyncio.run(run_async())

        # The same comparison without a network: a transport that answers at once. Not a
        # target, but it shows graylb's own per-request cost with nothing to hide it.
        canned = httpx.MockTransport(lambda request: httpx.Response(200, content=b"ok"))
        with (
            httpx.Client(transport=canned) as plain,
            httpx.Client(transport=graylb.GrayTransport(balancer, canned)) as gray,
        ):
            p = [sync_round(plain, plain_url, n) for _ in range(rounds)]
            g = [sync_round(gray, gray_url, n) for _ in range(rounds)]
            per_call = (1 / median(g) - 1 / median(p)) * 1e6
            rows.append(
                [
                    f"sync, no network (graylb adds {per_call:.0f} us/request)",
                    f"{median(p):.0f}",
                    f"{median(g):.0f}",
                    f"{median(g) / median(p):.1%}",
                ]
            )
    print(
        table(
            f"httpx throughput, requests/s, {n} requests x {rounds} rounds ({machine()})",
            ["mode", "plain httpx", "GrayTransport", "graylb / plain"],
            rows,
        )
    )


if __name__ == "__main__":
    main()
