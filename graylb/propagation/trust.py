"""Who may set the gray context: the edge-trust option shared by the HTTP middleware and the
gRPC server interceptors.

``trust`` is True (everyone), False (nobody: gray headers from the caller are stripped), or a
predicate on the call's carrier — an ASGI scope, a WSGI environ, or a gRPC servicer context.
:func:`trust_networks` builds a predicate that understands all three.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

__all__ = ["Trust", "trust_networks", "trust_check", "peer_address"]

_logger = logging.getLogger("graylb.propagation")

Trust = bool | Callable[[Any], bool]


def trust_check(trust: Trust, carrier_name: str = "scope_or_environ") -> Callable[[Any], bool] | None:
    """``None`` for "always trusted" (skips a call per request); otherwise a predicate that
    fails closed: a predicate that raises means "untrusted"."""
    if trust is True:
        return None
    if trust is False:
        return lambda carrier: False
    if not callable(trust):
        raise TypeError(f"trust must be a bool or a callable({carrier_name}) -> bool, not {trust!r}")

    def check(carrier: Any) -> bool:
        try:
            return bool(trust(carrier))
        except Exception:
            _logger.warning("graylb: trust check failed; treating the caller as untrusted", exc_info=True)
            return False

    return check


def peer_address(peer: Any) -> str | None:
    """The IP address in a gRPC peer string (``ipv4:10.0.0.1:5678``, ``ipv6:[::1]:5678``, also
    percent-encoded ``ipv6:%5B::1%5D:5678``); ``None`` for ``unix:`` and anything else."""
    if not isinstance(peer, str):
        return None
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return None
    rest = unquote(rest)
    if rest.startswith("["):
        end = rest.find("]")
        host = rest[1:end] if end > 0 else ""
    elif kind == "ipv4":
        host = rest.rpartition(":")[0] if ":" in rest else rest
    else:
        host = rest
    return host or None


def _peer_host(carrier: Any) -> Any:
    peer = getattr(carrier, "peer", None)
    if callable(peer):  # gRPC servicer context
        return peer_address(peer())
    if "REMOTE_ADDR" in carrier:  # WSGI environ
        return carrier.get("REMOTE_ADDR")
    client = carrier.get("client")  # ASGI scope: client is (host, port) or None
    return client[0] if client else None


def trust_networks(*cidrs: str) -> Callable[[Any], bool]:
    """A ``trust`` predicate: the caller is trusted iff its peer address -- ASGI
    ``scope["client"][0]``, WSGI ``environ["REMOTE_ADDR"]`` or gRPC ``context.peer()`` -- lies in
    one of ``cidrs``.

    Host bits are allowed (``"127.0.0.1/8"``), IPv4-mapped IPv6 peers count as IPv4, and a
    missing or unparsable peer (unix sockets, for instance) is untrusted. A malformed CIDR raises
    ``ValueError`` here, at configuration time.
    """
    networks = tuple(ipaddress.ip_network(str(c).strip(), strict=False) for c in cidrs)

    @functools.lru_cache(maxsize=1024)  # few distinct peers; parsing an address costs ~1 µs
    def address_trusted(host: str) -> bool:
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])  # drop an IPv6 zone id
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in networks)

    def trusted(carrier: Any) -> bool:
        host = _peer_host(carrier)
        return isinstance(host, str) and address_trusted(host)

    trusted.networks = networks  # type: ignore[attr-defined]  # for introspection and repr in logs
    return trusted
