"""Registries: where instances come from."""

from .base import Discovery, ServiceWatch, Snapshot
from .static import StaticDiscovery

__all__ = ["Discovery", "ServiceWatch", "Snapshot", "StaticDiscovery"]
