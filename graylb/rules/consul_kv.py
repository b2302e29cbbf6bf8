"""Rules from a Consul KV key, watched with blocking queries; a change applies in milliseconds.

A bad document (invalid YAML, a schema error) is rejected and the rules in force stay; so do
they when the key disappears or Consul is unreachable. ``snapshot_dir`` keeps the last good
document on disk so a process that starts during a Consul outage still has its rules.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import logging
import threading
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from .. import _loop
from ..consul.config import ConsulConfig, ConsulError, ConsulUnavailable, check_response
from ..discovery.backoff import ExponentialJitter, TokenBucket
from ..discovery.cache import write_atomic
from .compiled import NO_RULES
from .sources import RuleSource

__all__ = ["ConsulRuleSource"]

log = logging.getLogger("graylb.rules")


class ConsulRuleSource(RuleSource):
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
        super().__init__(NO_RULES, name=f"consul kv {self.key}")
        self.wait = wait
        self.backoff = ExponentialJitter()
        self.last_fetch_error: str | None = None
        self.modify_index: int | None = None
        self._snapshot = Path(snapshot_dir) / f"rules-consul-{self.config.host}-{self.config.port}-{self.key.replace('/', '_')}.yaml" if snapshot_dir else None
        self._client: httpx.AsyncClient | None = None
        self._closed = False
        self._first = threading.Event()
        if self._snapshot is not None and self._snapshot.exists():
            if self.apply(self._snapshot.read_bytes(), revision="disk", origin=f"{self.name} (disk snapshot)"):
                log.info("graylb: rules from %s restored from %s", self.name, self._snapshot)
        self._task: concurrent.futures.Future[Any] = _loop.spawn(self._run())
        if not self._first.wait(initial_timeout):
            log.warning("graylb: no answer from Consul for %s after %.1fs; starting with the rules in force", self.name, initial_timeout)

    async def _run(self) -> None:
        index = 0
        failures = 0
        bucket = TokenBucket()
        while not self._closed:
            delay = bucket.wait_time()
            if delay:
                await asyncio.sleep(delay)
            try:
                index = await self._fetch(index)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                self.last_fetch_error = str(exc)
                if failures == 1:
                    log.warning("graylb: cannot read %s: %s; keeping revision %s", self.name, exc, self.current.revision or "none")
                self._first.set()
                index = 0
                await asyncio.sleep(self.backoff.delay(failures))
                continue
            if failures:
                log.info("graylb: %s readable again after %d failed attempt(s)", self.name, failures)
                failures = 0
                self.last_fetch_error = None
            self._first.set()

    async def _fetch(self, index: int) -> int:
        if self._client is None:
            self._client = self.config.async_client(4)
        params = {"index": str(index), "wait": f"{self.wait:g}s"} if index > 0 else {}
        if self.config.datacenter:
            params["dc"] = self.config.datacenter
        read = (self.wait + self.wait / 16 + self.config.timeout) if index > 0 else self.config.timeout
        what = f"reading rules key '{self.key}'"
        try:
            resp = await self._client.get(f"/v1/kv/{quote(self.key)}", params=params, timeout=httpx.Timeout(self.config.timeout, read=read))
        except httpx.TransportError as exc:
            raise ConsulUnavailable(f"Consul at {self.config.address} unreachable while {what}: {type(exc).__name__}") from None
        raw_index = resp.headers.get("X-Consul-Index")
        try:
            new_index = int(raw_index)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ConsulError(f"Consul answered {what} without a valid X-Consul-Index ({raw_index!r})") from None
        next_index = 0 if new_index < index else max(1, new_index)
        if resp.status_code == 404:
            if self.modify_index is not None:
                log.warning("graylb: %s was deleted; keeping revision %s", self.name, self.current.revision)
                self.modify_index = None
            return next_index
        check_response(resp, what)
        if index > 0 and new_index == index:
            return next_index
        items = resp.json()
        item = items[0] if isinstance(items, list) and items else None
        if not isinstance(item, dict):
            raise ConsulError(f"Consul answered {what} with an unexpected body")
        modify = int(item.get("ModifyIndex") or new_index)
        if modify != self.modify_index:
            self.modify_index = modify
            value = base64.b64decode(item["Value"]) if item.get("Value") else b""
            if self.apply(value, revision=str(modify), origin=f"{self.name}@{modify}") and self._snapshot is not None:
                try:
                    write_atomic(self._snapshot, value)
                except OSError as exc:
                    log.warning("graylb: cannot save rules snapshot %s: %s", self._snapshot, exc)
        return next_index

    def close(self) -> None:
        self._closed = True
        self._task.cancel()
        if self._client is not None:
            client, self._client = self._client, None
            try:
                _loop.run_coroutine(client.aclose(), timeout=5)
            except (concurrent.futures.TimeoutError, RuntimeError):
                pass
