"""What routing rules may look at in a request, independent of the transport."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from urllib.parse import parse_qsl

__all__ = ["RequestInfo"]

HeaderGetter = Callable[[str], "str | None"]


class RequestInfo:
    """A transport-neutral view of one outbound call.

    ``header(name)`` takes a lower-case name and returns the first value or None (httpx headers
    and gRPC metadata both provide that cheaply); ``query(name)`` parses the query string once,
    on first use; ``path`` is the URL path (HTTP) or the full method name (gRPC).
    """

    __slots__ = ("method", "path", "_get_header", "_query_string", "_query")

    def __init__(
        self,
        method: str = "GET",
        path: str = "/",
        headers: Mapping[str, str] | HeaderGetter | None = None,
        query_string: str = "",
    ) -> None:
        self.method = method
        self.path = path
        if headers is None:
            self._get_header: HeaderGetter = _no_header
        elif callable(headers):
            self._get_header = headers
        else:
            lowered = {k.lower(): v for k, v in headers.items()}
            self._get_header = lowered.get
        self._query_string = query_string
        self._query: dict[str, str] | None = None

    def header(self, name: str) -> str | None:
        return self._get_header(name)

    def query(self, name: str) -> str | None:
        if self._query is None:
            q: dict[str, str] = {}
            for k, v in parse_qsl(self._query_string, keep_blank_values=True):
                q.setdefault(k, v)
            self._query = q
        return self._query.get(name)


def _no_header(name: str) -> None:
    return None
