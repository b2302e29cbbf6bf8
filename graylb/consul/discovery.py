"""Consul discovery: ``/v1/health/service/<name>?passing`` with blocking queries.

Follows Consul's blocking-query rules (api-docs/features/blocking): the index comes from
``X-Consul-Index``; an index that goes backwards resets to 0 (snapshot restore); an index
below 1 becomes 1 before blocking; the HTTP read timeout exceeds ``wait + wait/16``; the loop
is rate-limited and failures back off with jitter (in :class:`RegistryDiscovery`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx

from ..discovery.base import ServiceWatch
from ..discovery.registry import RegistryDiscovery, Warn, metadata_weight, translate_entries
from ..instance import MAX_WEIGHT, Health, Instance
from .client import ConsulACLError, ConsulConfig, ConsulError, blocking_get

__all__ = ["ConsulDiscovery", "instances_from_health"]

log = logging.getLogger("graylb.discovery")


class ConsulDiscovery(RegistryDiscovery):
    """Instances of each watched service, from Consul's health endpoint.

    ``ConsulDiscovery(ConsulConfig("http://127.0.0.1:8500", token=...), snapshot_dir=...)``.
    ``passing_only`` (default) asks Consul for instances whose checks all pass; ``wait`` is the
    blocking-query wait in seconds; ``tag`` restricts to instances with that tag.

    Connections: one blocking query holds one HTTP connection. Consul allows 200 connections
    per client IP by default (``limits.http_max_conns_per_client``), so at most
    ``max_connections`` queries run at once; with more watched services than that the wait is
    shortened so every service still gets its turn (see the README, "Scale").
    """

    name = "consul"

    def __init__(
        self,
        config: ConsulConfig | str | None = None,
        *,
        passing_only: bool = True,
        wait: float = 60.0,
        tag: str | None = None,
        max_connections: int = 150,
        **kwargs: Any,
    ) -> None:
        self.config = config if isinstance(config, ConsulConfig) else ConsulConfig.from_env(config)
        self.passing_only = passing_only
        self.wait = wait
        self.tag = tag
        self.max_connections = max_connections
        self._client: httpx.AsyncClient | None = None
        # Blocking queries may hold all but a few connections: first fetches (non-blocking)
        # always find one free, so a new service never queues behind 60 s waits.
        # Together the two never exceed max_connections, so no request ever queues inside
        # httpx's pool (whose queue behaves badly with hundreds of waiters).
        self._blocking_slots: asyncio.Semaphore | None = None
        self._quick_slots: asyncio.Semaphore | None = None
        self._warned_anonymous: set[str] = set()
        super().__init__(**kwargs)

    def namespace(self) -> str:
        return f"consul-{self.config.host}-{self.config.port}"

    def describe(self) -> str:
        return f"consul at {self.config.address}"

    def _client_on_loop(self) -> httpx.AsyncClient:
        if self._client is None:  # created on the background loop, which owns its connections
            self._client = self.config.async_client(self.max_connections)
        return self._client

    @property
    def blocking_slots(self) -> int:
        return max(1, self.max_connections - max(2, self.max_connections // 10))

    def _wait_now(self) -> float:
        """With more watched services than blocking slots, shorten the wait so the queries
        rotate and every service is refreshed at least every ``wait`` seconds or so."""
        watched = len(self._watches)
        if watched <= self.blocking_slots:
            return self.wait
        return max(1.0, self.wait * self.blocking_slots / watched)

    async def _fetch(self, watch: ServiceWatch, cursor: Any) -> tuple[list[Instance] | None, Any]:
        index = int(cursor or 0)
        params: dict[str, str] = {}
        if self.passing_only:
            params["passing"] = "1"
        if self.tag:
            params["tag"] = self.tag
        what = f"watching service '{watch.service}'"
        if self._blocking_slots is None or self._quick_slots is None:
            self._blocking_slots = asyncio.Semaphore(self.blocking_slots)
            self._quick_slots = asyncio.Semaphore(self.max_connections - self.blocking_slots)
        answer = await blocking_get(
            self._client_on_loop(),
            self.config,
            f"/v1/health/service/{quote(watch.service, safe='')}",
            index=index,
            wait=self._wait_now(),
            what=what,
            params=params,
            slot=self._blocking_slots if index > 0 else self._quick_slots,
        )
        next_cursor = answer.next_index
        if not answer.changed:
            return None, next_cursor  # the wait ran out with nothing new
        resp = answer.response
        entries = resp.json()
        if not isinstance(entries, list):
            raise ConsulError(f"Consul answered {what} with {type(entries).__name__}, not a list")
        if not entries and resp.headers.get("X-Consul-Results-Filtered-By-ACLs", "").lower() == "true":
            raise ConsulACLError(
                f"Consul hid every instance while {what}: the ACL token lacks service:read on '{watch.service}'", 403
            )
        # Consul answers the anonymous token 200 [] without saying it filtered anything, so an
        # empty list may mean "cannot see" rather than "none": say so once per service.
        if (
            not entries
            and not self.config.token
            and resp.headers.get("X-Consul-Default-Acl-Policy", "").lower() == "deny"
            and watch.service not in self._warned_anonymous
        ):
            self._warned_anonymous.add(watch.service)
            log.warning(
                "graylb: service '%s' has no instances visible to Consul's anonymous token (ACL default policy deny, "
                "no token configured): set CONSUL_HTTP_TOKEN or ConsulConfig(token=...) if it should have some",
                watch.service,
            )
        return instances_from_health(watch.service, entries, self.bad_entry), next_cursor

    async def _aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()


def instances_from_health(service: str, entries: list[Any], warn: Warn) -> list[Instance]:
    """Translate ``/v1/health/service`` entries (bad ones skipped or defaulted, with a warning)."""
    return translate_entries(service, entries, _instance, warn)


def _instance(service: str, entry: Mapping[str, Any], warn: Warn) -> Instance | None:
    svc = entry.get("Service") or {}
    node = entry.get("Node") or {}
    sid = str(svc.get("ID") or svc.get("Service") or "?")
    name = f"{sid} on node {node.get('Node', '?')}"
    host = svc.get("Address") or node.get("Address")  # empty service address: use the node's
    if not host:
        warn(service, name, "no address (neither Service.Address nor Node.Address); skipped")
        return None
    port = svc.get("Port")
    if not isinstance(port, int) or not 0 < port < 65536:
        warn(service, name, f"port {port!r} is not 1..65535; skipped")
        return None
    labels: dict[str, str] = {}
    for tag in svc.get("Tags") or ():  # "k=v" tags are a fallback for Meta
        if isinstance(tag, str) and "=" in tag:
            k, _, v = tag.partition("=")
            labels[k.strip()] = v.strip()
    for k, v in (svc.get("Meta") or {}).items():
        labels[str(k)] = str(v)
    version = labels.pop("version", None) or None
    lane = labels.pop("lane", None) or None
    weight = _weight(labels.pop("weight", None), svc.get("Weights"), service, name, warn)
    health = Health.PASSING
    for check in entry.get("Checks") or ():
        status = check.get("Status")
        if status == "critical":
            health = Health.CRITICAL
            break
        if status == "warning":
            health = Health.WARNING
    return Instance(
        service=service,
        host=str(host),
        port=port,
        version=version,
        weight=weight,
        lane=lane,
        labels=labels,
        health=health,
    )


def _weight(meta_weight: str | None, weights: Any, service: str, name: str, warn: Warn) -> int:
    """Meta ``weight`` (0..10000, 0 = no traffic) wins; else Consul's ``Weights.Passing``
    (1..65535, default 1) times 100, capped at 10000 — so an instance registered with default
    weights weighs the same as graylb's default instance weight (100)."""
    weight = metadata_weight(meta_weight, service, name, warn, "Weights.Passing")
    if weight is not None:
        return weight
    passing = (weights or {}).get("Passing", 1) if isinstance(weights, Mapping) else 1
    try:
        return max(0, min(MAX_WEIGHT, int(passing) * 100))
    except (TypeError, ValueError):
        warn(service, name, f"Weights.Passing {passing!r} is not a number; using 1")
        return 100
