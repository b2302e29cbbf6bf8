"""What every real registry shares: lazy watches on one background loop, stale-if-error,
rate-limited retries with jittered backoff, disk snapshots, idle expiry, bad-entry warnings.

A registry subclass only translates its wire format: :meth:`RegistryDiscovery._fetch` performs
one query (blocking or not) and returns the instances, or None when nothing changed. Everything
about *when* to query and what to do on failure lives here, once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable
from typing import Any

import cachetools

from .. import _loop
from ..instance import MAX_WEIGHT, Instance
from ..watching import watch_forever
from .backoff import ExponentialJitter, TokenBucket
from .base import Discovery, ServiceWatch
from .cache import SnapshotStore

__all__ = ["RegistryDiscovery", "BadEntryLog", "translate_entries", "metadata_weight"]

log = logging.getLogger("graylb.discovery")


class BadEntryLog:
    """Warns once per (service, instance, problem): a bad registration is logged when first
    seen, not on every refresh."""

    def __init__(self, registry: str) -> None:
        self.registry = registry
        self._seen: cachetools.LRUCache[tuple[str, str, str], bool] = cachetools.LRUCache(maxsize=10_000)

    def __call__(self, service: str, instance: str, problem: str) -> None:
        key = (service, instance, problem)
        if key not in self._seen:
            self._seen[key] = True
            log.warning("graylb: %s service '%s' instance %s: %s", self.registry, service, instance, problem)


Warn = Callable[[str, str, str], None]


def translate_entries(
    service: str, entries: list[Any], one: Callable[[str, Any, Warn], Instance | None], warn: Warn
) -> list[Instance]:
    """Translate a registry's entries with ``one``; an entry ``one`` rejects (None) or chokes on
    is skipped with a warning naming it, never failing the whole list."""
    out: list[Instance] = []
    for n, entry in enumerate(entries):
        try:
            inst = one(service, entry, warn)
        except Exception as exc:  # a shape we did not foresee: skip this one entry only
            warn(service, f"entry #{n}", f"unreadable ({type(exc).__name__}: {exc}); skipped")
            continue
        if inst is not None:
            out.append(inst)
    return out


def metadata_weight(value: str | None, service: str, name: str, warn: Warn, otherwise: str) -> int | None:
    """A ``weight`` metadata value (0..10000) as an int; None when absent or bad (bad ones are
    reported, saying that ``otherwise`` is used instead)."""
    if value is None:
        return None
    try:
        weight = int(float(value))
        if 0 <= weight <= MAX_WEIGHT:
            return weight
    except ValueError:
        pass
    warn(service, name, f"metadata weight {value!r} is not 0..{MAX_WEIGHT}; using {otherwise}")
    return None


class RegistryDiscovery(Discovery):
    """Base class for registries polled or long-polled from the shared background loop.

    ``snapshot_dir``: persist each service's last good snapshot there and restore it when the
    service is first watched (so a restart during a registry outage still routes).
    ``idle_timeout``: stop watching a service nobody called for this long (seconds).
    """

    name = "registry"

    def __init__(
        self,
        *,
        snapshot_dir: str | None = None,
        idle_timeout: float = 600.0,
        backoff: ExponentialJitter | None = None,
        rate: float = 10.0,
        burst: int = 5,
    ) -> None:
        super().__init__()
        self.idle_timeout = idle_timeout
        self.backoff = backoff or ExponentialJitter()
        self._rate, self._burst = rate, burst
        self._store = SnapshotStore(snapshot_dir, self.namespace()) if snapshot_dir else None
        self._tasks: dict[str, concurrent.futures.Future[Any]] = {}
        self._sweeper: concurrent.futures.Future[Any] | None = None
        self._closed = False
        self.bad_entry = BadEntryLog(self.name)

    # -- for subclasses ------------------------------------------------------------------------
    def namespace(self) -> str:
        """Names this registry in disk snapshot file names (e.g. ``consul-127.0.0.1-8500``)."""
        return self.name

    async def _fetch(self, watch: ServiceWatch, cursor: Any) -> tuple[list[Instance] | None, Any]:
        """One query for ``watch.service``. ``cursor`` is what the previous call returned (None
        at first): a Consul index, a Nacos checksum. Return (instances or None if unchanged,
        next cursor); raise on failure (the message is logged and kept on the watch)."""
        raise NotImplementedError

    async def _aclose(self) -> None:
        """Release async clients (runs on the background loop)."""

    # -- machinery ----------------------------------------------------------------------------
    def _start_watch(self, watch: ServiceWatch) -> None:
        if self._closed:
            raise RuntimeError(f"{self.name} discovery is closed")
        if self._store is not None:
            restored = self._store.load(watch.service)
            if restored is not None:
                instances, fetched_at = restored
                watch.publish(instances, source="disk", fetched_at=fetched_at)
                log.info(
                    "graylb: service '%s': restored %d instance(s) from a disk snapshot", watch.service, len(instances)
                )
        self._tasks[watch.service] = _loop.spawn(self._run(watch))
        if self._sweeper is None and self.idle_timeout > 0:
            self._sweeper = _loop.spawn(self._sweep())

    async def _run(self, watch: ServiceWatch) -> None:
        async def poll(cursor: Any) -> Any:
            instances, cursor = await self._fetch(watch, cursor)
            if instances is not None:
                before = watch.snapshot
                snap = watch.publish(instances, source=self.name)
                if self._store is not None and (
                    before is None or before.revision != snap.revision or before.source == "disk"
                ):
                    self._store.save(snap)
            elif watch.snapshot is not None:
                watch.publish(watch.snapshot.instances, source=self.name)  # confirmed: refresh its age
            return cursor

        def kept() -> str:
            age = f"{watch.snapshot.age:.0f}s old" if watch.snapshot else "none yet"
            return f"serving the last good snapshot ({age})"

        await watch_forever(
            poll,
            what=f"{self.name} service '{watch.service}'",
            log=log,
            stopped=lambda: self._closed or watch.closed,
            failed=watch.fail,
            kept=kept,
            backoff=self.backoff,
            bucket=TokenBucket(self._rate, self._burst),
        )

    async def _sweep(self) -> None:
        period = self.idle_timeout / 2
        while not self._closed:
            await asyncio.sleep(period)
            for service, watch in list(self._watches.items()):
                if watch.used:
                    watch.used = False
                elif watch.snapshot is not None:
                    # Never one still waiting for its first answer: its callers wait on it (and
                    # only mark it used once routed), so dropping it would strand them.
                    self._drop(service, watch)

    def _drop(self, service: str, watch: ServiceWatch) -> None:
        with self._lock:
            if self._watches.get(service) is watch:
                watch.closed = True
                self._watches = {k: v for k, v in self._watches.items() if k != service}
                task = self._tasks.pop(service, None)
                if task is not None:
                    task.cancel()
                log.info(
                    "graylb: %s: stopped watching service '%s' (unused for %.0fs)",
                    self.name,
                    service,
                    self.idle_timeout,
                )

    def status(self) -> dict[str, dict[str, Any]]:
        """Per watched service: instances, snapshot age, source, last error (for CLIs and health checks)."""
        out = {}
        for service, w in self._watches.items():
            snap = w.snapshot
            out[service] = {
                "instances": len(snap.instances) if snap else None,
                "age": snap.age if snap else None,
                "source": snap.source if snap else None,
                "stale": w.stale,
                "error": w.last_error,
            }
        return out

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in list(self._tasks.values()):
            task.cancel()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for w in self._watches.values():
            w.closed = True
        try:
            _loop.run_coroutine(self._aclose(), timeout=5)
        except (concurrent.futures.TimeoutError, RuntimeError):
            pass
