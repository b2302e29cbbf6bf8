"""Nacos: connection settings, authentication, serving-side registration and operator actions.

Discovery (``NacosDiscovery``) and the config rule source (``NacosRuleSource``) live in
:mod:`graylb.discovery.nacos` and :mod:`graylb.rules.nacos_config`.

Only :mod:`.config` and :mod:`.auth` are imported eagerly (both light: no router, no discovery),
so discovery and rule sources can import them without cycles; the other names load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from .auth import NacosAuth
from .config import NacosAuthError, NacosConfig, NacosError, NacosUnavailable, check_response, namespace_pair

_LAZY = {
    "NacosRegistration": ".registration",
    "NacosConfigStore": ".admin",
}

__all__ = [
    "NacosConfig",
    "NacosError",
    "NacosAuthError",
    "NacosUnavailable",
    "check_response",
    "namespace_pair",
    "NacosAuth",
    "NacosRegistration",
    "NacosConfigStore",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'graylb.nacos' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
