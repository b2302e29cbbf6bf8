"""The Consul wire, in one place: how to reach Consul (address, ACL token, TLS), what its
answers mean (errors, blocking-query index rules) and which HTTP stack talks to it.

Two stacks, each where it does the job best:

- **httpx (asyncio)** for the watches — blocking health queries for discovery, the blocking KV
  query for rules — which run as tasks on graylb's one background event loop: hundreds of
  services cost one thread. :func:`blocking_get` owns the blocking-query rules.
- **py-consul** (python-consul's maintained successor, over requests) for the synchronous calls
  an operator or a serving process makes once in a while: agent registration, TTL passes and
  deregistration (:mod:`.registration`), KV reads and compare-and-set writes and the health
  listing of ``graylb status`` (:mod:`.store`). Its exception classes are translated here, by
  class, in :func:`py_consul_call`.

The token travels only in the ``X-Consul-Token`` header — never in a URL, never in a log line,
never in ``repr()``. TLS verification is on by default.
"""

from __future__ import annotations

import dataclasses
import os
import ssl
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import consul
import consul.exceptions as consul_errors
import httpx
import requests

from ..errors import GraylbError

__all__ = [
    "ConsulConfig",
    "ConsulError",
    "ConsulACLError",
    "ConsulUnavailable",
    "check_response",
    "py_consul_call",
    "BlockingAnswer",
    "blocking_get",
]


class ConsulError(GraylbError):
    """Consul answered with an error (status and Consul's own text are in the message)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ConsulACLError(ConsulError):
    """403: the token is unknown (``ACL not found``) or lacks a permission (``Permission denied``)."""


class ConsulUnavailable(ConsulError):
    """Consul could not be reached, or answered 429 / 5xx: retry later."""


@dataclasses.dataclass(frozen=True)
class ConsulConfig:
    """``ConsulConfig("http://127.0.0.1:8500", token=...)``; :meth:`from_env` reads the
    standard ``CONSUL_HTTP_ADDR`` / ``CONSUL_HTTP_TOKEN`` / ``CONSUL_HTTP_SSL`` /
    ``CONSUL_CACERT`` / ``CONSUL_CLIENT_CERT`` / ``CONSUL_CLIENT_KEY`` /
    ``CONSUL_HTTP_SSL_VERIFY`` variables.

    ``verify`` is True (system CA store), False (don't — for tests only), or a CA bundle path;
    ``cert`` is a client certificate path or ``(cert, key)``.
    """

    address: str = "http://127.0.0.1:8500"
    token: str | None = dataclasses.field(default=None, repr=False)
    verify: bool | str = True
    cert: str | tuple[str, str] | None = None
    datacenter: str | None = None
    timeout: float = 10.0  # connect / non-blocking requests; blocking reads get wait + wait/16 more

    def __post_init__(self) -> None:
        address = self.address.strip()
        if "://" not in address:
            address = "http://" + address
        parts = urlsplit(address)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"Consul address {self.address!r}: expected http(s)://host:port")
        if parts.username or parts.password or parts.query:
            raise ValueError("Consul address: put the ACL token in token=, not in the URL")
        object.__setattr__(self, "address", address.rstrip("/"))

    @classmethod
    def from_env(
        cls, address: str | None = None, token: str | None = None, env: Mapping[str, str] | None = None, **kw: Any
    ) -> ConsulConfig:
        """Explicit arguments win over the environment."""
        env = os.environ if env is None else env
        addr = address or env.get("CONSUL_HTTP_ADDR") or "http://127.0.0.1:8500"
        if "://" not in addr:
            addr = ("https://" if env.get("CONSUL_HTTP_SSL", "").lower() in ("1", "true") else "http://") + addr
        verify: bool | str = kw.pop("verify", True)
        if verify is True:
            if env.get("CONSUL_HTTP_SSL_VERIFY", "").lower() in ("0", "false"):
                verify = False
            elif env.get("CONSUL_CACERT"):
                verify = env["CONSUL_CACERT"]
        cert = kw.pop("cert", None)
        if cert is None and env.get("CONSUL_CLIENT_CERT"):
            cert = (
                (env["CONSUL_CLIENT_CERT"], env["CONSUL_CLIENT_KEY"])
                if env.get("CONSUL_CLIENT_KEY")
                else env["CONSUL_CLIENT_CERT"]
            )
        return cls(addr, token=token or env.get("CONSUL_HTTP_TOKEN") or None, verify=verify, cert=cert, **kw)

    @property
    def scheme(self) -> str:
        return urlsplit(self.address).scheme

    @property
    def host(self) -> str:
        return urlsplit(self.address).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        return urlsplit(self.address).port or (8501 if self.scheme == "https" else 8500)

    def headers(self) -> dict[str, str]:
        return {"X-Consul-Token": self.token} if self.token else {}

    def ssl_context(self) -> ssl.SSLContext | bool:
        """The TLS settings as one SSLContext (what httpx wants; ``verify=<path>`` and ``cert=``
        are deprecated there). False only when verification was switched off on purpose."""
        if self.verify is False and not self.cert:
            return False
        ctx = ssl.create_default_context(cafile=self.verify if isinstance(self.verify, str) else None)
        if self.verify is False:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.cert:
            certfile, keyfile = (self.cert, None) if isinstance(self.cert, str) else self.cert
            ctx.load_cert_chain(certfile, keyfile)
        return ctx

    def _httpx_kwargs(self) -> dict[str, Any]:
        return {
            "base_url": self.address,
            "headers": self.headers(),
            "verify": self.ssl_context() if self.scheme == "https" else True,
            "timeout": httpx.Timeout(self.timeout),
        }

    def client(self) -> httpx.Client:
        return httpx.Client(**self._httpx_kwargs())

    def async_client(self, max_connections: int = 100) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            **self._httpx_kwargs(),
        )

    def py_consul(self) -> consul.Consul:
        """A py-consul ``consul.Consul`` client with the same settings (token as a header)."""
        client = consul.Consul(
            host=self.host,
            port=self.port,
            scheme=self.scheme,
            token=self.token,
            verify=self.verify,
            cert=self.cert,
            dc=self.datacenter,
        )
        # py-consul lets CONSUL_HTTP_TOKEN override the token argument, and waits 30 s by
        # default: this config is the one source of truth for both.
        client.token = self.token
        client.http.connections_timeout = self.timeout
        return client


def _acl_hint(body: str) -> str:
    """What Consul's 403 body says, in words an operator can act on."""
    if "ACL not found" in body:
        return "the ACL token is unknown to Consul (wrong, expired or deleted token)"
    if "Permission denied" in body:
        return "the ACL token lacks a permission this needs"
    return "request forbidden"


def check_response(response: httpx.Response, what: str) -> None:
    """Translate a Consul error status into the graylb exception a caller can act on.

    ``what`` names the operation and object ("watching service 'orders'"); the token is never
    part of any message.
    """
    status = response.status_code
    if status < 400:
        return
    text = response.text.strip()[:300]
    if status == 403:
        raise ConsulACLError(f"Consul refused {what}: {_acl_hint(text)} (403 {text!r})", status)
    if status == 429 or status >= 500:
        raise ConsulUnavailable(f"Consul unavailable while {what}: {status} {text!r}", status)
    raise ConsulError(f"Consul rejected {what}: {status} {text!r}", status)


# ------------------------------------------------------------------------ py-consul calls


@contextmanager
def py_consul_call(config: ConsulConfig, what: str) -> Iterator[None]:
    """Run py-consul calls in this block; translate its exceptions, by class, into graylb's:
    transport errors and 5xx -> :class:`ConsulUnavailable`; 403 -> :class:`ConsulACLError` (with
    what Consul's body says); 400 / 401 / 404 / other 4xx -> :class:`ConsulError` with the status.
    ``what`` names the operation for the message; the token is never part of one."""
    try:
        yield
    except requests.exceptions.RequestException as exc:
        raise ConsulUnavailable(f"cannot reach Consul at {config.address} while {what}: {_reason(exc)}") from None
    except consul_errors.ACLPermissionDenied as exc:
        body = str(exc).strip()[:300]
        raise ConsulACLError(f"Consul refused {what}: {_acl_hint(body)} (403 {body!r})", 403) from None
    except consul_errors.ACLDisabled as exc:
        raise ConsulError(f"Consul rejected {what}: ACLs are disabled (401 {str(exc)[:300]!r})", 401) from None
    except consul_errors.NotFound as exc:
        raise ConsulError(f"Consul has nothing for {what} (404 {str(exc)[:300]!r})", 404) from None
    except consul_errors.BadRequest as exc:
        raise ConsulError(f"Consul rejected {what}: {str(exc)[:300]!r}", 400) from None
    except consul_errors.ClientError as exc:
        raise ConsulError(f"Consul rejected {what}: {str(exc)[:300]!r}") from None
    except consul_errors.Timeout:
        raise ConsulUnavailable(f"Consul at {config.address} timed out while {what}") from None
    except consul_errors.ConsulException as exc:  # what py-consul raises for 5xx
        raise ConsulUnavailable(f"Consul unavailable while {what}: {str(exc)[:300]!r}") from None


def _reason(exc: Exception) -> str:
    """A requests failure in a few words (never its full text: it may carry the URL)."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return "connection timed out"
    if isinstance(exc, requests.exceptions.Timeout):
        return "timed out"
    if isinstance(exc, requests.exceptions.SSLError):
        return "TLS error (check --ca-file / CONSUL_CACERT)"
    if isinstance(exc, requests.exceptions.ConnectionError):
        return "connection refused" if "refused" in str(exc).lower() else "connection failed"
    return type(exc).__name__


# ------------------------------------------------------------------------ blocking queries


@dataclasses.dataclass(frozen=True)
class BlockingAnswer:
    """One answer to :func:`blocking_get`: the response (status checked, 404 let through for KV),
    whether it may carry news (``changed``: False when a blocking query's wait ran out with the
    index unchanged) and the index the next query blocks on (0: start over without blocking)."""

    response: httpx.Response
    changed: bool
    next_index: int


async def blocking_get(
    client: httpx.AsyncClient,
    config: ConsulConfig,
    path: str,
    *,
    index: int,
    wait: float,
    what: str,
    params: Mapping[str, str] | None = None,
    slot: Any = None,
) -> BlockingAnswer:
    """A Consul blocking query, by the rules Consul documents for them, in one place for
    discovery and the KV rule source:

    - ``index`` 0 asks without blocking; above 0 blocks up to ``wait`` for a newer index;
    - the read timeout allows for the wait plus the up to wait/16 of jitter Consul adds;
    - ``X-Consul-Index`` must be a number; when it goes backwards (a snapshot restore, a new
      cluster) the next query starts over without blocking; it is never below 1 otherwise;
    - error statuses raise the exceptions of :func:`check_response`, except 404 (an absent KV
      key, which still carries an index). ``slot`` is an optional async context manager held
      around the request (discovery's connection budget)."""
    query = dict(params or {})
    if config.datacenter:
        query["dc"] = config.datacenter
    if index > 0:
        query["index"] = str(index)
        query["wait"] = f"{wait:g}s"
    read_timeout = (wait + wait / 16 + config.timeout) if index > 0 else config.timeout
    timeout = httpx.Timeout(config.timeout, read=read_timeout, pool=None)
    try:
        if slot is None:
            resp = await client.get(path, params=query, timeout=timeout)
        else:
            async with slot:
                resp = await client.get(path, params=query, timeout=timeout)
    except httpx.TransportError as exc:
        raise ConsulUnavailable(
            f"Consul at {config.address} unreachable while {what}: {type(exc).__name__}: {exc}"
        ) from None
    if resp.status_code != 404:
        check_response(resp, what)
    raw_index = resp.headers.get("X-Consul-Index")
    try:
        new_index = int(raw_index)
    except (TypeError, ValueError):
        raise ConsulError(f"Consul answered {what} without a valid X-Consul-Index ({raw_index!r})") from None
    next_index = 0 if new_index < index else max(new_index, 1)
    return BlockingAnswer(resp, changed=not (index > 0 and new_index == index), next_index=next_index)
