"""Consul: connection settings, serving-side registration and operator actions.

Discovery (``ConsulDiscovery``) and the KV rule source (``ConsulRuleSource``) live in
:mod:`graylb.discovery.consul` and :mod:`graylb.rules.consul_kv`.

Only :mod:`.config` is imported eagerly, so ``from graylb.consul.config import ...`` inside
discovery and rule sources never pulls in the router (no import cycles); the other names load
on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from .config import ConsulACLError, ConsulConfig, ConsulError, ConsulUnavailable, check_response

_LAZY = {
    "ConsulRegistration": ".registration",
    "ConsulKVStore": ".admin",
    "RuleStore": ".admin",
    "RuleConflict": ".admin",
}

__all__ = [
    "ConsulConfig",
    "ConsulError",
    "ConsulACLError",
    "ConsulUnavailable",
    "check_response",
    "ConsulRegistration",
    "ConsulKVStore",
    "RuleStore",
    "RuleConflict",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'graylb.consul' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
