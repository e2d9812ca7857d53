"""Finding a person by any identity, and their timeline: every event the identity graph attributes to them.

Promises:
- `find_person` looks a value up under every identity type the plan declares
  (or the one asked for). For a type the plan marks `x-pii: hash` (a mobile
  number), a value typed in clear is hashed with the configured key first, so
  only the hash is ever looked up; the clear value goes no further.
- `Timeline.page` returns the newest `limit` events before a cursor, newest
  first (`read.event_order`, the order `maidian events --person` prints),
  each once (by sender scope and event id), each attributed to the person by
  the graph (`read.Attribution`, with the frame's trust): on a shared device,
  another login's events stay out, though they carry the device's anonymous
  id. Pre-login events (anonymous id only) are in.
- The cost of a page follows the page, not the person: the person's frames
  are known from the catalog's identity index, their heads (time range) are
  read once per view and remembered, and frames are decoded newest first only
  until no remaining frame can hold a newer event than the page's oldest.
  Memory per view is one small tuple per frame.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final
from zoneinfo import ZoneInfo

from maidian.collector.identity.graph import IdentityGraph
from maidian.collector.identity.types import PersonId
from maidian.collector.pipeline.dedup import head_scope
from maidian.collector.read import Attribution, event_order, export_events, frame_records, lookup_values
from maidian.collector.store.catalog import Catalog
from maidian.collector.store.frames import read_frame_at, read_heads_at
from maidian.collector.store.heads import TimeSpan
from maidian.collector.store.log import DataDir
from maidian.tracking_plan import Plan

__all__ = [
    "Found",
    "Linked",
    "Page",
    "PersonFrames",
    "Timeline",
    "TimelineFilter",
    "find_person",
]

# Quarantined events shown per person: the newest; a person with more has a broken client, not a call.
MAX_QUARANTINED: Final = 100
_FAR: Final = 1 << 62


@dataclass(frozen=True, slots=True)
class Linked:
    """One identity of a person, and when it was first seen (ms since the epoch)."""

    identity_type: str
    value: str
    first_seen_ms: int | None


@dataclass(frozen=True, slots=True)
class Found:
    """The person a search found: their pseudonymous id, identities, and the type the value matched."""

    person: PersonId
    identities: tuple[Linked, ...]
    matched_type: str

    @property
    def members(self) -> frozenset[tuple[str, str]]:
        return frozenset((i.identity_type, i.value) for i in self.identities)


def find_person(
    graph: IdentityGraph, plan: Plan, value: str, identity_type: str | None = None, *, pii_key: bytes | None = None
) -> Found | None:
    """The person an identity value belongs to (by the plan's priority when several types match), or None."""
    value = value.strip()
    if not value:
        return None
    hits = []
    for t, v in lookup_values(plan, value, identity_type, pii_key):
        person = graph.person_of(t, v)
        if person is not None:
            hits.append((plan.identities[t].priority, t, person))
    if not hits:
        return None
    _priority, matched, person = min(hits)
    seen = graph.first_seen(person)
    identities = tuple(
        Linked(t, v, first)
        for (t, v), first in sorted(seen.items(), key=lambda kv: (plan_priority(plan, kv[0][0]), kv[1], kv[0]))
    )
    return Found(person, identities, matched)


def plan_priority(plan: Plan, identity_type: str) -> int:
    spec = plan.identities.get(identity_type)
    return spec.priority if spec is not None else 1 << 30


@dataclass(frozen=True, slots=True)
class TimelineFilter:
    """What the agent narrowed the timeline to; empty fields match everything. Times in ms, [since, until)."""

    lines: frozenset[str] = frozenset()
    events: frozenset[str] = frozenset()
    since_ms: int | None = None
    until_ms: int | None = None

    def names_match(self, names: tuple[str, ...], line_of: Callable[[str], str]) -> bool:
        """Whether a frame holding these event names may hold an event this filter keeps."""
        return any(
            (not self.events or n in self.events) and (not self.lines or line_of(n) in self.lines) for n in names
        )

    def matches(self, record: Mapping[str, Any], line: str) -> bool:
        t = record.get("time", 0)
        return (
            (not self.lines or line in self.lines)
            and (not self.events or _name(record) in self.events)
            and (self.since_ms is None or t >= self.since_ms)
            and (self.until_ms is None or t < self.until_ms)
        )


def _name(record: Mapping[str, Any]) -> str:
    kind = record.get("type")
    return str(record.get("event") if kind == "track" else kind)


@dataclass(slots=True)
class PersonFrames:
    """A view's memory of the person's frames, newest first, grown as frames arrive.

    Each frame as (tmax, tmin, segment, offset, the event names it holds): a
    filter by line or event skips the frames that hold none without reading them.
    """

    known: set[tuple[str, int]] = field(default_factory=set)
    frames: list[tuple[int, int, str, int, tuple[str, ...]]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a timeline, newest first; `cursor` fetches the next (older) page, None at the end."""

    events: list[dict[str, Any]]
    cursor: str | None
    scanned_frames: int


Key = tuple[int, str, int, str]
"""Where an event stands in a timeline: `read.event_order` (time, source, sequence), then its sender's scope."""


def encode_cursor(key: Key) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode()


def decode_cursor(cursor: str | None) -> Key | None:
    if not cursor:
        return None
    try:
        t, source, seq, scope = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except (ValueError, TypeError, binascii.Error):
        return None
    if not (isinstance(t, int) and isinstance(source, str) and isinstance(seq, int) and isinstance(scope, str)):
        return None
    return t, source, seq, scope


class Timeline:
    """Reads people's timelines from one data directory, with the plan's words and the bank's clock."""

    def __init__(self, data_dir: Path, plan: Plan, time_zone: str) -> None:
        self.data = DataDir(Path(data_dir))
        self.plan = plan
        self.zone = ZoneInfo(time_zone)
        self._lines: dict[str, str] = {}

    # -- one page ----------------------------------------------------------------------

    def page(
        self,
        catalog: Catalog,
        graph: IdentityGraph,
        found: Found,
        memory: PersonFrames,
        *,
        flt: TimelineFilter,
        cursor: str | None,
        limit: int,
    ) -> Page:
        """The newest `limit` events of the person before `cursor` that match `flt`."""
        self._learn(catalog, found, memory)
        top = decode_cursor(cursor)
        lo = flt.since_ms if flt.since_ms is not None else -_FAR
        hi = min(flt.until_ms if flt.until_ms is not None else _FAR, top[0] + 1 if top else _FAR)
        members = found.members
        attribute = Attribution(graph)
        picked: dict[Key, dict[str, Any]] = {}
        floor: Key | None = None
        scanned = 0
        named = flt.names_match if flt.lines or flt.events else None
        for tmax, tmin, segment, offset, names in memory.frames:
            if tmin >= hi or tmax < lo or (named is not None and not named(names, self.line_of)):
                continue
            if floor is not None and tmax < floor[0]:
                break
            frame = read_frame_at(self.data.raw / segment, offset)
            if frame is None:
                continue
            scanned += 1
            trusted = bool(frame.head.get("trusted"))
            scope = head_scope(frame.head)
            for record in frame_records(frame):
                key: Key = (*event_order(record), scope)
                if (top is not None and key >= top) or (floor is not None and key <= floor) or key in picked:
                    continue
                ids = record.get("identities")
                if not isinstance(ids, dict) or not any((t, v) in members for t, v in ids.items()):
                    continue
                if attribute(ids, trusted) != found.person or not flt.matches(record, self.line_of(_name(record))):
                    continue
                picked[key] = record
            if len(picked) >= limit:
                newest = sorted(picked, reverse=True)[:limit]
                picked = {k: picked[k] for k in newest}
                floor = newest[-1]
        ranked = sorted(picked, reverse=True)[:limit]
        events = [self.shape(picked[k]) for k in ranked]
        more = len(ranked) == limit
        return Page(events, encode_cursor(ranked[-1]) if more else None, scanned)

    def _learn(self, catalog: Catalog, found: Found, memory: PersonFrames) -> None:
        """Read the heads of the person's frames not seen before; keep the list newest first."""
        fresh = set(catalog.frames_of(set(found.members))) - memory.known
        if not fresh:
            return
        memory.known |= fresh
        by_segment: dict[str, list[int]] = {}
        for segment, offset in fresh:
            by_segment.setdefault(segment, []).append(offset)
        for segment, offsets in by_segment.items():
            spans = read_heads_at(self.data.raw / segment, offsets, TimeSpan)
            memory.frames.extend((span.tmax, span.tmin, segment, offset, tuple(span.names)) for offset, span in spans)
        memory.frames.sort(reverse=True)

    # -- the person's quarantined events -----------------------------------------------

    def quarantined(self, graph: IdentityGraph, found: Found, flt: TimelineFilter) -> list[dict[str, Any]]:
        """The person's quarantined events, newest first, with reasons.

        An event is the person's when it carries one of their identities and the
        graph attributes it to no one else (as an unsigned event: a quarantined
        event's sender is not vouched for); so on a shared pad, another
        customer's refused event stays with that customer.
        """
        members = found.members
        attribute = Attribution(graph)
        out: list[dict[str, Any]] = []
        for q in export_events(
            self.data.root, since_ms=flt.since_ms, until_ms=flt.until_ms, accepted=False, quarantined=True
        ):
            event = q.get("event")
            if not isinstance(event, dict):
                continue
            ids = event.get("identities")
            if not isinstance(ids, dict) or not any((str(t), str(v)) in members for t, v in ids.items()):
                continue
            if attribute(ids, False) not in (None, found.person):
                continue
            record = {**event, "time": q["time"], "received_at": q.get("received_at"), "source": q.get("source")}
            if not flt.matches(record, self.line_of(_name(record))):
                continue
            shaped = self.shape(record)
            shaped["reasons"] = q.get("reasons", [])
            out.append(shaped)
        out.sort(key=lambda e: (e["time"], e["event_id"]), reverse=True)
        return out[:MAX_QUARANTINED]

    # -- how the page shows an event ---------------------------------------------------

    def line_of(self, name: str) -> str:
        line = self._lines.get(name)
        if line is None:
            line = self._lines[name] = self.plan.business_line_of(name) or ""
        return line

    def local(self, t_ms: int) -> datetime:
        return datetime.fromtimestamp(t_ms / 1000, self.zone)

    def shape(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """An event as the page draws it: when (bank time), what, which line, its properties."""
        t = record.get("time")
        t = t if isinstance(t, int) else 0
        at = self.local(t)
        name = _name(record)
        props = record.get("properties")
        props = props if isinstance(props, dict) else {}
        session = props.get("$session_id")
        return {
            "event_id": str(record.get("event_id")),
            "time": t,
            "day": at.strftime("%Y-%m-%d"),
            "clock": at.strftime("%H:%M:%S.") + f"{at.microsecond // 1000:03d}",
            "event": name,
            "type": record.get("type"),
            "line": self.line_of(name),
            "session": session if isinstance(session, str) else None,
            "source": record.get("source"),
            "flags": record.get("flags", []),
            "identities": record.get("identities") if isinstance(record.get("identities"), dict) else {},
            "properties": props,
        }

    def notes(self, names: Iterator[str] | set[str]) -> dict[str, dict[str, Any]]:
        """The plan's description of each named event and of each of its properties (common ones too)."""
        common = self.plan.common_properties.get("properties", {})
        out: dict[str, dict[str, Any]] = {}
        for name in names:
            spec = self.plan.events.get(name)
            if spec is None:
                continue
            described = {**common, **spec.properties}
            out[name] = {
                "description": spec.description,
                "trigger": spec.trigger,
                "properties": {p: s.get("description", "") for p, s in described.items() if isinstance(s, Mapping)},
            }
        return out
