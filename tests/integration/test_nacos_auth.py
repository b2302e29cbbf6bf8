"""NacosConfig, NacosAuth and check_response against FakeNacos over real sockets: login, the
token on every call, refresh ahead of the TTL, one re-login on 403 (threads and asyncio), and
secrets kept out of URLs' logs and every error message."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from graylb.nacos import (
    NacosAuth,
    NacosAuthError,
    NacosConfig,
    NacosError,
    NacosUnavailable,
    check_response,
    namespace_pair,
)
from graylb.testing.fake_nacos import FakeNacos, RecordedRequest

USER, PASSWORD = "nacos", "pw-7f3a-s3cret"
LIST = "/v1/ns/instance/list"
PARAMS = {"serviceName": "orders"}


@pytest.fixture
def fake() -> Iterator[FakeNacos]:
    with FakeNacos(auth={USER: PASSWORD}) as f:
        yield f


def cfg(fake: FakeNacos, password: str = PASSWORD, **kw) -> NacosConfig:
    return NacosConfig(fake.url, username=USER, password=password, **kw)


def logins(fake: FakeNacos) -> list[RecordedRequest]:
    return [r for r in fake.requests if r.path == "/nacos/v1/auth/login"]


def api_calls(fake: FakeNacos) -> list[RecordedRequest]:
    return [r for r in fake.requests if r.path != "/nacos/v1/auth/login"]


def tokens(fake: FakeNacos) -> set[str]:
    return {t for r in fake.requests for t in r.query.get("accessToken", [])}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ------------------------------------------------------------------------------ NacosConfig


def test_config_defaults_repr_and_base_url() -> None:
    c = NacosConfig("127.0.0.1:8848", username="u", password="hunter22")
    assert c.address == "http://127.0.0.1:8848" and c.base_url == "http://127.0.0.1:8848/nacos"
    assert (c.namespace, c.config_tenant, c.group, c.clusters, c.api_version) == (
        "public",
        "",
        "DEFAULT_GROUP",
        (),
        "v1",
    )
    assert "hunter22" not in repr(c)
    # "/nacos" written into the address is the context path, not doubled
    assert NacosConfig("http://h:8848/nacos/").base_url == "http://h:8848/nacos"
    assert NacosConfig("https://h", context_path="").base_url == "https://h"
    assert NacosConfig("h:1", clusters="a, b").clusters == ("a", "b")
    with c.client() as client:
        assert str(client.base_url) == "http://127.0.0.1:8848/nacos/"


def test_config_rejects_bad_input_without_echoing_secrets() -> None:
    with pytest.raises(ValueError, match="not in the URL") as err:
        NacosConfig("http://u:topsecret@h:8848")
    assert "topsecret" not in str(err.value)
    with pytest.raises(ValueError, match="context_path"):
        NacosConfig("http://h:8848/other")
    with pytest.raises(ValueError, match="api_version"):
        NacosConfig(api_version="v3")
    with pytest.raises(ValueError, match="no password"):
        NacosConfig(username="u")
    with pytest.raises(ValueError, match="without a username"):
        NacosConfig(password="p")


def test_config_from_env() -> None:
    env = {
        "NACOS_SERVER_ADDR": "10.0.0.1:8848,10.0.0.2:8848",
        "NACOS_NAMESPACE": "dev",
        "NACOS_GROUP": "G",
        "NACOS_USERNAME": "u",
        "NACOS_PASSWORD": "p",
    }
    c = NacosConfig.from_env(env=env)
    assert (c.address, c.namespace, c.config_tenant, c.group, c.username, c.password) == (
        "http://10.0.0.1:8848",
        "dev",
        "dev",
        "G",
        "u",
        "p",
    )
    c = NacosConfig.from_env("http://x:1", env={"NACOS_ADDR": "http://y:2", "NACOS_NAMESPACE": "public"}, group="H")
    assert (c.address, c.namespace, c.config_tenant, c.group, c.username) == ("http://x:1", "public", "", "H", None)
    assert NacosConfig.from_env(env={}).address == "http://127.0.0.1:8848"
    assert namespace_pair(None) == namespace_pair("") == namespace_pair("public") == ("public", "")
    assert namespace_pair("dev") == ("dev", "dev")


# ------------------------------------------------------------------------------ login and token


def test_login_once_then_the_token_on_every_call(fake: FakeNacos) -> None:
    auth = NacosAuth(cfg(fake))
    with auth.config.client() as client:
        for _ in range(5):
            r = auth.request(client, "GET", LIST, params=PARAMS)
            check_response(r, "listing")
            assert r.json()["hosts"] == []
    [login] = logins(fake)
    assert login.method == "POST" and login.form == {"username": [USER], "password": [PASSWORD]}
    assert PASSWORD not in login.target  # in the form body, never the URL
    calls = api_calls(fake)
    assert len(calls) == 5 and auth.logins == 1
    assert all(len(r.query.get("accessToken", [])) == 1 for r in calls)
    assert len(tokens(fake)) == 1
    assert auth.token_valid_for is not None and auth.token_valid_for > 17000


def test_without_credentials_no_login_and_no_token() -> None:
    with FakeNacos() as fake:
        auth = NacosAuth(NacosConfig(fake.url))
        with auth.config.client() as client:
            check_response(auth.request(client, "GET", LIST, params=PARAMS), "listing")
        assert logins(fake) == [] and tokens(fake) == set() and not auth.enabled


def test_server_with_auth_and_client_without_credentials(fake: FakeNacos) -> None:
    auth = NacosAuth(NacosConfig(fake.url))
    with auth.config.client() as client:
        r = auth.request(client, "GET", LIST, params=PARAMS)
    assert r.status_code == 403
    with pytest.raises(NacosAuthError, match=r"user not found!.*NACOS_USERNAME"):
        check_response(r, "listing instances of service 'orders'")


@pytest.mark.parametrize(("ttl", "refresh_after"), [(100, 90.0), (18000, 16200.0), (8, 4.0)])
def test_token_refreshed_before_the_ttl_runs_out(ttl: int, refresh_after: float) -> None:
    """10 % of the TTL or 10 s early, whichever is larger (never before half the TTL)."""
    with FakeNacos(auth={USER: PASSWORD}, token_ttl=ttl) as fake:
        clock = Clock()
        auth = NacosAuth(cfg(fake), clock=clock)
        with auth.config.client() as client:
            auth.request(client, "GET", LIST, params=PARAMS)
            clock.now += refresh_after - 0.01
            auth.request(client, "GET", LIST, params=PARAMS)
            assert len(logins(fake)) == 1
            clock.now += 0.02
            auth.request(client, "GET", LIST, params=PARAMS)
            assert len(logins(fake)) == 2
        # (the fake's JWTs carry whole-second expiries, so two logins may yield the same string)
        assert all(r.query.get("accessToken") for r in api_calls(fake))


def test_short_lived_tokens_are_refreshed_before_the_server_expires_them(caplog: pytest.LogCaptureFixture) -> None:
    """Real time: tokens live 1 s in the fake; calls every 50 ms for 1.6 s never meet a 403."""
    caplog.set_level(logging.INFO, logger="graylb.nacos")
    with FakeNacos(auth={USER: PASSWORD}, token_ttl=1) as fake:
        auth = NacosAuth(cfg(fake))
        with auth.config.client() as client:
            deadline = time.monotonic() + 1.6
            while time.monotonic() < deadline:
                assert auth.request(client, "GET", LIST, params=PARAMS).status_code == 200
                time.sleep(0.05)
        assert len(logins(fake)) >= 3
    assert not [r for r in caplog.records if "answered 403" in r.getMessage()]  # refreshed in time, never re-logged in


def test_expired_token_one_relogin_and_retry(fake: FakeNacos, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="graylb.nacos")
    auth = NacosAuth(cfg(fake))
    with auth.config.client() as client:
        auth.request(client, "GET", LIST, params=PARAMS)
        fake.expire_tokens()
        fake.clear_requests()
        r = auth.request(client, "GET", LIST, params=PARAMS)
        assert r.status_code == 200
        # old token -> 403, login, same call with the new token
        assert [(q.method, q.path) for q in fake.requests] == [
            ("GET", "/nacos/v1/ns/instance/list"),
            ("POST", "/nacos/v1/auth/login"),
            ("GET", "/nacos/v1/ns/instance/list"),
        ]
        assert all(r.query.get("accessToken") for r in api_calls(fake))
        auth.request(client, "GET", LIST, params=PARAMS)  # the new token keeps working
    assert auth.logins == 2
    assert any("answered 403" in rec.getMessage() and "token expired!" in rec.getMessage() for rec in caplog.records)


def test_concurrent_threads_share_one_login_and_one_relogin(fake: FakeNacos) -> None:
    auth = NacosAuth(cfg(fake))
    barrier = threading.Barrier(16)
    statuses: list[int] = []

    def call(client: httpx.Client) -> None:
        barrier.wait()
        statuses.append(auth.request(client, "GET", LIST, params=PARAMS).status_code)

    with auth.config.client() as client:
        for _ in range(2):
            threads = [threading.Thread(target=call, args=(client,)) for _ in range(16)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(10)
            fake.expire_tokens()
    assert statuses == [200] * 32
    assert len(logins(fake)) == 2  # the first one, then exactly one after the expiry


async def test_asyncio_tasks_share_one_login_and_one_relogin(fake: FakeNacos) -> None:
    auth = NacosAuth(cfg(fake))
    async with auth.config.async_client() as client:
        first = await asyncio.gather(*[auth.arequest(client, "GET", LIST, params=PARAMS) for _ in range(20)])
        assert len(logins(fake)) == 1
        fake.expire_tokens()
        second = await asyncio.gather(*[auth.arequest(client, "GET", LIST, params=PARAMS) for _ in range(20)])
    assert {r.status_code for r in first + second} == {200}
    assert len(logins(fake)) == 2 and auth.logins == 2


def test_same_auth_used_from_two_event_loops(fake: FakeNacos) -> None:
    """The asyncio lock is per loop: one NacosAuth can serve tasks on several loops."""
    auth = NacosAuth(cfg(fake))

    async def once() -> int:
        async with auth.config.async_client() as client:
            return (await auth.arequest(client, "GET", LIST, params=PARAMS)).status_code

    assert asyncio.run(once()) == 200
    fake.expire_tokens()
    assert asyncio.run(once()) == 200
    assert auth.logins == 2


def test_wrong_password_is_a_clear_auth_error(fake: FakeNacos) -> None:
    auth = NacosAuth(cfg(fake, password="wrong-pw-991"))
    with auth.config.client() as client, pytest.raises(NacosAuthError) as err:
        auth.request(client, "GET", LIST, params=PARAMS)
    text = str(err.value)
    assert text == "Nacos login failed for user 'nacos': wrong username or password (403 'unknown user!')"
    assert err.value.status == 403 and "wrong-pw-991" not in text
    assert api_calls(fake) == []  # nothing sent without a token


class ForbidAll(httpx.BaseTransport):
    """The real socket transport, except that every API call (not the login) is refused: a
    user without the permission the call needs."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if not request.url.path.endswith("/auth/login"):
            response.read()
            response.close()
            return httpx.Response(
                403, json={"status": 403, "error": "Forbidden", "message": "authorization failed!"}, request=request
            )
        return response


def test_403_that_survives_the_relogin_raises(fake: FakeNacos) -> None:
    auth = NacosAuth(cfg(fake))
    with (
        httpx.Client(base_url=auth.config.base_url, transport=ForbidAll()) as client,
        pytest.raises(NacosAuthError) as err,
    ):
        auth.request(client, "GET", LIST, params=PARAMS)
    text = str(err.value)
    assert (
        "Nacos refused GET /v1/ns/instance/list for user 'nacos' even after logging in again: "
        "403 'authorization failed!'" in text
    )
    assert len(logins(fake)) == 2  # one login, exactly one re-login, no loop
    for token in tokens(fake) | {auth._token or ""}:
        assert token and token not in text


def test_secrets_never_in_logs_urls_or_errors(fake: FakeNacos, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # everything: httpx request lines, httpcore header dumps
    errors: list[str] = []
    auth = NacosAuth(cfg(fake))
    with auth.config.client() as client:
        auth.request(client, "GET", LIST, params=PARAMS)
        fake.expire_tokens()
        auth.request(
            client, "POST", "/v1/cs/configs", data={"dataId": "d", "group": "DEFAULT_GROUP", "content": "x: 1"}
        )
        fake.fail_all(503)
        try:
            check_response(auth.request(client, "GET", LIST, params=PARAMS), "listing")
        except NacosUnavailable as exc:
            errors.append(str(exc))
        fake.heal()
    with auth.config.client() as client, httpx.Client(base_url=auth.config.base_url, transport=ForbidAll()) as forbid:
        try:
            NacosAuth(cfg(fake, password="nope-nope")).request(client, "GET", LIST)
        except NacosAuthError as exc:
            errors.append(str(exc))
        try:
            auth.request(forbid, "GET", LIST)
        except NacosAuthError as exc:
            errors.append(str(exc))
    issued = tokens(fake)
    assert issued and len(errors) == 3
    assert "HTTP Request: GET" in caplog.text and "accessToken=***" in caplog.text  # the filter did run
    assert "receive_response_headers" in caplog.text  # httpcore's header dump was logged, masked
    for secret in [PASSWORD, "nope-nope", *issued]:
        assert secret not in caplog.text
        for text in errors:
            assert secret not in text
    assert PASSWORD not in repr(auth) and PASSWORD not in repr(auth.config)


def test_unreachable_server_names_the_address() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = NacosConfig(f"http://127.0.0.1:{port}", username=USER, password=PASSWORD)
    auth = NacosAuth(config)
    with config.client() as client, pytest.raises(NacosUnavailable) as err:
        auth.request(client, "GET", LIST)
    assert (
        str(err.value)
        == f"cannot reach Nacos at http://127.0.0.1:{port} while logging in as user 'nacos': connection refused"
    )
    with (
        config.client() as client,
        pytest.raises(
            NacosUnavailable,
            match=f"cannot reach Nacos at http://127.0.0.1:{port} while GET /v1/ns/instance/list: connection refused",
        ),
    ):
        NacosAuth(NacosConfig(config.address)).request(client, "GET", LIST)


def test_server_errors_come_back_as_responses(fake: FakeNacos) -> None:
    auth = NacosAuth(cfg(fake))
    with auth.config.client() as client:
        auth.request(client, "GET", LIST, params=PARAMS)  # logged in
        # 404 is meaningful for config: returned, not raised
        r = auth.request(client, "GET", "/v1/cs/configs", params={"dataId": "missing", "group": "DEFAULT_GROUP"})
        assert r.status_code == 404 and r.text == "config data not exist\n"
        check_response(httpx.Response(200), "noop")
        fake.fail_next(503)
        r = auth.request(client, "GET", LIST, params=PARAMS)
        with pytest.raises(NacosUnavailable, match="Nacos unavailable while listing: 503 'server is DOWN now"):
            check_response(r, "listing")
        fake.fail_all(503)  # the login itself fails too
        auth.invalidate()
        with pytest.raises(NacosUnavailable, match=r"while logging in as user 'nacos'.*503"):
            auth.request(client, "GET", LIST, params=PARAMS)


async def test_async_errors_match_sync(fake: FakeNacos) -> None:
    auth = NacosAuth(cfg(fake, password="bad-one-1"))
    async with auth.config.async_client() as client:
        with pytest.raises(NacosAuthError, match="login failed for user 'nacos'"):
            await auth.arequest(client, "GET", LIST)
    fake.stop()
    good = NacosAuth(cfg(fake))
    async with good.config.async_client() as client:
        with pytest.raises(NacosUnavailable, match="connection refused"):
            await good.arequest(client, "GET", LIST)


# ------------------------------------------------------------------------------ check_response


def _resp(status: int, **kw) -> httpx.Response:
    return httpx.Response(status, **kw)


@pytest.mark.parametrize(
    ("response", "error", "fragment"),
    [
        (_resp(403, text="token invalid!"), NacosAuthError, "forbidden (403 'token invalid!')"),
        (
            _resp(403, json={"status": 403, "error": "Forbidden", "message": "token expired!"}),
            NacosAuthError,
            "'token expired!'",
        ),
        (_resp(429, text="Too Many Requests"), NacosUnavailable, "429"),
        (_resp(500, text="caused: server error;"), NacosUnavailable, "500 'caused: server error;'"),
        (_resp(503), NacosUnavailable, "503"),
        (_resp(400, text="Param 'serviceName' is required."), NacosError, "rejected x: 400"),
        (_resp(404, text="config data not exist\n"), NacosError, "404"),
        (
            _resp(400, json={"code": 21001, "message": "weight error", "data": "out of range"}),
            NacosError,
            "weight error",
        ),
        (
            _resp(200, json={"code": 20004, "message": "resource not found", "data": None}),
            NacosError,
            "code 20004: 'resource not found'",
        ),
        (_resp(200, json={"code": 10001, "message": "access denied", "data": None}), NacosAuthError, "access denied"),
    ],
)
def test_check_response_maps_errors(response: httpx.Response, error: type, fragment: str) -> None:
    with pytest.raises(error) as err:
        check_response(response, "x")
    assert type(err.value) is error and fragment in str(err.value)
    assert err.value.status == response.status_code


@pytest.mark.parametrize(
    "response",
    [
        _resp(200, text="ok"),
        _resp(200, json={"code": 0, "message": "success", "data": "ok"}),
        _resp(
            200, json={"clientBeatInterval": 5000, "code": 10200, "lightBeatEnabled": True}
        ),  # a beat reply, not an envelope
        _resp(200, json={"hosts": [], "name": "DEFAULT_GROUP@@orders"}),
        _resp(200, text="true"),
    ],
)
def test_check_response_passes_successes(response: httpx.Response) -> None:
    check_response(response, "x")


def test_query_token_is_the_only_place_of_the_token(fake: FakeNacos) -> None:
    """The token goes as the accessToken query parameter (every Nacos version takes it), never
    in a header graylb sets, and the login's own answer header is not reused."""
    auth = NacosAuth(cfg(fake))
    with auth.config.client() as client:
        auth.request(
            client, "PUT", "/v1/ns/instance/beat", params={"serviceName": "orders", "ip": "1.2.3.4", "port": 1}
        )
    [call] = api_calls(fake)
    assert "authorization" not in call.headers and "accesstoken" not in call.headers
    assert parse_qs(urlsplit(call.target).query)["accessToken"] == call.query["accessToken"]
