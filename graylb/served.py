"""The record of how one call was served (route, subset, instance, version, attempts).

Its own module so that telemetry, which records it, depends on this record only — not on the
call machinery that produces it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Served"]


class Served:
    """Which route, subset and instance served a call: ``response.extensions["graylb"]``.

    ``instance`` is the instance id, ``address`` its ``host:port``; ``attempts`` counts tries
    (1 = no retry); ``fallback_from`` names the empty subset when the fallback policy applied.
    A slotted class, not a frozen dataclass: one is built per call.
    """

    __slots__ = ("service", "route", "subset", "instance", "address", "version", "lane", "attempts", "fallback_from")

    def __init__(
        self,
        service: str,
        route: str,
        subset: str,
        instance: str,
        address: str,
        version: str | None,
        lane: str | None,
        attempts: int,
        fallback_from: str | None = None,
    ) -> None:
        self.service = service
        self.route = route
        self.subset = subset
        self.instance = instance
        self.address = address
        self.version = version
        self.lane = lane
        self.attempts = attempts
        self.fallback_from = fallback_from

    def _fields(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Served) and other._fields() == self._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return "Served(" + ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__) + ")"
