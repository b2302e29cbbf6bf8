"""An in-process home for rules documents, where the operator actions work as they do on Consul
or Nacos: ``push`` / ``undo`` / ``rollback`` (what the ``graylb`` CLI runs) write to it, and
:meth:`MemoryRuleStore.rule_source` follows a key the way ``ConsulRuleSource`` follows a KV key::

    store = MemoryRuleStore()
    balancer = graylb.Balancer(registry, store.rule_source("graylb/rules"))
    push(store, "graylb/rules", canary_5_percent)    # graylb.admin.push
    rollback(store, "graylb/rules", "orders")        # all of orders' traffic to its default subset

For examples and tests: nothing leaves the process, every write applies before it returns.
"""

from __future__ import annotations

import threading
from typing import Any

from ..instance import Instance
from ..rules.sources import RuleSource

__all__ = ["MemoryRuleStore"]


class MemoryRuleStore:
    """A :class:`~graylb.admin.RuleStore` in memory; versions count writes per key."""

    def __init__(self) -> None:
        self._keys: dict[str, tuple[str, int]] = {}
        self._sources: dict[str, list[RuleSource]] = {}
        self._lock = threading.Lock()

    def describe(self, key: str) -> str:
        return f"in-memory key '{key}'"

    def get(self, key: str) -> tuple[str | None, int]:
        with self._lock:
            text, version = self._keys.get(key, (None, 0))
        return text, version

    def put(self, key: str, value: str) -> None:
        self._write(key, value, expected=None)

    def cas_put(self, key: str, value: str, version: Any) -> bool:
        return self._write(key, value, expected=version)

    def _write(self, key: str, value: str, expected: Any) -> bool:
        with self._lock:
            current = self._keys.get(key, (None, 0))[1]
            if expected is not None and current != expected:
                return False
            self._keys[key] = (value, current + 1)
            sources = list(self._sources.get(key, ()))
        for source in sources:  # a bad document is logged and refused there; the old rules stay
            source.apply(value, revision=str(current + 1), origin=self.describe(key))
        return True

    def instances(self, service: str) -> tuple[list[tuple[str, Instance]], list[str]]:
        return [], []  # rules only: `graylb status` needs a registry for instances

    def rule_source(self, key: str) -> RuleSource:
        """A rule source that takes every document written to ``key`` (starting with the one
        there now, if any)."""
        source = RuleSource(name=self.describe(key))
        text, version = self.get(key)
        if text is not None:
            source.apply(text, revision=str(version), origin=self.describe(key))
        with self._lock:
            self._sources.setdefault(key, []).append(source)
        return source
