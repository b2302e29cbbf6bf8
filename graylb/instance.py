"""The immutable :class:`Instance`: one running copy of a service, as a registry describes it."""

from __future__ import annotations

import dataclasses
import enum
import types
from collections.abc import Mapping
from typing import Any

import semantic_version

from .versioning import parse_version

__all__ = ["Instance", "Health", "MAX_WEIGHT"]

MAX_WEIGHT = 10000
_EMPTY: Mapping[str, str] = types.MappingProxyType({})


class Health(str, enum.Enum):
    PASSING = "passing"
    WARNING = "warning"
    CRITICAL = "critical"


@dataclasses.dataclass(frozen=True, eq=False, slots=True)
class Instance:
    """One instance of ``service`` reachable at ``host:port``.

    ``version`` is the raw registry string (``semver`` is its parsed form, or None when it is not
    semver); ``weight`` is 0..10000 and 0 means "receives no traffic"; ``lane`` marks a full-link
    gray lane; ``labels`` holds every other metadata key. Instances compare and hash by ``id``.
    """

    service: str
    host: str
    port: int
    version: str | None = None
    weight: int = 100
    lane: str | None = None
    labels: Mapping[str, str] = dataclasses.field(default_factory=lambda: _EMPTY)
    health: Health = Health.PASSING
    id: str = ""
    semver: semantic_version.Version | None = dataclasses.field(default=None, repr=False)
    #: ``host:port``, bracketing IPv6 hosts. Worked out once here: every call's served record
    #: carries it.
    address: str = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "address", f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        )
        if not self.id:
            object.__setattr__(self, "id", f"{self.service}@{self.host}:{self.port}")
        if not isinstance(self.labels, types.MappingProxyType):
            object.__setattr__(self, "labels", types.MappingProxyType(dict(self.labels)))
        if self.semver is None and self.version:
            object.__setattr__(self, "semver", parse_version(self.version))
        if not 0 <= self.weight <= MAX_WEIGHT:
            raise ValueError(f"instance {self.id}: weight {self.weight} outside 0..{MAX_WEIGHT}")
        if not 0 < self.port < 65536:
            raise ValueError(f"instance {self.id}: port {self.port} outside 1..65535")

    def label(self, name: str) -> str | None:
        """A metadata value; ``version`` and ``lane`` are answered too."""
        if name == "version":
            return self.version
        if name == "lane":
            return self.lane
        return self.labels.get(name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Instance) and other.id == self.id and other._state() == self._state()

    def __hash__(self) -> int:
        return hash(self.id)

    def _state(self) -> tuple[Any, ...]:
        return (
            self.host,
            self.port,
            self.version,
            self.weight,
            self.lane,
            tuple(sorted(self.labels.items())),
            self.health,
        )

    @classmethod
    def from_mapping(cls, service: str, data: Mapping[str, Any]) -> Instance:
        """Build from a plain mapping (static registry files, test fixtures).

        Known keys: host (or address "h:p"), port, version, weight, lane, health, id, and
        ``labels``/``metadata``; any other scalar key becomes a label.
        """
        original = dict(data)
        data = dict(data)
        host = data.pop("host", None)
        port = data.pop("port", None)
        address = data.pop("address", None)
        if address and (host is None or port is None):
            h, _, p = str(address).rpartition(":")
            host, port = host or h.strip("[]"), port or p
        if not host:
            raise ValueError(f"service '{service}': instance without host: {original!r}")
        try:
            port = int(port)
        except (TypeError, ValueError):
            raise ValueError(f"service '{service}': instance {host}: bad port {port!r}") from None
        # Both spellings may appear (a registry's metadata plus hand-written labels): keep both,
        # labels winning on a clash.
        metadata = dict(data.pop("metadata", None) or {})
        metadata.update(data.pop("labels", None) or {})
        labels = {str(k): str(v) for k, v in metadata.items()}
        version = data.pop("version", None) or labels.pop("version", None)
        lane = data.pop("lane", None) or labels.pop("lane", None)
        weight = data.pop("weight", 100)
        try:
            weight = int(weight)
        except (TypeError, ValueError):
            raise ValueError(f"service '{service}': instance {host}:{port}: bad weight {weight!r}") from None
        raw_health = data.pop("health", "passing")
        try:
            health = Health(str(raw_health).lower())
        except ValueError:
            known = ", ".join(h.value for h in Health)
            raise ValueError(
                f"service '{service}': instance {host}:{port}: bad health {raw_health!r} (known: {known})"
            ) from None
        inst_id = str(data.pop("id", "") or "")
        for k, v in data.items():
            if isinstance(v, (str, int, float, bool)):
                labels[str(k)] = str(v)
        return cls(
            service=service,
            host=str(host),
            port=port,
            version=str(version) if version is not None else None,
            weight=weight,
            lane=str(lane) if lane else None,
            labels=labels,
            health=health,
            id=inst_id,
        )
