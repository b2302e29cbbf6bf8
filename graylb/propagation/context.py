"""The gray context: which lane a call chain is in, which versions it pins, and free-form gray
values (``user-group=beta``). Immutable; lives in a :class:`contextvars.ContextVar`, so it
follows asyncio tasks automatically and threads when you hand it over (see :func:`bind`).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

__all__ = ["GrayContext", "EMPTY", "current", "gray", "attach", "detach", "bind", "ContextIterator"]

_NO_ENTRIES: Mapping[str, str] = types.MappingProxyType({})
F = TypeVar("F", bound=Callable[..., Any])


@dataclasses.dataclass(frozen=True, slots=True, eq=True)
class GrayContext:
    """``lane``: full-link gray lane; ``lane_forced``: never leave the lane (fail instead of
    falling back to the default subset); ``pins``: service -> version selector, winning over
    rules; ``values``: other gray keys that rules can match (``context:`` matchers)."""

    lane: str | None = None
    lane_forced: bool = False
    pins: Mapping[str, str] = dataclasses.field(default_factory=lambda: _NO_ENTRIES)
    values: Mapping[str, str] = dataclasses.field(default_factory=lambda: _NO_ENTRIES)
    # Serialised headers, filled lazily by the codec that injects this context (one per codec
    # configuration). Not part of equality; the context itself never changes after creation.
    _wire_cache: dict[str, tuple[tuple[str, str], ...]] = dataclasses.field(
        default_factory=dict, init=False, compare=False, repr=False, hash=False
    )

    def __post_init__(self) -> None:
        for name in ("pins", "values"):
            value = getattr(self, name)
            # Always copy (a caller's mapping, even a read-only view, may change under us and
            # would make the wire cache stale); the shared empty mapping needs no copy.
            if value is not _NO_ENTRIES:
                object.__setattr__(
                    self,
                    name,
                    types.MappingProxyType({str(k): str(v) for k, v in value.items()}) if value else _NO_ENTRIES,
                )
        if self.lane == "":
            object.__setattr__(self, "lane", None)

    def __hash__(self) -> int:
        return hash((self.lane, self.lane_forced, tuple(sorted(self.pins.items())), tuple(sorted(self.values.items()))))

    @property
    def is_empty(self) -> bool:
        return self.lane is None and not self.pins and not self.values

    def value(self, name: str) -> str | None:
        """A gray value by name; ``lane`` answers the lane."""
        if name == "lane":
            return self.lane
        return self.values.get(name)

    def merged(
        self,
        *,
        lane: str | None = None,
        lane_forced: bool | None = None,
        pins: Mapping[str, str] | None = None,
        values: Mapping[str, str] | None = None,
    ) -> GrayContext:
        """A copy with ``lane`` replaced (when given) and ``pins``/``values`` added on top."""
        return GrayContext(
            lane=lane if lane is not None else self.lane,
            lane_forced=self.lane_forced if lane_forced is None else lane_forced,
            pins={**self.pins, **(pins or {})},
            values={**self.values, **(values or {})},
        )


EMPTY = GrayContext()
# The contextvar's default, meaning "nothing attached here": equal to EMPTY but another object, so
# current() can tell it from a decision that the context is empty (graylb's middleware or server
# interceptor attaches EMPTY for an untrusted caller, and that must win over the fallback below).
_UNSET = GrayContext()
_CURRENT: contextvars.ContextVar[GrayContext] = contextvars.ContextVar("graylb.gray", default=_UNSET)
# Where current() looks when nothing was attached: None until graylb.propagation.otel creates a
# GrayPropagator, which installs a reader of the gray context in the current OpenTelemetry context
# (what an OpenTelemetry-instrumented framework extracted for the request).
_FALLBACK: Callable[[], GrayContext] | None = None


class ProcessOverride:
    """Gray context forced on every call in the process, whatever thread or task makes it
    (contextvars do not reach threads a library starts on its own). :mod:`graylb.testing`'s
    ``pin_version`` / ``lane`` install one; the core only merges it into :func:`current`.
    """

    __slots__ = ("ctx",)

    def __init__(self, ctx: GrayContext) -> None:
        self.ctx = ctx


# None outside tests: current() pays one global read for the feature.
_OVERRIDE: ProcessOverride | None = None
_last_merge: tuple[GrayContext, ProcessOverride, GrayContext] | None = None


def current() -> GrayContext:
    """The gray context of the running task or thread (``EMPTY`` when none was set), with the
    process-wide test override, if one is installed, on top.

    What graylb attached (middleware, server interceptor, :func:`gray`, :func:`bind`) comes
    first. Only where nothing was attached, and only once a
    :class:`~graylb.propagation.otel.GrayPropagator` exists, is the gray context that an
    OpenTelemetry propagator extracted into the current OpenTelemetry context read instead.
    """
    ctx = _CURRENT.get()
    if ctx is _UNSET:  # the hot path pays this identity test, plus a global read when unset
        fallback = _FALLBACK
        ctx = EMPTY if fallback is None else fallback()
    override = _OVERRIDE
    if override is None:
        return ctx
    return _with_override(ctx, override)


def _with_override(ctx: GrayContext, override: ProcessOverride) -> GrayContext:
    global _last_merge
    last = _last_merge  # one-entry cache: a test's calls mostly share one base context
    if last is not None and last[0] is ctx and last[1] is override:
        return last[2]
    forced = override.ctx
    merged = ctx.merged(
        lane=forced.lane,
        lane_forced=forced.lane_forced if forced.lane else None,
        pins=forced.pins,
        values=forced.values,
    )
    _last_merge = (ctx, override, merged)
    return merged


def _attached() -> GrayContext:
    """:func:`current` without the process override: what :func:`gray` builds on and
    :func:`bind` carries."""
    ctx = _CURRENT.get()
    if ctx is _UNSET:
        fallback = _FALLBACK
        return EMPTY if fallback is None else fallback()
    return ctx


def install_fallback(fallback: Callable[[], GrayContext] | None) -> None:
    """Install (or, with None, remove) what :func:`current` reads when nothing was attached.
    ``fallback()`` must be cheap and must not raise; it runs on the routing hot path."""
    global _FALLBACK
    _FALLBACK = fallback


def install_override(override: ProcessOverride | None) -> None:
    """Install (or, with None, remove) the process-wide override."""
    global _OVERRIDE, _last_merge
    _OVERRIDE = override
    _last_merge = None


def attach(ctx: GrayContext) -> contextvars.Token[GrayContext]:
    """Make ``ctx`` current; pair with :func:`detach` (middleware uses this). Attaching ``EMPTY``
    is a decision too: :func:`current` then answers ``EMPTY`` and does not fall back to an
    OpenTelemetry-extracted context (an untrusted caller's, say)."""
    return _CURRENT.set(ctx)


def detach(token: contextvars.Token[GrayContext]) -> None:
    _CURRENT.reset(token)


@contextlib.contextmanager
def gray(
    lane: str | None = None,
    pins: Mapping[str, str] | None = None,
    values: Mapping[str, str] | None = None,
    *,
    force_lane: bool | None = None,
    replace: bool = False,
) -> Iterator[GrayContext]:
    """Set gray context for the block: ``with graylb.gray(lane="beta", pins={"orders": "2.0.0"}):``

    Adds to the context already in force (an outer lane or pin stays unless overridden);
    ``replace=True`` starts from an empty context instead.
    """
    base = EMPTY if replace else _attached()
    ctx = base.merged(lane=lane, lane_forced=force_lane, pins=pins, values=values)
    token = _CURRENT.set(ctx)
    try:
        yield ctx
    finally:
        _CURRENT.reset(token)


def bind(fn: F) -> F:
    """Wrap ``fn`` so it runs with the gray context current *now*, wherever it is called.

    ``executor.submit(graylb.bind(work), item)`` and
    ``loop.run_in_executor(None, graylb.bind(work))`` carry the context into a thread pool,
    which, unlike asyncio tasks, does not copy contextvars by itself.
    """
    captured = _attached()  # resolved now: the thread has neither graylb's nor OpenTelemetry's context

    @functools.wraps(fn)
    def bound(*args: Any, **kwargs: Any) -> Any:
        token = _CURRENT.set(captured)
        try:
            return fn(*args, **kwargs)
        finally:
            _CURRENT.reset(token)

    return bound  # type: ignore[return-value]  # functools.wraps keeps fn's signature; mypy cannot see it is F


class ContextIterator:
    """Iterate ``source`` with every step — ``iter()``, each ``next()`` and ``close()`` — run
    inside ``context``, from whichever thread drives it. For bodies produced lazily after the
    handler returned: WSGI response iterables, gRPC streaming responses."""

    __slots__ = ("_source", "_iterator", "_context")

    def __init__(self, source: Iterable[Any], context: contextvars.Context) -> None:
        self._source = source
        self._iterator: Iterator[Any] | None = None
        self._context = context

    def __iter__(self) -> ContextIterator:
        return self

    def __next__(self) -> Any:
        if self._iterator is None:
            self._iterator = self._context.run(iter, self._source)  # __iter__ may run user code too
        return self._context.run(next, self._iterator)

    def close(self) -> None:
        # PEP 3333: close() belongs to the iterable the app returned; fall back to its iterator.
        close = getattr(self._source, "close", None) or getattr(self._iterator, "close", None)
        if close is not None:
            self._context.run(close)
