"""The header names compiled routing rules read, process-wide.

A transport that must decode header lines before it can answer a lookup (httpx keeps them as
bytes) decodes only these, once per request, and answers any other name on demand. Compiling a
rule declares the names it reads; the set only grows, up to :data:`LIMIT` names. It steers cost,
never correctness: a name that is not here is still answered, by the transport's own lookup.
"""

from __future__ import annotations

import threading

__all__ = ["declare", "current", "LIMIT"]

#: Names kept at most; rules that read more are answered on demand past it.
LIMIT = 256

#: ``(lower-case name as latin-1 bytes -> name, {name: None} for every name)``: replaced whole on
#: each change, so the hot path reads one module attribute and never sees a half-made pair.
current: tuple[dict[bytes, str], dict[str, None]] = ({b"baggage": "baggage"}, {"baggage": None})
_lock = threading.Lock()


def declare(name: str) -> None:
    """Say that a compiled rule reads header ``name`` (lower-case)."""
    global current
    if name in current[1]:
        return
    try:
        encoded = name.encode("latin-1")  # how httpx encodes header names
    except UnicodeEncodeError:
        return  # no header line can carry it
    with _lock:
        wanted, blank = current
        if name in blank or len(blank) >= LIMIT:
            return
        current = ({**wanted, encoded: name}, {**blank, name: None})
