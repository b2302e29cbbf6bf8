"""Version parsing and version selectors.

Registries hold versions as free text. Semver ones (``1.2.3``, ``v1.2.3``, ``2.0.0-rc.1``) are
parsed so ranges work; anything else (``commit-abc123``, an image tag) stays a plain string that
exact selectors, pins and labels still match. Parsing happens when a snapshot is built, never per
call: :class:`VersionSelector` is compiled once and then answers ``matches(instance.semver, raw)``.
"""

from __future__ import annotations

import functools
import re

import semantic_version

from .errors import InvalidVersion

__all__ = ["parse_version", "VersionSelector"]

# Operator characters only: letters and spaces are not range syntax, so image tags and build
# names such as "nginx-1.25", "sha-xyz" or "linux-amd64" stay exact strings.
_RANGE_CHARS = re.compile(r"[\^~<>=*,|]")
# "1" or "1.4": a partial version means every version it prefixes (1.4 -> 1.4.x), not the
# literal string, which would never match an instance "1.4.2". "1.x" / "1.4.X" are the same
# thing spelled as a wildcard.
_PARTIAL = re.compile(r"^[vV]?\d+(\.\d+)?(\.[xX*])?$")


@functools.lru_cache(maxsize=4096)
def parse_version(raw: str | None) -> semantic_version.Version | None:
    """The semver of ``raw`` (a leading ``v`` is allowed), or None when it is not semver."""
    if not raw:
        return None
    text = raw.strip()
    if text[:1] in ("v", "V"):
        text = text[1:]
    try:
        return semantic_version.Version(text)
    except ValueError:
        return None


class VersionSelector:
    """Matches instance versions against ``"1.4.2"``, ``"v1.4.2"``, ``"^1.4"``, ``"~1.4"``,
    ``">=1.2,<2"``, ``"*"`` or a non-semver exact string such as ``"commit-abc123"``.

    - An exact semver (with or without ``v``) matches that version, whatever its spelling.
    - A partial version (``1``, ``v1.4``, ``1.4.x``) matches every version it prefixes.
    - A range matches semver versions inside it; non-semver versions never match a range.
    - Anything else is compared as an exact string.
    """

    __slots__ = ("text", "_exact", "_spec")

    def __init__(self, text: str) -> None:
        text = str(text).strip()
        if not text:
            raise InvalidVersion("empty version selector")
        self.text = text
        self._exact = parse_version(text)
        self._spec: semantic_version.SimpleSpec | None = None
        if self._exact is None and (_RANGE_CHARS.search(text) or _PARTIAL.match(text)):
            spec_text = text.replace(" ", "")
            # Accept a leading v inside ranges too: "^v1.4" / ">=v1.2,<v2".
            spec_text = re.sub(r"(?<=[\^~<>=,])[vV](?=\d)|^[vV](?=\d)", "", spec_text)
            spec_text = re.sub(r"\.[xX]$", ".*", spec_text)  # "1.4.x" -> "1.4.*"
            try:
                self._spec = semantic_version.SimpleSpec(spec_text)
            except ValueError as exc:
                raise InvalidVersion(f"invalid version range {text!r}: {exc}") from None

    @property
    def is_range(self) -> bool:
        return self._spec is not None

    def matches(self, raw: str | None, parsed: semantic_version.Version | None = None) -> bool:
        if raw is None:
            return False
        if parsed is None:
            parsed = parse_version(raw)
        if self._spec is not None:
            return parsed is not None and parsed in self._spec
        if self._exact is not None:
            return parsed is not None and parsed == self._exact
        return raw == self.text

    def __repr__(self) -> str:
        return f"VersionSelector({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VersionSelector) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)
