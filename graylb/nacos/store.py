"""The :class:`~graylb.admin.RuleStore` on Nacos: config items for rules documents, the naming
service for a service's instances.

Used by ``graylb rules push / undo``, ``graylb rollback`` and ``graylb status`` with
``--nacos URL``; the actions themselves (:func:`graylb.admin.push` and friends) are
registry-neutral.

- A key is a config **dataId** in the store's group (default ``DEFAULT_GROUP``) and tenant
  (default ``""``, Nacos's default namespace). The previous revision lives at dataId
  ``<key>.previous`` next to it.
- A version is the **MD5** of the content (lowercase hex of the UTF-8 bytes, what Nacos itself
  compares); ``None`` = the item does not exist.
- Compare-and-set: the current MD5 is read and compared first, then the write is sent with the
  ``casMd5`` header (what the Nacos 2.x server reads; also sent as a form field), so a server
  that implements CAS refuses a change that slipped in between (it answers 500 ``Cas publish
  fail`` or 409, taken as a conflict). A server without CAS leaves a small window between the
  read and the write. Creating an item cannot be guarded at all: Nacos has no create-only
  publish, so "must not exist" is only checked by the read just before.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from ..admin import register_store
from ..errors import GraylbError
from ..instance import Instance
from .auth import NacosAuth
from .client import NacosConfig, NacosError, _body_text, check_response, content_md5
from .discovery import instances_from_hosts

__all__ = ["NacosConfigStore"]

CONFIG_PATH = "/v1/cs/configs"


class NacosConfigStore:
    """A RuleStore on a Nacos server: config items for the rules, the instance list for
    ``status``. ``group`` / ``tenant`` default to the config's ``group`` / ``config_tenant``."""

    def __init__(self, config: NacosConfig, *, group: str | None = None, tenant: str | None = None) -> None:
        self.config = config
        self.group = group or config.group
        self.tenant = config.config_tenant if tenant is None else tenant
        self.auth = NacosAuth(config)
        self._http = config.client()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> NacosConfigStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def cli_flags(self) -> str:
        return f" --nacos {self.config.address}"

    def __repr__(self) -> str:
        return f"NacosConfigStore({self.config.address}, group={self.group!r}, tenant={self.tenant!r})"

    # ------------------------------------------------------------------ RuleStore

    def describe(self, key: str) -> str:
        where = f"group '{self.group}'" + (f", namespace '{self.tenant}'" if self.tenant else "")
        return f"Nacos config '{key}' ({where})"

    def describe_version(self, version: Any) -> str:
        return f"md5 {version}" if version else "absent"

    def _params(self, key: str) -> dict[str, str]:
        if not key or not key.strip():
            raise GraylbError("the Nacos dataId (--key) must not be empty")
        params = {"dataId": key, "group": self.group}
        if self.tenant:
            params["tenant"] = self.tenant
        return params

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return self.auth.request(self._http, method, path, **kw)

    def get(self, key: str) -> tuple[str | None, str | None]:
        what = f"reading {self.describe(key)}"
        r = self._request("GET", CONFIG_PATH, params=self._params(key))
        if r.status_code == 404:
            text = r.text.strip()
            if text and "config data not exist" not in text and text[:1] in ("{", "<"):
                # Not Nacos's "no such config" but the web server's "no such page".
                raise NacosError(
                    f"Nacos at {self.config.address} answered 404 while {what}: {text[:200]!r} (is the context path "
                    f"{self.config.context_path or '/'!r} right?)",
                    404,
                )
            return None, None
        check_response(r, what)
        try:
            text = r.content.decode("utf-8")
        except UnicodeDecodeError:
            raise GraylbError(f"{self.describe(key)} is not UTF-8 text") from None
        return text, content_md5(r.content)

    def _publish(self, key: str, value: str, cas_md5: str | None) -> httpx.Response:
        form: dict[str, str] = {**self._params(key), "content": value, "type": _content_type(value)}
        headers: dict[str, str] = {}
        if cas_md5:
            form["casMd5"] = cas_md5
            headers["casMd5"] = cas_md5
        return self._request("POST", CONFIG_PATH, data=form, headers=headers)

    def put(self, key: str, value: str) -> None:
        what = f"writing {self.describe(key)}"
        r = self._publish(key, value, None)
        check_response(r, what)
        if r.text.strip().lower() != "true":
            raise NacosError(f"Nacos did not write {self.describe(key)}: {_body_text(r)!r}", r.status_code)

    def cas_put(self, key: str, value: str, version: Any) -> bool:
        """Write only if the item is still at ``version`` (its MD5; None = must not exist)."""
        _, current = self.get(key)
        if current != (version or None):
            return False
        what = f"writing {self.describe(key)}"
        r = self._publish(key, value, version or None)
        if version and _is_cas_conflict(r):
            return False
        check_response(r, what)
        answer = r.text.strip().lower()
        if answer == "true":
            return True
        if answer == "false":
            return False  # nothing written: the caller reports a conflict and nothing is lost
        raise NacosError(f"unexpected answer from Nacos while {what}: {_body_text(r)!r}", r.status_code)

    def instances(self, service: str) -> tuple[list[tuple[str, Instance]], list[str]]:
        """Every instance Nacos lists for ``service`` (healthy or not), read exactly as
        NacosDiscovery reads them; problems name the instance."""
        c = self.config
        what = f"listing instances of service '{service}' (namespace '{c.namespace}', group '{c.group}')"
        params: dict[str, str] = {
            "serviceName": service,
            "groupName": c.group,
            "namespaceId": c.namespace,
            "healthyOnly": "false",
        }
        if c.clusters:
            params["clusterName" if c.api_version == "v2" else "clusters"] = ",".join(c.clusters)
        r = self._request("GET", f"/{c.api_version}/ns/instance/list", params=params)
        check_response(r, what)
        try:
            body = r.json()
        except ValueError:
            raise NacosError(f"unexpected answer from Nacos while {what}: not JSON") from None
        data = body.get("data") if c.api_version == "v2" and isinstance(body, Mapping) else body
        if not isinstance(data, Mapping):
            raise NacosError(f"unexpected answer from Nacos while {what}: {str(body)[:200]!r}")
        problems: list[str] = []
        if data.get("reachProtectionThreshold"):
            problems.append(
                "Nacos reached the protection threshold for this service: it lists every instance, "
                "unhealthy ones possibly marked healthy; graylb's discovery keeps its last good list instead"
            )

        def warn(_service: str, name: str, problem: str) -> None:
            problems.append(f"{name}: {problem}")

        out: list[tuple[str, Instance]] = []
        for host in data.get("hosts") or []:
            if not isinstance(host, Mapping):
                problems.append(f"entry {str(host)[:60]!r}: not an object; skipped")
                continue
            rid = str(host.get("instanceId") or f"{host.get('ip')}#{host.get('port')}#{host.get('clusterName', '')}")
            if host.get("enabled") is False:
                problems.append(f"{rid}: disabled (enabled=false): receives no traffic")
                continue
            for inst in instances_from_hosts(service, [host], warn):
                out.append((rid, inst))
        return out, problems


def _is_cas_conflict(r: httpx.Response) -> bool:
    if r.status_code == 409:
        return True
    if r.status_code >= 400:
        text = _body_text(r).lower()
        return "cas publish fail" in text or "md5 may have changed" in text
    return False


def _content_type(text: str) -> str:
    return "json" if text.lstrip().startswith(("{", "[")) else "yaml"


register_store(NacosConfig, NacosConfigStore)  # graylb.admin's actions then take a NacosConfig too
