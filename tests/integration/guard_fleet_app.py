"""One process of test_guard_fleet.py: a Balancer whose rules come from a Consul KV key (with a
canary guard, ``action: rollback``) and whose orders instances are given on the command line.

    python guard_fleet_app.py CONSUL_URL KEY '{"stable-a": [host, port, version], ...}'

Reads commands from stdin, one per line, and answers each with one JSON line:
    send N     -> {"versions": {version: count}, "tripped": bool}   (N calls, one user each)
    status     -> {"tripped": bool, "routes": [route names in force]}
"""

from __future__ import annotations

import json
import sys
from collections import Counter

import httpx

import graylb
from graylb.consul import ConsulConfig, ConsulRuleSource


def main() -> int:
    url, key, instances = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    discovery = graylb.StaticDiscovery(
        {"orders": [{"id": k, "host": h, "port": p, "version": v} for k, (h, p, v) in instances.items()]}
    )
    rules = ConsulRuleSource(ConsulConfig(url), key, wait=1.0)
    balancer = graylb.Balancer(discovery, rules)
    client = httpx.Client(transport=graylb.GrayTransport(balancer), timeout=10)
    sent = 0
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        command = line.split()
        if not command:
            continue
        view = balancer.guard_view("orders")
        if command[0] == "send":
            versions: Counter[str] = Counter()
            for _ in range(int(command[1])):
                sent += 1
                r = client.get("http://orders/x", headers={"x-user-id": f"{id(balancer)}-{sent}"})
                versions[r.extensions["graylb"].version] += 1
            view = balancer.guard_view("orders")
            print(json.dumps({"versions": versions, "tripped": bool(view and view.trip)}), flush=True)
        elif command[0] == "status":
            service = balancer.rules.service("orders")
            routes = [r.name for r in service.routes] if service else []
            print(json.dumps({"tripped": bool(view and view.trip), "routes": routes}), flush=True)
    client.close()
    rules.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
