"""OpenTelemetry signals, through opentelemetry-api only: no-ops until the application installs
an SDK. One counter and one histogram for every transport, plus attributes on the current span.

- ``graylb.client.requests`` (counter): calls by ``graylb.service``, ``graylb.subset``,
  ``graylb.version`` and ``graylb.outcome`` (``ok``, ``error``, ``http_5xx``, ``no_instance``...).
- ``graylb.client.duration`` (histogram, seconds): the same attributes.
- ``graylb.rules.rejected`` (counter): rule documents rejected by validation, by source.
- ``graylb.subset.empty`` (counter): a declared subset found to select no instance of a service
  that has some, once per (service, subset, snapshot) — a selector that matches nothing.
"""

from __future__ import annotations

from opentelemetry import metrics, trace

from .served import Served

__all__ = ["record", "record_no_instance", "record_rules_rejected", "record_subset_empty", "annotate_span"]

_meter = metrics.get_meter("graylb")
_requests = _meter.create_counter(
    "graylb.client.requests", unit="{request}", description="Routed calls by service, subset, version and outcome"
)
_duration = _meter.create_histogram(
    "graylb.client.duration", unit="s", description="Routed call duration, all attempts included"
)
_rules_rejected = _meter.create_counter(
    "graylb.rules.rejected", unit="{document}", description="Rule documents rejected by validation"
)
_subset_empty = _meter.create_counter(
    "graylb.subset.empty",
    unit="{event}",
    description="Declared subsets found to select no instance of a service that has some",
)


def record(served: Served, outcome: str, seconds: float) -> None:
    attrs = {
        "graylb.service": served.service,
        "graylb.subset": served.subset,
        "graylb.version": served.version or "",
        "graylb.outcome": outcome,
    }
    _requests.add(1, attrs)
    _duration.record(seconds, attrs)


def record_no_instance(service: str, subset: str | None) -> None:
    _requests.add(
        1,
        {
            "graylb.service": service,
            "graylb.subset": subset or "",
            "graylb.version": "",
            "graylb.outcome": "no_instance",
        },
    )


def record_rules_rejected(source: str) -> None:
    _rules_rejected.add(1, {"graylb.rules.source": source})


def record_subset_empty(service: str, subset: str) -> None:
    _subset_empty.add(1, {"graylb.service": service, "graylb.subset": subset})


def annotate_span(served: Served) -> None:
    """Put the routing result on the current span, if one is recording."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes(
            {
                "graylb.service": served.service,
                "graylb.route": served.route,
                "graylb.subset": served.subset,
                "graylb.version": served.version or "",
                "graylb.instance": served.instance,
                "graylb.attempts": served.attempts,
            }
        )
