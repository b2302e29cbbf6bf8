"""Nacos authentication: log in with username / password, carry the ``accessToken`` on every
request, refresh it before it expires, and log in again once when Nacos answers 403.

```python
auth = NacosAuth(config)
with config.client() as client:
    r = auth.request(client, "GET", "/v1/ns/instance/list", params={"serviceName": "orders"})
    check_response(r, "listing instances of service 'orders'")
```

- ``POST /v1/auth/login`` with ``username`` and ``password`` in the form body (never the URL);
  the reply's ``accessToken`` is cached for ``tokenTtl`` seconds and refreshed ahead of time —
  10 % of the TTL or 10 s early, whichever is larger (the official SDKs' window), but never
  earlier than half the TTL, so a short-lived token is not fetched again on every call.
- The token goes on each request as the ``accessToken`` query parameter, the one way every Nacos
  version (1.x and 2.x) accepts.
- A 403 (``token expired!``, ``token invalid!``, a server restarted with a new secret) drops
  the token, logs in again — one login at a time, however many threads or tasks hit it — and
  retries the request once. A 403 that survives that raises :class:`NacosAuthError`; a 403 on
  the login itself means wrong credentials.
- No username configured: requests are sent as they are (Nacos's auth is off by default).

Secrets stay out of sight: exception messages name the user and the address, never the
password or the token, and a logging filter on the ``httpx`` / ``httpcore`` loggers masks
``accessToken=...`` and ``Bearer ...`` in their request lines and header dumps.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from .client import NacosAuthError, NacosConfig, NacosError, NacosUnavailable, _body_text

__all__ = ["NacosAuth", "LOGIN_PATH", "redact"]

log = logging.getLogger("graylb.nacos")

LOGIN_PATH = "/v1/auth/login"
DEFAULT_TOKEN_TTL = 18000.0

_SECRET_PATTERNS = (
    re.compile(r"(accessToken=)[^&\s\"'#<>]+", re.IGNORECASE),
    re.compile(r"(\"accessToken\"\s*:\s*\")[^\"]*", re.IGNORECASE),
    re.compile(r"(Bearer\s+)[^\s'\",)\]]+", re.IGNORECASE),
    re.compile(r"(password=)[^&\s\"'#<>]+", re.IGNORECASE),
)


def redact(text: str) -> str:
    """``text`` with tokens and passwords in URL / JSON / header form masked as ``***``."""
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(r"\1***", text)
    return text


class _RedactSecrets(logging.Filter):
    """Masks Nacos tokens in records of the HTTP libraries (httpx logs every request URL at
    INFO; httpcore dumps response headers, including the login's ``Authorization``, at DEBUG)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken record is not ours to fix
            return True
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


_FILTER = _RedactSecrets()
_HTTP_LOGGERS = (
    "httpx",
    "httpcore",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.connection",
    "httpcore.proxy",
    "httpcore.socks",
)


def _install_log_filter() -> None:
    for name in _HTTP_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


_install_log_filter()


class NacosAuth:
    """Login with username/password, cache the accessToken, refresh before tokenTtl runs out
    (10% or 10 s early, whichever larger, like the official SDK), one re-login + retry on 403.
    Thread-safe and asyncio-safe (one login at a time). No credentials -> no auth params.

    ``clock`` (monotonic seconds) can be replaced in tests. ``logins`` counts successful logins.
    """

    def __init__(self, config: NacosConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self._token: str | None = None
        self._generation = 0  # bumped by every login, so a 403 re-logs in only once per token
        self._refresh_at = 0.0
        self._expires_at = 0.0
        self._state = threading.Lock()  # guards the fields above; held only briefly
        self._login_lock = threading.Lock()  # one (sync) login at a time
        self._async_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )
        self.logins = 0

    def __repr__(self) -> str:
        user = f"user={self.config.username!r}" if self.enabled else "no auth"
        return f"NacosAuth({self.config.address}, {user})"

    @property
    def enabled(self) -> bool:
        return bool(self.config.username)

    @property
    def token_valid_for(self) -> float | None:
        """Seconds until the cached token expires (None without one); for diagnostics."""
        with self._state:
            if self._token is None:
                return None
            return self._expires_at - self._clock()

    def invalidate(self) -> None:
        """Forget the cached token; the next request logs in first."""
        with self._state:
            self._token = None
            self._refresh_at = self._expires_at = 0.0

    # ------------------------------------------------------------------ token cache

    def _current(self, stale: int | None) -> tuple[str, int] | None:
        """The cached token if it is fresh and is not the one (generation ``stale``) that just
        got a 403."""
        with self._state:
            if self._token is None or self._clock() >= self._refresh_at:
                return None
            if stale is not None and self._generation == stale:
                return None
            return self._token, self._generation

    def _store(self, token: str, ttl: float, started: float) -> tuple[str, int]:
        early = min(max(ttl * 0.1, 10.0), ttl / 2.0)
        with self._state:
            self._token = token
            self._generation += 1
            self._refresh_at = started + ttl - early
            self._expires_at = started + ttl
            self.logins += 1
            return token, self._generation

    def _login_form(self) -> dict[str, str]:
        return {"username": self.config.username or "", "password": self.config.password or ""}

    def _accept_login(self, response: httpx.Response, started: float) -> tuple[str, int]:
        user = self.config.username
        status = response.status_code
        text = self._scrub(_body_text(response))
        if status in (401, 403):
            raise NacosAuthError(
                f"Nacos login failed for user '{user}': wrong username or password ({status} {text!r})", status
            )
        if status == 429 or status >= 500:
            raise NacosUnavailable(
                f"Nacos unavailable while logging in as user '{user}' at {self.config.address}: {status} {text!r}",
                status,
            )
        if status >= 400:
            hint = " (is the address / context path right?)" if status == 404 else ""
            raise NacosError(f"Nacos login for user '{user}' failed: {status} {text!r}{hint}", status)
        try:
            data = response.json()
        except ValueError:
            data = None
        token = data.get("accessToken") if isinstance(data, Mapping) else None
        if not isinstance(token, str) or not token:
            raise NacosError(f"Nacos login for user '{user}' answered {status} without an accessToken", status)
        try:
            ttl = float(data.get("tokenTtl") or DEFAULT_TOKEN_TTL)
        except (TypeError, ValueError):
            ttl = DEFAULT_TOKEN_TTL
        if ttl <= 0:
            ttl = DEFAULT_TOKEN_TTL
        log.debug("graylb: logged in to Nacos at %s as %r (token valid %.0fs)", self.config.address, user, ttl)
        return self._store(token, ttl, started)

    def _token_sync(self, client: httpx.Client, stale: int | None = None) -> tuple[str, int]:
        current = self._current(stale)
        if current is not None:
            return current
        with self._login_lock:
            current = self._current(stale)  # another thread logged in while we waited
            if current is not None:
                return current
            started = self._clock()
            response = self._send(
                client,
                "POST",
                LOGIN_PATH,
                None,
                self._login_form(),
                None,
                None,
                f"logging in as user '{self.config.username}'",
            )
            return self._accept_login(response, started)

    def _async_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        with self._state:
            lock = self._async_locks.get(loop)
            if lock is None:
                lock = self._async_locks[loop] = asyncio.Lock()
            return lock

    async def _token_async(self, client: httpx.AsyncClient, stale: int | None = None) -> tuple[str, int]:
        current = self._current(stale)
        if current is not None:
            return current
        async with self._async_lock():
            current = self._current(stale)
            if current is not None:
                return current
            started = self._clock()
            response = await self._asend(
                client,
                "POST",
                LOGIN_PATH,
                None,
                self._login_form(),
                None,
                None,
                f"logging in as user '{self.config.username}'",
            )
            return self._accept_login(response, started)

    # ------------------------------------------------------------------ requests

    def request(
        self,
        client: httpx.Client,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: Any = None,
    ) -> httpx.Response:
        """Send ``method path`` (relative to the client's base URL) with the token; on 403 log
        in again once and retry. Returns the response for the caller to interpret (a 404 is
        meaningful for config); raises :class:`NacosUnavailable` when Nacos cannot be reached
        and :class:`NacosAuthError` when the login fails or a 403 survives the re-login."""
        what = f"{method} {path}"
        if not self.enabled:
            return self._send(client, method, path, params, data, headers, timeout, what)
        token, generation = self._token_sync(client)
        response = self._send(client, method, path, _with_token(params, token), data, headers, timeout, what)
        if response.status_code != 403:
            return response
        self._log_relogin(what, response)
        token, generation = self._token_sync(client, stale=generation)
        response = self._send(client, method, path, _with_token(params, token), data, headers, timeout, what)
        if response.status_code == 403:
            raise self._forbidden(what, response)
        return response

    async def arequest(
        self,
        client: httpx.AsyncClient,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: Any = None,
    ) -> httpx.Response:
        """The ``httpx.AsyncClient`` twin of :meth:`request`."""
        what = f"{method} {path}"
        if not self.enabled:
            return await self._asend(client, method, path, params, data, headers, timeout, what)
        token, generation = await self._token_async(client)
        response = await self._asend(client, method, path, _with_token(params, token), data, headers, timeout, what)
        if response.status_code != 403:
            return response
        self._log_relogin(what, response)
        token, generation = await self._token_async(client, stale=generation)
        response = await self._asend(client, method, path, _with_token(params, token), data, headers, timeout, what)
        if response.status_code == 403:
            raise self._forbidden(what, response)
        return response

    def _log_relogin(self, what: str, response: httpx.Response) -> None:
        log.info(
            "graylb: Nacos at %s answered 403 to %s (%s); logging in again",
            self.config.address,
            what,
            self._scrub(_body_text(response, 80)),
        )

    def _forbidden(self, what: str, response: httpx.Response) -> NacosAuthError:
        text = self._scrub(_body_text(response))
        return NacosAuthError(
            f"Nacos refused {what} for user '{self.config.username}' even after logging in again: 403 {text!r} (does "
            "the user have the permission this needs?)",
            403,
        )

    # ------------------------------------------------------------------ the wire

    @staticmethod
    def _kwargs(params: Any, data: Any, headers: Any, timeout: Any) -> dict[str, Any]:
        kw: dict[str, Any] = {}
        if params:
            kw["params"] = {k: _param(v) for k, v in params.items() if v is not None}
        if data is not None:
            kw["data"] = {k: _param(v) for k, v in data.items() if v is not None}
        if headers:
            kw["headers"] = dict(headers)
        if timeout is not None:
            kw["timeout"] = timeout
        return kw

    def _send(
        self,
        client: httpx.Client,
        method: str,
        path: str,
        params: Any,
        data: Any,
        headers: Any,
        timeout: Any,
        what: str,
    ) -> httpx.Response:
        try:
            return client.request(method, path, **self._kwargs(params, data, headers, timeout))
        except httpx.TransportError as exc:
            raise self._unreachable(exc, what) from None

    async def _asend(
        self,
        client: httpx.AsyncClient,
        method: str,
        path: str,
        params: Any,
        data: Any,
        headers: Any,
        timeout: Any,
        what: str,
    ) -> httpx.Response:
        try:
            return await client.request(method, path, **self._kwargs(params, data, headers, timeout))
        except httpx.TransportError as exc:
            raise self._unreachable(exc, what) from None

    def _unreachable(self, exc: httpx.TransportError, what: str) -> NacosUnavailable:
        if isinstance(exc, httpx.ConnectTimeout):
            reason = "connection timed out"
        elif isinstance(exc, httpx.TimeoutException):
            reason = "timed out"
        elif isinstance(exc, httpx.ConnectError):
            text = str(exc)
            if _refused(exc):
                reason = "connection refused"
            elif "ssl" in text.lower() or "certificate" in text.lower():
                reason = f"TLS error ({self._scrub(text)[:160]})"
            else:
                reason = f"cannot connect ({self._scrub(text)[:160] or type(exc).__name__})"
        else:
            reason = self._scrub(str(exc))[:160] or type(exc).__name__
        return NacosUnavailable(f"cannot reach Nacos at {self.config.address} while {what}: {reason}")

    def _scrub(self, text: str) -> str:
        """``text`` without this client's password or token, whatever form they take."""
        text = redact(text)
        for secret in (self.config.password, self._token):
            if secret and len(secret) >= 4:
                text = text.replace(secret, "***")
        return text


def _refused(exc: BaseException) -> bool:
    """Connection refused, however deep the transport wrapped it (anyio says "All connection
    attempts failed" and keeps the ConnectionRefusedError as the cause)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ConnectionRefusedError) or "refused" in str(current).lower():
            return True
        for inner in getattr(current, "exceptions", ()) or ():  # ExceptionGroup from happy eyeballs
            if _refused(inner):
                return True
        current = current.__cause__ or current.__context__
    return False


def _param(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _with_token(params: Mapping[str, Any] | None, token: str) -> dict[str, Any]:
    out = dict(params or {})
    out["accessToken"] = token
    return out
