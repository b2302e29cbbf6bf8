"""Consul over HTTPS: verification on by default, a CA bundle, a client certificate."""

from __future__ import annotations

import ssl

import pytest
import trustme

from graylb.consul.client import ConsulConfig
from graylb.consul.discovery import ConsulDiscovery
from graylb.testing import FakeConsul
from tests.conftest import wait_until


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def tls_fake(ca: trustme.CA, *, client_certs: bool = False) -> FakeConsul:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    if client_certs:
        ca.configure_trust(ctx)
        ctx.verify_mode = ssl.CERT_REQUIRED
    fake = FakeConsul(ssl_context=ctx)
    fake.register("orders", id="o1", address="127.0.0.1", port=9001, meta={"version": "1.4.2"})
    return fake


def test_https_with_ca_bundle(ca: trustme.CA, tmp_path) -> None:
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    with tls_fake(ca) as fake:
        assert fake.url.startswith("https://")
        disco = ConsulDiscovery(ConsulConfig(fake.url, token="secret", verify=str(bundle)))
        watch = disco.watch("orders")
        assert watch.wait_ready(5) and watch.snapshot and len(watch.snapshot.instances) == 1
        assert fake.requests[0].headers.get("x-consul-token") == "secret"
        disco.close()


def test_verification_is_on_by_default(ca: trustme.CA) -> None:
    with tls_fake(ca) as fake:
        disco = ConsulDiscovery(ConsulConfig(fake.url))  # system CA store: the test CA is unknown
        watch = disco.watch("orders")
        wait_until(lambda: watch.last_error)
        assert watch.snapshot is None and "CERTIFICATE_VERIFY_FAILED" in watch.last_error.upper().replace(" ", "_")
        disco.close()


def test_client_certificate(ca: trustme.CA, tmp_path) -> None:
    bundle, client = tmp_path / "ca.pem", tmp_path / "client.pem"
    ca.cert_pem.write_to_path(str(bundle))
    ca.issue_cert("graylb-client").private_key_and_cert_chain_pem.write_to_path(str(client))
    with tls_fake(ca, client_certs=True) as fake:
        without = ConsulDiscovery(ConsulConfig(fake.url, verify=str(bundle)))
        w1 = without.watch("orders")
        wait_until(lambda: w1.last_error)
        assert w1.snapshot is None
        with_cert = ConsulDiscovery(ConsulConfig(fake.url, verify=str(bundle), cert=str(client)))
        w2 = with_cert.watch("orders")
        assert w2.wait_ready(5) and w2.snapshot and len(w2.snapshot.instances) == 1
        without.close(), with_cert.close()
