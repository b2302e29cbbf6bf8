"""The gray context as an OpenTelemetry propagator, for services instrumented by OpenTelemetry
rather than wrapped in graylb's middleware and transports.

``OTEL_PROPAGATORS=tracecontext,baggage,graylb`` (the ``opentelemetry_propagator`` entry point
``graylb``, registered by this package) makes every OpenTelemetry-instrumented server extract the
lane, pins and gray values on the way in, and every instrumented client inject them on the way
out; :func:`graylb.current` in the handler answers what the request carried.

**Extract** reads the gray headers with a :class:`~graylb.propagation.codec.HeaderCodec` (the
plain ``x-gray-lane`` / ``x-gray-pin`` headers and the ``gray.*`` members of ``baggage``; never
raises: bad items are skipped with one log line) and returns a context that carries the gray
context under graylb's own context key. It also makes the ``gray.*`` members of the context's
OpenTelemetry baggage say the same thing: those the ``baggage`` propagator took from the wire are
replaced by the members of the accepted gray context (none at all for an untrusted caller).

**Inject** writes the plain headers only, for the gray context in the given context, or
:func:`graylb.current` when it has none of its own (the usual case: instrumentations pass no
context, or one built on the current context). It never writes ``baggage``: OpenTelemetry's
``W3CBaggagePropagator`` writes that header from the context's baggage, which extract has filled
with the gray members, so the header is neither clobbered nor duplicated, whatever the order of
``OTEL_PROPAGATORS``. (A propagator cannot merge into a header another one writes: ``inject`` gets
a setter but no getter, and a later ``baggage`` inject replaces the header.) What follows:

* lane and pins always go out as :func:`graylb.current` has them, in the plain headers, which the
  next hop prefers over baggage members for the same item;
* gray *values* go out in baggage as they arrived: a value added in the handler with
  ``graylb.gray(values=...)`` reaches the next hop through graylb's transports only (or as
  OpenTelemetry baggage ``gray.<key>`` set by the application);
* OpenTelemetry form-encodes baggage values, so a space in a gray value arrives as ``+``.

**Trust.** Like OpenTelemetry's own baggage propagator, ``GrayPropagator`` trusts every caller by
default. At the edge, restrict it with :func:`trust` or the ``GRAYLB_OTEL_TRUST`` environment
variable (``false``, or a comma-separated list of CIDRs checked against the peer address of the
carrier: an ASGI scope or a WSGI environ; any other carrier counts as untrusted), and list
``graylb`` *after* ``baggage``, so that extract can remove the caller's ``gray.*`` baggage members
after the ``baggage`` propagator has read them. A graylb middleware or server interceptor in the
same service decides for itself, and its decision (an empty context for an untrusted caller)
wins over whatever the propagator extracted.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import unquote

from opentelemetry import baggage as otel_baggage
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import create_key, get_current, set_value
from opentelemetry.context.context import Context
from opentelemetry.propagators.textmap import (
    CarrierT,
    Getter,
    Setter,
    TextMapPropagator,
    default_getter,
    default_setter,
)

from .codec import BAGGAGE_HEADER, MAX_HEADER_LENGTH, HeaderCodec
from .context import EMPTY, GrayContext, current, install_fallback
from .trust import Trust, trust_check, trust_networks

__all__ = ["GrayPropagator", "TRUST_ENV", "gray_context", "trust"]

_logger = logging.getLogger("graylb.propagation")

# The key under which the gray context rides in an OpenTelemetry Context (create_key makes it
# unique, so nothing but this module writes it).
_GRAY_KEY = create_key("graylb.gray")

TRUST_ENV = "GRAYLB_OTEL_TRUST"
_TRUE_WORDS = frozenset({"", "1", "true", "yes", "all"})
_FALSE_WORDS = frozenset({"0", "false", "no", "none"})


def _trust_from_env(raw: str | None) -> Trust:
    """``GRAYLB_OTEL_TRUST``: unset / ``true`` trusts every caller, ``false`` none, anything
    else is a comma-separated CIDR list (:func:`~graylb.propagation.trust.trust_networks`). A
    value that is neither fails closed: nobody is trusted, with an error in the log."""
    if raw is None:
        return True
    word = raw.strip().lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    try:
        return trust_networks(*(c for c in raw.split(",") if c.strip()))
    except ValueError as exc:
        _logger.error("graylb: %s=%r is not true, false or a CIDR list (%s): trusting no caller", TRUST_ENV, raw, exc)
        return False


# The module-wide trust of every GrayPropagator made without its own ``trust=``; None = everyone.
_trust_check: Callable[[Any], bool] | None = trust_check(_trust_from_env(os.environ.get(TRUST_ENV)), "carrier")


def trust(setting: Trust) -> None:
    """Who may set the gray context through :class:`GrayPropagator` (those made without their
    own ``trust=``): ``True`` (everyone: the default, as OpenTelemetry's baggage propagator
    does), ``False`` (nobody) or a predicate over the carrier the instrumentation extracts from
    -- an ASGI scope or a WSGI environ for the server instrumentations, so
    :func:`graylb.trust_networks` works. A predicate that raises means "untrusted". Overrides
    ``GRAYLB_OTEL_TRUST``; takes effect for the next request."""
    global _trust_check
    _trust_check = trust_check(setting, "carrier")


def gray_context(context: Context | None = None) -> GrayContext | None:
    """The gray context carried by an OpenTelemetry ``context`` (default: the current one), or
    ``None`` when it carries none."""
    found = (get_current() if context is None else context).get(_GRAY_KEY)
    return found if isinstance(found, GrayContext) else None


def _gray_in_current_otel_context(
    _get_current: Callable[[], Context] = get_current,
    _key: str = _GRAY_KEY,
    _empty: GrayContext = EMPTY,
) -> GrayContext:
    # graylb.current()'s fallback: runs per routed call where nothing was attached, so it is
    # kept to opentelemetry's contextvar read and a dict lookup (names bound as defaults: no
    # global lookups; about 90 ns, most of it opentelemetry.context.get_current).
    found = _get_current().get(_key, _empty)
    return found if type(found) is GrayContext else _empty


def _carries_gray(context: Context) -> bool:
    found = context.get(_GRAY_KEY)
    return isinstance(found, GrayContext) and not found.is_empty


def _joined(values: Iterable[str | bytes] | str | bytes | None) -> str | None:
    """One header value from a getter's answer: repeated fields joined with "," (as graylb's
    middleware does), read no further than the codec would. ``bytes`` are read as latin-1 (HTTP
    field bytes); anything else counts as absent."""
    if values is None or isinstance(values, str):
        return values
    if isinstance(values, (bytes, bytearray)):
        return bytes(values).decode("latin-1")
    out: str | None = None
    for value in values:
        if isinstance(value, (bytes, bytearray)):
            value = bytes(value).decode("latin-1")
        elif not isinstance(value, str):
            continue
        out = value if out is None else f"{out},{value}"
        if len(out) > MAX_HEADER_LENGTH:
            break
    return out


def _is_gray_key(key: str, prefix_folded: str) -> bool:
    # OpenTelemetry has percent-decoded the key already; compare case-insensitively, as the
    # codec's stripping does, so no spelling of a gray member slips through.
    return key.strip().lower().startswith(prefix_folded)


def _members(codec: HeaderCodec, ctx: GrayContext) -> list[tuple[str, str]]:
    """The gray baggage members of ``ctx`` as OpenTelemetry baggage entries (decoded values:
    the ``baggage`` propagator encodes them again)."""
    for name, value in codec.inject(ctx):  # cached on the context
        if name == BAGGAGE_HEADER:
            return [(key, unquote(encoded)) for key, _, encoded in (m.partition("=") for m in value.split(","))]
    return []


def without_gray(codec: HeaderCodec, context: Context | None = None) -> Context | None:
    """``context`` (default: the current one) with an empty gray context and without gray
    baggage members (those ``codec`` would strip), or ``None`` when it carries neither. graylb's
    middleware attaches this for an untrusted caller, so that what an OpenTelemetry
    instrumentation extracted before it is not forwarded by instrumented clients either."""
    if context is None:
        context = get_current()
    prefix = codec._prefix_folded
    stale = [key for key in otel_baggage.get_all(context) if _is_gray_key(key, prefix)]
    if not stale and not _carries_gray(context):
        return None
    for key in stale:
        context = otel_baggage.remove_baggage(key, context)
    return set_value(_GRAY_KEY, EMPTY, context)


class GrayPropagator(TextMapPropagator):
    """An OpenTelemetry ``TextMapPropagator`` for the gray context; see the module docstring.

    ``GrayPropagator(codec=None, *, trust=None)``: ``codec`` names the headers (default
    ``HeaderCodec()``); ``trust`` as in :func:`trust`, ``None`` to follow the module-wide
    setting (:func:`trust`, ``GRAYLB_OTEL_TRUST``). OpenTelemetry creates one from the entry
    point with no arguments. Creating one makes :func:`graylb.current` fall back to the gray
    context in the current OpenTelemetry context wherever graylb attached none.
    """

    def __init__(self, codec: HeaderCodec | None = None, *, trust: Trust | None = None) -> None:
        self.codec = codec if codec is not None else HeaderCodec()
        self._own_trust = trust is not None
        self._trust_check = trust_check(trust, "carrier") if trust is not None else None
        self._fields = set(self.codec.header_names)
        self._order_checked = False
        install_fallback(_gray_in_current_otel_context)

    def __repr__(self) -> str:
        return f"GrayPropagator({self.codec!r})"

    @property
    def fields(self) -> set[str]:
        """The headers :meth:`inject` writes (``x-gray-lane``, ``x-gray-pin``). :meth:`extract`
        reads ``baggage`` too, which the ``baggage`` propagator writes."""
        return set(self._fields)

    def extract(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        getter: Getter[CarrierT] = default_getter,
    ) -> Context:
        """``context`` (default: the current one, as the baggage propagator does) with the gray
        context of ``carrier`` under graylb's key and its gray baggage members replaced by that
        context's. A carrier with nothing gray returns ``context`` unchanged. Never raises."""
        if context is None:
            context = get_current()
        try:
            check = self._trust_check if self._own_trust else _trust_check
            if check is None or check(carrier):
                gray = self.codec.extract(lambda name: _joined(getter.get(carrier, name)))
                trusted = True
            else:
                gray = EMPTY
                trusted = False
                if not self._order_checked:
                    self._order_checked = True
                    _warn_if_before_baggage(self)
            return self._into(context, gray, trusted)
        except Exception:
            _logger.warning("graylb: could not extract the gray context for OpenTelemetry; ignoring it")
            _logger.debug("graylb: gray extraction failure", exc_info=True)
            return context

    def _into(self, context: Context, gray: GrayContext, trusted: bool) -> Context:
        codec = self.codec
        prefix = codec._prefix_folded
        stale = [key for key in otel_baggage.get_all(context) if _is_gray_key(key, prefix)]
        if gray.is_empty and not stale and (trusted or not _carries_gray(context)):
            return context  # nothing gray arrived (or nothing usable): leave the context alone
        for key in stale:
            context = otel_baggage.remove_baggage(key, context)
        if codec.baggage:
            for key, value in _members(codec, gray):
                context = otel_baggage.set_baggage(key, value, context)
        return set_value(_GRAY_KEY, gray, context)

    def inject(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        setter: Setter[CarrierT] = default_setter,
    ) -> None:
        """Write ``x-gray-lane`` / ``x-gray-pin`` for the gray context in ``context``, or for
        :func:`graylb.current` when ``context`` is ``None`` or carries none. Writes nothing for
        an empty context, and never ``baggage`` (see the module docstring). A failing setter is
        logged, not raised: gray headers never break the call.

        A ``context`` that merely inherits the current context's gray context -- instrumentations
        and graylb's own telemetry pass ``trace.set_span_in_context(span)``, built on the current
        context -- counts as none: :func:`graylb.current` then decides, so a ``graylb.gray(...)``
        block or a middleware's decision made since the extraction still holds."""
        gray = None
        if context is not None:
            found = context.get(_GRAY_KEY)
            if isinstance(found, GrayContext) and found is not get_current().get(_GRAY_KEY):
                gray = found
        if gray is None:
            gray = current()
        try:
            for name, value in self.codec.inject(gray):
                if name != BAGGAGE_HEADER:
                    setter.set(carrier, name, value)
        except Exception:
            _logger.warning("graylb: could not inject gray headers through OpenTelemetry", exc_info=True)


def _warn_if_before_baggage(propagator: GrayPropagator) -> None:
    """Once, at the first untrusted caller: if this propagator runs before the ``baggage``
    propagator in the global composite, that propagator puts the caller's gray baggage members
    into OpenTelemetry baggage after this one has run, and instrumented clients forward them."""
    try:
        # Late: opentelemetry.propagate builds the global propagators (this class among them) on import.
        from opentelemetry.propagate import get_global_textmap

        order = list(getattr(get_global_textmap(), "_propagators", ()))
        mine = next((i for i, p in enumerate(order) if p is propagator), None)
        theirs = [i for i, p in enumerate(order) if isinstance(p, W3CBaggagePropagator)]
        if mine is not None and any(i > mine for i in theirs):
            _logger.error(
                "graylb: OTEL_PROPAGATORS lists graylb before baggage, so gray baggage members from an untrusted "
                "caller stay in OpenTelemetry baggage and are forwarded; list graylb after baggage"
            )
    except Exception:
        _logger.debug("graylb: could not check the propagator order", exc_info=True)
