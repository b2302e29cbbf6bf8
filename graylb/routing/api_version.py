"""The API version a request asks for: from its ``Accept`` media type or a path segment.

Contract (both functions never raise, whatever the input; work is bounded by the limits below):

- :func:`accept_preference` reads every line of ``Accept`` as one list of media ranges
  (RFC 9110 section 12.5.1) and returns the *preferred* one: highest ``q``, the first listed on
  ties, ``q=0`` ("not acceptable") skipped. Media ranges that do not parse (no ``type/subtype``,
  a broken parameter, a ``q`` outside 0..1) are skipped like ``q=0`` ones, so one odd entry does
  not hide the others; a header longer than :data:`MAX_ACCEPT_LENGTH` characters, with more
  than :data:`MAX_MEDIA_RANGES` ranges or an unclosed quote is ignored whole.
  The preference is ``(media_type, vendor, version)``: ``vendor`` is set for
  ``application/vnd.<vendor>...`` types, ``version`` (always ``v<N>[.<M>...]``) comes from the
  first ``.v<N>[.<M>...]`` after the vendor name (``application/vnd.myapp.v2+json``, any or no
  ``+suffix``; a variant after it is ignored: ``vnd.github.v3.raw+json`` is ``github``, ``v3``)
  or else from a ``version=`` parameter (``application/vnd.myapp+json; version=2`` gives
  ``v2``). Media types are case-insensitive, so all three are lower-case.
- :func:`path_version` returns the first path segment of the form ``v<digits>[.<digits>]``
  (``/api/v2/users`` -> ``v2``), or with ``prefix`` (normalised to end with ``/``) only the
  segment right after it.

Parsed ``Accept`` values are kept in a small module-level cache (plain dict, cleared when full:
clients send few distinct values, and a flood of distinct ones only costs re-parsing).
"""

from __future__ import annotations

import re

__all__ = [
    "Preference",
    "accept_preference",
    "accept_version",
    "path_version",
    "normalise_prefix",
    "MAX_ACCEPT_LENGTH",
    "MAX_MEDIA_RANGES",
    "MAX_PATH_LENGTH",
]

#: Longer ``Accept`` values (all lines together) are ignored: real ones are a few hundred
#: characters at most, and no caller should be able to make parsing expensive.
MAX_ACCEPT_LENGTH = 1024
#: ``Accept`` values listing more media ranges than this are ignored.
MAX_MEDIA_RANGES = 32
#: Longer paths are not searched for a version segment.
MAX_PATH_LENGTH = 8192
_CACHE_SIZE = 256

#: ``(media_type, vendor or None, version or None)`` of the preferred media range.
Preference = tuple[str, "str | None", "str | None"]

# RFC 9110 tokens are ASCII, so the digit checks below never see Unicode digits.
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_QUOTED = r'"(?:[^"\\]|\\.)*"'
_MEDIA_RANGE = re.compile(rf"\s*({_TOKEN})/({_TOKEN})\s*")
# One "; name=value" (or an empty ";", which RFC 9110 allows) after the media range.
_PARAMETER = re.compile(rf"\s*;\s*(?:({_TOKEN})\s*=\s*({_TOKEN}|{_QUOTED})\s*)?")
# One list element: anything but commas, where a quoted string may hold commas.
_ELEMENT = re.compile(rf'(?:[^,"]|{_QUOTED})*')
_QVALUE = re.compile(r"0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?")
# At most 9 digits per number: a version is compared as integers further on, and Python
# refuses to convert very long digit strings.
_VERSION_HEAD = re.compile(r"v[0-9]{1,9}")
_NUMBER = re.compile(r"[0-9]{1,9}")
_VERSION_PARAM = re.compile(r"[vV]?([0-9]{1,9}(?:\.[0-9]{1,9})*)")
# \Z, not $: "$" would also match before a trailing newline.
_PATH_SEGMENT = re.compile(r"(?:^|/)(v[0-9]{1,9}(?:\.[0-9]{1,9})?)(?=/|\Z)")
_SEGMENT_AT = re.compile(r"v[0-9]{1,9}(?:\.[0-9]{1,9})?(?=/|\Z)")

_cache: dict[str, Preference | None] = {}
_MISS = object()


# --------------------------------------------------------------------------- Accept


def accept_preference(lines: list[str]) -> Preference | None:
    """The preferred media range of the ``Accept`` lines, or None (absent, nothing acceptable,
    or ignored as too long / too many ranges / malformed)."""
    if not lines:
        return None
    text = lines[0] if len(lines) == 1 else ", ".join(lines)
    if len(text) > MAX_ACCEPT_LENGTH:
        return None  # checked first: an over-long value must not become a cache key either
    found = _cache.get(text, _MISS)
    if found is _MISS:
        found = _parse_accept(text)
        if len(_cache) >= _CACHE_SIZE:
            _cache.clear()
        _cache[text] = found
    return found  # type: ignore[return-value]  # not _MISS here: a sentinel object() does not narrow


def accept_version(lines: list[str]) -> tuple[str, str] | None:
    """``(vendor, version)`` when the preferred media range is a vendor type with a version."""
    pref = accept_preference(lines)
    if pref is None or pref[1] is None or pref[2] is None:
        return None
    return pref[1], pref[2]


def _parse_accept(text: str) -> Preference | None:
    if text.count(",") >= MAX_MEDIA_RANGES:
        return None
    elements = _split_list(text)
    if elements is None:
        return None
    best: Preference | None = None
    best_q = 0.0
    for element in elements:
        if not element.strip():
            continue  # empty list elements are allowed (RFC 9110 section 5.6.1)
        parsed = _media_range(element)
        if parsed is not None and parsed[0] > best_q:  # strictly greater: the first listed wins ties
            best_q, best = parsed
    return best


def _split_list(text: str) -> list[str] | None:
    """Comma-separated elements, commas inside quoted strings kept; None for an unclosed quote."""
    if '"' not in text:
        return text.split(",")
    out: list[str] = []
    pos, end = 0, len(text)
    while True:
        m = _ELEMENT.match(text, pos)
        assert m is not None  # the pattern matches the empty string
        out.append(m.group())
        pos = m.end()
        if pos == end:
            return out
        if text[pos] != ",":
            return None  # a quote that never closes
        pos += 1


def _media_range(element: str) -> tuple[float, Preference] | None:
    """``(q, preference)`` of one media range, or None when it does not parse."""
    m = _MEDIA_RANGE.match(element)
    if m is None:
        return None
    kind, subtype = m.group(1).lower(), m.group(2).lower()
    q = 1.0
    version_param: str | None = None
    pos, end = m.end(), len(element)
    while pos < end:
        p = _PARAMETER.match(element, pos)
        if p is None or p.end() == pos:
            return None
        pos = p.end()
        name = p.group(1)
        if name is None:
            continue
        name = name.lower()
        if name == "q":
            if not _QVALUE.fullmatch(p.group(2)):
                return None
            q = float(p.group(2))
        elif name == "version":
            version_param = p.group(2).strip('"')
    vendor, version = _vendor_version(kind, subtype, version_param)
    return q, (f"{kind}/{subtype}", vendor, version)


def _vendor_version(kind: str, subtype: str, version_param: str | None) -> tuple[str | None, str | None]:
    """``vnd.myapp.v2+json`` -> ``("myapp", "v2")``; ``vnd.myapp+json`` with ``version=2`` ->
    ``("myapp", "v2")``; not an ``application/vnd.`` type -> ``(None, None)``."""
    if kind != "application" or not subtype.startswith("vnd."):
        return None, None
    name = subtype[4:].partition("+")[0]  # drop the structured-syntax suffix (+json, +xml)
    parts = name.split(".")
    if not all(parts):
        return None, None  # "vnd." or "vnd.a..b": not a vendor name
    # The first "v<N>" part after the vendor starts the version and the numbers after it extend
    # it: "mycorp.orders.v1.4" is vendor "mycorp.orders", version "v1.4". Parts after those
    # name a variant (GitHub's "vnd.github.v3.raw+json") and are not part of either.
    for i in range(1, len(parts)):
        if _VERSION_HEAD.fullmatch(parts[i]):
            j = i + 1
            while j < len(parts) and _NUMBER.fullmatch(parts[j]):
                j += 1
            return ".".join(parts[:i]), ".".join(parts[i:j])
    if version_param is not None:
        m = _VERSION_PARAM.fullmatch(version_param.strip())
        if m is not None:
            return name, "v" + m.group(1)
    return name, None


# --------------------------------------------------------------------------- path


def normalise_prefix(prefix: str) -> str:
    """``/api`` and ``/api/`` both mean "the segment right after /api/"."""
    return prefix if prefix.endswith("/") else prefix + "/"


def path_version(path: str, prefix: str | None = None) -> str | None:
    """The first ``v<digits>[.<digits>]`` path segment (``/api/v2/users`` -> ``v2``), or with a
    (normalised) ``prefix`` the segment right after it; None when there is none."""
    if len(path) > MAX_PATH_LENGTH:
        return None
    if prefix is None:
        m = _PATH_SEGMENT.search(path)
        return None if m is None else m.group(1)
    if not path.startswith(prefix):
        return None
    m = _SEGMENT_AT.match(path, len(prefix))
    return None if m is None else m.group()
