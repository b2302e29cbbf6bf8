"""What rule sources backed by a registry share: a watch loop on the background event loop,
jittered backoff on errors, the first answer awaited at start-up, and a disk copy of the last
good document for starts during an outage. Subclasses implement :meth:`_poll` only.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from pathlib import Path
from typing import Any

from .. import _loop
from ..discovery.backoff import ExponentialJitter
from ..discovery.cache import write_atomic
from ..watching import watch_forever
from .compiled import NO_RULES
from .sources import RuleSource

__all__ = ["WatchedRuleSource"]

log = logging.getLogger("graylb.rules")


class WatchedRuleSource(RuleSource):
    """Base for rule sources that watch a remote document.

    ``snapshot_name`` names the disk copy (inside ``snapshot_dir``); subclasses call
    :meth:`_start` at the end of their ``__init__``.
    """

    def __init__(self, *, name: str, snapshot_dir: str | None, snapshot_name: str) -> None:
        super().__init__(NO_RULES, name=name)
        self.backoff = ExponentialJitter()
        self.last_fetch_error: str | None = None
        self._snapshot = Path(snapshot_dir) / snapshot_name if snapshot_dir else None
        self._closed = False
        self._first = threading.Event()
        self._task: concurrent.futures.Future[Any] | None = None

    def _start(self, initial_timeout: float) -> None:
        if (
            self._snapshot is not None
            and self._snapshot.exists()
            and self.apply(self._snapshot.read_bytes(), revision="disk", origin=f"{self.name} (disk snapshot)")
        ):
            log.info("graylb: rules from %s restored from %s", self.name, self._snapshot)
        self._task = _loop.spawn(self._run())
        if not self._first.wait(initial_timeout):
            log.warning(
                "graylb: no answer for %s after %.1fs; starting with the rules in force", self.name, initial_timeout
            )

    async def _poll(self, state: Any) -> Any:
        """One (possibly long) poll. Apply a changed document with :meth:`_apply_remote`.
        ``state`` is what the previous call returned (None at first and after an error)."""
        raise NotImplementedError

    async def _aclose(self) -> None:
        """Release async clients (runs on the background loop)."""

    def _apply_remote(self, content: bytes, revision: str) -> bool:
        """Apply a fetched document; keep a disk copy when it was good."""
        ok = self.apply(content, revision=revision, origin=f"{self.name}@{revision}")
        if ok and self._snapshot is not None:
            try:
                write_atomic(self._snapshot, content)
            except OSError as exc:
                log.warning("graylb: cannot save rules snapshot %s: %s", self._snapshot, exc)
        return ok

    async def _run(self) -> None:
        def failed(message: str) -> None:
            self.last_fetch_error = message
            self._first.set()  # start-up stops waiting: the rules in force (or none) apply

        def recovered() -> None:
            self.last_fetch_error = None
            self._first.set()

        await watch_forever(
            self._poll,
            what=self.name,
            log=log,
            stopped=lambda: self._closed,
            failed=failed,
            kept=lambda: f"keeping revision {self.current.revision or 'none'}",
            recovered=recovered,
            backoff=self.backoff,
        )

    def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
        try:
            _loop.run_coroutine(self._aclose(), timeout=5)
        except (concurrent.futures.TimeoutError, RuntimeError):
            pass
