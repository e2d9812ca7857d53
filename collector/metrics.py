"""Metrics in the Prometheus text format (version 0.0.4), written by hand.

A client library would add a dependency and a lock per increment; the
collector's hot path only adds to plain integers on the event loop, and the
text is rendered when `/metrics` is scraped. Gauges that belong to other
parts (queue depth, catalog lag, fsync totals) are read from them at render
time through callbacks.

Several worker processes (`server.workers`) answer `/metrics` as one: the
worker scraped asks every other for its `snapshot()` (http/workers.py) and
renders their `merge`: counters and the histogram added, gauges added (or,
for the ones a sum would misstate, their max or min). Each worker's counters
only grow, and each scrape reads every worker's at that moment, so a counter
never goes backwards from one scrape to the next, whichever worker answers.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Mapping
from typing import Any, Final

__all__ = ["Histogram", "Metrics", "Snapshot", "merge", "render"]

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
        return _histogram_lines(name, self.buckets, self.counts, self.sum, self.count)


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

    def snapshot(self) -> Snapshot:
        """Every value now, as plain data: what `render` prints, and what workers exchange to add up."""
        families = {
            name: (help_text, labels, [[*key, count] for key, count in sorted(read_values().items())])
            for name, (help_text, labels, read_values) in self.families.items()
        }
        return {
            "requests": [[path, status, n] for (path, status), n in sorted(self.requests.items())],
            "events": dict(self.events),
            "bytes": dict(self.bytes),
            "refusals": dict(self.refusals),
            "refusals_withdrawn": dict(self.refusals_withdrawn),
            "latency": [list(self.latency.counts), self.latency.sum, self.latency.count],
            "families": families,
            "counters": {name: (help_text, read()) for name, (help_text, read) in self.counters.items()},
            "gauges": {name: (help_text, read()) for name, (help_text, read) in self.gauges.items()},
        }

    def render(self) -> str:
        return render(self.snapshot())


Snapshot = dict[str, Any]
"""`Metrics.snapshot()`: plain lists, dicts and numbers (msgpack-able)."""

# Gauges whose sum over worker processes means nothing: the largest (or smallest) one is the fact.
_GAUGE_MAX: Final = frozenset(
    {"maidian_fsync_seconds_max", "maidian_catalog_lag_bytes", "maidian_log_damaged_frames", "maidian_dedup_sources"}
)
_GAUGE_MIN: Final = frozenset({"maidian_ready"})


def merge(snapshots: list[Snapshot]) -> Snapshot:
    """Several processes' snapshots as one: counters and histograms added, gauges added or their max/min taken."""
    if len(snapshots) == 1:
        return snapshots[0]
    requests: dict[tuple[str, int], float] = {}
    plain: dict[str, dict[str, float]] = {k: {} for k in ("events", "bytes", "refusals", "refusals_withdrawn")}
    counts: list[int] = []
    total_s = 0.0
    n = 0
    families: dict[str, tuple[str, list[str], dict[tuple[Any, ...], float]]] = {}
    counters: dict[str, tuple[str, float]] = {}
    gauges: dict[str, tuple[str, float]] = {}
    for snap in snapshots:
        for path, status, value in snap["requests"]:
            requests[path, status] = requests.get((path, status), 0) + value
        for kind, into in plain.items():
            for key, value in snap[kind].items():
                into[key] = into.get(key, 0) + value
        buckets, seconds, count = snap["latency"]
        counts = [a + b for a, b in zip(counts, buckets, strict=True)] if counts else list(buckets)
        total_s += seconds
        n += count
        for name, (help_text, labels, rows) in snap["families"].items():
            _h, _l, values = families.setdefault(name, (help_text, labels, {}))
            for *key, value in rows:
                values[tuple(key)] = values.get(tuple(key), 0) + value
        for name, (help_text, value) in snap["counters"].items():
            counters[name] = (help_text, counters.get(name, (help_text, 0))[1] + value)
        for name, (help_text, value) in snap["gauges"].items():
            if name not in gauges:
                gauges[name] = (help_text, value)
            elif name in _GAUGE_MAX:
                gauges[name] = (help_text, max(gauges[name][1], value))
            elif name in _GAUGE_MIN:
                gauges[name] = (help_text, min(gauges[name][1], value))
            else:
                gauges[name] = (help_text, gauges[name][1] + value)
    return {
        "requests": [[p, s, v] for (p, s), v in sorted(requests.items())],
        **plain,
        "latency": [counts, total_s, n],
        "families": {
            name: (h, labels, [[*k, v] for k, v in sorted(values.items())])
            for name, (h, labels, values) in families.items()
        },
        "counters": counters,
        "gauges": gauges,
    }


def render(snap: Snapshot) -> str:
    """A snapshot (one process's, or `merge`d) in the Prometheus text format."""
    out: list[str] = []

    def family(name: str, kind: str, help_text: str) -> None:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")

    family("maidian_requests_total", "counter", "HTTP requests by path and status.")
    for path, status, n in snap["requests"]:
        out.append(f"maidian_requests_total{_labels((('path', path), ('status', str(status))))} {_number(n)}")
    family("maidian_events_total", "counter", "Events by outcome.")
    for outcome, n in sorted(snap["events"].items()):
        out.append(f"maidian_events_total{_labels((('outcome', outcome),))} {_number(n)}")
    family("maidian_request_bytes_total", "counter", "Request body bytes, as sent (wire) and decompressed.")
    for kind, n in sorted(snap["bytes"].items()):
        out.append(f"maidian_request_bytes_total{_labels((('stage', kind),))} {_number(n)}")
    family("maidian_identity_refusals_total", "counter", "Identity links the identity graph refused, by rule.")
    for rule, n in sorted(snap["refusals"].items()):
        out.append(f"maidian_identity_refusals_total{_labels((('rule', rule),))} {_number(n)}")
    family(
        "maidian_identity_refusals_withdrawn_total",
        "counter",
        "Refusals reversed because an earlier event arrived late, by rule.",
    )
    for rule, n in sorted(snap["refusals_withdrawn"].items()):
        out.append(f"maidian_identity_refusals_withdrawn_total{_labels((('rule', rule),))} {_number(n)}")
    family("maidian_request_duration_seconds", "histogram", "Time from a request's arrival to its answer.")
    buckets, seconds, count = snap["latency"]
    out.extend(_histogram_lines("maidian_request_duration_seconds", LATENCY_BUCKETS_S, buckets, seconds, count))
    for name, (help_text, labels, rows) in sorted(snap["families"].items()):
        family(name, "counter", help_text)
        for *key, value in rows:
            out.append(f"{name}{_labels(tuple(zip(labels, key, strict=True)))} {_number(value)}")
    for name, (help_text, value) in sorted(snap["counters"].items()):
        family(name, "counter", help_text)
        out.append(f"{name} {_number(value)}")
    for name, (help_text, value) in sorted(snap["gauges"].items()):
        family(name, "gauge", help_text)
        out.append(f"{name} {_number(value)}")
    return "\n".join(out) + "\n"


def _histogram_lines(name: str, bounds: tuple[float, ...], counts: list[int], seconds: float, count: int) -> list[str]:
    out = []
    running = 0
    for bound, n in zip((*bounds, math.inf), counts, strict=True):
        running += n
        le = "+Inf" if math.isinf(bound) else repr(bound)
        out.append(f'{name}_bucket{{le="{le}"}} {running}')
    out.append(f"{name}_sum {_number(seconds)}")
    out.append(f"{name}_count {count}")
    return out
