"""GrayTransport vs plain httpx to the same loopback server, sync and async, in one run
(target: >= 90% of plain httpx throughput).

    python benchmarks/http_overhead.py [--quick]

One server on 127.0.0.1 (graylb.testing's keep-alive HTTP/1.1 server) in a child process, so
the client's own cost is what differs between the columns. "plain" sends to
http://127.0.0.1:PORT/, "graylb" to http://orders/ routed by a rules document with a sticky
95/5 split (both subsets on the same server, so the network part is identical). Short rounds
run interleaved, their order alternating (``_util.interleaved``), so drift hits both alike; each
figure is the median round with its distribution-free 95 % interval, and the ratio is also taken
round by round. graylb's own cost with the network taken out is ``own_cost.py``'s.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import httpx
from _util import InChildProcess, interleaved, machine, median, spread, table

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


def row(mode: str, results: dict[str, list[float]]) -> list[str]:
    ratios = [g / p for p, g in zip(results["plain"], results["graylb"])]  # round by round
    return [
        mode,
        spread(results["plain"], "{:.0f}"),
        spread(results["graylb"], "{:.0f}"),
        f"{median(results['graylb']) / median(results['plain']):.1%}",
        spread([100 * x for x in ratios], "{:.1f}%"),
    ]


def main() -> None:
    quick = "--quick" in sys.argv
    n, rounds = (300, 4) if quick else (1000, 21)
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
            variants = {
                "plain": lambda: sync_round(plain, plain_url, n),
                "graylb": lambda: sync_round(gray, gray_url, n),
            }
            interleaved(variants, 2)  # warm-up
            rows.append(row("sync", interleaved(variants, rounds)))

        async def run_async() -> None:
            async with (
                httpx.AsyncClient() as plain,
                httpx.AsyncClient(transport=graylb.AsyncGrayTransport(balancer)) as gray,
            ):
                variants = {"plain": (plain, plain_url), "graylb": (gray, gray_url)}
                results: dict[str, list[float]] = {name: [] for name in variants}
                for r in range(rounds + 2):  # interleaved by hand: the rounds are coroutines
                    order = list(variants) if r % 2 == 0 else list(reversed(variants))
                    for name in order:
                        rate = await async_round(*variants[name], n)
                        if r >= 2:  # the first two rounds warm up
                            results[name].append(rate)
                rows.append(row("async (8 concurrent)", results))

        asyncio.run(run_async())
    print(
        table(
            f"httpx throughput over loopback, requests/s, {rounds} interleaved rounds x {n} requests ({machine()})",
            ["mode", "plain httpx [95 %]", "GrayTransport [95 %]", "graylb / plain", "paired ratio [95 %]"],
            rows,
        )
    )


if __name__ == "__main__":
    main()
