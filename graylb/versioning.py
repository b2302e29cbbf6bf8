"""Version parsing and version selectors.

Registries hold versions as free text, labelled the way each team does: ``v2``, ``2``,
``1.4.2``, ``v1.4.2``, ``2.0.0-rc.1``, an image tag ``my-service:v1.2.0``, a commit
``commit-abc123``. A :class:`VersionSelector` (from a subset, a pin or ``labels: {version: ...}``)
matches them by four rules, tried in order — the README's "Version selectors" table lists every
case:

1. **Same string**: a label equal to the selector, after dropping one leading ``v``/``V`` before a
   digit on both sides, always matches (``v2`` ~ ``2``, ``commit-abc123`` ~ ``commit-abc123``).
   Case-sensitive otherwise. Image tags and commit ids match this way only.
2. **Partial version** (``2``, ``v2``, ``v1.4``, ``1.4.x``): every version with that numeric prefix
   (``2`` selects ``2.1.0``, ``v2.0.5``, ``2.0.0-rc.1``; ``v1.4`` selects ``1.4.7``). Short labels
   count as zero-filled (label ``v1`` is ``1.0.0``, so ``1.0`` selects it, ``1.4`` does not).
3. **Range** (``^2``, ``~1.4``, ``>=1.2,<2``, ``*``): semver versions inside it, short labels read
   zero-filled (``v2`` as ``2.0.0``); prereleases follow semver (``^2`` leaves out ``2.0.0-rc.1``).
4. **Full version** (``1.4.2``, ``v2.0.0-rc.1``): the same semver version however spelled; a short
   label never equals a full version (``2.0.0`` does not select ``v2``: that label may be any 2.x).

Parsing happens when a snapshot or a pin is first seen, never per call: the router caches the
instances a selector picks.
"""

from __future__ import annotations

import functools
import re

import semantic_version

from .errors import InvalidVersion

__all__ = ["parse_version", "label_version", "VersionSelector"]

# Operator characters only: letters and spaces are not range syntax, so image tags and build
# names such as "nginx-1.25", "sha-xyz" or "linux-amd64" stay exact strings.
_RANGE_CHARS = re.compile(r"[\^~<>=*,|]")
# "1", "v1.4", "1.4.x", "1.x": a partial version means every version it prefixes.
_PARTIAL = re.compile(r"^[vV]?(\d+)(?:\.(\d+))?(?:\.[xX*])?$|^[vV]?(\d+)\.[xX*]$")
# A short label: "2", "v2", "1.4", "v1.4" (ranges read it zero-filled).
_SHORT = re.compile(r"^[vV]?(\d+)(?:\.(\d+))?$")


def _strip_v(text: str) -> str:
    """``v2`` -> ``2``, ``V1.4.2`` -> ``1.4.2``; ``vnext`` and ``commit-abc`` stay as they are."""
    return text[1:] if text[:1] in ("v", "V") and text[1:2].isdigit() else text


@functools.lru_cache(maxsize=4096)
def parse_version(raw: str | None) -> semantic_version.Version | None:
    """The semver of ``raw`` (a leading ``v`` is allowed), or None when it is not full semver."""
    if not raw:
        return None
    text = _strip_v(raw.strip())
    try:
        return semantic_version.Version(text)
    except ValueError:
        return None


@functools.lru_cache(maxsize=4096)
def label_version(raw: str | None) -> semantic_version.Version | None:
    """The version ranges and partial selectors compare a label as: full semver as it is, a short
    numeric label zero-filled (``v2`` -> ``2.0.0``, ``1.4`` -> ``1.4.0``), else None."""
    parsed = parse_version(raw)
    if parsed is not None or not raw:
        return parsed
    m = _SHORT.match(raw.strip())
    if m is None:
        return None
    return semantic_version.Version(major=int(m[1]), minor=int(m[2] or 0), patch=0)


class VersionSelector:
    """Matches instance version labels against a selector: ``"v2"``, ``"2"``, ``"1.4.2"``,
    ``"v1.4"``, ``"^1.4"``, ``"~1.4"``, ``">=1.2,<2"``, ``"*"``, or any other exact string such as
    ``"commit-abc123"`` or ``"my-service:v1.2.0"`` (see the module docstring for the rules)."""

    __slots__ = ("text", "kind", "_key", "_exact", "_prefix", "_spec", "_memo")

    def __init__(self, text: str) -> None:
        text = str(text).strip()
        if not text:
            raise InvalidVersion("empty version selector")
        self.text = text
        self._key = _strip_v(text)
        self._exact = parse_version(text)
        self._prefix: tuple[int, ...] = ()
        self._spec: semantic_version.SimpleSpec | None = None
        self._memo: dict[str, bool] = {}
        partial = _PARTIAL.match(text)
        if self._exact is not None:
            self.kind = "version"
        elif partial is not None:
            self.kind = "partial"
            self._prefix = tuple(int(g) for g in partial.groups() if g is not None)
        elif _RANGE_CHARS.search(text):
            self.kind = "range"
            spec_text = text.replace(" ", "")
            # Accept a leading v inside ranges too: "^v1.4" / ">=v1.2,<v2".
            spec_text = re.sub(r"(?<=[\^~<>=,])[vV](?=\d)|^[vV](?=\d)", "", spec_text)
            spec_text = re.sub(r"\.[xX]$", ".*", spec_text)  # "^1.4.x" -> "^1.4.*"
            try:
                self._spec = semantic_version.SimpleSpec(spec_text)
            except ValueError as exc:
                raise InvalidVersion(f"invalid version range {text!r}: {exc}") from None
        else:
            self.kind = "string"

    @property
    def is_range(self) -> bool:
        """True when the selector stands for many versions (a range or a partial version)."""
        return self.kind in ("range", "partial")

    def matches(self, raw: str | None, parsed: semantic_version.Version | None = None) -> bool:
        """Does the label ``raw`` match? ``parsed`` is its full semver when the caller has it.

        The answer depends on the label alone, and a fleet carries few distinct labels: it is
        remembered per selector (a range test builds several ``Version`` objects, ~15 us -- most
        of a 2,000-instance rebuild before this). Bounded: emptied when it reaches 1,024 labels."""
        if raw is None:
            return False
        memo = self._memo
        known = memo.get(raw)
        if known is None:
            known = self._matches(raw, parsed)
            if len(memo) >= 1024:
                memo.clear()
            memo[raw] = known
        return known

    def _matches(self, raw: str, parsed: semantic_version.Version | None) -> bool:
        if _strip_v(raw.strip()) == self._key:
            return True
        kind = self.kind
        if kind == "version":
            if parsed is None:
                parsed = parse_version(raw)
            return parsed is not None and parsed == self._exact
        if kind == "string":
            return False
        if parsed is None:
            parsed = label_version(raw)
        if parsed is None:
            return False
        if kind == "partial":
            return (parsed.major, parsed.minor, parsed.patch)[: len(self._prefix)] == self._prefix
        assert self._spec is not None
        return parsed in self._spec

    def suggestions(self) -> str:
        """How this selector reads, for messages: ``^2`` -> "a range", ``v2`` -> "version 2.x"."""
        if self.kind == "partial":
            return "version " + ".".join(map(str, self._prefix)) + ".x (any label with that prefix)"
        if self.kind == "range":
            return f"the semver range {self.text}"
        if self.kind == "version":
            return f"exactly version {self._exact}"
        return f"the exact label {self.text!r}"

    def __repr__(self) -> str:
        return f"VersionSelector({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VersionSelector) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)
