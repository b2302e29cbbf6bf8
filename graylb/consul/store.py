"""The :class:`~graylb.admin.RuleStore` on Consul: rules documents in KV (read, compare-and-set
write), a service's instances from the health API read exactly as :class:`ConsulDiscovery`
reads them. The registry-neutral actions (push / undo / rollback / status) are in
:mod:`graylb.admin`.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx

from ..errors import GraylbError
from ..instance import Instance
from .client import ConsulConfig, ConsulUnavailable, check_response
from .discovery import instances_from_health

__all__ = ["ConsulKVStore"]



class ConsulKVStore:
    """A :class:`RuleStore` on Consul's KV store and health API (httpx, token in the header)."""

    def __init__(self, config: ConsulConfig) -> None:
        self.config = config
        self._http = config.client()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ConsulKVStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self, key: str) -> str:
        return f"Consul KV key '{key}'"

    def _request(self, method: str, path: str, what: str, **kw: Any) -> httpx.Response:
        params = dict(kw.pop("params", None) or {})
        if self.config.datacenter:
            params["dc"] = self.config.datacenter
        try:
            response = self._http.request(method, path, params=params, **kw)
        except httpx.ConnectError as exc:
            reason = "connection refused" if "refused" in str(exc).lower() else f"cannot connect ({_short(exc)})"
            raise ConsulUnavailable(f"cannot reach Consul at {self.config.address} while {what}: {reason}") from None
        except httpx.TimeoutException:
            raise ConsulUnavailable(f"Consul at {self.config.address} timed out while {what}") from None
        except httpx.TransportError as exc:
            raise ConsulUnavailable(f"cannot talk to Consul at {self.config.address} while {what}: {_short(exc)}") from None
        return response

    @staticmethod
    def _kv_path(key: str) -> str:
        key = key.strip("/")
        if not key:
            raise GraylbError("the KV key must not be empty")
        return "/v1/kv/" + quote(key, safe="/")

    def get(self, key: str) -> tuple[str | None, int]:
        what = f"reading KV key '{key}'"
        r = self._request("GET", self._kv_path(key), what)
        if r.status_code == 404:
            return None, 0
        check_response(r, what)
        try:
            entry = r.json()[0]
            raw = entry.get("Value")
            value = base64.b64decode(raw).decode("utf-8") if raw else ""
            return value, int(entry["ModifyIndex"])
        except (ValueError, LookupError, TypeError) as exc:
            raise GraylbError(f"unexpected answer from Consul while {what}: {_short(exc)}") from None

    def _write(self, key: str, value: str, params: Mapping[str, Any], what: str) -> bool:
        r = self._request("PUT", self._kv_path(key), what, params=params, content=value.encode("utf-8"))
        check_response(r, what)
        return r.text.strip() == "true"

    def put(self, key: str, value: str) -> None:
        if not self._write(key, value, {}, f"writing KV key '{key}'"):
            raise GraylbError(f"Consul did not write KV key '{key}'")

    def cas_put(self, key: str, value: str, version: Any) -> bool:
        return self._write(key, value, {"cas": int(version or 0)}, f"writing KV key '{key}'")

    def instances(self, service: str) -> tuple[list[tuple[str, Instance]], list[str]]:
        what = f"listing instances of service '{service}'"
        r = self._request("GET", "/v1/health/service/" + quote(service, safe=""), what)
        check_response(r, what)
        try:
            entries = r.json() or []
        except ValueError:
            raise GraylbError(f"unexpected answer from Consul while {what}: not JSON") from None
        problems: list[str] = []

        def warn(_service: str, name: str, problem: str) -> None:
            problems.append(f"{name}: {problem}")

        out = []
        for entry in entries:
            # Read exactly as ConsulDiscovery reads it, so the status is what the router sees.
            for inst in instances_from_health(service, [entry], warn):
                svc = entry.get("Service") or {}
                node = (entry.get("Node") or {}).get("Node")
                sid = str(svc.get("ID") or svc.get("Service") or "?")
                out.append((f"{node}/{sid}" if node else sid, inst))
        return out, problems


def _short(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text[:200]
