"""Everything Nacos, in one place: the wire (:mod:`.client`: address, namespace / group, TLS,
errors; :mod:`.auth`: login and access tokens), discovery by polling the instance list
(:mod:`.discovery`), rules in a config item watched by long polling (:mod:`.rules`),
serving-side registration with heartbeats (:mod:`.registration`) and the config rule store the
registry-neutral :mod:`graylb.admin` actions work on (:mod:`.store`)."""

from __future__ import annotations

from .auth import NacosAuth
from .client import (
    NacosAuthError,
    NacosConfig,
    NacosError,
    NacosUnavailable,
    check_response,
    content_md5,
    namespace_pair,
)
from .discovery import NacosDiscovery
from .registration import NacosRegistration
from .rules import NacosRuleSource
from .store import NacosConfigStore

__all__ = [
    "NacosConfig",
    "NacosError",
    "NacosAuthError",
    "NacosUnavailable",
    "check_response",
    "content_md5",
    "namespace_pair",
    "NacosAuth",
    "NacosDiscovery",
    "NacosRuleSource",
    "NacosRegistration",
    "NacosConfigStore",
]
