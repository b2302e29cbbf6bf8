"""A registry you fill yourself: from a dict, a YAML/JSON file, or add/remove at run time."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..instance import Health, Instance
from .base import Discovery, ServiceWatch

__all__ = ["StaticDiscovery"]


class StaticDiscovery(Discovery):
    """In-memory registry. ``{"orders": [{"host": "127.0.0.1", "port": 8080, "version": "1.4.0"}]}``.

    Changes (:meth:`add`, :meth:`remove`, :meth:`set_health`, :meth:`set_instances`) publish a
    new snapshot at once; callers in flight keep the snapshot they already read.
    """

    name = "static"

    def __init__(self, services: Mapping[str, Iterable[Instance | Mapping[str, Any]]] | None = None) -> None:
        super().__init__()
        self._data: dict[str, dict[str, Instance]] = {}
        self._write_lock = threading.Lock()
        for service, items in (services or {}).items():
            self._data[service] = {i.id: i for i in (self._coerce(service, x) for x in items)}

    @classmethod
    def from_file(cls, path: str | Path) -> StaticDiscovery:
        """Load ``{service: [instance, ...]}`` (optionally under a top-level ``services:``)."""
        from ..rules.load import load_document

        doc = load_document(Path(path).read_text(), source=str(path))
        if isinstance(doc, dict) and "services" in doc and isinstance(doc["services"], dict):
            doc = doc["services"]
        if not isinstance(doc, dict):
            raise ValueError(f"{path}: expected a mapping of service name to instance list")
        return cls(doc)

    @staticmethod
    def _coerce(service: str, item: Instance | Mapping[str, Any]) -> Instance:
        if isinstance(item, Instance):
            if item.service != service:
                raise ValueError(f"instance {item.id} listed under service '{service}'")
            return item
        return Instance.from_mapping(service, item)

    def _start_watch(self, watch: ServiceWatch) -> None:
        watch.publish(self._data.get(watch.service, {}).values(), source=self.name)

    def _changed(self, service: str) -> None:
        watch = self._watches.get(service)
        if watch is not None:
            watch.publish(self._data.get(service, {}).values(), source=self.name)

    def add(self, instance: Instance | Mapping[str, Any], service: str | None = None) -> Instance:
        service = service or (instance.service if isinstance(instance, Instance) else None)
        if not service:
            raise ValueError("add(): name the service, or pass an Instance")
        inst = self._coerce(service, instance)
        with self._write_lock:
            self._data.setdefault(service, {})[inst.id] = inst
            self._changed(service)
        return inst

    def _find(self, instance: Instance | str, service: str | None) -> tuple[str, str]:
        """(service, id) of an Instance, an instance id, or ``host:port`` (with ``service``)."""
        if isinstance(instance, Instance):
            return instance.service, instance.id
        services = [service] if service else list(self._data)
        for svc in services:
            entries = self._data.get(svc, {})
            if instance in entries:
                return svc, instance
            for inst in entries.values():
                if inst.address == instance or f"{inst.host}:{inst.port}" == instance:
                    return svc, inst.id
        if service:
            raise KeyError(
                f"service '{service}': no instance {instance if '@' in instance else f'{service}@{instance}'}"
            )
        raise KeyError(f"no instance {instance} in any service")

    def remove(self, instance: Instance | str, service: str | None = None) -> None:
        """Remove by Instance, by id, or by ``host:port``."""
        with self._write_lock:
            svc, key = self._find(instance, service)
            if self._data.get(svc, {}).pop(key, None) is None:
                raise KeyError(f"service '{svc}': no instance {key}")
            self._changed(svc)

    def set_health(self, instance: Instance | str, health: Health | str, service: str | None = None) -> None:
        import dataclasses

        with self._write_lock:
            svc, key = self._find(instance, service)
            self._data[svc][key] = dataclasses.replace(self._data[svc][key], health=Health(health))
            self._changed(svc)

    def set_instances(self, service: str, instances: Iterable[Instance | Mapping[str, Any]]) -> None:
        with self._write_lock:
            self._data[service] = {i.id: i for i in (self._coerce(service, x) for x in instances)}
            self._changed(service)

    def instances(self, service: str) -> list[Instance]:
        return list(self._data.get(service, {}).values())
