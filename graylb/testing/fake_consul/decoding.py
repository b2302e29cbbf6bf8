"""Go compatibility for FakeConsul: values as Go reads and prints them, and request bodies as
Consul's Go JSON decoder reads them.

- Go's ``time.ParseDuration`` / ``Duration.String()`` (:func:`parse_go_duration`,
  :func:`format_go_duration`), ``%q`` and ``strconv.ParseBool``.
- Agent service registration bodies: JSON keys matched case-insensitively (Go's
  ``encoding/json``) with Consul's snake_case aliases, durations as strings or nanoseconds, and
  Go's ``cannot unmarshal ... into Go struct field ...`` errors as Consul's 400s.

:class:`_HTTPError` lives here, the bottom of the package, because the decoders raise Consul's
400s with it; the handlers in :mod:`.server` raise it for every other error answer.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any


class _HTTPError(Exception):
    def __init__(self, status: int, text: str, headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(text)
        self.status, self.text, self.headers = status, text, headers or []


# --------------------------------------------------------------------------------------------
# Small Go-compatibility helpers
# --------------------------------------------------------------------------------------------

_DURATION_UNITS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "μs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}


def parse_go_duration(text: str) -> int:
    """Go's ``time.ParseDuration``, returning nanoseconds. Raises ``ValueError`` with Go's message."""
    orig, s = text, text
    neg = False
    if s[:1] in ("-", "+"):
        neg, s = s[0] == "-", s[1:]
    if s == "0":
        return 0
    if not s:
        raise ValueError(f'time: invalid duration "{orig}"')
    total = 0.0
    while s:
        m = re.match(r"[0-9]*(\.[0-9]*)?", s)
        number = m.group(0) if m else ""
        if number in ("", "."):
            raise ValueError(f'time: invalid duration "{orig}"')
        s = s[len(number) :]
        u = re.match(r"[^0-9.]+", s)
        if not u:
            raise ValueError(f'time: missing unit in duration "{orig}"')
        unit = u.group(0)
        if unit not in _DURATION_UNITS:
            raise ValueError(f'time: unknown unit "{unit}" in duration "{orig}"')
        s = s[len(unit) :]
        total += float(number) * _DURATION_UNITS[unit]
    ns = round(total)
    return -ns if neg else ns


def _frac(value: int, unit: int) -> str:
    whole, rest = divmod(value, unit)
    if not rest:
        return str(whole)
    digits = str(rest).rjust(len(str(unit)) - 1, "0").rstrip("0")
    return f"{whole}.{digits}"


def format_go_duration(ns: int) -> str:
    """Go's ``time.Duration.String()`` (``10s``, ``1m0s``, ``1.5s``, ``100ms``)."""
    if ns == 0:
        return "0s"
    sign, u = ("-" if ns < 0 else ""), abs(ns)
    if u < 1_000:
        return f"{sign}{u}ns"
    if u < 1_000_000:
        return f"{sign}{_frac(u, 1_000)}µs"
    if u < 1_000_000_000:
        return f"{sign}{_frac(u, 1_000_000)}ms"
    hours, rem = divmod(u, 3_600_000_000_000)
    minutes, rem = divmod(rem, 60_000_000_000)
    out = ""
    if hours:
        out += f"{hours}h"
    if hours or minutes:
        out += f"{minutes}m"
    return f"{sign}{out}{_frac(rem, 1_000_000_000)}s"


def _q(s: str) -> str:
    """Go's %q for the error texts."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t") + '"'


def _parse_bool(value: str) -> bool:
    """Go's strconv.ParseBool."""
    if value in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if value in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise ValueError(value)


# --------------------------------------------------------------------------------------------
# Registration decoding (Go's case-insensitive JSON + Consul's snake_case aliases)
# --------------------------------------------------------------------------------------------


def _norm(key: str) -> str:
    return key.replace("_", "").replace("-", "").lower()


def _jtype(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


def _decode_error(value: Any, field: str, gotype: str) -> _HTTPError:
    return _HTTPError(
        400,
        f"Request decode failed: json: cannot unmarshal {_jtype(value)} into Go struct field {field} of type {gotype}",
    )


def _as_str(v: Any, field: str) -> str:
    if v is None:
        return ""
    if not isinstance(v, str):
        raise _decode_error(v, field, "string")
    return v


def _as_int(v: Any, field: str) -> int:
    if v is None:
        return 0
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not v.is_integer()):
        raise _decode_error(v, field, "int")
    return int(v)


def _as_bool(v: Any, field: str) -> bool:
    if v is None:
        return False
    if not isinstance(v, bool):
        raise _decode_error(v, field, "bool")
    return v


def _as_duration(v: Any) -> int:
    if v is None:
        return 0
    if isinstance(v, str):
        if v == "":
            return 0
        try:
            return parse_go_duration(v)
        except ValueError as e:
            raise _HTTPError(400, f"Request decode failed: {e}") from None
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return int(v)
    raise _HTTPError(400, f"Request decode failed: invalid duration: {json.dumps(v)}")


def _decode_service_definition(body: bytes) -> dict[str, Any]:
    if not body.strip():
        raise _HTTPError(400, "Request decode failed: EOF")
    try:
        doc = json.loads(body)
    except ValueError as e:
        raise _HTTPError(400, f"Request decode failed: {e}") from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise _HTTPError(
            400,
            f"Request decode failed: json: cannot unmarshal {_jtype(doc)} into Go value of type "
            "structs.ServiceDefinition",
        )
    f = {_norm(k): v for k, v in doc.items()}
    out: dict[str, Any] = {
        "name": _as_str(f.get("name"), "ServiceDefinition.Name"),
        "id": _as_str(f.get("id"), "ServiceDefinition.ID"),
        "address": _as_str(f.get("address"), "ServiceDefinition.Address"),
        "port": _as_int(f.get("port"), "ServiceDefinition.Port"),
        "kind": _as_str(f.get("kind"), "ServiceDefinition.Kind"),
        "enabletagoverride": _as_bool(f.get("enabletagoverride"), "ServiceDefinition.EnableTagOverride"),
    }
    tags = f.get("tags")
    if tags is not None:
        if not isinstance(tags, list):
            raise _decode_error(tags, "ServiceDefinition.Tags", "[]string")
        out["tags"] = [_as_str(t, "ServiceDefinition.Tags") for t in tags]
    meta = f.get("meta")
    if meta is not None:
        if not isinstance(meta, dict):
            raise _decode_error(meta, "ServiceDefinition.Meta", "map[string]string")
        out["meta"] = {k: _as_str(v, "ServiceDefinition.Meta") for k, v in meta.items()}
    weights = f.get("weights")
    if weights is not None:
        if not isinstance(weights, dict):
            raise _decode_error(weights, "ServiceDefinition.Weights", "structs.Weights")
        w = {_norm(k): v for k, v in weights.items()}
        out["weights"] = (_as_int(w.get("passing"), "Weights.Passing"), _as_int(w.get("warning"), "Weights.Warning"))
    tagged = f.get("taggedaddresses")
    if tagged is not None:
        if not isinstance(tagged, dict):
            raise _decode_error(tagged, "ServiceDefinition.TaggedAddresses", "map[string]structs.ServiceAddress")
        ta = {}
        for k, v in tagged.items():
            vv = {_norm(a): b for a, b in (v or {}).items()} if isinstance(v, dict) else {}
            ta[k] = {
                "Address": _as_str(vv.get("address"), "ServiceAddress.Address"),
                "Port": _as_int(vv.get("port"), "ServiceAddress.Port"),
            }
        out["taggedaddresses"] = ta
    checks: list[dict[str, Any]] = []
    single = f.get("check")
    if single is not None:
        if not isinstance(single, dict):
            raise _decode_error(single, "ServiceDefinition.Check", "structs.CheckType")
        if single:
            checks.append(single)
    many = f.get("checks")
    if many is not None:
        if not isinstance(many, list):
            raise _decode_error(many, "ServiceDefinition.Checks", "structs.CheckTypes")
        for c in many:
            if not isinstance(c, dict):
                raise _decode_error(c, "ServiceDefinition.Checks", "structs.CheckType")
            checks.append(c)
    out["checks"] = checks
    return out


@dataclasses.dataclass
class _CheckDef:
    id: str
    name: str
    status: str
    notes: str
    type: str
    interval_ns: int
    timeout_ns: int
    ttl_ns: int
    deregister_ns: int
    http: str
    method: str
    header: dict[str, list[str]] | None
    tls_skip_verify: bool
    tcp: str


def _check_from_definition(raw: dict[str, Any]) -> _CheckDef:
    c = {_norm(k): v for k, v in raw.items()}
    interval, ttl = _as_duration(c.get("interval")), _as_duration(c.get("ttl"))
    timeout, dereg = _as_duration(c.get("timeout")), _as_duration(c.get("deregistercriticalserviceafter"))
    kinds = [k for k in ("http", "tcp", "udp", "grpc", "h2ping", "osservice") if c.get(k)]
    script = bool(c.get("args") or c.get("scriptargs") or c.get("script"))
    docker = bool(c.get("dockercontainerid"))
    alias = bool(c.get("aliasnode") or c.get("aliasservice"))
    interval_check = bool(kinds) or script or docker
    if interval > 0 and ttl > 0:
        raise _HTTPError(400, "Invalid check: Interval and TTL cannot both be specified")
    if interval_check and interval <= 0:
        raise _HTTPError(
            400, "Invalid check: Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or OSService checks"
        )
    if not interval_check and not alias and ttl <= 0:
        raise _HTTPError(400, "Invalid check: TTL must be > 0 for TTL checks")
    kind = "ttl" if ttl > 0 else ("docker" if docker else "script" if script else kinds[0] if kinds else "alias")
    kind = {"osservice": "os_service"}.get(kind, kind)
    header = c.get("header")
    if header is not None and not isinstance(header, dict):
        raise _decode_error(header, "CheckType.Header", "map[string][]string")
    return _CheckDef(
        id=_as_str(c.get("checkid") or c.get("id"), "CheckType.CheckID"),
        name=_as_str(c.get("name"), "CheckType.Name"),
        status=_as_str(c.get("status"), "CheckType.Status"),
        notes=_as_str(c.get("notes"), "CheckType.Notes"),
        type=kind,
        interval_ns=interval,
        timeout_ns=timeout,
        ttl_ns=ttl,
        deregister_ns=dereg,
        http=_as_str(c.get("http"), "CheckType.HTTP"),
        method=_as_str(c.get("method"), "CheckType.Method"),
        header={k: list(v) if isinstance(v, list) else [str(v)] for k, v in (header or {}).items()} or None,
        tls_skip_verify=_as_bool(c.get("tlsskipverify"), "CheckType.TLSSkipVerify"),
        tcp=_as_str(c.get("tcp"), "CheckType.TCP"),
    )
