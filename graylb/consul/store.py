"""The :class:`~graylb.admin.RuleStore` on Consul: rules documents in KV (read, compare-and-set
write), a service's instances from the health API read exactly as :class:`ConsulDiscovery`
reads them. The registry-neutral actions (push / undo / rollback / status) are in
:mod:`graylb.admin`.
"""

from __future__ import annotations

from typing import Any

from ..admin import register_store
from ..errors import GraylbError
from ..instance import Instance
from .client import ConsulConfig, py_consul_call
from .discovery import instances_from_health

__all__ = ["ConsulKVStore"]


class ConsulKVStore:
    """A :class:`~graylb.admin.RuleStore` on Consul's KV store and health API, through py-consul
    (synchronous, token in the header; see :mod:`.client` for why this stack)."""

    def __init__(self, config: ConsulConfig) -> None:
        self.config = config
        self._consul = config.py_consul()

    def close(self) -> None:
        self._consul.http.session.close()

    def __enter__(self) -> ConsulKVStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self, key: str) -> str:
        return f"Consul KV key '{key}'"

    @staticmethod
    def _key(key: str) -> str:
        key = key.strip("/")
        if not key:
            raise GraylbError("the KV key must not be empty")
        return key

    def get(self, key: str) -> tuple[str | None, int]:
        what = f"reading KV key '{key}'"
        with py_consul_call(self.config, what):
            _, entry = self._consul.kv.get(self._key(key))
        if entry is None:
            return None, 0
        try:
            raw = entry.get("Value")
            return (raw.decode("utf-8") if raw else ""), int(entry["ModifyIndex"])
        except (ValueError, LookupError, TypeError, AttributeError) as exc:
            raise GraylbError(f"unexpected answer from Consul while {what}: {_short(exc)}") from None

    def put(self, key: str, value: str) -> None:
        what = f"writing KV key '{key}'"
        with py_consul_call(self.config, what):
            written = self._consul.kv.put(self._key(key), value.encode("utf-8"))
        if not written:
            raise GraylbError(f"Consul did not write KV key '{key}'")

    def cas_put(self, key: str, value: str, version: Any) -> bool:
        with py_consul_call(self.config, f"writing KV key '{key}'"):
            return bool(self._consul.kv.put(self._key(key), value.encode("utf-8"), cas=int(version or 0)))

    def instances(self, service: str) -> tuple[list[tuple[str, Instance]], list[str]]:
        what = f"listing instances of service '{service}'"
        with py_consul_call(self.config, what):
            _, entries = self._consul.health.service(service)
        problems: list[str] = []

        def warn(_service: str, name: str, problem: str) -> None:
            problems.append(f"{name}: {problem}")

        out = []
        for entry in entries or []:
            # Read exactly as ConsulDiscovery reads it, so the status is what the router sees.
            for inst in instances_from_health(service, [entry], warn):
                svc = entry.get("Service") or {}
                node = (entry.get("Node") or {}).get("Node")
                sid = str(svc.get("ID") or svc.get("Service") or "?")
                out.append((f"{node}/{sid}" if node else sid, inst))
        return out, problems


def _short(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text[:200]


register_store(ConsulConfig, ConsulKVStore)  # graylb.admin's actions then take a ConsulConfig too
