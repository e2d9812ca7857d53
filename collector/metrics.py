"""Metrics in the Prometheus text format (version 0.0.4), written by hand.

A client library would add a dependency and a lock per increment; the
collector's hot path only adds to plain integers on the event loop, and the
text is rendered when `/metrics` is scraped. Gauges that belong to other
parts (queue depth, catalog lag, fsync totals) are read from them at render
time through callbacks.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Mapping
from typing import Final

__all__ = ["Histogram", "Metrics"]

# Request latency buckets in seconds: 1 ms (a small batch on a fast disk) to 10 s.
LATENCY_BUCKETS_S: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    if not pairs:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in pairs)
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


class Histogram:
    """Cumulative buckets, a sum and a count."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str) -> list[str]:
        out = []
        running = 0
        for bound, n in zip((*self.buckets, math.inf), self.counts, strict=True):
            running += n
            le = "+Inf" if math.isinf(bound) else repr(bound)
            out.append(f'{name}_bucket{{le="{le}"}} {running}')
        out.append(f"{name}_sum {_number(self.sum)}")
        out.append(f"{name}_count {self.count}")
        return out


class Metrics:
    """The collector's metrics: counters keyed by labels, one latency histogram, gauges by callback."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, int], int] = {}
        self.events: dict[str, int] = {"accepted": 0, "duplicate": 0, "quarantined": 0}
        self.bytes: dict[str, int] = {"wire": 0, "decoded": 0}
        self.latency = Histogram(LATENCY_BUCKETS_S)
        self.refusals: dict[str, int] = {}
        # Refusals a late-arriving earlier event reversed (docs/identity.md): the
        # record stands at refusals - refusals_withdrawn, and both stay counters.
        self.refusals_withdrawn: dict[str, int] = {}
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}
        self.counters: dict[str, tuple[str, Callable[[], float]]] = {}
        # Counter families other parts own: name -> (help, label names, read {label values: count}).
        self.families: dict[str, tuple[str, tuple[str, ...], Callable[[], Mapping[tuple[str, ...], float]]]] = {}
        self._owned: dict[str, dict[tuple[str, ...], int]] = {}

    def request(self, path: str, status: int, seconds: float) -> None:
        key = (path, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        self.latency.observe(seconds)

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        self.gauges[name] = (help_text, read)

    def counter(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        self.counters[name] = (help_text, read)

    def family(self, name: str, help_text: str, labels: tuple[str, ...]) -> dict[tuple[str, ...], int]:
        """A counter family with labels; the owner adds to the returned dict, keyed by label values in order.

        Label values must come from a bounded set: each one is a time series.
        """
        values = self._owned.get(name)
        if values is None:
            values = self._owned[name] = {}
            self.read_family(name, help_text, labels, lambda: values)
        return values

    def read_family(
        self, name: str, help_text: str, labels: tuple[str, ...], read: Callable[[], Mapping[tuple[str, ...], float]]
    ) -> None:
        """A counter family with labels, read at render time as {label values, in order: count}."""
        self.families[name] = (help_text, labels, read)

    def render(self) -> str:
        out: list[str] = []

        def family(name: str, kind: str, help_text: str) -> None:
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")

        family("maidian_requests_total", "counter", "HTTP requests by path and status.")
        for (path, status), n in sorted(self.requests.items()):
            out.append(f"maidian_requests_total{_labels((('path', path), ('status', str(status))))} {n}")
        family("maidian_events_total", "counter", "Events by outcome.")
        for outcome, n in sorted(self.events.items()):
            out.append(f"maidian_events_total{_labels((('outcome', outcome),))} {n}")
        family("maidian_request_bytes_total", "counter", "Request body bytes, as sent (wire) and decompressed.")
        for kind, n in sorted(self.bytes.items()):
            out.append(f"maidian_request_bytes_total{_labels((('stage', kind),))} {n}")
        family("maidian_identity_refusals_total", "counter", "Identity links the identity graph refused, by rule.")
        for rule, n in sorted(self.refusals.items()):
            out.append(f"maidian_identity_refusals_total{_labels((('rule', rule),))} {n}")
        family(
            "maidian_identity_refusals_withdrawn_total",
            "counter",
            "Refusals reversed because an earlier event arrived late, by rule.",
        )
        for rule, n in sorted(self.refusals_withdrawn.items()):
            out.append(f"maidian_identity_refusals_withdrawn_total{_labels((('rule', rule),))} {n}")
        family("maidian_request_duration_seconds", "histogram", "Time from a request's arrival to its answer.")
        out.extend(self.latency.lines("maidian_request_duration_seconds"))
        for name, (help_text, labels, read_values) in sorted(self.families.items()):
            family(name, "counter", help_text)
            for key, count in sorted(read_values().items()):
                out.append(f"{name}{_labels(tuple(zip(labels, key, strict=True)))} {_number(count)}")
        for name, (help_text, read) in sorted(self.counters.items()):
            family(name, "counter", help_text)
            out.append(f"{name} {_number(read())}")
        for name, (help_text, read) in sorted(self.gauges.items()):
            family(name, "gauge", help_text)
            out.append(f"{name} {_number(read())}")
        return "\n".join(out) + "\n"
