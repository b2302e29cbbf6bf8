"""The discovery contract: watch a service name, publish immutable snapshots of its instances.

After grpc-go's resolver: a :class:`Discovery` owns the I/O, a :class:`ServiceWatch` holds the
latest :class:`Snapshot` for one service, and readers (the balancer, on every call) only read an
attribute — they never wait, never take a lock. Writers build a whole new snapshot and swap the
reference, then tell listeners.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

from ..instance import Health, Instance

__all__ = ["Snapshot", "ServiceWatch", "Discovery", "Listener"]

log = logging.getLogger("graylb.discovery")

D = TypeVar("D", bound="Discovery")


@dataclasses.dataclass(frozen=True, slots=True)
class Snapshot:
    """Every known instance of ``service`` at one moment (unhealthy ones included, marked).

    ``revision`` grows by one per published change; ``fetched_at`` is the wall-clock time of the
    fetch that confirmed this content (stale-if-error keeps it while the registry is down);
    ``source`` says where it came from (``static``, ``consul``, ``nacos``, ``disk``).
    """

    service: str
    instances: tuple[Instance, ...]
    revision: int = 0
    fetched_at: float = 0.0
    source: str = "static"

    @property
    def healthy(self) -> tuple[Instance, ...]:
        return tuple(i for i in self.instances if i.health is not Health.CRITICAL)

    @property
    def age(self) -> float:
        """Seconds since the registry last confirmed this content."""
        return max(0.0, time.time() - self.fetched_at)


Listener = Callable[[Snapshot], None]


class ServiceWatch:
    """The live view of one service. ``snapshot`` is always the latest one (or None before the
    first answer). Listeners are called after each change, on the publishing thread."""

    def __init__(self, discovery: Discovery, service: str) -> None:
        self.discovery = discovery
        self.service = service
        self.snapshot: Snapshot | None = None
        # Set by the balancer on every call (a plain attribute write); the registry's idle
        # sweep clears it and drops watches that stayed unused for a whole period.
        self.used = True
        self.closed = False
        self.revision = 0  # the snapshot's revision: bumped on a change only, not on a refresh
        # Stale-if-error bookkeeping: the snapshot above stays in force while these say why
        # the registry could not confirm it.
        self.last_error: str | None = None
        self.error_since: float | None = None
        self.failures = 0
        self._listeners: list[Listener] = []
        self._ready = threading.Event()  # first snapshot *or* first failure
        # Resolved by the first snapshot only: a thread waits on it with ``result(timeout)``, an
        # asyncio task through ``asyncio.wrap_future`` (no thread parked per waiting task).
        self._first_snapshot: concurrent.futures.Future[bool] = concurrent.futures.Future()

    def add_listener(self, listener: Listener) -> None:
        self._listeners = [*self._listeners, listener]
        if self.snapshot is not None:
            listener(self.snapshot)

    def remove_listener(self, listener: Listener) -> None:
        self._listeners = [x for x in self._listeners if x is not listener]

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until the first snapshot arrives (used once, on the first call to a service)."""
        return self._ready.wait(timeout)

    def wait_snapshot(self, timeout: float | None = None) -> bool:
        """Block until the first snapshot is here (True) or ``timeout`` passes (False). Unlike
        :meth:`wait_ready`, a failed fetch does not end the wait: the registry may still answer."""
        if self.snapshot is not None:
            return True
        try:
            return self._first_snapshot.result(timeout)
        except concurrent.futures.TimeoutError:
            return self.snapshot is not None

    async def wait_snapshot_async(self, timeout: float | None = None) -> bool:
        """:meth:`wait_snapshot` for asyncio callers: awaits without blocking the event loop."""
        if self.snapshot is not None:
            return True
        # shield: a timed-out or cancelled waiter must not cancel the shared future.
        waiter = asyncio.shield(asyncio.wrap_future(self._first_snapshot))
        try:
            return await asyncio.wait_for(waiter, timeout)
        except asyncio.TimeoutError:
            return self.snapshot is not None

    def _got_snapshot(self) -> None:
        self._ready.set()
        if not self._first_snapshot.done():
            try:
                self._first_snapshot.set_result(True)
            except concurrent.futures.InvalidStateError:  # another publisher was first
                pass

    @property
    def stale(self) -> bool:
        """True while the registry is failing and the last good snapshot is being served."""
        return self.last_error is not None

    def fail(self, error: str) -> None:
        """Record a failed fetch. The current snapshot stays; a first call waiting for the
        first snapshot is released (it fails fast instead of waiting out its timeout)."""
        if self.last_error is None:
            self.error_since = time.time()
        self.last_error = error
        self.failures += 1
        self._ready.set()

    def publish(self, instances: Iterable[Instance], *, source: str, fetched_at: float | None = None) -> Snapshot:
        """Swap in a new snapshot if the instance set changed; otherwise only refresh its age."""
        if source != "disk":
            self.last_error = None
            self.error_since = None
            self.failures = 0
        instances = tuple(sorted(instances, key=lambda i: i.id))
        now = time.time() if fetched_at is None else fetched_at
        old = self.snapshot
        if old is not None and old.instances == instances:
            self.snapshot = dataclasses.replace(old, fetched_at=now, source=source)
            self._got_snapshot()
            return self.snapshot
        snap = Snapshot(self.service, instances, (old.revision + 1) if old else 1, now, source)
        self.snapshot = snap
        self.revision = snap.revision  # after the snapshot: a reader of the revision finds it
        self._got_snapshot()
        for listener in self._listeners:
            try:
                listener(snap)
            except Exception:  # a listener's bug must not stop discovery
                log.exception("graylb: snapshot listener failed for service '%s'", self.service)
        return snap


class Discovery:
    """Base class for registries. Subclasses start their I/O in :meth:`_start_watch`.

    ``watch(service)`` is idempotent and cheap after the first call; the first call for a name
    starts watching it (lazily), later calls return the same :class:`ServiceWatch`.
    """

    name = "discovery"

    def __init__(self) -> None:
        self._watches: dict[str, ServiceWatch] = {}
        self._lock = threading.Lock()  # only taken when a new service is first watched

    def watch(self, service: str) -> ServiceWatch:
        w = self._watches.get(service)
        if w is not None:
            return w
        with self._lock:
            w = self._watches.get(service)
            if w is None:
                w = ServiceWatch(self, service)
                self._watches = {**self._watches, service: w}
                self._start_watch(w)
        return w

    def snapshot(self, service: str) -> Snapshot | None:
        """The latest snapshot of ``service`` if it is watched, without starting a watch."""
        w = self._watches.get(service)
        return w.snapshot if w else None

    def services(self) -> list[str]:
        return sorted(self._watches)

    def describe(self) -> str:
        """Where the instances come from, for messages (``consul at 127.0.0.1:8500``)."""
        return self.name

    def _start_watch(self, watch: ServiceWatch) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Stop all background work. Snapshots already handed out stay valid."""

    def __enter__(self: D) -> D:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
