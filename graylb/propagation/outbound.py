"""Outbound gray context: the one function that puts it into a request's headers, for every
transport (the httpx transports, the gray gRPC channel, the gRPC client interceptors).

Each transport adapts its header carrier at the edge with a getter and a setter, in the style of
opentelemetry's ``TextMapPropagator.inject(carrier, setter=...)``: ``httpx.Headers`` in
:mod:`graylb.transports.httpx`, gRPC metadata (a sequence of key/value tuples) in
:mod:`graylb.transports.grpc_interceptors`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

from .codec import BAGGAGE_HEADER, HeaderCodec
from .context import GrayContext

__all__ = ["Getter", "Setter", "inject_gray"]

C = TypeVar("C")
C_contra = TypeVar("C_contra", contravariant=True)


class Getter(Protocol[C_contra]):
    def get(self, carrier: C_contra, key: str) -> Sequence[str] | None:
        """Every value of header ``key`` (lower-case), in order; ``None`` or empty when absent."""


class Setter(Protocol[C_contra]):
    def set(self, carrier: C_contra, key: str, value: str | None) -> None:
        """Replace every value of header ``key`` (lower-case) with ``value``; remove the header
        when ``value`` is ``None``."""


def inject_gray(codec: HeaderCodec, ctx: GrayContext, carrier: C, getter: Getter[C], setter: Setter[C]) -> bool:
    """Put the gray context ``ctx`` into the outbound headers of ``carrier``, as ``codec`` writes it.

    The contract, the same for every transport:

    * the plain gray headers the context renders (lane, pins) replace any value the caller set
      for them (the caller's other plain gray headers are left as they are);
    * an existing ``baggage`` (all its values, joined) is merged, not replaced: its foreign
      members stay, verbatim and in order; its gray members are dropped and the context's
      appended. The stripping happens with an empty context too, so stale gray members (copied
      on by OpenTelemetry from an untrusted caller, say) never reach the next hop; a baggage
      header left with no member is removed;
    * never a duplicate: each header written is set once and ends up with exactly one value;
    * nothing else is touched. With an empty context and no ``baggage`` the carrier is left
      alone and the result is ``False``; otherwise ``True``.

    The codec never raises (it logs and sends less); the getter's and setter's errors propagate.
    """
    existing = getter.get(carrier, BAGGAGE_HEADER)
    if not existing and ctx.is_empty:
        return False
    ours = None
    for name, value in codec.inject(ctx):
        if name == BAGGAGE_HEADER:
            ours = value
        else:
            setter.set(carrier, name, value)
    if existing:
        setter.set(carrier, BAGGAGE_HEADER, codec.merge_baggage(",".join(existing), ctx) or None)
    elif ours is not None:
        setter.set(carrier, BAGGAGE_HEADER, ours)
    return True
