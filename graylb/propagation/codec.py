"""Gray context <-> HTTP headers.

Two encodings travel side by side so that every hop can read at least one of them:

* plain headers, for callers that do not speak baggage::

      x-gray-lane: beta;forced
      x-gray-pin: orders=2.0.0,payments=%3E%3D1.2%2C%3C2

  (pin selectors are percent-encoded because ranges such as ``>=1.2,<2`` contain commas);

* W3C ``baggage`` members under a prefix, so the context also survives hops that only forward
  OpenTelemetry baggage::

      baggage: gray.lane=beta,gray.lane.forced=1,gray.pin.orders=2.0.0,gray.user-group=beta

  Free-form gray values travel in baggage only.

Contract: :meth:`HeaderCodec.extract` never raises, whatever arrives, and does bounded work
(W3C limits: 8192 bytes per header, 180 members, 4096 bytes per member). Names (lane, services,
value keys) must match ``[A-Za-z0-9._-]{1,64}``; values must be printable ASCII of at most
``max_value_length`` characters after percent-decoding. A bad item is skipped on its own; the
rest of the header still counts. :meth:`HeaderCodec.inject` applies the same rules to what it
sends, so whatever one graylb process sends, the next one accepts.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
from collections.abc import Callable, Iterable
from typing import Any, TypeVar
from urllib.parse import quote, unquote, unquote_plus

from .context import EMPTY, GrayContext

__all__ = ["HeaderCodec", "BAGGAGE_HEADER", "MAX_HEADER_LENGTH", "MAX_MEMBERS", "MAX_MEMBER_LENGTH"]

_logger = logging.getLogger("graylb.propagation")

BAGGAGE_HEADER = "baggage"
# The W3C baggage limits, as enforced by opentelemetry's W3CBaggagePropagator. We apply the
# header and member-count limits to the plain pin header as well: it is a list of the same kind.
MAX_HEADER_LENGTH = 8192
MAX_MEMBERS = 180
MAX_MEMBER_LENGTH = 4096

_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_PRINTABLE = re.compile(r"[\x20-\x7e]*")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_HEADER_NAME = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+")  # RFC 9110 token, lower-case
_PREFIX = re.compile(r"[A-Za-z0-9._-]{1,32}")
_OWS = " \t"
# W3C baggage-octets kept readable in baggage values. Everything else is percent-encoded,
# including '+' (opentelemetry-python decodes it as a space) and '=' (naive splitters).
_BAGGAGE_SAFE = "!#$&'()*/:<>?@[]^`{|}~"
_TRUE = frozenset({"1", "true", "yes"})
# Only short header combinations are worth caching: long ones are rare and would pin memory.
_CACHEABLE_LENGTH = 4096
_PARSE_CACHE_SIZE = 512
_LOG_EXCERPT = 64

T = TypeVar("T", str, bytes)


def _excerpt(text: Any) -> str:
    """A log-safe excerpt of attacker-controlled text: short, control characters escaped."""
    text = str(text)
    return repr(text[:_LOG_EXCERPT]) + ("..." if len(text) > _LOG_EXCERPT else "")


def _as_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("latin-1")  # HTTP field bytes; latin-1 never fails
    return None


def _bounded_members(raw: str, what: str, problems: list[str]) -> list[str]:
    """Split a comma-separated list header, reading at most the W3C limits.

    An over-long header is cut back to the last complete member, so a member is never read
    half-way; the work stays proportional to the limits, not to what the caller sent.
    """
    if len(raw) > MAX_HEADER_LENGTH:
        cut = raw.rfind(",", 0, MAX_HEADER_LENGTH + 1)
        raw = raw[:cut] if cut > 0 else ""
        problems.append(f"{what} header longer than {MAX_HEADER_LENGTH}: read its first members only")
    members = raw.split(",", MAX_MEMBERS)
    if len(members) > MAX_MEMBERS:
        members.pop()  # the unsplit remainder
        problems.append(f"{what} header has more than {MAX_MEMBERS} members: read the first {MAX_MEMBERS}")
    return members


def _join_bounded(members: Iterable[str], length: int = 0, count: int = 0) -> tuple[list[str], int]:
    """Members that fit the W3C limits given ``length``/``count`` already used; whole members
    only (a receiver must never see a partial one). Returns (kept, number dropped)."""
    kept: list[str] = []
    dropped = 0
    for member in members:
        extra = len(member) + (1 if length else 0)
        if count >= MAX_MEMBERS or length + extra > MAX_HEADER_LENGTH or len(member) > MAX_MEMBER_LENGTH:
            dropped += 1
            continue
        kept.append(member)
        length += extra
        count += 1
    return kept, dropped


class HeaderCodec:
    """Serialise a :class:`GrayContext` into outbound headers and parse inbound ones.

    ``HeaderCodec(lane_header="x-gray-lane", pin_header="x-gray-pin", baggage=True,
    baggage_prefix="gray.", max_pins=32, max_values=32, max_value_length=256)``

    * :meth:`inject` -- header pairs for a context; cached on the (immutable) context, so
      repeated injection of one context is a dict lookup.
    * :meth:`merge_baggage` -- fold our members into a ``baggage`` header that is already there.
    * :meth:`extract` -- the context carried by inbound headers; never raises.
    * :meth:`strip_headers` / :meth:`strip_baggage` -- remove gray items from an untrusted
      request (the edge).

    ``baggage=False`` stops sending and reading baggage members (free-form values then do not
    travel); stripping still removes them, since a later hop may read them.
    A codec is stateless apart from caches and is safe to share between threads.
    """

    __slots__ = (
        "lane_header",
        "pin_header",
        "baggage",
        "baggage_prefix",
        "max_pins",
        "max_values",
        "max_value_length",
        "_cache_key",
        "_extract_names",
        "_plain_names",
        "_prefix_folded",
        "_max_raw_value",
        "_parse_cached",
        "_warned",
    )

    def __init__(
        self,
        lane_header: str = "x-gray-lane",
        pin_header: str = "x-gray-pin",
        baggage: bool = True,
        baggage_prefix: str = "gray.",
        max_pins: int = 32,
        max_values: int = 32,
        max_value_length: int = 256,
    ) -> None:
        lane_header = str(lane_header).lower()
        pin_header = str(pin_header).lower()
        for header in (lane_header, pin_header):
            if not _HEADER_NAME.fullmatch(header) or header == BAGGAGE_HEADER:
                raise ValueError(f"invalid gray header name {header!r}")
        if lane_header == pin_header:
            raise ValueError("lane_header and pin_header must differ")
        if not _PREFIX.fullmatch(baggage_prefix):
            raise ValueError(f"invalid baggage prefix {baggage_prefix!r}: use [A-Za-z0-9._-]{{1,32}}")
        for name, value, low, high in (
            ("max_pins", max_pins, 0, MAX_MEMBERS),
            ("max_values", max_values, 0, MAX_MEMBERS),
            ("max_value_length", max_value_length, 1, 1024),
        ):
            if not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{name} must be an int in [{low}, {high}], got {value!r}")

        self.lane_header = lane_header
        self.pin_header = pin_header
        self.baggage = bool(baggage)
        self.baggage_prefix = baggage_prefix
        self.max_pins = max_pins
        self.max_values = max_values
        self.max_value_length = max_value_length
        # Codecs with equal settings produce equal headers, so they share one interned key in
        # GrayContext._wire_cache (an interned str hashes once and compares by identity).
        self._cache_key = sys.intern(
            f"graylb.codec|{lane_header}|{pin_header}|{int(self.baggage)}|{baggage_prefix}"
            f"|{max_pins}|{max_values}|{max_value_length}"
        )
        self._plain_names = (lane_header, pin_header)
        self._extract_names = self._plain_names + ((BAGGAGE_HEADER,) if self.baggage else ())
        self._prefix_folded = baggage_prefix.lower()
        self._max_raw_value = 3 * max_value_length  # fully percent-encoded worst case
        # Extraction is a pure function of the header strings and returns an immutable context:
        # a small LRU makes repeated inbound headers cheap *and* hands out the same context
        # object, whose inject cache then also hits on the way out.
        self._parse_cached = functools.lru_cache(maxsize=_PARSE_CACHE_SIZE)(self._parse)
        self._warned = False

    def __repr__(self) -> str:
        return (
            f"HeaderCodec(lane_header={self.lane_header!r}, pin_header={self.pin_header!r}, "
            f"baggage={self.baggage!r}, baggage_prefix={self.baggage_prefix!r}, max_pins={self.max_pins}, "
            f"max_values={self.max_values}, max_value_length={self.max_value_length})"
        )

    @property
    def header_names(self) -> tuple[str, str]:
        """The plain header names (lane, pin), lower-case."""
        return self._plain_names

    # ------------------------------------------------------------------ outbound

    def inject(self, ctx: GrayContext) -> tuple[tuple[str, str], ...]:
        """The header pairs carrying ``ctx``: ``()`` for an empty context.

        Items the receiver would reject (bad names, non-printable or over-long values, reserved
        value keys, anything over the limits) are left out, with one log line.
        """
        try:
            return ctx._wire_cache[self._cache_key]
        except KeyError:
            pass
        except AttributeError:  # not a GrayContext: nothing to send
            return ()
        try:
            pairs = self._render(ctx)
        except Exception:  # never let header rendering break the call itself
            _logger.warning("graylb: could not serialise the gray context; sending no gray headers", exc_info=True)
            pairs = ()
        # Safe without a lock: the context is immutable, so racing writers store equal tuples.
        ctx._wire_cache[self._cache_key] = pairs
        return pairs

    def merge_baggage(self, existing: str | None, ctx: GrayContext) -> str | None:
        """The ``baggage`` value to send when the request already has one.

        Keeps the foreign members of ``existing`` verbatim and in order, drops its gray members
        (they may be stale: the context can change between hops) and appends ours. Foreign
        members are never dropped for room; ours are added while the W3C limits allow (the plain
        headers carry lane and pins regardless). ``None`` when nothing is left.
        """
        try:
            ours = ""
            for name, value in self.inject(ctx):
                if name == BAGGAGE_HEADER:
                    ours = value
            if not existing:
                return ours or None
            kept = [m for m in (s.strip(_OWS) for s in existing.split(",")) if m and not self._is_gray_member(m)]
            if ours:
                used = sum(len(m) for m in kept) + max(len(kept) - 1, 0)
                added, dropped = _join_bounded(ours.split(","), used, len(kept))
                if dropped:
                    self._report(
                        [f"{dropped} gray baggage member(s) left out: the baggage header is full"], outbound=True
                    )
                kept.extend(added)
            return ",".join(kept) or None
        except Exception:
            _logger.warning("graylb: could not merge gray baggage; leaving the header as it was", exc_info=True)
            return existing

    def _render(self, ctx: GrayContext) -> tuple[tuple[str, str], ...]:
        if ctx.is_empty:
            return ()
        problems: list[str] = []
        lane = ctx.lane
        if lane is not None and not _NAME.fullmatch(lane):
            problems.append(f"lane {_excerpt(lane)} is not a valid name")
            lane = None
        pins = self._sendable(ctx.pins.items(), self.max_pins, "pin", problems)
        values = self._sendable(
            ((k, v) for k, v in ctx.values.items() if not self._reserved(k, problems)),
            self.max_values,
            "value",
            problems,
        )

        pairs: list[tuple[str, str]] = []
        if lane is not None:
            pairs.append((self.lane_header, f"{lane};forced" if ctx.lane_forced else lane))
        if pins:
            kept, dropped = _join_bounded(f"{s}={quote(sel, safe='')}" for s, sel in pins)
            if dropped:
                problems.append(f"{dropped} pin(s) left out: the {self.pin_header} header is full")
            pairs.append((self.pin_header, ",".join(kept)))
        if self.baggage:
            prefix = self.baggage_prefix
            members: list[str] = []
            if lane is not None:
                members.append(f"{prefix}lane={lane}")
                if ctx.lane_forced:
                    members.append(f"{prefix}lane.forced=1")
            members.extend(f"{prefix}pin.{s}={quote(sel, safe=_BAGGAGE_SAFE)}" for s, sel in pins)
            members.extend(f"{prefix}{k}={quote(v, safe=_BAGGAGE_SAFE)}" for k, v in values)
            kept, dropped = _join_bounded(members)
            if dropped:
                problems.append(f"{dropped} gray baggage member(s) left out: the baggage header is full")
            if kept:
                pairs.append((BAGGAGE_HEADER, ",".join(kept)))
        if problems:
            self._report(problems, outbound=True)
        return tuple(pairs)

    def _sendable(
        self, items: Iterable[tuple[str, str]], limit: int, what: str, problems: list[str]
    ) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for key, value in items:
            if not _NAME.fullmatch(key):
                problems.append(f"{what} name {_excerpt(key)} is not a valid name")
            elif not (0 < len(value) <= self.max_value_length and _PRINTABLE.fullmatch(value)):
                problems.append(f"{what} {key!r}: value must be 1..{self.max_value_length} printable ASCII characters")
            elif len(out) >= limit:
                problems.append(f"more than {limit} {what}s: {key!r} left out")
            else:
                out.append((key, value))
        return out

    @staticmethod
    def _reserved(key: str, problems: list[str]) -> bool:
        if key in ("lane", "lane.forced") or key.startswith("pin."):
            problems.append(f"value key {key!r} is reserved")
            return True
        return False

    # ------------------------------------------------------------------ inbound

    def extract(self, get: Callable[[str], str | None], base: GrayContext | None = None) -> GrayContext:
        """The gray context carried by a request's headers, merged over ``base``.

        ``get(name)`` answers a lower-case header name with its value (``str``, or ``bytes``
        read as latin-1) or ``None``. Baggage members are read first, then the plain headers,
        which win for the same item (a plain lane brings its own forced flag). Returns ``base``
        (or ``EMPTY``) when nothing valid arrived. Never raises: a failing ``get`` counts as no
        headers, bad items are skipped with one log line that quotes at most 64 characters.
        """
        try:
            lane_raw = _as_text(get(self.lane_header))
            pin_raw = _as_text(get(self.pin_header))
            baggage_raw = _as_text(get(BAGGAGE_HEADER)) if self.baggage else None
            if lane_raw is None and pin_raw is None and baggage_raw is None:
                found = EMPTY
            elif len(lane_raw or "") + len(pin_raw or "") + len(baggage_raw or "") <= _CACHEABLE_LENGTH:
                found = self._parse_cached(lane_raw, pin_raw, baggage_raw)
            else:
                found = self._parse(lane_raw, pin_raw, baggage_raw)
            if base is None or base.is_empty:
                return found
            if found.is_empty:
                return base
            return base.merged(
                lane=found.lane,
                lane_forced=found.lane_forced if found.lane is not None else None,
                pins=found.pins,
                values=found.values,
            )
        except Exception:
            _logger.warning("graylb: could not read gray headers; ignoring them")
            _logger.debug("graylb: gray header failure", exc_info=True)
            return base if isinstance(base, GrayContext) else EMPTY

    def _parse(self, lane_raw: str | None, pin_raw: str | None, baggage_raw: str | None) -> GrayContext:
        problems: list[str] = []
        lane: str | None = None
        forced = False
        pins: dict[str, str] = {}
        values: dict[str, str] = {}
        if baggage_raw:
            lane, forced = self._read_baggage(baggage_raw, pins, values, problems)
        if lane_raw is not None:
            plain = self._read_lane(lane_raw, problems)
            if plain is not None:
                lane, forced = plain
        if pin_raw:
            self._read_pins(pin_raw, pins, problems)
        if problems:
            self._report(problems)
        if lane is None and not pins and not values:
            return EMPTY
        return GrayContext(lane=lane, lane_forced=forced and lane is not None, pins=pins, values=values)

    def _read_lane(self, raw: str, problems: list[str]) -> tuple[str, bool] | None:
        if len(raw) > 128:  # a 64-character name plus flags; checked first to bound the work
            problems.append(f"{self.lane_header} too long: {_excerpt(raw)}")
            return None
        raw = raw.strip(_OWS)
        if not raw:
            return None
        lane, *flags = raw.split(";")
        lane = lane.strip(_OWS)
        if not _NAME.fullmatch(lane):
            problems.append(f"{self.lane_header} {_excerpt(raw)} is not a valid lane")
            return None
        return lane, any(f.strip(_OWS).lower() == "forced" for f in flags)

    def _read_pins(self, raw: str, pins: dict[str, str], problems: list[str]) -> None:
        for member in _bounded_members(raw, self.pin_header, problems):
            member = member.strip(_OWS)
            if not member:
                continue
            service, sep, encoded = member.partition("=")
            service = service.rstrip(_OWS)
            selector = self._decode_value(encoded.lstrip(_OWS)) if sep else None
            if not _NAME.fullmatch(service) or selector is None:
                problems.append(f"{self.pin_header} member {_excerpt(member)} is not service=selector")
                continue
            self._put(pins, service, selector, self.max_pins, "pin", problems)

    def _read_baggage(
        self, raw: str, pins: dict[str, str], values: dict[str, str], problems: list[str]
    ) -> tuple[str | None, bool]:
        prefix = self.baggage_prefix
        skip = len(prefix)
        lane: str | None = None
        forced = False
        for member in _bounded_members(raw, BAGGAGE_HEADER, problems):
            member = member.strip(_OWS)
            if not member.startswith(prefix):  # empty, or someone else's member: not ours to judge
                continue
            if len(member) > MAX_MEMBER_LENGTH:
                problems.append(f"baggage member {_excerpt(member)} longer than {MAX_MEMBER_LENGTH}")
                continue
            key, sep, encoded = member.partition("=")
            name = key.rstrip(_OWS)[skip:]
            # W3C properties (";prop=x") qualify a member; gray values have none, so drop them.
            value = self._decode_value(encoded.split(";", 1)[0].strip(_OWS)) if sep else None
            if value is None:
                problems.append(f"baggage member {_excerpt(member)} has no valid value")
            elif name == "lane":
                if _NAME.fullmatch(value):
                    lane = value
                else:
                    problems.append(f"baggage lane {_excerpt(value)} is not a valid lane")
            elif name == "lane.forced":
                forced = value.lower() in _TRUE
            elif name.startswith("pin."):
                service = name[4:]
                if _NAME.fullmatch(service):
                    self._put(pins, service, value, self.max_pins, "pin", problems)
                else:
                    problems.append(f"baggage pin {_excerpt(service)} is not a valid service name")
            elif _NAME.fullmatch(name):
                self._put(values, name, value, self.max_values, "value", problems)
            else:
                problems.append(f"baggage key {_excerpt(key)} is not a valid gray key")
        return lane, forced

    def _decode_value(self, raw: str) -> str | None:
        """Percent-decoded value, or None unless it is 1..max_value_length printable ASCII.

        Decoding follows W3C baggage (``unquote``): '+' stays '+', which semver build metadata
        needs. Malformed escapes ("%zz", "%4") are rejected rather than passed through.
        """
        if not raw or len(raw) > self._max_raw_value:
            return None
        if "%" in raw:
            if _BAD_PERCENT.search(raw):
                return None
            raw = unquote(raw, errors="replace")  # bad UTF-8 becomes U+FFFD, refused below
        if len(raw) > self.max_value_length or not _PRINTABLE.fullmatch(raw):
            return None
        return raw

    @staticmethod
    def _put(target: dict[str, str], key: str, value: str, limit: int, what: str, problems: list[str]) -> None:
        # Replacing an item does not count against the limit: that is how plain headers win.
        if key in target or len(target) < limit:
            target[key] = value
        else:
            problems.append(f"more than {limit} {what}s: {key!r} ignored")

    def _report(self, problems: list[str], outbound: bool = False) -> None:
        # One line per request; WARNING once per codec so a misbehaving neighbour is noticed,
        # then DEBUG so garbage from the internet cannot flood the logs.
        direction = "outbound" if outbound else "inbound"
        message = "graylb: skipped %d bad %s gray item(s); first: %s"
        if not self._warned:
            self._warned = True
            _logger.warning(message + " (further reports at DEBUG level)", len(problems), direction, problems[0])
        else:
            _logger.debug(message, len(problems), direction, problems[0])

    # ------------------------------------------------------------------ edge

    def strip_baggage(self, value: str) -> str | None:
        """``value`` (a baggage header) without its gray members; ``None`` when nothing is left.

        Deliberately broader than :meth:`extract`: the key is percent-decoded (as
        opentelemetry-python does) and compared case-insensitively, so no spelling of a gray
        member slips through to a hop that reads baggage differently.
        """
        kept = [m for m in (s.strip(_OWS) for s in value.split(",")) if m and not self._is_gray_member(m)]
        return ",".join(kept) or None

    def strip_headers(self, items: list[tuple[T, T]]) -> list[tuple[T, T]]:
        """``items`` without the plain gray headers and without the gray members of any baggage
        header (its other members stay; an emptied baggage header goes). Names and values may be
        ``bytes`` (ASGI) or ``str``; each kept item keeps its type. Items that are not
        (name, value) pairs are passed through untouched.
        """
        out: list[Any] = []
        name: Any  # str or bytes, item by item (and anything at all in a malformed item)
        value: Any
        for item in items:
            try:
                name, value = item
                lname = (name.decode("latin-1") if isinstance(name, (bytes, bytearray)) else str(name)).lower()
            except Exception:
                out.append(item)
                continue
            if lname in self._plain_names:
                continue
            if lname == BAGGAGE_HEADER:
                is_bytes = isinstance(value, (bytes, bytearray))
                stripped = self.strip_baggage(value.decode("latin-1") if is_bytes else str(value))
                if stripped is None:
                    continue
                out.append((name, stripped.encode("latin-1") if is_bytes else stripped))
                continue
            out.append(item)
        return out

    def _is_gray_member(self, member: str) -> bool:
        key = member.split("=", 1)[0].strip(_OWS)
        if "%" in key or "+" in key:
            key = unquote_plus(key).strip()
        return key.lower().startswith(self._prefix_folded)
