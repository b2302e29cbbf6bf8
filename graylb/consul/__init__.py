"""Everything Consul, in one place: the wire (:mod:`.client`: address, ACL token header, TLS,
errors), discovery over blocking health queries (:mod:`.discovery`), rules in a KV key
(:mod:`.rules`), serving-side registration (:mod:`.registration`) and the KV rule store the
registry-neutral :mod:`graylb.admin` actions work on (:mod:`.store`)."""

from __future__ import annotations

from .client import ConsulACLError, ConsulConfig, ConsulError, ConsulUnavailable, check_response
from .discovery import ConsulDiscovery
from .registration import ConsulRegistration
from .rules import ConsulRuleSource
from .store import ConsulKVStore

__all__ = [
    "ConsulConfig",
    "ConsulError",
    "ConsulACLError",
    "ConsulUnavailable",
    "check_response",
    "ConsulDiscovery",
    "ConsulRuleSource",
    "ConsulRegistration",
    "ConsulKVStore",
]
