"""Rule sources: where the rules in force come from, and how changes are applied.

Contract:

- ``source.current`` is the :class:`CompiledRules` in force. Callers read it on every call with
  no lock: it is one attribute, replaced (never mutated) by :meth:`RuleSource.apply`.
- :meth:`RuleSource.apply` never raises for a bad document: the last good rules stay in force,
  ``last_error`` holds the :class:`RuleError`, ``rejected_count`` grows by one and a single
  warning names the source and the first problems.
- Listeners are called after each applied change, in order, and once with ``current`` when added.
- :class:`StaticRules` and :class:`FileRuleSource` raise :class:`RuleError` for a bad *initial*
  document: a broken config at start-up should stop the program, not run it without rules.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..errors import RuleError
from ..telemetry import record_rules_rejected
from .compiled import NO_RULES, CompiledRules
from .load import parse_rules

__all__ = ["RuleSource", "StaticRules", "FileRuleSource", "Listener"]

log = logging.getLogger("graylb.rules")

Listener = Callable[[CompiledRules], None]

_LOGGED_ERRORS = 5  # lines of a rejected document's error put in the one warning


class RuleSource:
    """Holds the rules in force and applies new documents to them."""

    name: str = "rules"

    def __init__(self, initial: CompiledRules = NO_RULES, *, name: str = "") -> None:
        self.current: CompiledRules = initial
        self.last_error: RuleError | None = None
        self.rejected_count: int = 0
        if name:
            self.name = name
        self._listeners: list[Listener] = []
        # Serialises writers (apply / add_listener) so listeners see changes in order;
        # readers of `current` never take it. Re-entrant: a listener may call apply().
        self._lock = threading.RLock()

    def add_listener(self, cb: Listener) -> None:
        """Call ``cb(rules)`` after each applied change, and right now with ``current``."""
        with self._lock:
            self._listeners.append(cb)
            cb(self.current)

    def remove_listener(self, cb: Listener) -> None:
        with self._lock:
            try:
                self._listeners.remove(cb)
            except ValueError:
                pass

    def apply(self, doc: str | bytes | Mapping[str, Any], *, revision: str = "", origin: str = "") -> bool:
        """Validate and compile ``doc``; make it current and return True, or keep the rules in
        force, record the error and return False. Never raises for a bad document."""
        origin = origin or self.name
        try:
            compiled = parse_rules(doc, source=origin, revision=revision)
        except Exception as exc:
            if not isinstance(exc, RuleError):  # a shape no check foresaw: still only a bad document
                log.debug("graylb: unexpected error validating rules from %s", origin, exc_info=True)
                exc = RuleError([("", f"cannot validate ({type(exc).__name__}: {exc})")], origin)
            with self._lock:
                self.last_error = exc
                self.rejected_count += 1
            self._log_rejection(exc, origin)
            return False
        self._install(compiled)
        return True

    def _install(self, compiled: CompiledRules) -> None:
        with self._lock:
            self.current = compiled
            self.last_error = None
            for cb in list(self._listeners):
                try:
                    cb(compiled)
                except Exception:  # one broken listener must not stop the others or the source
                    log.exception("graylb: rules listener %r failed on revision %s", cb, compiled.revision)

    def _log_rejection(self, exc: RuleError, origin: str) -> None:
        record_rules_rejected(self.name or origin or type(self).__name__)
        lines = [f"{loc}: {msg}" if loc else msg for loc, msg in exc.errors[:_LOGGED_ERRORS]]
        more = len(exc.errors) - len(lines)
        if more > 0:
            lines.append(f"... and {more} more")
        log.warning(
            "graylb: rejected rules from %s (keeping revision %s): %s",
            origin,
            self.current.revision or "none",
            "; ".join(lines),
        )

    def writer(self) -> tuple[Callable[[], Any], str] | None:
        """Where this source's rules can be written back -- ``(open a RuleStore, key)`` -- for a
        canary guard's ``action: rollback``; None when they cannot be (rules given in code)."""
        return None

    def close(self) -> None:
        """Stop watching for changes (nothing to stop here); ``current`` stays readable."""

    def __enter__(self) -> RuleSource:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class StaticRules(RuleSource):
    """Rules given once, in code: a document (mapping or YAML/JSON text) or None for no rules.

    :meth:`apply` still works, e.g. for tests that change the rules mid-way.
    """

    name = "static"

    def __init__(self, doc: str | bytes | Mapping[str, Any] | None = None, *, name: str = "") -> None:
        super().__init__(name=name)
        if doc is not None:
            self.current = parse_rules(doc, source=self.name)  # RuleError: loud at start-up


class FileRuleSource(RuleSource):
    """Rules from a YAML/JSON file, re-read when its modification time, size or inode changes.

    With ``reload_interval`` (seconds) a daemon thread polls the file; ``None`` disables it
    (call :meth:`poll` yourself). A bad edit, a half-written file or a file that briefly
    disappears (atomic replace) keeps the last good rules.
    """

    def __init__(self, path: str | os.PathLike[str], *, reload_interval: float | None = 1.0) -> None:
        self.path = Path(path)
        super().__init__(name=str(self.path))
        self._stop = threading.Event()
        self._poll_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stat_key = self._stat()
        self._content = self.path.read_bytes()  # OSError if missing: a start-up error, left as is
        self.current = parse_rules(self._content, source=self.name)  # RuleError if bad at start
        self._read_error: str | None = None
        if reload_interval is not None:
            if reload_interval <= 0:
                raise ValueError(f"reload_interval must be > 0 seconds, got {reload_interval!r}")
            self._interval = float(reload_interval)
            self._thread = threading.Thread(target=self._run, name=f"graylb-rules:{self.path.name}", daemon=True)
            self._thread.start()

    def _stat(self) -> tuple[int, int, int]:
        st = os.stat(self.path)  # follows symlinks: a Kubernetes ConfigMap swap changes the inode
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def poll(self) -> bool:
        """Re-read the file if it changed; return True when a new document was applied."""
        with self._poll_lock:  # the watcher thread and a caller may poll at the same time
            return self._poll()

    def _poll(self) -> bool:
        try:
            key = self._stat()
            if key == self._stat_key:
                return False
            content = self.path.read_bytes()
        except OSError as exc:
            message = f"{exc.strerror or exc}"
            if message != self._read_error:  # warn once per distinct problem, not every poll
                log.warning(
                    "graylb: cannot read rules file %s (keeping revision %s): %s",
                    self.path,
                    self.current.revision or "none",
                    message,
                )
                self._read_error = message
            return False
        self._read_error = None
        self._stat_key = key
        if content == self._content:
            return False  # touched, not changed
        self._content = content
        return self.apply(content, origin=self.name)

    def writer(self) -> tuple[Callable[[], Any], str] | None:
        from .file_store import FileRuleStore

        return FileRuleStore, str(self.path)

    def _run(self) -> None:
        # Event.wait rather than sleep, so close() ends the thread at once.
        while not self._stop.wait(self._interval):
            try:
                self.poll()
            except Exception:  # never let the watcher die silently
                log.exception("graylb: polling rules file %s failed", self.path)

    def close(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)
        self._thread = None
