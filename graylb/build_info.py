"""Which build is this process? The version, image and commit a registration announces.

:class:`~graylb.consul.ConsulRegistration` and :class:`~graylb.nacos.NacosRegistration` both
call :func:`resolve_build_info`, so a container build only has to set its environment once and
either registry sees the same three values. Each value is taken from the first of these that is
set (an empty or blank value counts as unset; values are stripped):

=========  ====================================================================================
version    ``version=`` argument; the ``version`` key of the caller's ``meta`` / ``metadata``;
           ``SERVICE_VERSION``; ``OTEL_SERVICE_VERSION``;
           ``OTEL_RESOURCE_ATTRIBUTES`` ``service.version``
image      ``image=`` argument; ``meta`` / ``metadata`` key ``image``; ``SERVICE_IMAGE``;
           ``OTEL_RESOURCE_ATTRIBUTES`` ``container.image.name`` (plus ``:<first tag>`` from
           ``container.image.tags`` when the name carries no tag or digest)
commit     ``commit=`` argument; ``meta`` / ``metadata`` key ``commit``; ``SERVICE_COMMIT``;
           ``OTEL_RESOURCE_ATTRIBUTES`` ``vcs.ref.head.revision``
=========  ====================================================================================

``service.version``, ``container.image.name`` / ``container.image.tags`` and
``vcs.ref.head.revision`` are OpenTelemetry semantic-convention resource attributes, so a
service already describing itself to OpenTelemetry needs nothing more. ``OTEL_SERVICE_VERSION``
is not part of the OpenTelemetry specification (only ``OTEL_SERVICE_NAME`` is) but some
platforms set it, so it is read too.

``OTEL_RESOURCE_ATTRIBUTES`` is parsed as the OpenTelemetry SDK environment specification
describes it: comma-separated ``key=value`` pairs, whitespace around keys and values trimmed,
values percent-decoded (UTF-8; ``+`` is a literal plus). Where the specification lets an SDK
drop the whole variable on a malformed pair, graylb skips only that pair (no ``=``, empty key,
a ``%`` not followed by two hex digits, bytes that are not UTF-8): one typo elsewhere in the
variable must not make a service lose its version.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from urllib.parse import unquote

__all__ = [
    "BuildInfo",
    "resolve_build_info",
    "parse_resource_attributes",
    "VERSION_ENV",
    "IMAGE_ENV",
    "COMMIT_ENV",
    "RESOURCE_ATTRIBUTES_ENV",
]

#: plain variables holding the version, in the order they are read
VERSION_ENV = ("SERVICE_VERSION", "OTEL_SERVICE_VERSION")
IMAGE_ENV = "SERVICE_IMAGE"
COMMIT_ENV = "SERVICE_COMMIT"
RESOURCE_ATTRIBUTES_ENV = "OTEL_RESOURCE_ATTRIBUTES"

# OpenTelemetry semantic-convention resource attributes
_OTEL_VERSION = "service.version"
_OTEL_IMAGE_NAME = "container.image.name"  # stable
_OTEL_IMAGE_TAGS = "container.image.tags"  # stable; an array, so at most "a,b" once decoded
_OTEL_REVISION = "vcs.ref.head.revision"  # development status in the conventions

_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")

#: the metadata keys graylb's discovery reads back (``version``; ``image`` / ``commit`` as labels)
FIELDS = ("version", "image", "commit")


@dataclasses.dataclass(frozen=True)
class BuildInfo:
    """The resolved values (None = not found anywhere) and where each came from: ``"argument"``,
    the caller's metadata name (``"meta"`` / ``"metadata"``), an environment variable's name, or
    ``"OTEL_RESOURCE_ATTRIBUTES"``; None when the value is None."""

    version: str | None = None
    image: str | None = None
    commit: str | None = None
    version_source: str | None = None
    image_source: str | None = None
    commit_source: str | None = None

    def metadata(self) -> dict[str, str]:
        """The registry metadata to announce: only the keys that have a value."""
        return {name: value for name in FIELDS if (value := getattr(self, name)) is not None}

    def describe(self) -> str:
        """For log lines: ``version 2.0.0 from SERVICE_VERSION, image ... from argument``."""
        parts = [f"{name} {value} from {getattr(self, name + '_source')}" for name, value in self.metadata().items()]
        return ", ".join(parts) if parts else "no version"


def parse_resource_attributes(text: str | None) -> dict[str, str]:
    """``OTEL_RESOURCE_ATTRIBUTES`` as a dict (see the module docs). Malformed pairs are skipped;
    a repeated key keeps its last value, as the OpenTelemetry Python SDK does."""
    out: dict[str, str] = {}
    for item in (text or "").split(","):
        key, found, raw = item.partition("=")
        key = key.strip()
        if not found or not key:
            continue
        value = _percent_decode(raw.strip())
        if value is not None:
            out[key] = value
    return out


def _percent_decode(raw: str) -> str | None:
    """The decoded value, or None when the encoding is broken (the pair is skipped)."""
    if _BAD_PERCENT.search(raw):
        return None
    try:
        return unquote(raw, errors="strict")
    except UnicodeDecodeError:
        return None


def _clean(value: object) -> str | None:
    """A usable value, stripped; None for None, "" and blanks."""
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _image_from_otel(attrs: Mapping[str, str]) -> str | None:
    name = _clean(attrs.get(_OTEL_IMAGE_NAME))
    if name is None:
        return None  # a tag alone names no image
    last_segment = name.rsplit("/", 1)[-1]  # "registry:5000/orders": that colon is a port
    if "@" in name or ":" in last_segment:
        return name  # already tagged or pinned by digest
    tags = [t.strip() for t in (attrs.get(_OTEL_IMAGE_TAGS) or "").split(",") if t.strip()]
    return f"{name}:{tags[0]}" if tags else name


def _first(*candidates: tuple[str, object]) -> tuple[str | None, str | None]:
    """(value, source) of the first candidate with a usable value, else (None, None)."""
    for source, value in candidates:
        cleaned = _clean(value)
        if cleaned is not None:
            return cleaned, source
    return None, None


def resolve_build_info(
    *,
    version: object = None,
    image: object = None,
    commit: object = None,
    meta: Mapping[str, object] | None = None,
    meta_name: str = "meta",
    env: Mapping[str, str] | None = None,
) -> BuildInfo:
    """Resolve version, image and commit in the order of the module docs.

    ``meta`` is the caller's own registry metadata (its ``version`` / ``image`` / ``commit``
    keys are explicit too, named ``meta_name`` as their source); ``env`` defaults to
    ``os.environ`` (pass a dict in tests). Never raises: what to do without a version is the
    caller's decision.
    """
    env = os.environ if env is None else env
    meta = meta or {}
    otel = parse_resource_attributes(env.get(RESOURCE_ATTRIBUTES_ENV))
    v, v_src = _first(
        ("argument", version),
        (meta_name, meta.get("version")),
        *((name, env.get(name)) for name in VERSION_ENV),
        (RESOURCE_ATTRIBUTES_ENV, otel.get(_OTEL_VERSION)),
    )
    i, i_src = _first(
        ("argument", image),
        (meta_name, meta.get("image")),
        (IMAGE_ENV, env.get(IMAGE_ENV)),
        (RESOURCE_ATTRIBUTES_ENV, _image_from_otel(otel)),
    )
    c, c_src = _first(
        ("argument", commit),
        (meta_name, meta.get("commit")),
        (COMMIT_ENV, env.get(COMMIT_ENV)),
        (RESOURCE_ATTRIBUTES_ENV, otel.get(_OTEL_REVISION)),
    )
    return BuildInfo(v, i, c, v_src, i_src, c_src)


#: what :class:`~graylb.errors.MissingVersion` says was looked at (keep in step with the order above)
MISSING_VERSION_HINT = (
    f"pass version=..., or set {', '.join(VERSION_ENV)} or {RESOURCE_ATTRIBUTES_ENV}={_OTEL_VERSION}=..."
)
