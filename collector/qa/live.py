"""The live view's hub: every event the collector judges, as it is judged, fanned out to the pages watching.

The ingest pipeline calls `LiveHub.observe` once per request, after it has
decided every event (and, for `/v1/batch`, after the events are durable), with
the batch as it arrived, its sender and the answer. So the page shows exactly
what the collector received and decided: valid, duplicate or quarantined, with
the same reasons the quarantine stores, and PII-tagged fields as they arrived
(hashed or masked by the SDK; the hub transforms nothing).

Cost rules:
- Nobody watching (and not `observe_always`): the hub is detached from the
  pipeline (`Ingest.observer` is None), which then pays one attribute check per
  request and nothing per event.
- Watching: each event is decoded once, encoded to JSON once, counted once
  into the session's coverage tally, and offered to each page's queue.
- A slow or paused page never slows ingestion: each page has a bounded queue
  (`queue_events`); when it is full the oldest event is dropped and counted,
  and the page is told "N events skipped" before the next ones. Writing to the
  page's socket happens in the page's own task, never in the pipeline's.

The hub also keeps the last `history_events` events, so a page opened (or
reconnected, or refiltered) after the events arrived still shows them, and the
session's coverage (`coverage()`), counted like `maidian coverage` counts a data
directory: once per event id, duplicates left out.
"""

from __future__ import annotations

import base64
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

import msgspec

from maidian.collector.pipeline.dedup import SeenIds
from maidian.collector.qa.coverage import CoverageReport, Scope, Tally, build_report, describe, test_tag_of
from maidian.collector.settings import DEFAULT_LIVE_HISTORY_EVENTS, DEFAULT_LIVE_QUEUE_EVENTS
from maidian.tracking_plan import Plan

if TYPE_CHECKING:
    from maidian.collector.pipeline.auth import Principal
    from maidian.collector.pipeline.decode import Batch
    from maidian.collector.pipeline.ingest import Outcome

__all__ = ["VERDICTS", "Judged", "LiveFilter", "LiveHub", "LiveRecord", "Subscriber", "judged_events"]

log = logging.getLogger("maidian.collector")

VERDICTS: Final = ("accepted", "duplicate", "quarantined")
# Payloads beyond this (a quarantined `too_large` event can be 16 MiB) are not sent to pages.
MAX_PAYLOAD_BYTES: Final = 64 << 10
# Undecodable events are shown as base64 of their first bytes.
_RAW_SHOWN_BYTES: Final = 4096
# Distinct test tags remembered (with a coverage tally each, up to `_MAX_TAG_TALLIES`): bounds memory
# whatever tags senders invent.
_MAX_TAGS: Final = 1000
_MAX_TAG_TALLIES: Final = 100
# Event names whose business line is remembered: a plan's names and then some.
_MAX_NAMES: Final = 10_000
# Filter values from a URL: longer than any name or id the protocol allows.
_MAX_FILTER_CHARS: Final = 256
_FOREVER_S: Final = 1e12

_json_encode = msgspec.json.Encoder().encode
_msgpack_decode = msgspec.msgpack.Decoder().decode
_json_decode = msgspec.json.Decoder().decode


class _Observer(Protocol):
    observer: Callable[[Batch, Principal, Outcome, bool, int], None] | None


@dataclass(frozen=True, slots=True)
class LiveRecord:
    """One judged event as pages get it: the fields filters look at, and its JSON."""

    seq: int
    verdict: str
    name: str
    line: str
    tag: str
    identities: tuple[str, ...]
    data: bytes


@dataclass(frozen=True, slots=True)
class LiveFilter:
    """What a page asked to see; empty fields match everything.

    `identity` equals any identity value (device, login or declared id);
    `event` is a part of the event name (or profile/bind type); `line` a
    business-line prefix; `verdict` one of `VERDICTS`; `tag` the `$test_tag`.
    """

    identity: str = ""
    event: str = ""
    line: str = ""
    verdict: str = ""
    tag: str = ""

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> LiveFilter:
        def get(name: str) -> str:
            return str(query.get(name, "")).strip()[:_MAX_FILTER_CHARS]

        return cls(get("identity"), get("event"), get("line"), get("verdict"), get("tag"))

    def matches(self, record: LiveRecord) -> bool:
        return (
            (not self.verdict or record.verdict == self.verdict)
            and (not self.line or record.line == self.line)
            and (not self.tag or record.tag == self.tag)
            and (not self.event or self.event in record.name)
            and (not self.identity or self.identity in record.identities)
        )


class Subscriber:
    """One page's bounded queue: the newest `max_events` matching events and how many older ones were dropped."""

    def __init__(self, flt: LiveFilter, max_events: int, wake: Callable[[], None]) -> None:
        self.filter = flt
        self.queue: deque[LiveRecord] = deque(maxlen=max_events)
        self.skipped = 0
        self._wake = wake

    def offer(self, record: LiveRecord) -> None:
        if not self.filter.matches(record):
            return
        if len(self.queue) == self.queue.maxlen:
            self.skipped += 1  # deque(maxlen) drops the oldest on append
        self.queue.append(record)
        self._wake()

    def take(self) -> tuple[list[LiveRecord], int]:
        """Everything queued, oldest first, and the count dropped before it (both reset)."""
        records, skipped = list(self.queue), self.skipped
        self.queue.clear()
        self.skipped = 0
        return records, skipped


Judged = tuple[Any, bytes | None, str, list[Any]]
"""One judged event as the hub takes it: the decoded event (None when undecodable), the first bytes of the
event as sent when it did not decode, the verdict, and the reasons."""


def judged_events(batch: Batch, results: list[dict[str, Any]]) -> list[Judged]:
    """A request's events with their verdicts, each decoded once."""
    values = batch.values
    decode = _json_decode if batch.format == "json" else _msgpack_decode
    out: list[Judged] = []
    for i, raw in enumerate(batch.events):
        result = results[i]
        event: Any
        if values is not None:
            event = values[i]
        else:
            try:
                event = decode(raw)
            except (msgspec.DecodeError, RecursionError, UnicodeError):
                event = None
        shown = bytes(raw)[:_RAW_SHOWN_BYTES] if event is None else None
        out.append((event, shown, result.get("status", ""), result.get("reasons", [])))
    return out


class LiveHub:
    """The live view's state for one collector process: pages, recent events and the session's coverage."""

    def __init__(
        self,
        plan: Plan,
        *,
        history_events: int = DEFAULT_LIVE_HISTORY_EVENTS,
        queue_events: int = DEFAULT_LIVE_QUEUE_EVENTS,
        observe_always: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.plan = plan
        self.queue_events = queue_events
        self.observe_always = observe_always
        self.clock = clock
        self.started_ms = int(clock() * 1000)
        self.closed = False
        self.history: deque[LiveRecord] = deque(maxlen=history_events)
        self.subscribers: set[Subscriber] = set()
        self.counts: Counter[str] = Counter()
        self.tags: Counter[str] = Counter()
        self.tally = Tally()
        self.tag_tallies: dict[str, Tally] = {}
        self._counted = SeenIds(_FOREVER_S)
        self._seq = 0
        self._lines: dict[str, str] = {}
        self._pipeline: _Observer | None = None
        # Told whether anybody watches, whenever that may have changed (other workers forward only then).
        self.on_watching: Callable[[bool], None] | None = None

    # -- the pipeline's side -------------------------------------------------------------

    def attach(self, pipeline: _Observer) -> None:
        """Follow a pipeline (an `Ingest`): it calls `observe` while anybody watches (always, with `observe_always`)."""
        self._pipeline = pipeline
        self._hook()

    def _hook(self) -> None:
        watching = not self.closed and (self.observe_always or bool(self.subscribers))
        if self._pipeline is not None:
            self._pipeline.observer = self.observe if watching else None
        if self.on_watching is not None:
            self.on_watching(watching)

    def observe(self, batch: Batch, principal: Principal, outcome: Outcome, stored: bool, received_ms: int) -> None:
        """Record one request's events with their verdicts (the pipeline's hook); never raises into it."""
        try:
            self._observe(batch, principal.name, outcome.results, stored, received_ms)
        except Exception:
            log.exception("live view: could not show a request's events; ingestion is not affected")

    def _observe(
        self, batch: Batch, source: str, results: list[dict[str, Any]], stored: bool, received_ms: int
    ) -> None:
        self.add_judged(judged_events(batch, results), source, "batch" if stored else "debug", received_ms)

    def add_judged(self, judged: list[Judged], source: str, route: str, received_ms: int) -> None:
        """Show one request's judged events (from this process's pipeline, or forwarded by another worker)."""
        fresh: list[str] = []
        for event, raw, verdict, reasons in judged:
            kind, name, props = describe(event)
            tag = test_tag_of(event) or ""
            record = self._record(event, raw, verdict, reasons, kind, name, tag, route, source, received_ms)
            self.counts[verdict] += 1
            if verdict != "duplicate":
                eid = event.get("event_id") if kind is not None else None
                if type(eid) is not str:
                    self._count(kind, name, props, tag, None if verdict == "accepted" else reasons)
                elif eid not in self._counted:  # else shown by /v1/debug and then stored: one event
                    fresh.append(eid)
                    self._count(kind, name, props, tag, None if verdict == "accepted" else reasons)
            self.history.append(record)
            for sub in self.subscribers:
                sub.offer(record)
        self._counted.add(fresh, 0)

    def _count(
        self, kind: str | None, name: str | None, props: tuple[Any, ...] | None, tag: str, reasons: list[Any] | None
    ) -> None:
        self.tally.add(kind, name, props, reasons)
        if tag:
            if tag in self.tags or len(self.tags) < _MAX_TAGS:
                self.tags[tag] += 1
            tally = self.tag_tallies.get(tag)
            if tally is None and len(self.tag_tallies) < _MAX_TAG_TALLIES:
                tally = self.tag_tallies[tag] = Tally()
            if tally is not None:
                tally.add(kind, name, props, reasons)

    def _line_of(self, name: str) -> str:
        line = self._lines.get(name)
        if line is None:
            line = self.plan.business_line_of(name) or ""
            if len(self._lines) < _MAX_NAMES:
                self._lines[name] = line
        return line

    def _record(  # noqa: PLR0917  # one call site, on the hot path of a watched collector
        self,
        event: Any,
        raw: bytes | None,
        verdict: str,
        reasons: list[Any],
        kind: str | None,
        name: str | None,
        tag: str,
        route: str,
        source: str,
        received_ms: int,
    ) -> LiveRecord:
        self._seq += 1
        shown = name if kind == "track" else kind
        line = self._line_of(name) if kind == "track" and name else ""
        ids = event.get("identities") if kind is not None else None
        ids = ids if type(ids) is dict else {}
        doc: dict[str, Any] = {
            "seq": self._seq,
            "at": received_ms,
            "route": route,
            "verdict": verdict,
            "reasons": reasons,
            "source": source,
            "type": kind,
            "event": shown,
            "line": line,
            "tag": tag,
            "event_id": event.get("event_id") if kind is not None else None,
            "time": event.get("time") if kind is not None else None,
            "identities": ids,
            "payload": event,
        }
        if event is None:
            doc["raw_base64"] = base64.b64encode(raw or b"").decode()
        data = self._encode(doc)
        values = tuple(v for v in ids.values() if isinstance(v, str))
        return LiveRecord(self._seq, verdict, shown or "", line, tag, values, data)

    @staticmethod
    def _encode(doc: dict[str, Any]) -> bytes:
        try:
            data = _json_encode(doc)
        except (msgspec.EncodeError, TypeError, ValueError, OverflowError):
            doc["payload"] = None
            doc["identities"] = {}
            doc["unprintable"] = True
            data = _json_encode({k: v for k, v in doc.items() if k != "raw_base64"})
        if len(data) > MAX_PAYLOAD_BYTES:
            doc["payload"] = None
            doc["truncated_bytes"] = len(data)
            doc.pop("raw_base64", None)
            data = _json_encode(doc)
        return data

    # -- the pages' side -----------------------------------------------------------------

    def subscribe(self, flt: LiveFilter, wake: Callable[[], None], *, after_seq: int = 0) -> Subscriber:
        """A new page: its queue starts with the recent events after `after_seq` that match its filter."""
        sub = Subscriber(flt, self.queue_events, wake)
        for record in self.history:
            if record.seq > after_seq:
                sub.offer(record)
        self.subscribers.add(sub)
        self._hook()
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)
        self._hook()

    def close(self) -> None:
        """Stop observing and wake every page so its stream ends."""
        self.closed = True
        self._hook()
        for sub in list(self.subscribers):
            sub._wake()

    def coverage(self, tag: str | None = None) -> CoverageReport:
        """The coverage of the plan by this session's events (since the hub started observing)."""
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started_ms / 1000))
        scope = Scope(f"live session since {started}", tag=tag or None)
        tally = self.tally if not tag else self.tag_tallies.get(tag, Tally())
        return build_report(self.plan, tally, scope)

    def info(self) -> dict[str, Any]:
        """What a page needs to draw its filters and header."""
        plan = self.plan
        return {
            "plan": {
                "name": plan.name,
                "version": plan.version,
                "lines": [{"prefix": p, "title": line.title} for p, line in plan.business_lines.items()],
                "events": sorted(plan.events),
            },
            "tags": [t for t, _n in self.tags.most_common()],
            "counts": {v: self.counts[v] for v in VERDICTS},
            "since": self.started_ms,
            "last_seq": self._seq,
            "pages": len(self.subscribers),
        }
