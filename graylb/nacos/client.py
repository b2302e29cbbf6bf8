"""How to reach Nacos: address and context path, credentials, namespace / group / clusters,
Open API version, TLS. One object shared by discovery, rules, registration and the CLI.

Credentials are used only to log in (``POST /v1/auth/login``, in the form body); requests then
carry the short-lived ``accessToken`` (see :mod:`graylb.nacos.auth`). The password is never in
``repr()``, a URL, a log line or an exception message.

Namespaces: a Nacos namespace has one ID for naming and config, except the default one, which
naming calls ``public`` and config calls ``""`` (``tenant=public`` is a *different* config key on
many servers). :meth:`NacosConfig.from_env` and the CLI translate one namespace value into both
(``namespace_pair``); the dataclass itself takes ``namespace`` and ``config_tenant`` separately.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

from ..errors import GraylbError

__all__ = [
    "NacosConfig",
    "NacosError",
    "NacosAuthError",
    "NacosUnavailable",
    "check_response",
    "content_md5",
    "namespace_pair",
    "DEFAULT_GROUP",
]

DEFAULT_GROUP = "DEFAULT_GROUP"


class NacosError(GraylbError):
    """Nacos answered with an error (status and Nacos's own text are in the message)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class NacosAuthError(NacosError):
    """403: the login was refused (wrong user or password), or a request was refused even after
    logging in again (the user lacks a permission). The message names the user, never the
    password or the token."""


class NacosUnavailable(NacosError):
    """Nacos could not be reached, or answered 429 / 5xx: retry later."""


def namespace_pair(namespace: str | None) -> tuple[str, str]:
    """One namespace value -> (naming ``namespaceId``, config ``tenant``): empty or ``public``
    is the default namespace (``"public"``, ``""``); any other ID is the same for both."""
    ns = (namespace or "").strip()
    if not ns or ns == "public":
        return "public", ""
    return ns, ns


@dataclasses.dataclass(frozen=True)
class NacosConfig:
    """``NacosConfig("http://127.0.0.1:8848", username=..., password=...)``; :meth:`from_env`
    reads ``NACOS_ADDR`` / ``NACOS_SERVER_ADDR``, ``NACOS_NAMESPACE``, ``NACOS_GROUP``,
    ``NACOS_USERNAME`` and ``NACOS_PASSWORD``.

    ``address`` is the server's base URL (``host:port`` means ``http://host:port``);
    ``context_path`` (``/nacos``) is appended for every request. ``clusters`` empty = all.
    ``api_version`` ``v1`` or ``v2`` selects the naming Open API (config always uses v1).
    ``verify`` is True (system CA store), False (tests only) or a CA bundle path; ``cert`` a
    client certificate path or ``(cert, key)``.
    """

    address: str = "http://127.0.0.1:8848"
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    namespace: str = "public"
    # None: derived from ``namespace`` (public -> "", Nacos's default config tenant; any other
    # namespace id -> the same id), so discovery and rules read the same namespace.
    config_tenant: str | None = None
    group: str = DEFAULT_GROUP
    clusters: tuple[str, ...] = ()
    api_version: str = "v1"
    context_path: str = "/nacos"
    verify: bool | str = True
    cert: str | tuple[str, str] | None = None
    timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.config_tenant is None:
            object.__setattr__(self, "config_tenant", namespace_pair(self.namespace)[1])
        address = str(self.address).strip()
        if "://" not in address:
            address = "http://" + address
        parts = urlsplit(address)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"Nacos address {_safe_address(self.address)!r}: expected http(s)://host:port")
        if parts.username or parts.password or parts.query:
            raise ValueError(
                "Nacos address: put the credentials in username= / password= (NACOS_USERNAME / NACOS_PASSWORD), not "
                "in the URL"
            )
        ctx = "/" + str(self.context_path or "").strip().strip("/")
        ctx = "" if ctx == "/" else ctx
        object.__setattr__(self, "context_path", ctx)
        path = parts.path.rstrip("/")
        if path:
            if path != ctx:  # "http://h:8848/nacos" is a common way to write it: same thing
                raise ValueError(
                    f"Nacos address {address!r}: give the context path as context_path= (default '/nacos'), not in "
                    "the address"
                )
            address = address.rstrip("/")[: -len(path)]
        object.__setattr__(self, "address", address.rstrip("/"))
        if self.api_version not in ("v1", "v2"):
            raise ValueError(f"Nacos api_version {self.api_version!r}: expected 'v1' or 'v2'")
        clusters = self.clusters
        if isinstance(clusters, str):
            clusters = tuple(c.strip() for c in clusters.split(",") if c.strip())
        object.__setattr__(self, "clusters", tuple(clusters))
        if not self.group:
            object.__setattr__(self, "group", DEFAULT_GROUP)
        if not self.namespace:
            object.__setattr__(self, "namespace", "public")
        if self.password and not self.username:
            raise ValueError("Nacos: a password was given without a username (set NACOS_USERNAME)")
        if self.username and not self.password:
            raise ValueError(f"Nacos: user {self.username!r} has no password (set NACOS_PASSWORD)")
        if self.timeout <= 0:
            raise ValueError(f"Nacos timeout must be positive, got {self.timeout!r}")

    @classmethod
    def from_env(cls, address: str | None = None, env: Mapping[str, str] | None = None, **kw: Any) -> NacosConfig:
        """Explicit arguments win over the environment. ``NACOS_SERVER_ADDR`` may list several
        servers (``h1:8848,h2:8848``, as the official SDKs take it): the first is used.
        ``NACOS_NAMESPACE`` sets both the naming namespace and the config tenant (see
        :func:`namespace_pair`) unless ``namespace=`` / ``config_tenant=`` are given."""
        env = os.environ if env is None else env
        addr = address or env.get("NACOS_ADDR") or env.get("NACOS_SERVER_ADDR") or "http://127.0.0.1:8848"
        addr = addr.split(",")[0].strip()
        if "namespace" not in kw or "config_tenant" not in kw:
            naming, tenant = namespace_pair(kw.get("namespace", env.get("NACOS_NAMESPACE")))
            kw.setdefault("namespace", naming)
            kw.setdefault("config_tenant", tenant)
        if "group" not in kw and env.get("NACOS_GROUP"):
            kw["group"] = env["NACOS_GROUP"]
        kw.setdefault("username", env.get("NACOS_USERNAME") or None)
        kw.setdefault("password", env.get("NACOS_PASSWORD") or None)
        return cls(addr, **kw)

    @property
    def base_url(self) -> str:
        """``address`` + ``context_path``: what request paths (``/v1/...``) are relative to."""
        return self.address + self.context_path

    @property
    def has_credentials(self) -> bool:
        return bool(self.username)

    def _httpx_kwargs(self) -> dict[str, Any]:
        return {
            "base_url": self.base_url,
            "verify": self.verify,
            "cert": self.cert,
            "timeout": httpx.Timeout(self.timeout),
            "headers": {"User-Agent": "graylb-nacos"},
        }

    def client(self) -> httpx.Client:
        return httpx.Client(**self._httpx_kwargs())

    def async_client(self, max_connections: int = 20) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            **self._httpx_kwargs(),
        )


def content_md5(content: str | bytes) -> str:
    """What Nacos compares (config MD5, long-polling checksums, ``casMd5``): lowercase,
    zero-padded hex MD5 of the UTF-8 bytes."""
    data = content.encode("utf-8") if isinstance(content, str) else content
    return hashlib.md5(data).hexdigest()


def _safe_address(address: Any) -> str:
    """An address for a message, without any ``user:password@``."""
    text = str(address)
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "", text
    host_part, slash, tail = rest.partition("/")
    if "@" in host_part:
        host_part = host_part.rsplit("@", 1)[1]
    return (scheme + sep if sep else "") + host_part + slash + tail.split("?", 1)[0]


def check_response(response: httpx.Response, what: str) -> None:
    """Translate a Nacos error into the graylb exception a caller can act on: 403 ->
    :class:`NacosAuthError`; 429 / 5xx -> :class:`NacosUnavailable`; any other 4xx ->
    :class:`NacosError`; a 2xx v2 envelope (``{"code", "message", "data"}``) with a non-zero
    ``code`` -> :class:`NacosError` with Nacos's message. ``what`` names the operation and
    object ("listing instances of service 'orders'"); no message carries a token."""
    status = response.status_code
    text = _body_text(response)
    if status == 403:
        raise NacosAuthError(
            f"Nacos refused {what}: forbidden (403 {text!r}); check the user's permissions, or set NACOS_USERNAME / "
            "NACOS_PASSWORD if the server has auth enabled",
            status,
        )
    if status == 429 or status >= 500:
        raise NacosUnavailable(f"Nacos unavailable while {what}: {status} {text!r}", status)
    if status >= 400:
        raise NacosError(f"Nacos rejected {what}: {status} {text!r}", status)
    envelope = _v2_envelope(response)
    if envelope is not None:
        code, message = envelope
        if code != 0:
            if code == 10001:  # v2 "access denied"
                raise NacosAuthError(f"Nacos refused {what}: access denied (code {code}: {message!r})", status)
            raise NacosError(f"Nacos rejected {what}: code {code}: {message!r}", status)


def _body_text(response: httpx.Response, limit: int = 300) -> str:
    try:
        text = response.text
    except Exception:  # noqa: BLE001 - undecodable or streamed body: the status says enough
        return ""
    text = text.strip()
    # Spring's JSON error envelope: its "message" is the part worth showing.
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("message"), str) and data["message"]:
            text = data["message"]
    return text[:limit]


def _v2_envelope(response: httpx.Response) -> tuple[int, str] | None:
    """(code, message) when the body is a v2 ``{"code", "message", "data"}`` wrapper. The v1 beat
    reply also has a ``code`` (10200 / 10000) but no ``message``: it is not a wrapper."""
    try:
        content = response.content
    except httpx.ResponseNotRead:
        return None
    # Cheap checks first: this runs on every instance list, which is never an envelope in v1.
    if content.lstrip()[:1] != b"{" or b'"message"' not in content:
        return None
    try:
        data = response.json()
    except ValueError:
        return None
    if not isinstance(data, dict) or "code" not in data or "message" not in data:
        return None
    try:
        return int(data["code"]), str(data.get("message") or "")[:300]
    except (TypeError, ValueError):
        return None
