"""Rules from a Nacos config item, watched with Nacos's long-polling listener.

The listener protocol (``POST /v1/cs/configs/listener``): the client sends
``dataId \\x02 group \\x02 md5 \\x02 tenant \\x01`` with the lowercase, zero-padded MD5 of the
UTF-8 content it holds; the server answers at once when its MD5 differs, else holds the request
up to ``Long-Pulling-Timeout`` and answers with the URL-encoded keys that changed (or nothing).
The content itself is then fetched with ``GET /v1/cs/configs``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote_plus

import httpx

from ..rules.watched import WatchedRuleSource
from .auth import NacosAuth
from .client import NacosConfig, check_response, content_md5

__all__ = ["NacosRuleSource"]

log = logging.getLogger("graylb.rules")


class NacosRuleSource(WatchedRuleSource):
    """``NacosRuleSource(NacosConfig(...), data_id="graylb-rules")``; group and tenant default
    to the config's ``group`` and ``config_tenant``. ``revision`` of the compiled rules is the
    content MD5."""

    def __init__(
        self,
        config: NacosConfig | str | None,
        data_id: str,
        *,
        group: str | None = None,
        tenant: str | None = None,
        poll_timeout: float = 30.0,
        initial_timeout: float = 5.0,
        snapshot_dir: str | None = None,
    ) -> None:
        self.config = config if isinstance(config, NacosConfig) else NacosConfig.from_env(config)
        if not data_id:
            raise ValueError("NacosRuleSource: data_id must not be empty")
        self.data_id = data_id
        self.group = group or self.config.group
        self.tenant = self.config.config_tenant if tenant is None else tenant
        self.poll_timeout = poll_timeout
        self.auth = NacosAuth(self.config)
        self.md5 = ""  # of the content we hold ("" = none): what the listener compares
        self._client: httpx.AsyncClient | None = None
        where = f"{self.group}/{self.data_id}" + (f" (tenant {self.tenant})" if self.tenant else "")
        host = self.config.address.split("://", 1)[-1].replace(":", "_")
        snapshot_name = f"rules-nacos-{host}-{self.tenant or '_'}-{self.group}-{self.data_id}.yaml"
        super().__init__(name=f"nacos config {where}", snapshot_dir=snapshot_dir, snapshot_name=snapshot_name)
        self._start(initial_timeout)

    def _params(self) -> dict[str, str]:
        params = {"dataId": self.data_id, "group": self.group}
        if self.tenant:
            params["tenant"] = self.tenant
        return params

    async def _fetch_content(self) -> None:
        assert self._client is not None
        resp = await self.auth.arequest(self._client, "GET", "/v1/cs/configs", params=self._params())
        if resp.status_code == 404:
            if self.md5:
                log.warning("graylb: %s was deleted; keeping revision %s", self.name, self.current.revision)
            self.md5 = ""
            return
        check_response(resp, f"reading {self.name}")
        content = resp.content
        md5 = content_md5(content)
        if md5 != self.md5:
            self.md5 = md5
            self._apply_remote(content, md5)

    def writer(self) -> tuple[Callable[[], Any], str] | None:
        from .store import NacosConfigStore

        config, group, tenant = self.config, self.group, self.tenant
        return (lambda: NacosConfigStore(config, group=group, tenant=tenant)), self.data_id

    async def _poll(self, state: object) -> object:
        if self._client is None:
            self._client = self.config.async_client(4)
        if state is None:  # first call, or after an error: read the item itself
            await self._fetch_content()
            return True
        entry = f"{self.data_id}\x02{self.group}\x02{self.md5}\x02{self.tenant}\x01"
        timeout_ms = int(self.poll_timeout * 1000)
        resp = await self.auth.arequest(
            self._client,
            "POST",
            "/v1/cs/configs/listener",
            data={"Listening-Configs": entry},
            headers={"Long-Pulling-Timeout": str(timeout_ms)},
            timeout=httpx.Timeout(self.config.timeout, read=self.poll_timeout + 10),
        )
        check_response(resp, f"listening to {self.name}")
        # One "dataId\x02group[\x02tenant]" per changed key, \x01-terminated (Nacos adds a newline).
        changed = [item.strip().split("\x02") for item in unquote_plus(resp.text).split("\x01") if item.strip()]
        if any(parts[:2] == [self.data_id, self.group] for parts in changed):
            await self._fetch_content()
        return True

    async def _aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()
