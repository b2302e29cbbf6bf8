"""The fast URL rewrite in the httpx transport must equal httpx's own copy_with."""

from __future__ import annotations

import httpx
import pytest

from graylb.instance import Instance
from graylb.transports.httpx import _target


@pytest.mark.parametrize(
    "url",
    ["http://orders/", "http://orders/api/v1?x=1&y=%20z#frag", "https://orders:8443/a/b", "http://user:pw@orders/p"],
)
@pytest.mark.parametrize("host", ["127.0.0.1", "10.0.0.7", "::1", "Orders-1.Internal"])
def test_target_equals_copy_with(url: str, host: str) -> None:
    inst = Instance(service="orders", host=host, port=9090)
    fast = _target(httpx.URL(url), inst)
    slow = httpx.URL(url).copy_with(host=host, port=9090)
    assert fast == slow
    assert str(fast) == str(slow)
    assert (fast.host, fast.port, fast.raw_path, fast.netloc) == (slow.host, slow.port, slow.raw_path, slow.netloc)
