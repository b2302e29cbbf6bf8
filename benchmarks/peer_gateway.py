"""graylb vs the gateway hop it removes: the same three upstreams called directly, through an nginx
"gray gateway", and through graylb, sync and async, interleaved in one run.

    python benchmarks/peer_gateway.py [--quick]

Three keep-alive HTTP/1.1 upstreams on 127.0.0.1 (graylb.testing's server), each in its own child
process, answer 200 "ok" with ``x-upstream: <name>``: v1a and v1b run 1.0.0 (stable), v2 runs
2.0.0 (canary). Three ways to reach them:

- **direct**: plain httpx to an upstream's own URL, rotating over the three -- no gray routing at
  all, the floor;
- **nginx**: plain httpx to an nginx on 127.0.0.1 (Debian's, from the cache ``make
  real-registries`` fills: scripts/real_registries.py, manifest key ``nginx``) doing the split the
  way an nginx canary does: ``split_clients`` on ``x-user-id`` (5 % canary), a ``map`` sending
  ``user-group: beta`` to the canary, an upstream block per version with upstream keep-alive
  (one worker process, no access log);
- **graylb**: httpx with graylb's transport to ``http://orders/``, a StaticDiscovery of the three
  and the same rules (beta -> canary, a sticky 95/5 split on ``x-user-id``, round robin).

Every request carries ``x-user-id: u<i>``, every 20th also ``user-group: beta``. Sync is one client
sending in sequence; async is 8 concurrent workers on one AsyncClient. All six variants run in
short rounds interleaved by ``_util.interleaved`` (the order rotates every round), so load from
elsewhere on the machine hits all alike. req/s is the median round with its distribution-free
95 % interval; "vs direct" is the ratio of medians; "+us/req" is, round by round (``paired``), the
wall time per request over direct's in the same round; p50 / p99 are over every request of the
run. Before measuring, 1,000 requests with distinct user ids go through nginx and graylb and the
canary's share (and that every beta request lands on the canary) is printed under the table: the
two do the same job. No timing is asserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import httpx
from _util import InChildProcess, interleaved, machine, median, paired, percentile, spread, table, wait_for

import graylb
from graylb.testing.http_server import serve_wsgi

REPO = Path(__file__).resolve().parent.parent
UPSTREAMS = {"v1a": "1.0.0", "v1b": "1.0.0", "v2": "2.0.0"}  # name (x-upstream) -> version
CANARY = {name for name, version in UPSTREAMS.items() if version.startswith("2")}
CONCURRENCY = 8
BETA_EVERY = 20

RULES = {
    "services": {
        "orders": {
            "subsets": {"stable": {"version": "^1"}, "canary": {"version": "^2"}},
            "default": "stable",
            "routes": [
                {"name": "beta", "match": [{"headers": {"user-group": "beta"}}], "to": [{"subset": "canary"}]},
                {
                    "name": "split",
                    "to": [{"subset": "canary", "weight": 5}, {"subset": "stable", "weight": 95}],
                    "sticky": {"header": "x-user-id"},
                },
            ],
            "load_balancer": "round_robin",  # as nginx's upstream blocks do
        }
    }
}


def upstream_app(name: str):
    headers = [("Content-Type", "text/plain"), ("x-upstream", name)]

    def app(environ, start_response):
        start_response("200 OK", headers)
        return [b"ok"]

    return app


def start_upstream(name: str):
    return serve_wsgi(upstream_app(name))


def request_headers(n: int, prefix: str = "u") -> list[dict[str, str]]:
    """Headers of requests 0..n-1: ``x-user-id: <prefix><i>``, every 20th with ``user-group: beta``."""
    out = []
    for i in range(n):
        h = {"x-user-id": f"{prefix}{i}"}
        if i % BETA_EVERY == BETA_EVERY - 1:
            h["user-group"] = "beta"
        out.append(h)
    return out


# ---------------------------------------------------------------------------------------- nginx


def nginx_from_cache() -> tuple[Path | None, str]:
    """(nginx binary, its version) from the real-registries manifest, or (None, why not)."""
    sys.path.insert(0, str(REPO))
    from scripts.real_registries import cache_dir

    path = cache_dir() / "manifest.json"
    try:
        entry = json.loads(path.read_text()).get("nginx") or {}
    except (OSError, ValueError):
        entry = {}
    binary = Path(entry.get("binary", ""))
    if entry.get("binary") and binary.is_file():
        return binary, str(entry.get("version", "?"))
    why = entry.get("unavailable") or entry.get("failed") or f"no nginx entry in {path}"
    return None, f"{why} (`make real-registries` fetches Debian's nginx)"


def nginx_conf(prefix: Path, port: int, stable: list[int], canary: list[int]) -> str:
    """A gray gateway as an nginx canary is written: split by user id, beta users to the canary."""
    servers = lambda ports: " ".join(f"server 127.0.0.1:{p};" for p in ports)  # noqa: E731
    return f"""\
daemon off;
master_process on;
worker_processes 1;
error_log {prefix}/error.log;
pid {prefix}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;

    split_clients "${{http_x_user_id}}" $by_user {{ 5% canary; * stable; }}
    map $http_user_group $target {{ beta canary; default $by_user; }}

    upstream stable {{ {servers(stable)} keepalive 32; }}
    upstream canary {{ {servers(canary)} keepalive 32; }}

    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://$target;
        }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    """SIGQUIT (graceful), then SIGTERM, then SIGKILL to nginx's process group (master + worker)."""
    for sig in (signal.SIGQUIT, signal.SIGTERM):
        if proc.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: the group is nginx's and nothing else
    proc.wait(5)


@contextlib.contextmanager
def nginx_gateway(binary: Path, stable: list[int], canary: list[int]) -> Iterator[str]:
    """nginx running ``nginx_conf`` in a temporary prefix; yields its URL once a request through it
    is answered; stopped on the way out, whatever happened."""
    with tempfile.TemporaryDirectory(prefix="graylb-bench-nginx-") as tmp:
        prefix = Path(tmp)
        os.chmod(prefix, 0o755)  # started as root, nginx's worker runs as nobody
        conf = prefix / "nginx.conf"
        port = free_port()
        conf.write_text(nginx_conf(prefix, port, stable, canary))
        url = f"http://127.0.0.1:{port}"
        with open(prefix / "stderr.log", "wb") as stderr:
            proc = subprocess.Popen(
                [str(binary), "-p", f"{prefix}/", "-c", str(conf)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
            )
        try:

            def last_words() -> str:
                logs = [prefix / "stderr.log", prefix / "error.log"]
                text = "".join(log.read_text(errors="replace") for log in logs if log.exists())
                lines = [line for line in text.splitlines() if line.strip()]
                return lines[-1] if lines else "nothing logged"

            def answers() -> bool:
                if proc.poll() is not None:
                    raise RuntimeError(f"nginx exited {proc.returncode}: {last_words()}")
                try:
                    return httpx.get(url, headers={"x-user-id": "probe"}, timeout=1).status_code == 200
                except httpx.TransportError:
                    return False

            try:
                wait_for(answers, 15)
            except TimeoutError:
                raise RuntimeError(f"no answer through nginx within 15 s: {last_words()}") from None
            yield url
        finally:
            _stop(proc)


# ------------------------------------------------------------------------------------ measuring


def sync_round(client: httpx.Client, urls: list[str], headers: list[dict[str, str]], samples: list[float]) -> float:
    """req/s of one sequential pass; each request's latency (s) appended to ``samples``."""
    get, clock = client.get, time.perf_counter
    t0 = clock()
    for url, h in zip(urls, headers):
        s = clock()
        r = get(url, headers=h)
        samples.append(clock() - s)
        if r.status_code != 200:
            raise RuntimeError(f"{url}: HTTP {r.status_code}")
    return len(urls) / (clock() - t0)


async def async_round(
    client: httpx.AsyncClient, urls: list[str], headers: list[dict[str, str]], samples: list[float]
) -> float:
    """req/s of the requests spread over ``CONCURRENCY`` workers on one client."""
    clock = time.perf_counter

    async def worker(k: int) -> None:
        for url, h in zip(urls[k::CONCURRENCY], headers[k::CONCURRENCY]):
            s = clock()
            r = await client.get(url, headers=h)
            samples.append(clock() - s)
            if r.status_code != 200:
                raise RuntimeError(f"{url}: HTTP {r.status_code}")

    t0 = clock()
    await asyncio.gather(*(worker(k) for k in range(CONCURRENCY)))
    return len(urls) / (clock() - t0)


def routing_check(client: httpx.Client, url: str, n: int = 1000) -> tuple[Counter[str], int, int]:
    """(upstreams that answered ``n`` requests with distinct user ids, beta requests, of those how
    many the canary answered)."""
    split = Counter(client.get(url, headers={"x-user-id": f"check-{i}"}).headers["x-upstream"] for i in range(n))
    beta = [client.get(url, headers={"x-user-id": f"beta-{i}", "user-group": "beta"}) for i in range(n // 10)]
    return split, len(beta), sum(r.headers["x-upstream"] in CANARY for r in beta)


def describe_check(name: str, check: tuple[Counter[str], int, int]) -> str:
    split, beta, beta_canary = check
    total = sum(split.values())
    canary = sum(split[c] for c in CANARY)
    by_upstream = ", ".join(f"{u} {split[u]}" for u in UPSTREAMS)
    return (
        f"{name}: {canary / total:.1%} of {total} distinct users on the canary ({by_upstream}); "
        f"user-group: beta -> canary {beta_canary}/{beta}"
    )


def main() -> None:
    quick = "--quick" in sys.argv
    n, rounds = (100, 4) if quick else (500, 20)
    nginx, nginx_version = nginx_from_cache()
    notes: list[str] = []
    with contextlib.ExitStack() as stack:
        ups = {name: stack.enter_context(InChildProcess(functools.partial(start_upstream, name))) for name in UPSTREAMS}
        stable = [ups[u].port for u in UPSTREAMS if u not in CANARY]
        canary = [ups[u].port for u in UPSTREAMS if u in CANARY]

        targets: dict[str, list[str]] = {"direct": [f"{ups[u].url}/" for u in UPSTREAMS]}
        if nginx is not None:
            try:
                targets["nginx"] = [stack.enter_context(nginx_gateway(nginx, stable, canary)) + "/"]
            except (OSError, RuntimeError) as exc:
                notes.append(f"nginx {nginx_version} did not start, left out: {exc}")
        else:
            notes.append(f"nginx left out: {nginx_version}")
        registry = graylb.StaticDiscovery(
            {
                "orders": [
                    {"host": ups[u].host, "port": ups[u].port, "version": v, "id": u} for u, v in UPSTREAMS.items()
                ]
            }
        )
        balancer = stack.enter_context(graylb.Balancer(registry, RULES))
        targets["graylb"] = ["http://orders/"]
        sync_clients = {
            "direct": httpx.Client(),
            "nginx": httpx.Client(),
            "graylb": httpx.Client(transport=graylb.GrayTransport(balancer)),
        }
        for client in sync_clients.values():
            stack.enter_context(client)
        loop = asyncio.new_event_loop()
        stack.callback(loop.close)
        async_clients = {
            "direct": httpx.AsyncClient(),
            "nginx": httpx.AsyncClient(),
            "graylb": httpx.AsyncClient(transport=graylb.AsyncGrayTransport(balancer)),
        }
        for client in async_clients.values():
            stack.callback(loop.run_until_complete, client.aclose())

        # the gateway does graylb's job: same split, beta users all on the canary
        checks = []
        for name in ("nginx", "graylb"):
            if name in targets:
                check = routing_check(sync_clients[name], targets[name][0])
                checks.append(describe_check(name, check))
                split, beta, beta_canary = check
                share = sum(split[c] for c in CANARY) / sum(split.values())
                if beta_canary != beta or not 0.02 <= share <= 0.09:
                    raise SystemExit(f"routing check failed, nothing measured: {checks[-1]}")

        headers = request_headers(n)
        samples: dict[str, list[float]] = {}
        variants: dict[str, Callable[[], float]] = {}
        for name, urls in targets.items():
            per_request = [urls[i % len(urls)] for i in range(n)]
            for mode in ("sync", "async"):
                key = f"{mode} {name}"
                samples[key] = []
                if mode == "sync":
                    variants[key] = functools.partial(
                        sync_round, sync_clients[name], per_request, headers, samples[key]
                    )
                else:
                    coro = functools.partial(async_round, async_clients[name], per_request, headers, samples[key])
                    variants[key] = lambda coro=coro: loop.run_until_complete(coro())
        interleaved(variants, 2)  # warm-up: connections open, code paths hot
        for xs in samples.values():
            xs.clear()
        results = interleaved(variants, rounds)

    rows = []
    for mode, label in (("sync", "sync (1 client)"), ("async", f"async ({CONCURRENCY} concurrent)")):
        base = results[f"{mode} direct"]
        for name in ("direct", "nginx", "graylb"):
            key = f"{mode} {name}"
            if key not in results:
                rows.append(["", name, "n/a", "", "", "", ""])
                continue
            xs, lat = results[key], samples[key]
            added = paired([1e6 / x for x in base], [1e6 / x for x in xs])
            rows.append(
                [
                    label if name == "direct" else "",
                    name,
                    spread(xs, "{:.0f}"),
                    f"{median(xs) / median(base):.0%}",
                    "-" if name == "direct" else spread(added, "{:+.0f}"),
                    f"{percentile(lat, 0.50) * 1e6:.0f}",
                    f"{percentile(lat, 0.99) * 1e6:.0f}",
                ]
            )
    paths = f"direct vs nginx {nginx_version} gray gateway vs graylb" if "nginx" in targets else "direct vs graylb"
    print(
        table(
            f"{paths}, req/s, {n} requests x {rounds} rounds interleaved ({machine()})",
            ["mode", "path", "req/s median [95 % CI]", "vs direct", "+us/req vs direct, paired", "p50 us", "p99 us"],
            rows,
        )
    )
    print("\nrouting check (before measuring):")
    for line in checks:
        print(f"  {line}")
    for line in notes:
        print(f"note: {line}")


if __name__ == "__main__":
    main()
