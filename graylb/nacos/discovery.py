"""Nacos discovery: the Open API instance list (v1 ``/v1/ns/instance/list`` or v2
``/v2/ns/instance/list``), polled on a short interval; a snapshot is swapped only when the
content changed.

Nacos's *protection threshold*: when too many instances are unhealthy the server answers with
``reachProtectionThreshold: true`` and returns every instance, dead ones marked healthy. graylb
does not route to that list: it keeps its last good snapshot and says so (a failed refresh, so
the watch shows it as stale with the reason).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Mapping
from typing import Any

import httpx

from ..discovery.base import ServiceWatch
from ..discovery.registry import RegistryDiscovery, Warn, metadata_weight, translate_entries
from ..instance import MAX_WEIGHT, Health, Instance
from .auth import NacosAuth
from .client import NacosConfig, NacosError, check_response

__all__ = ["NacosDiscovery", "ProtectionThresholdReached", "instances_from_hosts"]

log = logging.getLogger("graylb.discovery")


class ProtectionThresholdReached(NacosError):
    """Nacos returned every instance because too many are unhealthy; not routable."""


class NacosDiscovery(RegistryDiscovery):
    """Instances of each watched service, from a Nacos server.

    ``NacosDiscovery(NacosConfig("http://127.0.0.1:8848", username=..., password=...),
    refresh_interval=1.0)``; namespace, group, clusters and API version come from the config.
    """

    name = "nacos"

    def __init__(
        self,
        config: NacosConfig | str | None = None,
        *,
        refresh_interval: float = 1.0,
        healthy_only: bool = False,
        **kwargs: Any,
    ) -> None:
        self.config = config if isinstance(config, NacosConfig) else NacosConfig.from_env(config)
        self.refresh_interval = refresh_interval
        self.healthy_only = healthy_only
        self.auth = NacosAuth(self.config)
        self._client: httpx.AsyncClient | None = None
        super().__init__(**kwargs)

    def namespace(self) -> str:
        c = self.config
        return f"nacos-{c.address.split('://', 1)[-1]}-{c.namespace}-{c.group}"

    def describe(self) -> str:
        return f"nacos at {self.config.address}"

    async def _fetch(self, watch: ServiceWatch, cursor: Any) -> tuple[list[Instance] | None, Any]:
        if cursor is not None:
            await asyncio.sleep(self.refresh_interval)
        if self._client is None:
            self._client = self.config.async_client()
        c = self.config
        params: dict[str, str] = {
            "serviceName": watch.service,
            "groupName": c.group,
            "namespaceId": c.namespace,
            "healthyOnly": "true" if self.healthy_only else "false",
        }
        if c.clusters:
            params["clusterName" if c.api_version == "v2" else "clusters"] = ",".join(c.clusters)
        what = f"listing instances of service '{watch.service}'"
        resp = await self.auth.arequest(self._client, "GET", f"/{c.api_version}/ns/instance/list", params=params)
        check_response(resp, what)
        body = resp.json()
        data = body.get("data") if c.api_version == "v2" else body
        if not isinstance(data, Mapping):
            raise NacosError(f"Nacos answered {what} with an unexpected body")
        if data.get("reachProtectionThreshold"):
            raise ProtectionThresholdReached(
                f"Nacos reached the protection threshold for service '{watch.service}' (too many unhealthy "
                "instances, all returned); keeping the last good snapshot"
            )
        hosts = data.get("hosts") or []
        digest = hashlib.sha1(json.dumps(hosts, sort_keys=True, default=str).encode()).hexdigest()
        if digest == cursor:
            return None, digest
        return instances_from_hosts(watch.service, hosts, self.bad_entry), digest

    async def _aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()


def instances_from_hosts(service: str, hosts: list[Any], warn: Warn) -> list[Instance]:
    """Translate Nacos ``hosts``: disabled instances left out, unhealthy ones marked critical,
    bad ones skipped or defaulted with a warning."""
    return translate_entries(service, hosts, _instance, warn)


def _instance(service: str, host: Mapping[str, Any], warn: Warn) -> Instance | None:
    ip, port = host.get("ip"), host.get("port")
    name = str(host.get("instanceId") or f"{ip}#{port}")
    if host.get("enabled") is False:
        return None
    if not ip:
        warn(service, name, "no ip; skipped")
        return None
    if not isinstance(port, int) or not 0 < port < 65536:
        warn(service, name, f"port {port!r} is not 1..65535; skipped")
        return None
    labels = {str(k): str(v) for k, v in (host.get("metadata") or {}).items()}
    version = labels.pop("version", None) or None
    lane = labels.pop("lane", None) or None
    weight = _weight(labels.pop("weight", None), host.get("weight", 1.0), service, name, warn)
    health = Health.PASSING if host.get("healthy", True) is not False else Health.CRITICAL
    return Instance(
        service=service,
        host=str(ip),
        port=port,
        version=version,
        weight=weight,
        lane=lane,
        labels=labels,
        health=health,
    )


def _weight(meta_weight: str | None, nacos_weight: Any, service: str, name: str, warn: Warn) -> int:
    """Metadata ``weight`` (0..10000) wins; else Nacos's weight (a double, default 1.0) times
    100, capped at 10000 — the default registration weighs 100, like graylb's default."""
    weight = metadata_weight(meta_weight, service, name, warn, "the Nacos weight")
    if weight is not None:
        return weight
    try:
        return max(0, min(MAX_WEIGHT, round(float(nacos_weight) * 100)))
    except (TypeError, ValueError):
        warn(service, name, f"weight {nacos_weight!r} is not a number; using 1.0")
        return 100
