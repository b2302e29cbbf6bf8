"""Pin a downstream version, or put every call in a lane, for a whole test — in any thread or task.

``graylb.gray(pins=...)`` lives in a contextvar: it follows asyncio tasks, but not the threads a
web framework, a worker pool or a gRPC server starts for itself. A test pin has to reach those
too, so :func:`pin_version` and :func:`lane` install a *process-wide* override that every
:class:`~graylb.Balancer` call sees (on top of whatever gray context the call carries) and that
the outbound headers carry to the next hop::

    with graylb.testing.pin_version("orders", "2.0.0"):
        assert checkout() == "ok"           # every call to orders went to a 2.0.0 instance

    @graylb.testing.pin_version("orders", "2.0.0")   # a decorator too (sync, async, or a class)
    def test_checkout(): ...

A pin that finds no instance makes that call raise :class:`~graylb.NoInstanceAvailable` naming
the versions on offer, and, because code under test may swallow the error (a 503 page, a
fallback), the block itself fails with :class:`PinNotSatisfied` when it ends.
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from ..balancer import add_no_instance_hook
from ..errors import GraylbError
from ..propagation.context import GrayContext, ProcessOverride, install_override
from ..versioning import VersionSelector

__all__ = ["PinNotSatisfied", "Override", "pin_version", "lane"]

T = TypeVar("T")


class PinNotSatisfied(GraylbError, AssertionError):
    """Calls made under a test pin or forced lane found no instance to serve them.

    An AssertionError, so pytest and unittest report it as a failure, not an error."""


class Override:
    """An activation of :func:`pin_version` / :func:`lane`: a context manager, a decorator, or
    ``start()`` / ``stop()`` by hand (what the pytest fixtures do). ``misses`` lists the calls
    that found no instance while it was active, as ``(service, message)``."""

    def __init__(
        self,
        *,
        pins: Mapping[str, str] | None = None,
        lane: str | None = None,
        forced: bool = False,
        strict: bool = True,
    ) -> None:
        self.pins = dict(pins or {})
        for service, selector in self.pins.items():
            if not service or not isinstance(service, str):
                raise ValueError(f"pin_version: service name must be a non-empty string, got {service!r}")
            try:
                VersionSelector(str(selector))
            except ValueError as exc:
                raise ValueError(
                    f"pin_version: service '{service}': bad version selector {selector!r}: {exc}"
                ) from None
        if lane is not None and not lane:
            raise ValueError("lane: the lane name must be a non-empty string")
        self.lane = lane
        self.forced = forced
        self.strict = strict
        self.misses: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def describe(self) -> str:
        parts = [f"pin_version({s!r}, {v!r})" for s, v in self.pins.items()]
        if self.lane is not None:
            parts.append(f"lane({self.lane!r}{', forced=True' if self.forced else ''})")
        return " + ".join(parts)

    # -- activation -------------------------------------------------------------------------
    def start(self) -> Override:
        with _stack_lock:
            if self in _stack:
                raise RuntimeError(f"{self.describe()} is already active")
            _stack.append(self)
            _reinstall()
        return self

    def stop(self) -> None:
        with _stack_lock:
            if self in _stack:
                _stack.remove(self)
                _reinstall()

    def check(self) -> None:
        """Raise :class:`PinNotSatisfied` if any call under this override found no instance."""
        summary = self.summary()
        if summary is not None:
            raise PinNotSatisfied(summary)

    def summary(self) -> str | None:
        """What :meth:`check` would say, or None when every call found an instance."""
        with self._lock:
            misses = list(self.misses)
        if not misses:
            return None
        by_service: dict[str, list[str]] = {}
        for service, message in misses:
            by_service.setdefault(service, []).append(message)
        lines = [f"{self.describe()}: {len(misses)} call(s) found no instance to serve them"]
        for service, messages in by_service.items():
            lines.append(f"  {service}: {len(messages)} call(s); last: {messages[-1]}")
        return "\n".join(lines)

    def __enter__(self) -> Override:
        return self.start()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.stop()
        if exc_type is None and self.strict:
            self.check()

    def _fresh(self) -> Override:
        return Override(pins=self.pins, lane=self.lane, forced=self.forced, strict=self.strict)

    def __call__(self, target: T) -> T:
        """Decorate a function (sync or async) or a class (each ``test*`` method)."""
        if inspect.isclass(target):
            for name, member in list(vars(target).items()):
                if name.startswith("test") and callable(member):
                    setattr(target, name, self(member))
            return target
        fn: Callable[..., Any] = target  # type: ignore[assignment]  # not a class: isclass does not narrow T
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                with self._fresh():
                    return await fn(*args, **kwargs)

            return run_async  # type: ignore[return-value]  # functools.wraps(fn): the decorated T

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            with self._fresh():
                return fn(*args, **kwargs)

        return run  # type: ignore[return-value]  # functools.wraps(fn): the decorated T

    def _concerns(self, service: str) -> bool:
        return service in self.pins or self.lane is not None

    def _missed(self, service: str, exc: Exception) -> None:
        with self._lock:
            self.misses.append((service, str(exc)))

    def __repr__(self) -> str:
        return f"<{self.describe()}{' active' if self in _stack else ''}>"


def pin_version(service: str | Mapping[str, str], version: str | None = None, *, strict: bool = True) -> Override:
    """Pin ``service`` to a version selector (``"2.0.0"``, ``"^2"``, ``"1.4"``) for every call in
    the process: ``pin_version("orders", "2.0.0")`` or ``pin_version({"orders": "2", "users": "1.9"})``.

    ``strict=False`` skips the end-of-block check (the failing calls still raise)."""
    if isinstance(service, Mapping):
        if version is not None:
            raise TypeError("pin_version: pass either a mapping of pins or a service and a version")
        return Override(pins=service, strict=strict)
    if version is None:
        raise TypeError(f"pin_version({service!r}): which version? e.g. pin_version({service!r}, '2.0.0')")
    return Override(pins={service: version}, strict=strict)


def lane(name: str, *, forced: bool = False, strict: bool = True) -> Override:
    """Put every call in the process in lane ``name``. ``forced=True`` fails calls to services
    without a lane instance instead of sending them to the default subset."""
    return Override(lane=name, forced=forced, strict=strict)


# The active overrides, oldest first; later ones win for the same service (and for the lane).
_stack: list[Override] = []
_stack_lock = threading.Lock()


def _reinstall() -> None:
    if not _stack:
        install_override(None)
        return
    pins: dict[str, str] = {}
    lane_name: str | None = None
    forced = False
    for o in _stack:
        pins.update(o.pins)
        if o.lane is not None:
            lane_name, forced = o.lane, o.forced
    install_override(ProcessOverride(GrayContext(lane=lane_name, lane_forced=forced, pins=pins)))


def _missed(service: str, exc: Exception) -> None:
    """The balancer's no-instance hook: each active override concerned hears of the miss."""
    for o in tuple(_stack):
        if o._concerns(service):
            o._missed(service, exc)


add_no_instance_hook(_missed)  # idle while no override is active: _stack is empty
