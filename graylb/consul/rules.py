"""Rules from a Consul KV key, watched with blocking queries; a change applies in milliseconds.

A bad document (invalid YAML, a schema error) is rejected and the rules in force stay; so do
they when the key disappears or Consul is unreachable. ``snapshot_dir`` keeps the last good
document on disk so a process that starts during a Consul outage still has its rules.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx

from ..rules.watched import WatchedRuleSource
from .client import ConsulConfig, ConsulError, blocking_get

__all__ = ["ConsulRuleSource"]

log = logging.getLogger("graylb.rules")


class ConsulRuleSource(WatchedRuleSource):
    """``ConsulRuleSource(ConsulConfig(...), key="graylb/rules")``.

    The constructor waits up to ``initial_timeout`` seconds for the first answer, so a
    balancer built right after it starts with the rules in force. ``revision`` of the
    compiled rules is the key's ModifyIndex.
    """

    def __init__(
        self,
        config: ConsulConfig | str | None,
        key: str,
        *,
        wait: float = 60.0,
        initial_timeout: float = 5.0,
        snapshot_dir: str | None = None,
    ) -> None:
        self.config = config if isinstance(config, ConsulConfig) else ConsulConfig.from_env(config)
        self.key = key.strip("/")
        if not self.key:
            raise ValueError("ConsulRuleSource: key must not be empty")
        self.wait = wait
        self.modify_index: int | None = None
        self._client: httpx.AsyncClient | None = None
        snapshot_name = f"rules-consul-{self.config.host}-{self.config.port}-{self.key.replace('/', '_')}.yaml"
        super().__init__(name=f"consul kv {self.key}", snapshot_dir=snapshot_dir, snapshot_name=snapshot_name)
        self._start(initial_timeout)

    def writer(self) -> tuple[Callable[[], Any], str] | None:
        from .store import ConsulKVStore

        config = self.config
        return (lambda: ConsulKVStore(config)), self.key

    async def _poll(self, state: int | None) -> int:
        index = state or 0
        if self._client is None:
            self._client = self.config.async_client(4)
        what = f"reading rules key '{self.key}'"
        answer = await blocking_get(
            self._client, self.config, f"/v1/kv/{quote(self.key)}", index=index, wait=self.wait, what=what
        )
        next_index = answer.next_index
        resp = answer.response
        if resp.status_code == 404:
            if self.modify_index is not None:
                log.warning("graylb: %s was deleted; keeping revision %s", self.name, self.current.revision)
                self.modify_index = None
            return next_index
        if not answer.changed:
            return next_index
        items = resp.json()
        item = items[0] if isinstance(items, list) and items else None
        if not isinstance(item, dict):
            raise ConsulError(f"Consul answered {what} with an unexpected body")
        modify = int(item.get("ModifyIndex") or next_index)
        if modify != self.modify_index:
            self.modify_index = modify
            self._apply_remote(base64.b64decode(item["Value"]) if item.get("Value") else b"", str(modify))
        return next_index

    async def _aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()
