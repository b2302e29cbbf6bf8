"""Snapshots on disk, so a process that starts while its registry is down still routes.

One JSON file per (registry, service), written atomically (temp file, fsync, rename) each time
the instance set changes; read once when a service is first watched.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from ..instance import Health, Instance
from .base import Snapshot

__all__ = ["SnapshotStore"]

log = logging.getLogger("graylb.discovery")
_SAFE = re.compile(r"[^A-Za-z0-9._-]")
FORMAT = 1


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so a reader sees the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


class SnapshotStore:
    """``SnapshotStore(dir, namespace="consul-127.0.0.1-8500")``: save / load per service."""

    def __init__(self, directory: str | os.PathLike[str], namespace: str) -> None:
        self.directory = Path(directory)
        self.namespace = _SAFE.sub("_", namespace)

    def path(self, service: str) -> Path:
        return self.directory / f"{self.namespace}--{_SAFE.sub('_', service)}.json"

    def save(self, snapshot: Snapshot) -> None:
        doc = {
            "format": FORMAT,
            "service": snapshot.service,
            "fetched_at": snapshot.fetched_at,
            "source": snapshot.source,
            "instances": [_instance_doc(i) for i in snapshot.instances],
        }
        try:
            write_atomic(self.path(snapshot.service), json.dumps(doc, sort_keys=True).encode())
        except OSError as exc:  # a full disk must not break routing
            log.warning("graylb: cannot save snapshot of service '%s' to %s: %s", snapshot.service, self.directory, exc)

    def load(self, service: str) -> tuple[list[Instance], float] | None:
        """The saved instances and when the registry last confirmed them, or None."""
        path = self.path(service)
        try:
            doc = json.loads(path.read_bytes())
            if doc.get("format") != FORMAT or doc.get("service") != service:
                raise ValueError("not a graylb snapshot of this service")
            instances = [_instance_from(service, d) for d in doc["instances"]]
            return instances, float(doc["fetched_at"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("graylb: ignoring unreadable snapshot %s: %s", path, exc)
            return None


def _instance_doc(i: Instance) -> dict[str, Any]:
    return {
        "id": i.id,
        "host": i.host,
        "port": i.port,
        "version": i.version,
        "weight": i.weight,
        "lane": i.lane,
        "labels": dict(i.labels),
        "health": i.health.value,
    }


def _instance_from(service: str, d: dict[str, Any]) -> Instance:
    return Instance(
        service=service,
        host=str(d["host"]),
        port=int(d["port"]),
        version=d.get("version"),
        weight=int(d.get("weight", 100)),
        lane=d.get("lane"),
        labels=dict(d.get("labels") or {}),
        health=Health(d.get("health", "passing")),
        id=str(d.get("id") or ""),
    )
