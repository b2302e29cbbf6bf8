"""Exceptions graylb raises. Every message names the service, subset, rule or field at fault."""

from __future__ import annotations


class GraylbError(Exception):
    """Base class for every error graylb raises on purpose."""


class NoInstanceAvailable(GraylbError):
    """No instance can serve this call: the service, and the subset the call was routed to, are named."""

    def __init__(self, service: str, subset: str | None = None, reason: str = "") -> None:
        self.service = service
        self.subset = subset
        self.reason = reason
        where = f"service '{service}'" + (f" subset '{subset}'" if subset else "")
        super().__init__(f"no instance available for {where}" + (f": {reason}" if reason else ""))


class NoSnapshot(NoInstanceAvailable):
    """The registry has not delivered a first snapshot of the service within the wait.

    Not "no instance": graylb does not know the service's instances yet. The message names the
    registry, how long callers waited and the last error the registry gave, if any.
    """

    def __init__(self, service: str, registry: str, waited: float, last_error: str | None = None) -> None:
        self.registry = registry
        self.waited = waited
        self.last_error = last_error
        why = last_error or "no answer yet"
        super().__init__(service, None, f"no snapshot of '{service}' from {registry} after {waited:.1f} s: {why}")


class RuleError(GraylbError, ValueError):
    """A rules document is invalid. ``errors`` lists ``(location, message)`` pairs.

    ``str()`` gives one line per problem, each starting with its dotted location, e.g.
    ``services.orders.routes[1].to[0].subset: unknown subset 'canery'``.
    """

    def __init__(self, errors: list[tuple[str, str]], source: str = "") -> None:
        self.errors = list(errors)
        self.source = source
        head = f"invalid rules{f' in {source}' if source else ''}"
        body = "\n".join(f"  {loc}: {msg}" if loc else f"  {msg}" for loc, msg in self.errors)
        super().__init__(f"{head}:\n{body}")


class InvalidVersion(GraylbError, ValueError):
    """A version range could not be parsed."""


class MissingVersion(GraylbError, ValueError):
    """A registration found no version: none was passed and the build environment sets none.

    ``owner`` names the registration (``ConsulRegistration('orders')``); the message ends with
    what was looked at, so the fix is in the message. Pass ``require_version=False`` to
    register an instance without a version on purpose.
    """

    def __init__(self, owner: str, looked_at: str) -> None:
        self.owner = owner
        super().__init__(f"{owner}: no version: {looked_at}")


class NotReady(GraylbError):
    """A registration's readiness probe did not pass in time: the instance was not registered."""

    def __init__(self, instance: str, probe: str, waited: float, last: str | None = None) -> None:
        self.instance, self.probe, self.waited, self.last = instance, probe, waited, last
        super().__init__(
            f"{instance}: not registered, readiness probe {probe} did not pass within {waited:.3g}s"
            + (f" (last answer: {last})" if last else "")
        )
