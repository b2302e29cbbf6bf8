"""FakeNacos: a real Nacos HTTP Open API on 127.0.0.1, for tests that must speak the real wire protocol.

It is a genuine HTTP/1.1 server (keep-alive, threads, real sockets), not a mock: graylb's Nacos code,
``nacos-sdk-python`` (its v1 HTTP client) or ``curl`` talk to it exactly as they would to a standalone
Nacos 2.x server on port 8848 (context path ``/nacos``). It models the slice of the Open API graylb
uses: naming (instance register / deregister / update / list / beat, service list; v1 and the v2
wrappers), config (get / publish / delete and the long-polling listener) and the JWT login. Where
behaviour had to be chosen it follows a real 2.x server (alibaba/nacos ``InstanceController``,
``InstanceControllerV2``, ``HttpRequestInstanceBuilder``, ``ServiceUtil``, ``ConfigController``,
``ConfigServletInner``, ``ConfigOperationService``, ``LongPollingService``, ``MD5Util``,
``UserController`` and the JWT auth plugin).

Example::

    from graylb.testing.fake_nacos import FakeNacos, config_md5

    with FakeNacos(beat_timeout=0.5, delete_timeout=1.0, long_poll_min_hold=0.2) as nacos:  # free port
        nacos.register("orders", "10.0.0.1", 8080, metadata={"version": "1.4.2"}, weight=10)
        nacos.publish_config("graylb-rules", "DEFAULT_GROUP", "version: 1\\n")
        ...  # point your client at nacos.url ("http://127.0.0.1:PORT") / nacos.address
        nacos.set_healthy("orders", "10.0.0.1", 8080, False)   # every instance unhealthy: protection
        nacos.publish_config("graylb-rules", "DEFAULT_GROUP", "version: 2\\n")  # wakes long polls at once
        nacos.fail_next(503)                                    # the next API call answers 503
        nacos.stop(); nacos.start()                             # "server crashed and came back"

Constructor
-----------
``FakeNacos(*, host="127.0.0.1", port=0, auth=None, token_ttl=18000.0, beat_timeout=15.0,
delete_timeout=30.0, protect_threshold=0.0, long_poll_min_hold=10.0)``

- ``auth``: ``None`` = auth disabled (``nacos.core.auth.enabled=false``): tokens are ignored and
  ``/v1/auth/login`` issues a token for any credentials (a real server still checks its user
  table). Otherwise ``{username: password}``: every API except login needs a token. All users are
  global admins (no per-resource permissions).
- ``token_ttl``: seconds a token lives (``tokenTtl`` in the login answer is ``int(token_ttl)``).
- ``beat_timeout`` / ``delete_timeout``: an ephemeral instance that gets no beat turns unhealthy after
  ``beat_timeout`` and is removed after ``delete_timeout`` (real: 15 s / 30 s). Metadata
  ``preserved.heart.beat.timeout`` / ``preserved.ip.delete.timeout`` (milliseconds) override them per
  instance, as on a real server. A background reaper checks every 50 ms (real: every 5 s).
- ``protect_threshold``: default protection threshold of every service (real default 0);
  :meth:`set_protect_threshold` sets one service's.
- ``long_poll_min_hold``: floor of a config long poll's hold time. A real server holds
  ``max(10 s, Long-Pulling-Timeout - 500 ms)``; tests lower the 10 s floor to time out quickly.

Attributes and controls (all thread-safe, no HTTP involved)
----------------------------------------------------------
- ``url`` (``http://127.0.0.1:PORT``), ``host``, ``port``, ``address`` (``127.0.0.1:PORT``, what
  ``NacosClient(server_addresses=...)`` takes), ``running``.
- ``start()`` binds (the same port again after ``stop()``) and returns ``self``; ``stop()`` closes the
  listener *and* every open connection (``shutdown(SHUT_RDWR)``) and kills held long polls with
  their connections, like a crashed server; they get no answer. State is kept for a later
  ``start()``, which also restarts every instance's beat clock. Also a context manager.
- ``register(service, ip, port, *, namespace="public", group="DEFAULT_GROUP", cluster="DEFAULT",
  weight=1.0, healthy=True, enabled=True, ephemeral=True, metadata=None, beats_required=False)
  -> instance_id``: register (or replace) an instance. ``service`` may be grouped
  (``"GROUP@@name"``, which wins over ``group``). Direct registrations do **not** expire unless
  ``beats_required=True`` (then they behave like an HTTP registration: unhealthy / removed without
  beats). Invalid weight (outside 0..10000) or cluster name raises ``ValueError``.
- ``deregister(service, ip, port, *, namespace, group, cluster=None)``; ``set_healthy(service, ip, port,
  healthy, ...)``, ``set_enabled(...)``, ``set_weight(...)``, ``heartbeat(service, ip, port, ...)`` (what a
  beat does: refresh the beat clock, make an unhealthy instance healthy). Like Nacos 2.x a service
  holds at most one instance per ``ip:port``; ``cluster=None`` matches it whatever its cluster, a
  cluster name must match. Unknown instances raise ``KeyError``.
- ``instances(service, *, namespace, group) -> list[dict]``: the stored instances (the real health,
  not protection copies), in list-answer shape; ``set_protect_threshold(service, threshold, ...)``.
- ``publish_config(data_id, group, content, tenant="", type="text")``, ``get_config(data_id, group,
  tenant="") -> str | None``, ``remove_config(data_id, group, tenant="")``: raw storage access
  (no ``public`` normalisation, see below); a change of content wakes the long polls that watch it.
- ``expire_tokens()``: every token issued so far is expired (``403 token expired!``); new logins work.
- ``fail_next(status, count=1, body=None)``, ``fail_all(status, body=None)``, ``heal()`` (clears both),
  ``stall(seconds)`` (0 = off): applied to every ``/nacos`` request before routing and auth. Default
  bodies: 500 ``caused: server error;``, 503 ``server is DOWN now, please try again later!``, 429
  ``Too Many Requests``.
- ``requests``: list of :class:`RecordedRequest` (method, path as sent, target, query and form as
  dicts of lists, lower-case headers, raw body); ``clear_requests()``.
- ``long_polls`` (config long polls held now) and ``wait_long_polls(count=1, timeout=5.0) -> bool``:
  lets a test change state exactly while a listener is parked.

HTTP API (context path ``/nacos``)
----------------------------------
Parameters are read like a servlet does: query string first, then an
``application/x-www-form-urlencoded`` body (any method). Booleans are case-insensitive (``True``).
Naming errors are plain text (``400 Param 'serviceName' is required.``); v2 errors keep the
``{"code","message","data"}`` wrapper; framework errors (unknown path 404, wrong method 405, a
missing ``@RequestParam`` on the config API, auth 403) are Spring Boot's JSON error envelope
``{"timestamp","status","error","message","path"}``. Key clients off the status code.

- ``GET /v1/ns/instance/list`` (``serviceName`` required, ``groupName``, ``namespaceId``, ``clusters``
  comma list, ``healthyOnly``): ``{"name":"GROUP@@svc","groupName","clusters","cacheMillis":10000,
  "hosts":[...],"lastRefTime","checksum","allIPs":false,"reachProtectionThreshold","valid":true}``; a
  host is ``{"instanceId":"ip#port#cluster#GROUP@@svc","ip","port","weight" (double),"healthy",
  "enabled","ephemeral","clusterName","serviceName":"GROUP@@svc","metadata","instanceHeartBeatInterval",
  "instanceHeartBeatTimeOut","ipDeleteTimeout","instanceIdGenerator"}`` (the three times in ms are the
  effective ones: metadata overrides, else 5000 and the fake's timeouts). ``serviceName`` without
  ``@@`` gets ``groupName@@`` prepended (a grouped one ignores ``groupName``). Filtering is 2.x's
  ``ServiceUtil.selectInstancesWithHealthyProtection``: disabled instances and other clusters are
  dropped; if healthy/total <= the protection threshold (total > 0) the answer has
  ``reachProtectionThreshold: true`` and **every** instance, unhealthy ones as ``healthy: true``
  copies (even with ``healthyOnly``); otherwise ``healthyOnly=true`` drops unhealthy ones. Unknown
  service: 200 with ``hosts: []``. ``checksum`` is the MD5 of the hosts JSON (fake-specific: a real
  2.x server sends ``""``).
- ``POST /v1/ns/instance`` (``ip``, ``port``, ``serviceName`` required; ``weight`` 0..10000, ``enabled``
  (falling back to ``enable``, which nacos-sdk-python sends), ``healthy``, ``ephemeral``, ``metadata``
  (JSON object or legacy ``k=v,k2=v2``), ``clusterName`` (or ``cluster``; the literal ``None`` that
  nacos-sdk-python sends when unset is taken as ``DEFAULT``; otherwise ``[0-9a-zA-Z-]+``),
  ``groupName``, ``namespaceId``) -> ``ok``. One instance per ``ip:port`` in a service (2.x); a
  service's ephemerality is fixed by its first instance (registering the other kind is a 400).
  ``DELETE`` (``ephemeral`` must match the service's) -> ``ok`` (also when nothing matched);
  ``PUT`` (modify: ``weight``, ``enabled``/``enable``, ``metadata`` merged; health untouched) -> ``ok``, a
  400 for an unknown service; ``GET`` -> instance detail (404 ``no ips found...`` /
  ``no matched ip found!``).
- ``PUT /v1/ns/instance/beat`` (``serviceName``, ``ip``, ``port``, ``clusterName``, ``namespaceId``,
  ``beat`` = JSON ``{"serviceName","ip","port","cluster","weight","metadata","scheduled","ephemeral"}``
  whose ip/port/cluster win): ``{"clientBeatInterval":5000,"code":10000,"lightBeatEnabled":true}``.
  Unknown instance and no ``beat``: ``code 10200`` (the client must re-register); unknown with ``beat``:
  the instance is re-created from it (10000). A beat refreshes the beat clock and makes an unhealthy
  instance healthy. ``clientBeatInterval`` honours ``preserved.heart.beat.interval``.
- ``GET /v1/ns/service/list`` (``pageNo``, ``pageSize`` required; ``groupName``, ``namespaceId``) ->
  ``{"count":N,"doms":[names without group]}`` (sorted). Services stay listed after their last
  instance is gone (a real server cleans empty services up after a minute or more).
- v2 (2.2+): ``GET /v2/ns/instance/list`` (``clusterName``, not ``clusters``), ``POST|PUT|DELETE|GET
  /v2/ns/instance``, ``GET /v2/ns/service/list`` -> ``{"code":0,"message":"success","data":...}``
  (``data`` ``"ok"`` for writes, ``{"count","services"}`` for the service list). Errors keep the wrapper:
  400 ``10000 parameter missing``, 400 ``20002 parameter validate error``, 400 ``21001 weight error``,
  404 ``20004 resource not found``... v2 does not apply the
  ``@@`` service-name filter.
- ``GET /v1/cs/configs`` (``dataId``, ``group`` required, ``tenant``): the raw content with
  ``Content-MD5``, ``Config-Type``, ``Content-Type`` by type (``text/plain;charset=UTF-8``,
  ``application/json;charset=UTF-8``...), ``Last-Modified`` and no-cache headers; missing -> 404
  ``config data not exist\\n``. ``POST`` (form ``dataId``, ``group``, ``content`` required and not blank,
  ``tenant``, ``type``, ``appName``) -> ``true``; with a ``casMd5`` *header* (2.x compare-and-set; a
  form field of that name is ignored) an existing item is written only if its md5 is still that
  value, else ``500 caused: Cas publish fail, server md5 may have changed.;`` (a missing item is
  created whatever the header says); ``DELETE`` -> ``true``. dataId/group must be
  ``[A-Za-z0-9_.:-]`` (else 400 ``caused: invalid dataId : x;``).
  **Tenants**: ``""`` and ``"public"`` are different keys for publish, delete and long polling, but
  ``GET`` maps a blank, ``public`` or ``null`` tenant to ``""`` first, exactly as 2.x's
  ``ConfigController.getConfig`` does (``NamespaceUtil.processNamespaceParameter``). So a client that
  uses ``tenant=public`` reads the ``""`` namespace but listens on ``public`` - the endless
  "changed" loop of alibaba/nacos#4682. Use ``""`` for the public namespace.
- ``POST /v1/cs/configs/listener``: form ``Listening-Configs`` = entries ``dataId^Bgroup^Bmd5[^Btenant]^A``
  (3 or 4 fields; md5 is the lowercase zero-padded MD5 of the UTF-8 content, ``""`` for none; the
  field is URL-decoded once more, like the server does). Header ``Long-Pulling-Timeout`` (ms) and
  optional ``Long-Pulling-Timeout-No-Hangup: true``. Any md5 that differs -> 200 at once with the
  Java ``URLEncoder`` encoding of ``dataId^Bgroup[^Btenant]^A`` per changed key plus a newline (the
  server ``println``\\ s it; tenant omitted when empty). Otherwise the request is held
  ``max(long_poll_min_hold, timeout - 0.5 s)``; a publish or delete that changes a watched key wakes
  it with that key; the timeout answers 200 with an empty body. Missing ``Long-Pulling-Timeout``
  (short polling) or No-Hangup: answered at once. Missing / malformed ``Listening-Configs``: 400
  ``caused: invalid probeModify;``.
- ``POST /v1/auth/login`` and ``/v1/auth/users/login`` (``username``, ``password`` as query or form):
  ``{"accessToken","tokenTtl","globalAdmin":true,"username"}`` plus ``Authorization: Bearer <token>``;
  bad credentials: ``403 unknown user!`` (plain text). The token is an HS256 JWT (``sub``, ``exp``).
  With auth on, every other API takes the token from ``Authorization: Bearer``, an ``accessToken``
  parameter or an ``accessToken`` header (or valid ``username``/``password`` parameters, as 2.x
  allows); failures are 403 with message ``user not found!`` (none), ``token invalid!`` (not issued
  here) or ``token expired!``.
- Unknown paths: 404; a wrong method on a known path: 405 with ``Allow``. Bodies of 8 KiB or more
  are sent chunked (Tomcat's response buffer), smaller ones with a ``Content-Length``.

Not modelled: gRPC (9848; 2.x Java clients need it, the HTTP API is what other SDKs use), UDP
push, persistent-instance health checks (their health is what you set), selectors, service
metadata CRUD, config history / beta / tags / v2 config, namespaces CRUD, per-resource permissions,
clustering.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from email.utils import formatdate
from typing import Any
from urllib.parse import parse_qs, quote_plus, unquote

from ._fake_base import FakeBase, FakeHandler, serve_until_interrupted, split_request
from ._fake_base import Killed as _Killed
from ._fake_base import Response as _Response

__all__ = ["FakeNacos", "RecordedRequest", "config_md5", "java_url_encode"]

_DEFAULT_NAMESPACE = "public"
_DEFAULT_GROUP = "DEFAULT_GROUP"
_DEFAULT_CLUSTER = "DEFAULT"
_SPLITTER = "@@"
_CACHE_MILLIS = 10000
_BEAT_INTERVAL_MS = 5000
_DEFAULT_BEAT_TIMEOUT_MS = 15000  # Nacos' client-side defaults, used by checkInstanceIsLegal
_DEFAULT_DELETE_TIMEOUT_MS = 30000
_MIN_WEIGHT, _MAX_WEIGHT = 0.0, 10000.0
_CLUSTER_NAME_RE = re.compile(r"^[0-9a-zA-Z-]+$")
_DIGITS_RE = re.compile(r"^\d+$")
_LONG_POLL_DELAY = 0.5  # LongPollingService: hold = max(10 s, timeout - 500 ms)
_CHUNK_ABOVE = 8192 - 1  # Tomcat's 8 KiB response buffer: a body that fills it goes out chunked
_WORD, _LINE = "\x02", "\x01"
_CODE_OK, _CODE_NOT_FOUND = 10000, 10200
_CONFIG_TYPES = {"properties", "xml", "json", "text", "html", "yaml", "unset"}
_CONTENT_TYPES = {
    "json": "application/json;charset=UTF-8",
    "xml": "application/xml;charset=UTF-8",
    "html": "text/html;charset=UTF-8",
}
_TEXT_PLAIN = "text/plain;charset=UTF-8"
_JSON = "application/json"
_NO_CACHE = [
    ("Pragma", "no-cache"),
    ("Expires", "Thu, 01 Jan 1970 00:00:00 GMT"),
    ("Cache-Control", "no-cache,no-store"),
]
_DEFAULT_FAIL_BODIES = {
    500: "caused: server error;",
    503: "server is DOWN now, please try again later!",
    429: "Too Many Requests",
}
_REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
}
_V2_ERRORS = {
    10000: "parameter missing",
    10001: "access denied",
    20002: "parameter validate error",
    20004: "resource not found",
    21001: "weight error",
    30000: "server error",
}
_WEIGHT_ERROR = f"instance format invalid: The weights range from {_MIN_WEIGHT} to {_MAX_WEIGHT}"
_INTERVAL_ERROR = "Instance 'heart beat interval' must less than 'heart beat timeout' and 'ip delete timeout'."


# --------------------------------------------------------------------------------------------
# Public helpers
# --------------------------------------------------------------------------------------------


def config_md5(content: str | None) -> str:
    """The md5 Nacos compares in long polls: lowercase, zero-padded hex MD5 of the UTF-8 content; ``""`` for none."""
    return hashlib.md5(content.encode("utf-8")).hexdigest() if content is not None else ""


def java_url_encode(text: str) -> str:
    """``java.net.URLEncoder.encode(text, "UTF-8")``: space -> ``+``, ``.-*_`` and alphanumerics
    kept, the rest ``%XX``."""
    return quote_plus(text, safe="*").replace("~", "%7E")


# --------------------------------------------------------------------------------------------
# Java / Spring compatibility helpers
# --------------------------------------------------------------------------------------------


def _java_split(text: str, sep: str) -> list[str]:
    """``String.split`` with a literal separator: trailing empty strings are dropped."""
    parts = text.split(sep)
    while parts and parts[-1] == "":
        parts.pop()
    return parts


def _parse_boolean(value: str) -> bool:
    """``Boolean.parseBoolean``."""
    return value.lower() == "true"


def _convert_bool(value: str) -> bool:
    """Nacos ``ConvertUtils.toBoolean`` (commons-lang ``BooleanUtils.toBoolean``)."""
    return value.lower() in ("true", "on", "yes", "y", "t")


def _spring_bool(value: str) -> bool | None:
    """Spring's ``StringToBooleanConverter`` (request-parameter binding): ``None`` when invalid."""
    v = value.strip().lower()
    if v in ("true", "on", "yes", "1"):
        return True
    if v in ("false", "off", "no", "0", ""):
        return False
    return None


def _java_int(value: str) -> int:
    """``Integer.parseInt``; a ``NumberFormatException`` (an IllegalArgumentException) becomes a 400."""
    if not re.fullmatch(r"[+-]?\d+", value or "") or not -(2**31) <= int(value) < 2**31:
        raise ValueError(f'For input string: "{value}"')
    return int(value)


def _java_double(value: str) -> float:
    """``Double.parseDouble`` (near enough: Java also takes ``1d``/``1f`` suffixes)."""
    try:
        return float(value.strip())
    except ValueError:
        raise ValueError(f'For input string: "{value}"') from None


def _java_url_decode(text: str) -> str:
    """``URLDecoder.decode(text, "UTF-8")``: ``+`` -> space, ``%XX``; a broken escape raises ``ValueError``."""
    if re.search(r"%(?![0-9A-Fa-f]{2})", text):
        raise ValueError("URLDecoder: Illegal hex characters in escape (%) pattern")
    return unquote(text.replace("+", " "), errors="strict")


def _is_valid_param(value: str) -> bool:
    """Config ``ParamUtils.isValid``: letters, digits and ``_-.:``."""
    return all(c.isalnum() or c in "_-.:" for c in value)


def _metadata_ms(metadata: Mapping[str, str], key: str, default: int) -> int:
    """``Instance.getMetaDataByKeyWithDefault``: a digits-only value wins, anything else is ignored."""
    value = metadata.get(key)
    return int(value) if value and _DIGITS_RE.match(value) else default


def _parse_metadata(text: str) -> dict[str, str]:
    """``UtilsAndCommons.parseMetadata``: a JSON object (values stringified) or legacy ``k=v,k2=v2``."""
    if not text.strip():
        return {}
    try:
        doc = json.loads(text)
        if isinstance(doc, dict):
            return {str(k): (v if isinstance(v, str) else json.dumps(v)) for k, v in doc.items() if v is not None}
    except ValueError:
        pass
    result: dict[str, str] = {}
    for item in text.split(","):
        kv = item.split("=")
        if len(kv) != 2:
            raise ValueError(f"metadata format incorrect:{text}")
        result[kv[0]] = kv[1]
    return result


def _json_bytes(obj: Any) -> bytes:
    """Jackson's compact output."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


# --------------------------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake received it."""

    method: str
    path: str  # as sent (percent-encoded), without the query string
    target: str  # the full request target (path + "?" + query)
    query: dict[str, list[str]]
    form: dict[str, list[str]]  # the parsed application/x-www-form-urlencoded body ({} otherwise)
    headers: dict[str, str]  # lower-case names
    body: bytes

    def param(self, name: str) -> str | None:
        """The value a servlet's ``getParameter`` returns: query string first, then the form body."""
        for source in (self.query, self.form):
            if source.get(name):
                return source[name][0]
        return None


@dataclasses.dataclass
class _Instance:
    ip: str
    port: int
    cluster: str
    weight: float
    healthy: bool
    enabled: bool
    ephemeral: bool
    metadata: dict[str, str]
    beats_required: bool
    last_beat: float


@dataclasses.dataclass
class _Service:
    namespace: str
    group: str
    name: str
    ephemeral: bool | None  # fixed by the first instance (None: created by a control, no instance yet)
    protect_threshold: float | None = None
    instances: dict[tuple[str, int], _Instance] = dataclasses.field(default_factory=dict)

    @property
    def grouped(self) -> str:
        return f"{self.group}{_SPLITTER}{self.name}"

    def describe(self) -> str:
        """Java's ``Service.toString()`` as it appears in 2.x error messages."""
        return (
            f"Service{{namespace='{self.namespace}', group='{self.group}', name='{self.name}', "
            f"ephemeral={str(self.ephemeral is not False).lower()}, revision=0}}"
        )


@dataclasses.dataclass
class _Config:
    content: str
    md5: str
    type: str
    modified: float  # epoch seconds


@dataclasses.dataclass
class _Token:
    username: str
    expires: float  # time.monotonic()


class _HTTPError(Exception):
    def __init__(self, response: _Response) -> None:
        super().__init__(response.status)
        self.response = response


def _text(status: int, text: str, headers: list[tuple[str, str]] | None = None) -> _Response:
    return _Response(status, text.encode("utf-8"), [("Content-Type", _TEXT_PLAIN), *(headers or [])])


def _json(status: int, obj: Any, headers: list[tuple[str, str]] | None = None) -> _Response:
    return _Response(status, _json_bytes(obj), [("Content-Type", _JSON), *(headers or [])])


def _v2_ok(data: Any) -> _Response:
    return _json(200, {"code": 0, "message": "success", "data": data})


def _v2_error(status: int, code: int, data: Any) -> _HTTPError:
    return _HTTPError(_json(status, {"code": code, "message": _V2_ERRORS.get(code, "server error"), "data": data}))


def _spring_error(status: int, message: str, path: str, headers: list[tuple[str, str]] | None = None) -> _HTTPError:
    """Spring Boot's error envelope (Nacos runs with ``server.error.include-message=ALWAYS``)."""
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")
    return _HTTPError(
        _json(
            status,
            {
                "timestamp": stamp,
                "status": status,
                "error": _REASONS.get(status, "Error"),
                "message": message,
                "path": path,
            },
            headers,
        )
    )


def _naming_error(status: int, message: str) -> _HTTPError:
    """The naming module's ``ResponseExceptionHandler``: the exception message as plain text."""
    return _HTTPError(_text(status, message))


def _config_error(status: int, message: str) -> _HTTPError:
    """The config module's ``GlobalExceptionHandler``: ``ExceptionUtil.getAllExceptionMsg``."""
    return _HTTPError(_text(status, f"caused: {message};"))


@dataclasses.dataclass
class _Request:
    method: str
    raw_path: str
    path: str
    query: dict[str, list[str]]
    form: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    gen: int

    def param(self, name: str) -> str | None:
        """``getParameter``: ``None`` when absent, possibly ``""``."""
        for source in (self.query, self.form):
            values = source.get(name)
            if values:
                return values[0]
        return None

    def optional(self, name: str, default: str) -> str:
        """``WebUtils.optional``: a blank value counts as absent."""
        value = self.param(name)
        return value if value is not None and value.strip() else default

    def required(self, name: str) -> str:
        """``WebUtils.required``: naming answers ``400 Param 'x' is required.``."""
        value = self.param(name)
        if not value:
            raise _naming_error(400, f"Param '{name}' is required.")
        return value

    def spring_required(self, name: str) -> str:
        """A ``@RequestParam`` of a plain controller: absent -> Spring's 400 envelope."""
        value = self.param(name)
        if value is None:
            raise _spring_error(
                400, f"Required request parameter '{name}' for method parameter type String is not present", self.path
            )
        return value


# --------------------------------------------------------------------------------------------
# HTTP plumbing (house style: see graylb.testing.http_server / fake_consul)
# --------------------------------------------------------------------------------------------


class _Handler(FakeHandler):
    chunk_above = _CHUNK_ABOVE
    error_content_type = _TEXT_PLAIN


# --------------------------------------------------------------------------------------------
# The fake
# --------------------------------------------------------------------------------------------


class FakeNacos(FakeBase[RecordedRequest]):
    """A standalone Nacos 2.x server's HTTP Open API on a real socket. See the module docstring."""

    _handler = _Handler
    _thread_name = "fake-nacos"

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        auth: Mapping[str, str] | None = None,
        token_ttl: float = 18000.0,
        beat_timeout: float = 15.0,
        delete_timeout: float = 30.0,
        protect_threshold: float = 0.0,
        long_poll_min_hold: float = 10.0,
    ) -> None:
        if beat_timeout <= 0 or delete_timeout <= 0 or token_ttl <= 0 or long_poll_min_hold < 0:
            raise ValueError("timeouts must be positive")
        self._init_base(host, port)
        self.token_ttl, self.beat_timeout, self.delete_timeout = (
            float(token_ttl),
            float(beat_timeout),
            float(delete_timeout),
        )
        self.protect_threshold, self.long_poll_min_hold = float(protect_threshold), float(long_poll_min_hold)
        self._auth = dict(auth) if auth is not None else None

        self._cond = threading.Condition(self._lock)  # config changes and stop() notify it

        self._services: dict[tuple[str, str], _Service] = {}
        self._configs: dict[tuple[str, str, str], _Config] = {}
        self._config_versions: dict[tuple[str, str, str], int] = {}
        self._tokens: dict[str, _Token] = {}
        self._jwt_secret = secrets.token_bytes(32)

        self._routes: dict[str, dict[str, Callable[[_Request], _Response]]] = {
            "/nacos/v1/ns/instance": {
                "POST": self._v1_register,
                "DELETE": self._v1_deregister,
                "PUT": self._v1_update,
                "GET": self._v1_detail,
            },
            "/nacos/v1/ns/instance/list": {"GET": self._v1_list},
            "/nacos/v1/ns/instance/beat": {"PUT": self._v1_beat},
            "/nacos/v1/ns/service/list": {"GET": self._v1_service_list},
            "/nacos/v2/ns/instance": {
                "POST": self._v2_register,
                "DELETE": self._v2_deregister,
                "PUT": self._v2_update,
                "GET": self._v2_detail,
            },
            "/nacos/v2/ns/instance/list": {"GET": self._v2_list},
            "/nacos/v2/ns/service/list": {"GET": self._v2_service_list},
            "/nacos/v1/cs/configs": {
                "GET": self._config_get,
                "POST": self._config_publish,
                "DELETE": self._config_delete,
            },
            "/nacos/v1/cs/configs/listener": {"POST": self._config_listener},
            "/nacos/v1/auth/login": {"POST": self._login},
            "/nacos/v1/auth/users/login": {"POST": self._login},
        }

    # ---- lifecycle --------------------------------------------------------------------------

    def _restarted(self, now: float) -> None:
        for svc in self._services.values():  # a restart restarts the beat clocks
            for inst in svc.instances.values():
                inst.last_beat = now

    def _stopped(self) -> None:
        with self._lock:  # killed long polls unwind before stop() returns
            self._parked.wait_for(lambda: self._held == 0, timeout=5)

    def __repr__(self) -> str:
        return f"<FakeNacos {self.url} {'running' if self.running else 'stopped'}>"

    # ---- test controls ----------------------------------------------------------------------

    @property
    def long_polls(self) -> int:
        return self._held_count()

    def wait_long_polls(self, count: int = 1, timeout: float = 5.0) -> bool:
        """Wait until at least ``count`` config long polls are held; False on timeout."""
        return self._wait_held(count, timeout)

    def stall(self, seconds: float) -> None:
        with self._lock:
            super().stall(seconds)
            self._cond.notify_all()  # a shorter (or no) stall ends the ones in progress

    def expire_tokens(self) -> None:
        """Every token issued so far answers ``403 token expired!`` from now on."""
        with self._lock:
            for token in self._tokens.values():
                token.expires = float("-inf")

    def register(
        self,
        service: str,
        ip: str,
        port: int,
        *,
        namespace: str = _DEFAULT_NAMESPACE,
        group: str = _DEFAULT_GROUP,
        cluster: str = _DEFAULT_CLUSTER,
        weight: float = 1.0,
        healthy: bool = True,
        enabled: bool = True,
        ephemeral: bool = True,
        metadata: Mapping[str, str] | None = None,
        beats_required: bool = False,
    ) -> str:
        """Register (or replace) an instance; returns its instanceId. See the module docstring."""
        grouped = self._grouped_name(service, group)
        if not _MIN_WEIGHT <= float(weight) <= _MAX_WEIGHT:
            raise ValueError(_WEIGHT_ERROR)
        if not _CLUSTER_NAME_RE.match(cluster):
            raise ValueError(f"Instance 'clusterName' should be characters with only 0-9a-zA-Z-. (current: {cluster})")
        inst = _Instance(
            ip,
            int(port),
            cluster,
            float(weight),
            bool(healthy),
            bool(enabled),
            bool(ephemeral),
            {str(k): str(v) for k, v in (metadata or {}).items()},
            bool(beats_required),
            time.monotonic(),
        )
        with self._lock:
            err = self._add_instance(namespace, grouped, inst)
        if err:
            raise ValueError(err)
        return f"{ip}#{port}#{cluster}#{grouped}"

    def deregister(
        self,
        service: str,
        ip: str,
        port: int,
        *,
        namespace: str = _DEFAULT_NAMESPACE,
        group: str = _DEFAULT_GROUP,
        cluster: str | None = None,
    ) -> None:
        with self._lock:
            svc, inst = self._find(service, ip, port, namespace, group, cluster)
            del svc.instances[(inst.ip, inst.port)]

    def set_healthy(
        self,
        service: str,
        ip: str,
        port: int,
        healthy: bool,
        *,
        namespace: str = _DEFAULT_NAMESPACE,
        group: str = _DEFAULT_GROUP,
        cluster: str | None = None,
    ) -> None:
        with self._lock:
            self._find(service, ip, port, namespace, group, cluster)[1].healthy = bool(healthy)

    def set_enabled(
        self,
        service: str,
        ip: str,
        port: int,
        enabled: bool,
        *,
        namespace: str = _DEFAULT_NAMESPACE,
        group: str = _DEFAULT_GROUP,
        cluster: str | None = None,
    ) -> None:
        with self._lock:
            self._find(service, ip, port, namespace, group, cluster)[1].enabled = bool(enabled)

    def set_weight(
        self,
        service: str,
        ip: str,
        port: int,
        weight: float,
        *,
        namespace: str = _DEFAULT_NAMESPACE,
        group: str = _DEFAULT_GROUP,
        cluster: str | None = None,
    ) -> None:
        if not _MIN_WEIGHT <= float(weight) <= _MAX_WEIGHT:
            raise ValueError(_WEIGHT_ERROR)
        with self._lock:
            self._find(service, ip, port, namespace, group, cluster)[1].weight = float(weight)

    def heartbeat(
        self,
        service: str,
        ip: str,
        port: int,
        *,
        namespace: str = _DEFAULT_NAMESPACE,
        group: str = _DEFAULT_GROUP,
        cluster: str | None = None,
    ) -> None:
        """What a client beat does: refresh the beat clock; an unhealthy instance turns healthy."""
        with self._lock:
            inst = self._find(service, ip, port, namespace, group, cluster)[1]
            inst.last_beat = time.monotonic()
            inst.healthy = True

    def set_protect_threshold(
        self, service: str, threshold: float | None, *, namespace: str = _DEFAULT_NAMESPACE, group: str = _DEFAULT_GROUP
    ) -> None:
        """One service's protection threshold (``None`` = the constructor's default)."""
        grouped = self._grouped_name(service, group)
        with self._lock:
            svc = self._services.get((namespace, grouped))
            if svc is None:
                g, n = grouped.split(_SPLITTER, 1)
                svc = self._services[(namespace, grouped)] = _Service(namespace, g, n, None)
            svc.protect_threshold = threshold

    def instances(
        self, service: str, *, namespace: str = _DEFAULT_NAMESPACE, group: str = _DEFAULT_GROUP
    ) -> list[dict[str, Any]]:
        """The stored instances (real health, disabled ones included) in list-answer shape."""
        grouped = self._grouped_name(service, group)
        with self._lock:
            svc = self._services.get((namespace, grouped))
            return [self._instance_json(svc, i) for i in svc.instances.values()] if svc else []

    def publish_config(self, data_id: str, group: str, content: str, tenant: str = "", type: str = "text") -> None:
        with self._lock:
            self._config_set((data_id, group, tenant), content, type if type in _CONFIG_TYPES else "text")

    def get_config(self, data_id: str, group: str, tenant: str = "") -> str | None:
        with self._lock:
            cfg = self._configs.get((data_id, group, tenant))
            return cfg.content if cfg else None

    def remove_config(self, data_id: str, group: str, tenant: str = "") -> None:
        with self._lock:
            self._config_remove((data_id, group, tenant))

    # ---- naming state (lock held) -----------------------------------------------------------

    @staticmethod
    def _grouped_name(service: str, group: str) -> str:
        if not service:
            raise ValueError("service is required")
        return service if _SPLITTER in service else f"{group}{_SPLITTER}{service}"

    def _find(
        self, service: str, ip: str, port: int, namespace: str, group: str, cluster: str | None
    ) -> tuple[_Service, _Instance]:
        grouped = self._grouped_name(service, group)
        svc = self._services.get((namespace, grouped))
        inst = svc.instances.get((ip, int(port))) if svc else None
        if svc is None or inst is None or (cluster is not None and inst.cluster != cluster):
            raise KeyError(
                f"no instance {ip}:{port} in {namespace}/{grouped}" + (f" cluster {cluster}" if cluster else "")
            )
        return svc, inst

    def _add_instance(self, namespace: str, grouped: str, inst: _Instance) -> str | None:
        """Register; returns an error text (2.x: a service is ephemeral or persistent for good)."""
        svc = self._services.get((namespace, grouped))
        if svc is None:
            group, name = grouped.split(_SPLITTER, 1)
            svc = self._services[(namespace, grouped)] = _Service(namespace, group, name, inst.ephemeral)
        elif svc.ephemeral is None:
            svc.ephemeral = inst.ephemeral
        if svc.ephemeral != inst.ephemeral:
            kind, other = ("ephemeral", "persistent") if svc.ephemeral else ("persistent", "ephemeral")
            return f"Current service {grouped} is {kind} service, can't register {other} instance."
        svc.instances[(inst.ip, inst.port)] = inst
        return None

    def _instance_json(self, svc: _Service, inst: _Instance, healthy: bool | None = None) -> dict[str, Any]:
        md = inst.metadata
        return {
            "instanceId": f"{inst.ip}#{inst.port}#{inst.cluster}#{svc.grouped}",
            "ip": inst.ip,
            "port": inst.port,
            "weight": inst.weight,
            "healthy": inst.healthy if healthy is None else healthy,
            "enabled": inst.enabled,
            "ephemeral": inst.ephemeral,
            "clusterName": inst.cluster,
            "serviceName": svc.grouped,
            "metadata": dict(md),
            "instanceHeartBeatInterval": _metadata_ms(md, "preserved.heart.beat.interval", _BEAT_INTERVAL_MS),
            "instanceHeartBeatTimeOut": self._beat_timeout_ms(inst),
            "ipDeleteTimeout": self._delete_timeout_ms(inst),
            "instanceIdGenerator": md.get("preserved.instance.id.generator") or "simple",
        }

    def _beat_timeout_ms(self, inst: _Instance) -> int:
        return _metadata_ms(inst.metadata, "preserved.heart.beat.timeout", int(self.beat_timeout * 1000))

    def _delete_timeout_ms(self, inst: _Instance) -> int:
        return _metadata_ms(inst.metadata, "preserved.ip.delete.timeout", int(self.delete_timeout * 1000))

    def _service_info(self, namespace: str, grouped: str, clusters: str, healthy_only: bool) -> dict[str, Any]:
        """``InstanceOperatorClientImpl.listInstance`` + ``ServiceUtil.selectInstancesWithHealthyProtection``."""
        group, _name = grouped.split(_SPLITTER, 1)
        svc = self._services.get((namespace, grouped))
        wanted = {c for c in clusters.split(",")} if clusters.strip() else set()
        eligible = [
            i for i in (svc.instances.values() if svc else ()) if (not wanted or i.cluster in wanted) and i.enabled
        ]
        healthy_count = sum(1 for i in eligible if i.healthy)
        reach = False
        hosts: list[dict[str, Any]] = []
        if svc is not None and eligible:  # 0/0 is NaN in Java: an empty list never reaches the threshold
            threshold = max(0.0, svc.protect_threshold if svc.protect_threshold is not None else self.protect_threshold)
            reach = healthy_count / len(eligible) <= threshold
            if reach:  # every instance, unhealthy ones as healthy copies
                hosts = [self._instance_json(svc, i, healthy=True) for i in eligible]
            else:
                hosts = [self._instance_json(svc, i) for i in eligible if i.healthy or not healthy_only]
        return {
            "name": grouped,
            "groupName": group,
            "clusters": clusters,
            "cacheMillis": _CACHE_MILLIS,
            "hosts": hosts,
            "lastRefTime": int(time.time() * 1000),
            "checksum": hashlib.md5(_json_bytes(hosts)).hexdigest(),
            "allIPs": False,
            "reachProtectionThreshold": reach,
            "valid": True,
        }

    def _service_names(self, namespace: str, group: str) -> list[str]:
        return sorted(s.name for (ns, _), s in self._services.items() if ns == namespace and s.group == group)

    # ---- config state (lock held) -----------------------------------------------------------

    def _config_set(self, key: tuple[str, str, str], content: str, type_: str) -> None:
        old = self._configs.get(key)
        md5 = config_md5(content)
        self._configs[key] = _Config(content, md5, type_, time.time())
        if old is None or old.md5 != md5:  # ConfigCacheService only fires a change when the md5 moves
            self._config_versions[key] = self._config_versions.get(key, 0) + 1
            self._cond.notify_all()

    def _config_remove(self, key: tuple[str, str, str]) -> None:
        if self._configs.pop(key, None) is not None:
            self._config_versions[key] = self._config_versions.get(key, 0) + 1
            self._cond.notify_all()

    # ---- background: beat timeouts ----------------------------------------------------------

    def _reap_once(self) -> None:
        """2.x's ``UnhealthyInstanceChecker`` and ``ExpiredInstanceChecker`` for ephemeral instances."""
        now = time.monotonic()
        with self._lock:
            for svc in self._services.values():
                for key, inst in list(svc.instances.items()):
                    if not (inst.ephemeral and inst.beats_required):
                        continue
                    silent_ms = (now - inst.last_beat) * 1000
                    if silent_ms > self._delete_timeout_ms(inst):
                        del svc.instances[key]
                    elif silent_ms > self._beat_timeout_ms(inst):
                        inst.healthy = False

    # ---- request dispatch -------------------------------------------------------------------

    def _dispatch(self, method: str, target: str, headers: Any, body: bytes) -> _Response:
        raw_path, query, hdrs = split_request(target, headers)
        form: dict[str, list[str]] = {}
        if hdrs.get("content-type", "").lower().startswith("application/x-www-form-urlencoded") and body:
            form = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        with self._lock:
            gen = self._gen
            self._requests.append(RecordedRequest(method, raw_path, target, query, form, hdrs, body))
        path = unquote(raw_path)
        if len(path) > 1 and path.endswith("/"):  # Spring's trailing-slash match
            path = path[:-1]
        req = _Request("GET" if method == "HEAD" else method, raw_path, path, query, form, hdrs, body, gen)
        if not (path == "/nacos" or path.startswith("/nacos/")):
            return _spring_error(404, "No message available", path).response
        self._apply_stall(gen)
        failure = self._next_failure()
        if failure is not None:
            status, text = failure
            return _text(status, text if text is not None else _DEFAULT_FAIL_BODIES.get(status, ""))
        routes = self._routes.get(path)
        if routes is None:
            return _spring_error(404, "No message available", path).response
        allow = ",".join([*routes, "HEAD", "OPTIONS"] if "GET" in routes else [*routes, "OPTIONS"])
        if req.method == "OPTIONS":
            return _Response(200, b"", [("Allow", allow)])
        handler = routes.get(req.method)
        if handler is None:
            return _spring_error(405, f"Request method '{method}' not supported", path, [("Allow", allow)]).response
        try:
            if handler != self._login:
                self._check_auth(req)
            return handler(req)
        except _HTTPError as e:
            return e.response

    def _apply_stall(self, gen: int) -> None:
        with self._cond:
            if self._stall <= 0:
                return
            end = time.monotonic() + self._stall
            while self._gen == gen and self._stall > 0 and (remaining := end - time.monotonic()) > 0:
                self._cond.wait(remaining)

    # ---- auth -------------------------------------------------------------------------------

    def _issue_token(self, username: str) -> str:
        exp = int(time.time() + self.token_ttl)
        header = _b64url(b'{"alg":"HS256"}')
        payload = _b64url(_json_bytes({"sub": username, "exp": exp}))
        signature = _b64url(hmac.new(self._jwt_secret, f"{header}.{payload}".encode(), hashlib.sha256).digest())
        token = f"{header}.{payload}.{signature}"
        with self._lock:
            self._tokens[token] = _Token(username, time.monotonic() + self.token_ttl)
        return token

    def _login(self, req: _Request) -> _Response:
        username, password = req.spring_required("username"), req.spring_required("password")
        if self._auth is not None and (not username or self._auth.get(username) != password):
            return _text(403, "unknown user!")
        token = self._issue_token(username)
        return _json(
            200,
            {"accessToken": token, "tokenTtl": int(self.token_ttl), "globalAdmin": True, "username": username},
            [("Authorization", f"Bearer {token}")],
        )

    def _check_auth(self, req: _Request) -> None:
        """The auth filter in front of every ``@Secured`` API (2.x JWT plugin rules)."""
        if self._auth is None:
            return
        bearer = req.headers.get("authorization", "")
        token = bearer[7:] if bearer.startswith("Bearer ") else ""
        if not token.strip():
            token = req.param("accessToken") or req.headers.get("accesstoken", "")
        if not token.strip():
            username, password = req.param("username"), req.param("password")
            if username and password and self._auth.get(username) == password:
                return
            self._deny(req, "user not found!")
        with self._lock:
            entry = self._tokens.get(token)
            expired = entry is not None and entry.expires <= time.monotonic()
        if entry is None:
            self._deny(req, "token invalid!")
        if expired:
            self._deny(req, "token expired!")

    @staticmethod
    def _deny(req: _Request, message: str) -> None:
        raise _spring_error(403, message, req.path)  # the AuthFilter (v1 and v2 alike): response.sendError(403, msg)

    # ---- naming v1 --------------------------------------------------------------------------

    @staticmethod
    def _check_service_name(grouped: str) -> None:
        """``NamingUtils.checkServiceNameFormat``."""
        parts = _java_split(grouped, _SPLITTER)
        if len(parts) <= 1:
            raise _naming_error(400, "Param 'serviceName' is illegal, it should be format as 'groupName@@serviceName'")
        if not parts[0]:
            raise _naming_error(400, "Param 'serviceName' is illegal, groupName can't be empty")

    def _v1_service_name(self, req: _Request) -> str:
        """``ServiceNameFilter`` (prepend ``groupName@@``), then ``WebUtils.required`` and the format check."""
        name = (req.param("serviceName") or "").strip()
        if not name:
            raise _naming_error(400, "Param 'serviceName' is required.")
        if _SPLITTER not in name:
            name = f"{req.optional('groupName', _DEFAULT_GROUP)}{_SPLITTER}{name}"
        self._check_service_name(name)
        return name

    def _instance_from_request(self, req: _Request) -> _Instance:
        """``HttpRequestInstanceBuilder`` + ``NamingUtils.checkInstanceIsLegal``; errors are naming 400s."""
        ip = req.required("ip")
        try:
            port = _java_int(req.required("port"))
            weight = _java_double(req.optional("weight", "1"))
        except ValueError as e:
            raise _naming_error(400, str(e)) from None
        if not _MIN_WEIGHT <= weight <= _MAX_WEIGHT:
            raise _naming_error(400, _WEIGHT_ERROR)
        cluster = req.optional("clusterName", "")
        if not cluster.strip():
            cluster = req.optional("cluster", _DEFAULT_CLUSTER)
        if cluster == "None":  # nacos-sdk-python sends clusterName=None when unset
            cluster = _DEFAULT_CLUSTER
        enabled_text = req.optional("enabled", "")
        enabled = _convert_bool(enabled_text) if enabled_text else _convert_bool(req.optional("enable", "true"))
        try:
            metadata = _parse_metadata(req.optional("metadata", ""))
        except ValueError as e:
            raise _naming_error(400, str(e)) from None
        inst = _Instance(
            ip,
            port,
            cluster,
            weight,
            _convert_bool(req.optional("healthy", "true")),
            enabled,
            _convert_bool(req.optional("ephemeral", "true")),
            metadata,
            True,
            time.monotonic(),
        )
        self._check_instance(inst)
        return inst

    @staticmethod
    def _check_instance(inst: _Instance) -> None:
        interval = _metadata_ms(inst.metadata, "preserved.heart.beat.interval", _BEAT_INTERVAL_MS)
        if (
            _metadata_ms(inst.metadata, "preserved.heart.beat.timeout", _DEFAULT_BEAT_TIMEOUT_MS) < interval
            or _metadata_ms(inst.metadata, "preserved.ip.delete.timeout", _DEFAULT_DELETE_TIMEOUT_MS) < interval
        ):
            raise _naming_error(400, _INTERVAL_ERROR)
        if inst.cluster and not _CLUSTER_NAME_RE.match(inst.cluster):
            raise _naming_error(
                400, f"Instance 'clusterName' should be characters with only 0-9a-zA-Z-. (current: {inst.cluster})"
            )

    def _register_or_400(self, namespace: str, grouped: str, inst: _Instance, v2: bool = False) -> None:
        with self._lock:
            err = self._add_instance(namespace, grouped, inst)
        if err:
            raise _v2_error(400, 20002, err) if v2 else _naming_error(400, f"caused: errCode: 400, errMsg: {err} ;")

    def _v1_register(self, req: _Request) -> _Response:
        namespace = req.optional("namespaceId", _DEFAULT_NAMESPACE)
        grouped = self._v1_service_name(req)
        inst = self._instance_from_request(req)
        self._register_or_400(namespace, grouped, inst)
        return _text(200, "ok")

    def _v1_deregister(self, req: _Request) -> _Response:
        grouped = self._v1_service_name(req)
        inst = self._instance_from_request(req)
        namespace = req.optional("namespaceId", _DEFAULT_NAMESPACE)
        with self._lock:
            svc = self._services.get((namespace, grouped))
            if svc is not None and svc.ephemeral == inst.ephemeral:  # 2.x: the client id is ip:port#ephemeral
                svc.instances.pop((inst.ip, inst.port), None)
        return _text(200, "ok")

    def _v1_update(self, req: _Request) -> _Response:
        namespace = req.optional("namespaceId", _DEFAULT_NAMESPACE)
        grouped = self._v1_service_name(req)
        inst = self._instance_from_request(req)
        with self._lock:
            svc = self._services.get((namespace, grouped))
            if svc is None:
                g, n = grouped.split(_SPLITTER, 1)
                raise _naming_error(
                    400,
                    f"service not found, namespace: {namespace}, service: "
                    f"{_Service(namespace, g, n, inst.ephemeral).describe()}",
                )
            self._apply_update(svc, inst)
        return _text(200, "ok")

    @staticmethod
    def _apply_update(svc: _Service, update: _Instance) -> None:
        """2.x stores weight / enabled / metadata as instance metadata that overrides the registration."""
        target = svc.instances.get((update.ip, update.port))
        if target is not None:
            target.weight, target.enabled = update.weight, update.enabled
            target.metadata.update(update.metadata)

    def _v1_detail(self, req: _Request) -> _Response:
        namespace = req.optional("namespaceId", _DEFAULT_NAMESPACE)
        grouped = self._v1_service_name(req)
        cluster = req.optional("clusterName", _DEFAULT_CLUSTER)
        ip = req.required("ip")
        try:
            port = _java_int(req.required("port"))
        except ValueError as e:
            raise _naming_error(400, str(e)) from None
        with self._lock:
            svc, inst = self._detail(namespace, grouped, cluster, ip, port)
            if inst is None:
                raise _naming_error(404, svc)
            body = {
                "service": grouped,
                "ip": ip,
                "port": port,
                "clusterName": cluster,
                "weight": inst.weight,
                "healthy": inst.healthy,
                "instanceId": f"{ip}#{port}#{cluster}#{grouped}",
                "metadata": dict(inst.metadata),
            }
        return _json(200, body)

    def _detail(self, namespace: str, grouped: str, cluster: str, ip: str, port: int) -> tuple[Any, _Instance | None]:
        """``getInstance0``: (error text, None) or (service, instance)."""
        svc = self._services.get((namespace, grouped))
        if svc is None or not svc.instances:
            return f"no ips found for cluster {cluster} in service {grouped}", None
        inst = svc.instances.get((ip, port))
        if inst is None or inst.cluster != cluster:
            return "no matched ip found!", None
        return svc, inst

    def _v1_list(self, req: _Request) -> _Response:
        namespace = req.optional("namespaceId", _DEFAULT_NAMESPACE)
        grouped = self._v1_service_name(req)
        clusters = req.optional("clusters", "")
        healthy_only = _parse_boolean(req.optional("healthyOnly", "false"))
        with self._lock:
            info = self._service_info(namespace, grouped, clusters, healthy_only)
        return _json(200, info)

    def _v1_beat(self, req: _Request) -> _Response:
        raw = req.optional("beat", "")
        beat: dict[str, Any] | None = None
        if raw.strip():
            try:
                beat = json.loads(raw)
                if not isinstance(beat, dict):
                    raise ValueError("not an object")
            except ValueError:
                raise _naming_error(
                    500, "caused: Nacos deserialize for class [com.alibaba.nacos.naming.healthcheck.RsInfo] failed. ;"
                ) from None
        cluster = req.optional("clusterName", _DEFAULT_CLUSTER)
        ip = req.optional("ip", "")
        try:
            port = _java_int(req.optional("port", "0"))
            if beat is not None:
                if str(beat.get("cluster") or "").strip():
                    cluster = str(beat["cluster"])
                ip, port = str(beat.get("ip") or ""), int(beat.get("port") or 0)
        except (ValueError, TypeError) as e:
            raise _naming_error(400, str(e)) from None
        namespace = req.optional("namespaceId", _DEFAULT_NAMESPACE)
        grouped = self._v1_service_name(req)
        with self._lock:
            svc = self._services.get((namespace, grouped))
            inst = svc.instances.get((ip, port)) if svc else None
            if inst is None:
                if beat is None:
                    return _json(
                        200,
                        {"clientBeatInterval": _BEAT_INTERVAL_MS, "code": _CODE_NOT_FOUND, "lightBeatEnabled": True},
                    )
                try:  # BeatInfoInstanceBuilder: the beat re-creates the instance
                    weight = float(beat.get("weight", 1.0))
                    metadata = {str(k): str(v) for k, v in (beat.get("metadata") or {}).items()}
                except (TypeError, ValueError, AttributeError) as e:
                    raise _naming_error(400, str(e)) from None
                inst = _Instance(
                    ip,
                    port,
                    cluster,
                    weight,
                    True,
                    True,
                    bool(beat.get("ephemeral", True)),
                    metadata,
                    True,
                    time.monotonic(),
                )
                self._check_instance(inst)
                self._register_or_400(namespace, grouped, inst)
            inst.last_beat = time.monotonic()
            inst.healthy = True
            interval = _metadata_ms(inst.metadata, "preserved.heart.beat.interval", _BEAT_INTERVAL_MS)
        return _json(200, {"clientBeatInterval": interval, "code": _CODE_OK, "lightBeatEnabled": True})

    @staticmethod
    def _page(names: list[str], page_no: int, page_size: int) -> list[str]:
        """``ServiceUtil.pageServiceName``."""
        start = max(0, (page_no - 1) * page_size)
        if start >= len(names):
            return []
        return names[start : min(start + page_size, len(names))]

    def _v1_service_list(self, req: _Request) -> _Response:
        def to_int(text: str) -> int:  # NumberUtils.toInt: 0 when unparsable
            try:
                return _java_int(text)
            except ValueError:
                return 0

        page_no, page_size = to_int(req.required("pageNo")), to_int(req.required("pageSize"))
        namespace = req.optional("namespaceId", _DEFAULT_NAMESPACE)
        group = req.optional("groupName", _DEFAULT_GROUP)
        with self._lock:
            names = self._service_names(namespace, group)
        return _json(200, {"count": len(names), "doms": self._page(names, page_no, page_size)})

    # ---- naming v2 --------------------------------------------------------------------------

    @staticmethod
    def _v2_missing(name: str, type_: str = "String") -> _HTTPError:
        return _v2_error(
            400, 10000, f"Required request parameter '{name}' for method parameter type {type_} is not present"
        )

    def _v2_form(self, req: _Request) -> tuple[str, str, _Instance]:
        """``InstanceForm.validate`` + ``checkWeight`` + ``buildInstance``."""

        def blank(name: str) -> bool:
            return not (req.param(name) or "").strip()

        for name, type_ in (("serviceName", "String"), ("ip", "String"), ("port", "Integer")):
            if blank(name):
                raise _v2_error(400, 10000, f"Required parameter '{name}' type {type_} is not present")
        try:
            port = _java_int(req.param("port") or "")
            weight = _java_double(req.optional("weight", "1.0"))
        except ValueError as e:
            raise _v2_error(400, 20002, str(e)) from None
        if not _MIN_WEIGHT <= weight <= _MAX_WEIGHT:
            raise _v2_error(400, 21001, _WEIGHT_ERROR)
        flags = {}
        for name, default in (("healthy", True), ("enabled", True), ("ephemeral", True)):
            value = _spring_bool(req.param(name) or "") if not blank(name) else default
            if value is None:
                raise _v2_error(
                    400,
                    20002,
                    "Failed to convert value of type 'java.lang.String' to required type 'java.lang.Boolean'; "
                    f"Invalid boolean value [{req.param(name)}]",
                )
            flags[name] = value
        try:
            metadata = _parse_metadata(req.optional("metadata", ""))
        except ValueError as e:
            raise _v2_error(400, 30000, str(e)) from None
        grouped = f"{req.optional('groupName', _DEFAULT_GROUP)}{_SPLITTER}{(req.param('serviceName') or '').strip()}"
        inst = _Instance(
            (req.param("ip") or "").strip(),
            port,
            req.optional("clusterName", _DEFAULT_CLUSTER),
            weight,
            flags["healthy"],
            flags["enabled"],
            flags["ephemeral"],
            metadata,
            True,
            time.monotonic(),
        )
        try:
            self._check_instance(inst)
        except _HTTPError as e:
            raise _v2_error(400, 20002, e.response.body.decode()) from None
        return req.optional("namespaceId", _DEFAULT_NAMESPACE), grouped, inst

    def _v2_register(self, req: _Request) -> _Response:
        namespace, grouped, inst = self._v2_form(req)
        self._register_or_400(namespace, grouped, inst, v2=True)
        return _v2_ok("ok")

    def _v2_deregister(self, req: _Request) -> _Response:
        namespace, grouped, inst = self._v2_form(req)
        with self._lock:
            svc = self._services.get((namespace, grouped))
            if svc is not None and svc.ephemeral == inst.ephemeral:
                svc.instances.pop((inst.ip, inst.port), None)
        return _v2_ok("ok")

    def _v2_update(self, req: _Request) -> _Response:
        namespace, grouped, inst = self._v2_form(req)
        with self._lock:
            svc = self._services.get((namespace, grouped))
            if svc is None:
                g, n = grouped.split(_SPLITTER, 1)
                raise _v2_error(
                    400,
                    30000,
                    f"service not found, namespace: {namespace}, service: "
                    f"{_Service(namespace, g, n, inst.ephemeral).describe()}",
                )
            self._apply_update(svc, inst)
        return _v2_ok("ok")

    def _v2_service_name(self, req: _Request) -> tuple[str, str]:
        """``@RequestParam serviceName`` + ``NamingUtils.getGroupedName`` (no ``@@`` filter on v2)."""
        name = req.param("serviceName")
        if name is None:
            raise self._v2_missing("serviceName")
        if not name.strip():
            raise _v2_error(400, 20002, "Param 'serviceName' is illegal, serviceName is blank")
        group = req.param("groupName")
        group = _DEFAULT_GROUP if group is None else group
        if not group.strip():
            raise _v2_error(400, 20002, "Param 'groupName' is illegal, groupName is blank")
        return req.param("namespaceId") or _DEFAULT_NAMESPACE, f"{group}{_SPLITTER}{name}"

    def _v2_list(self, req: _Request) -> _Response:
        namespace, grouped = self._v2_service_name(req)
        healthy_only = _spring_bool(req.param("healthyOnly") or "false")
        if healthy_only is None:
            raise _v2_error(
                400,
                20002,
                "Failed to convert value of type 'java.lang.String' to required type 'java.lang.Boolean'; Invalid "
                f"boolean value [{req.param('healthyOnly')}]",
            )
        with self._lock:
            info = self._service_info(namespace, grouped, req.param("clusterName") or "", healthy_only)
        return _v2_ok(info)

    def _v2_detail(self, req: _Request) -> _Response:
        namespace, grouped = self._v2_service_name(req)
        for name, type_ in (("ip", "String"), ("port", "Integer")):
            if req.param(name) is None:
                raise self._v2_missing(name, type_)
        try:
            port = _java_int(req.param("port") or "")
        except ValueError as e:
            raise _v2_error(400, 20002, str(e)) from None
        cluster = req.param("clusterName") or _DEFAULT_CLUSTER
        ip = req.param("ip") or ""
        with self._lock:
            svc, inst = self._detail(namespace, grouped, cluster, ip, port)
            if inst is None:
                raise _v2_error(404, 20004, svc)
            data = {
                "serviceName": grouped,
                "ip": ip,
                "port": port,
                "clusterName": cluster,
                "weight": inst.weight,
                "healthy": inst.healthy,
                "instanceId": f"{ip}#{port}#{cluster}#{grouped}",
                "metadata": dict(inst.metadata),
            }
        return _v2_ok(data)

    def _v2_service_list(self, req: _Request) -> _Response:
        try:
            page_no = _java_int(req.param("pageNo") or "1")
            page_size = min(500, _java_int(req.param("pageSize") or "20"))
        except ValueError as e:
            raise _v2_error(400, 20002, str(e)) from None
        with self._lock:
            names = self._service_names(
                req.param("namespaceId") or _DEFAULT_NAMESPACE, req.param("groupName") or _DEFAULT_GROUP
            )
        return _v2_ok({"count": len(names), "services": self._page(names, page_no, page_size)})

    # ---- config -----------------------------------------------------------------------------

    @staticmethod
    def _check_tenant(tenant: str) -> None:
        """``ParamUtils.checkTenant``."""
        if tenant.strip() and (not _is_valid_param(tenant.strip()) or len(tenant) > 128):
            raise _config_error(400, "invalid tenant")

    @staticmethod
    def _check_config_params(data_id: str, group: str, content: str | None) -> None:
        """``ParamUtils.checkParam(dataId, group, datumId, content)``."""
        if not data_id.strip() or not _is_valid_param(data_id.strip()):
            raise _config_error(400, f"invalid dataId : {data_id}")
        if not group.strip() or not _is_valid_param(group):
            raise _config_error(400, f"invalid group : {group}")
        if content is not None and not content.strip():
            raise _config_error(400, f"content is blank : {content}")

    def _config_get(self, req: _Request) -> _Response:
        data_id, group = req.spring_required("dataId"), req.spring_required("group")
        tenant = req.param("tenant") or ""
        self._check_tenant(tenant)
        if not tenant.strip() or tenant.lower() in ("public", "null"):  # NamespaceUtil.processNamespaceParameter
            tenant = ""
        tenant = tenant.strip()
        self._check_config_params(data_id, group, None)
        with self._lock:
            cfg = self._configs.get((data_id, group, tenant))
        if cfg is None:
            return _Response(404, b"config data not exist\n")  # response.getWriter().println(...)
        headers = [
            ("Config-Type", cfg.type),
            ("Content-Type", _CONTENT_TYPES.get(cfg.type, _TEXT_PLAIN)),
            ("Content-MD5", cfg.md5),
            *_NO_CACHE,
            ("Last-Modified", formatdate(cfg.modified, usegmt=True)),
        ]
        return _Response(200, cfg.content.encode("utf-8"), headers)

    def _config_publish(self, req: _Request) -> _Response:
        data_id, group = req.spring_required("dataId"), req.spring_required("group")
        tenant = req.param("tenant") or ""
        content = req.spring_required("content")
        type_ = req.param("type") or ""
        if type_ not in _CONFIG_TYPES:
            type_ = "text"
        self._check_tenant(tenant)
        self._check_config_params(data_id, group, content)
        cas_md5 = req.headers.get("casmd5", "")  # only the header counts (request.getHeader), not a form field
        with self._lock:
            current = self._configs.get((data_id, group, tenant))
            # ConfigOperationService.publishConfig -> insertOrUpdateCas: an existing item is only
            # updated when its md5 is still casMd5; a missing one is simply created.
            if cas_md5.strip() and current is not None and current.md5 != cas_md5:
                raise _config_error(500, "Cas publish fail, server md5 may have changed.")
            self._config_set((data_id, group, tenant), content, type_)
        return _json(200, True)

    def _config_delete(self, req: _Request) -> _Response:
        data_id, group = req.spring_required("dataId"), req.spring_required("group")
        tenant = req.param("tenant") or ""
        self._check_tenant(tenant)
        self._check_config_params(data_id, group, None)
        with self._lock:
            self._config_remove((data_id, group, tenant))
        return _json(200, True)

    @staticmethod
    def _parse_listening(text: str) -> dict[tuple[str, str, str], str]:
        """``MD5Util.getClientMd5Map``: 3 fields (dataId, group, md5) or 4 (..., tenant), each ended by ^A."""
        result: dict[tuple[str, str, str], str] = {}
        start, fields = 0, []
        for i, ch in enumerate(text):
            if ch == _WORD:
                fields.append(text[start:i])
                start = i + 1
                if len(fields) > 3:
                    raise ValueError("invalid protocol,too much key")
            elif ch == _LINE:
                end = text[start:i]
                start = i + 1
                if len(fields) == 2:
                    result[(fields[0], fields[1], "")] = end
                elif len(fields) == 3:  # GroupKey2.getKey: an empty tenant is no tenant
                    result[(fields[0], fields[1], end)] = fields[2]
                else:
                    raise ValueError("invalid protocol")
                fields = []
        return result

    @staticmethod
    def _changed_body(keys: list[tuple[str, str, str]]) -> _Response:
        """``MD5Util.compareMd5ResultString``, written with ``println``."""
        text = "".join(f"{d}{_WORD}{g}" + (f"{_WORD}{t}" if t.strip() else "") + _LINE for d, g, t in keys)
        return _Response(200, (java_url_encode(text) + "\n").encode("ascii"), list(_NO_CACHE))

    def _config_listener(self, req: _Request) -> _Response:
        probe = req.param("Listening-Configs")
        if not probe or not probe.strip():
            raise _config_error(400, "invalid probeModify")
        try:
            watched = self._parse_listening(_java_url_decode(probe))
        except ValueError:
            raise _config_error(400, "invalid probeModify") from None
        timeout_header = req.headers.get("long-pulling-timeout")
        hold: float | None = None
        if timeout_header is not None:
            try:
                hold = max(self.long_poll_min_hold, _java_int(timeout_header.strip()) / 1000 - _LONG_POLL_DELAY)
            except ValueError as e:
                raise _config_error(400, str(e)) from None
        no_hangup = req.headers.get("long-pulling-timeout-no-hangup", "").lower() == "true"
        with self._cond:
            changed = [k for k, md5 in watched.items() if (self._configs[k].md5 if k in self._configs else "") != md5]
            if changed or hold is None:  # no Long-Pulling-Timeout: short polling, answered at once
                return self._changed_body(changed) if changed else _Response(200, b"", list(_NO_CACHE))
            if no_hangup:
                return _Response(200, b"")
            versions = {k: self._config_versions.get(k, 0) for k in watched}
            deadline = time.monotonic() + hold
            with self._holding():
                while True:
                    if self._gen != req.gen:
                        raise _Killed()
                    woke = [k for k in watched if self._config_versions.get(k, 0) != versions[k]]
                    if woke:  # LongPollingService.DataChangeTask answers with the changed key
                        return self._changed_body(woke)
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return _Response(200, b"")
                    self._cond.wait(remaining)


def main(argv: list[str] | None = None) -> int:
    """``python -m graylb.testing.fake_nacos [--port 8848] [--user nacos:nacos]``: serve until interrupted."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m graylb.testing.fake_nacos", description="Run FakeNacos on 127.0.0.1 until interrupted."
    )
    parser.add_argument("--port", type=int, default=8848)
    parser.add_argument(
        "--user", action="append", default=[], metavar="NAME:PASSWORD", help="turn auth on with this user (repeatable)"
    )
    args = parser.parse_args(argv)
    users = dict(u.split(":", 1) for u in args.user) if args.user else None
    fake = FakeNacos(port=args.port, auth=users).start()
    return serve_until_interrupted(fake, f"FakeNacos listening on {fake.url}/nacos")


if __name__ == "__main__":
    raise SystemExit(main())
