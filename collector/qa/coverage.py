"""Coverage: which planned events a build fired, which it never did, and how well the ones it fired kept the plan.

A QA tester who has clicked through a build needs three lists more than any
dashboard: the planned events the session never triggered, the events it sent
that the plan does not know, and the events that fired wrong, with the plan's
reasons. `maidian coverage` answers from a data directory; the live page
(`live.py`) answers for the session it is watching. Both feed one `Tally` and
build one `CoverageReport`, so the numbers mean the same everywhere.

Counting rules (tests pin them on a known data set):

- Every stored event counts once, by event id: accepted events from `raw/`,
  quarantined ones from `quarantine/`, except ids that are also in `raw/` (a
  replay moved them after the plan was fixed: they count as accepted).
  Duplicates answered `duplicate` were never stored and never count.
- Per event name: `seen` = `accepted` + `invalid`; `invalid_rate` =
  `invalid / seen`; `reasons` are the quarantine's reasons (rule, JSON
  pointer, message: never a value), the `TOP_REASONS` most frequent first.
- Per property of an event: how many of its seen events carried it (with any
  value, null included); `rate` = present / seen. Presets (`$` names, set by
  the SDK) are left out.
- Expected events, the coverage denominator, are the plan's events with
  status `active`; `planned` and `deprecated` events are reported but not
  expected.
- Profile operations and bind/unbind count per type only (`other_types`);
  events that are not even maps count as `malformed`.
- `--since`/`--until` bound the corrected event time (inclusive, exclusive);
  `--tag` keeps the events whose `$test_tag` property equals it.

Reading a data directory is one streaming pass over the logs, frame by frame:
memory holds one segment's compressed bytes, one frame's decoded events and the
counters (names x properties), never the events. Raw frames whose time range
misses the window are skipped without decompressing them, and properties are
decoded only as far as their names (and `$test_tag`'s value).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import msgspec
import zstandard

from maidian.collector.pipeline.dedup import ScopedSeenIds, SeenIds, head_scope
from maidian.collector.store.frames import Frame, decode_body, read_frames, segment_files
from maidian.collector.store.log import DataDir
from maidian.tracking_plan import Plan

__all__ = [
    "TEST_TAG",
    "TOP_REASONS",
    "CoverageReport",
    "EventCoverage",
    "LineCoverage",
    "PropertyPresence",
    "ReasonCount",
    "Scope",
    "Tally",
    "build_report",
    "coverage_of_data",
    "tally_data",
]

# The preset a test build sets so its events can be told apart (envelope.PRESET_SCHEMAS).
TEST_TAG: Final = "$test_tag"
# Enough to name what went wrong without burying it; the JSON keeps the same number.
TOP_REASONS: Final = 5
# A reader must never forget an id it has counted (read.py uses the same horizon).
_FOREVER_S: Final = 1e12
_FAR: Final = 1 << 62

_msgpack = msgspec.msgpack.Decoder()
_json = msgspec.json.Decoder()
_unzstd = zstandard.ZstdDecompressor()


# -- counting ----------------------------------------------------------------------------


@dataclass(slots=True)
class _Counts:
    accepted: int = 0
    invalid: int = 0
    # Property names counted per distinct set of names (events of one name share a few such sets), so
    # counting an event is one increment; `properties` expands them when a report is built.
    shapes: Counter[tuple[Any, ...]] = field(default_factory=Counter)
    reasons: Counter[tuple[str, str, str]] = field(default_factory=Counter)

    @property
    def properties(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for shape, n in self.shapes.items():
            for p in shape:
                if isinstance(p, str) and not p.startswith("$"):
                    out[p] += n
        return out


class Tally:
    """Counters for events as they are seen; `build_report` turns them into a report against a plan."""

    def __init__(self) -> None:
        self.events: dict[str, _Counts] = {}
        self.types: dict[str, _Counts] = {}
        self.malformed = 0

    def add(
        self,
        kind: str | None,
        name: str | None,
        properties: tuple[Any, ...] | None,
        reasons: Sequence[Mapping[str, Any]] | None,
    ) -> None:
        """Count one event: its type, its name (track), its property names, and its reasons when it was invalid.

        `properties` is the tuple of the event's property names as sent (presets and all: they are left out
        when the report is built).
        """
        if kind is None:
            self.malformed += 1
            return
        if kind == "track":
            key = name if name is not None else "?"
            counts = self.events.get(key)
            if counts is None:
                counts = self.events[key] = _Counts()
        else:
            counts = self.types.get(kind)
            if counts is None:
                counts = self.types[kind] = _Counts()
        if reasons is None:
            counts.accepted += 1
        else:
            counts.invalid += 1
            for r in reasons:
                counts.reasons[(str(r.get("rule", "")), str(r.get("path", "")), str(r.get("message", "")))] += 1
        if kind == "track" and properties is not None:
            counts.shapes[properties] += 1

    def add_event(self, event: Any, reasons: Sequence[Mapping[str, Any]] | None) -> None:
        """Count one decoded event as it was sent (any shape: quarantined events may be malformed)."""
        kind, name, props = describe(event)
        self.add(kind, name, props, reasons)


def describe(event: Any) -> tuple[str | None, str | None, tuple[Any, ...] | None]:
    """(type, name, property names) of a possibly malformed event; None where it has none."""
    if type(event) is not dict:
        return None, None, None
    kind = event.get("type")
    kind = kind if type(kind) is str else "?"
    name = event.get("event")
    props = event.get("properties")
    return kind, (name if type(name) is str else None), (tuple(props) if type(props) is dict else None)


def test_tag_of(event: Any) -> str | None:
    """The event's `$test_tag`, if it carries a string one."""
    if not isinstance(event, Mapping):
        return None
    props = event.get("properties")
    tag = props.get(TEST_TAG) if isinstance(props, Mapping) else None
    return tag if isinstance(tag, str) else None


# -- the report --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scope:
    """What a report covers: where the events came from, the time window and the test tag."""

    source: str
    since_ms: int | None = None
    until_ms: int | None = None
    tag: str | None = None


@dataclass(frozen=True, slots=True)
class ReasonCount:
    rule: str
    path: str
    message: str
    count: int


@dataclass(frozen=True, slots=True)
class PropertyPresence:
    """How often the seen events of one name carried one property."""

    name: str
    present: int
    rate: float | None
    declared: bool
    required: bool


@dataclass(frozen=True, slots=True)
class EventCoverage:
    name: str
    line: str | None
    planned: bool
    status: str
    trigger: str
    seen: int
    accepted: int
    invalid: int
    invalid_rate: float | None
    reasons: tuple[ReasonCount, ...]
    properties: tuple[PropertyPresence, ...]


@dataclass(frozen=True, slots=True)
class LineCoverage:
    """One business line: its expected events, how many were seen, and every planned event's numbers."""

    prefix: str
    title: str
    expected: int
    expected_seen: int
    coverage: float | None
    seen: int
    invalid: int
    invalid_rate: float | None
    never_seen: tuple[str, ...]
    events: tuple[EventCoverage, ...]


@dataclass(frozen=True, slots=True)
class CoverageReport:
    plan_name: str
    plan_version: str
    scope: Scope
    seen: int
    accepted: int
    invalid: int
    expected: int
    expected_seen: int
    lines: tuple[LineCoverage, ...]
    unplanned: tuple[EventCoverage, ...]
    other_types: Mapping[str, Mapping[str, int]]
    malformed: int

    @property
    def coverage(self) -> float | None:
        return _rate(self.expected_seen, self.expected)

    @property
    def invalid_rate(self) -> float | None:
        return _rate(self.invalid, self.seen)

    @property
    def never_seen(self) -> list[str]:
        return [name for line in self.lines for name in line.never_seen]

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (`maidian coverage --format json`)."""
        return {
            "plan": {"name": self.plan_name, "version": self.plan_version},
            "scope": {
                "source": self.scope.source,
                "since": self.scope.since_ms,
                "until": self.scope.until_ms,
                "tag": self.scope.tag,
            },
            "totals": {
                "seen": self.seen,
                "accepted": self.accepted,
                "invalid": self.invalid,
                "invalid_rate": self.invalid_rate,
                "expected": self.expected,
                "expected_seen": self.expected_seen,
                "coverage": self.coverage,
                "never_seen": len(self.never_seen),
                "unplanned": len(self.unplanned),
                "unplanned_seen": sum(e.seen for e in self.unplanned),
                "malformed": self.malformed,
            },
            "lines": _plain(self.lines),
            "unplanned": _plain(self.unplanned),
            "other_types": {k: dict(v) for k, v in self.other_types.items()},
        }


def _plain(value: Any) -> Any:
    """Dataclasses and tuples as JSON's own dicts and lists (what a JSON reader gets back)."""
    return msgspec.json.decode(msgspec.json.encode(value))


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _presence(
    plan: Plan, counts: _Counts | None, seen: int, *, declared: Mapping[str, Any], required: Iterable[str]
) -> tuple[PropertyPresence, ...]:
    present = counts.properties if counts is not None else Counter[str]()
    need = set(required)
    out = [PropertyPresence(p, present[p], _rate(present[p], seen), True, p in need) for p in declared]
    common = plan.common_properties.get("properties", {})
    common_required = set(plan.common_properties.get("required", ()))
    listed = set(declared)
    for p in common:
        if p not in listed and (present[p] or p in common_required):
            out.append(PropertyPresence(p, present[p], _rate(present[p], seen), True, p in common_required))
            listed.add(p)
    extra = sorted((p for p in present if p not in listed), key=lambda p: (-present[p], p))
    out += [PropertyPresence(p, present[p], _rate(present[p], seen), False, False) for p in extra]
    return tuple(out)


def _reasons(counts: _Counts | None) -> tuple[ReasonCount, ...]:
    if counts is None:
        return ()
    ranked = sorted(counts.reasons.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_REASONS]
    return tuple(ReasonCount(rule, path, message, n) for (rule, path, message), n in ranked)


def _event(plan: Plan, name: str, counts: _Counts | None) -> EventCoverage:
    spec = plan.events.get(name)
    accepted = counts.accepted if counts else 0
    invalid = counts.invalid if counts else 0
    seen = accepted + invalid
    if spec is None:
        return EventCoverage(
            name=name,
            line=plan.business_line_of(name),
            planned=False,
            status="unplanned",
            trigger="",
            seen=seen,
            accepted=accepted,
            invalid=invalid,
            invalid_rate=_rate(invalid, seen),
            reasons=_reasons(counts),
            properties=_presence(plan, counts, seen, declared={}, required=()),
        )
    return EventCoverage(
        name=name,
        line=spec.business_line,
        planned=True,
        status=spec.status,
        trigger=spec.trigger,
        seen=seen,
        accepted=accepted,
        invalid=invalid,
        invalid_rate=_rate(invalid, seen),
        reasons=_reasons(counts),
        properties=_presence(plan, counts, seen, declared=spec.properties, required=spec.required),
    )


def build_report(plan: Plan, tally: Tally, scope: Scope) -> CoverageReport:
    """The coverage of `plan` by what `tally` counted."""
    by_line: dict[str, list[EventCoverage]] = {prefix: [] for prefix in plan.business_lines}
    for name in plan.events:
        ev = _event(plan, name, tally.events.get(name))
        by_line.setdefault(ev.line or "", []).append(ev)
    lines = []
    for prefix, events in by_line.items():
        expected = [e for e in events if e.status == "active"]
        seen = sum(e.seen for e in events)
        invalid = sum(e.invalid for e in events)
        line = plan.business_lines.get(prefix)
        lines.append(
            LineCoverage(
                prefix=prefix,
                title=line.title if line is not None else "",
                expected=len(expected),
                expected_seen=sum(1 for e in expected if e.seen),
                coverage=_rate(sum(1 for e in expected if e.seen), len(expected)),
                seen=seen,
                invalid=invalid,
                invalid_rate=_rate(invalid, seen),
                never_seen=tuple(e.name for e in expected if not e.seen),
                events=tuple(events),
            )
        )
    unplanned = sorted(
        (_event(plan, name, counts) for name, counts in tally.events.items() if name not in plan.events),
        key=lambda e: (-e.seen, e.name),
    )
    all_counts = [*tally.events.values()]
    return CoverageReport(
        plan_name=plan.name,
        plan_version=plan.version,
        scope=scope,
        seen=sum(c.accepted + c.invalid for c in all_counts),
        accepted=sum(c.accepted for c in all_counts),
        invalid=sum(c.invalid for c in all_counts),
        expected=sum(line.expected for line in lines),
        expected_seen=sum(line.expected_seen for line in lines),
        lines=tuple(lines),
        unplanned=tuple(unplanned),
        other_types={k: {"accepted": c.accepted, "invalid": c.invalid} for k, c in sorted(tally.types.items())},
        malformed=tally.malformed,
    )


# -- reading a data directory ----------------------------------------------------------------


class _Slim(msgspec.Struct, forbid_unknown_fields=False):
    """An accepted event, decoded only as far as coverage needs: property values stay encoded."""

    type: str
    event_id: str
    event: str | None = None
    properties: dict[str, msgspec.Raw] = msgspec.field(default_factory=dict)


class _SlimBody(msgspec.Struct, forbid_unknown_fields=False):
    e: list[_Slim]
    t: list[int] = msgspec.field(default_factory=list)


_slim_body = msgspec.msgpack.Decoder(_SlimBody)


def _accepted_events(frame: Frame) -> Iterator[tuple[str, str, str | None, Mapping[str, Any], int]]:
    """(type, event id, name, properties, corrected time) of each event in a raw frame."""
    data = _unzstd.decompress(frame.body)
    try:
        body = _slim_body.decode(data)
    except msgspec.ValidationError:  # an event of another shape: read it whole
        full = decode_body(frame)
        for i, event in enumerate(full.events):
            if isinstance(event, Mapping) and isinstance(event.get("event_id"), str):
                props = event.get("properties")
                yield (
                    str(event.get("type")),
                    event["event_id"],
                    event.get("event"),
                    props if isinstance(props, Mapping) else {},
                    full.times[i] if i < len(full.times) else 0,
                )
        return
    times = body.t
    for i, ev in enumerate(body.e):
        yield ev.type, ev.event_id, ev.event, ev.properties, times[i] if i < len(times) else 0


def _raw_tag(properties: Mapping[str, Any]) -> str | None:
    value = properties.get(TEST_TAG)
    if isinstance(value, msgspec.Raw):
        try:
            value = _msgpack.decode(value)
        except msgspec.DecodeError:
            return None
    return value if isinstance(value, str) else None


def tally_data(
    data_dir: Path,
    *,
    since_ms: int | None = None,
    until_ms: int | None = None,
    tag: str | None = None,
) -> Tally:
    """Count every stored event of a data directory in the window (and with the tag), each once."""
    data = DataDir.existing(data_dir)
    lo = since_ms if since_ms is not None else -_FAR
    hi = until_ms if until_ms is not None else _FAR
    scoped = ScopedSeenIds(_FOREVER_S)
    tally = Tally()
    for path in segment_files(data.raw):
        frames, _end = read_frames(path)
        for frame in frames:
            head = frame.head
            if head.get("tmax", hi) < lo or head.get("tmin", lo) >= hi:
                continue
            fresh: list[str] = []
            seen = scoped.of(head_scope(head))
            for kind, eid, name, props, t in _accepted_events(frame):
                if not lo <= t < hi or eid in seen:
                    continue
                fresh.append(eid)
                if tag is not None and _raw_tag(props) != tag:
                    continue
                tally.add(kind, name, tuple(props), None)
            seen.add(fresh, 0)  # ids are unique within a frame: the pipeline deduplicates each request
    for path in segment_files(data.quarantine):
        frames, _end = read_frames(path)
        for frame in frames:
            _tally_quarantine(frame, tally, scoped.of(head_scope(frame.head)), lo=lo, hi=hi, tag=tag)
    return tally


def _tally_quarantine(frame: Frame, tally: Tally, seen: SeenIds, *, lo: int, hi: int, tag: str | None) -> None:
    body = decode_body(frame)
    decoder = _json if frame.head.get("fmt") == "json" else _msgpack
    for i, raw in enumerate(body.events):
        t = body.times[i] if i < len(body.times) else 0
        if not lo <= t < hi or raw == b"":  # b"": a record deleted on request (privacy/operations.py)
            continue
        try:
            event = decoder.decode(raw) if isinstance(raw, bytes) else raw
        except (msgspec.DecodeError, RecursionError, UnicodeError):
            event = None
        eid = event.get("event_id") if isinstance(event, Mapping) else None
        if isinstance(eid, str):
            if eid in seen:  # stored in raw/ (a replay moved it) or quarantined twice
                continue
            seen.add((eid,), 0)
        if tag is not None and test_tag_of(event) != tag:
            continue
        reasons = body.reasons[i] if i < len(body.reasons) else []
        tally.add_event(event, [r for r in reasons if isinstance(r, Mapping)])


def coverage_of_data(
    data_dir: Path,
    plan: Plan,
    *,
    since_ms: int | None = None,
    until_ms: int | None = None,
    tag: str | None = None,
) -> CoverageReport:
    """The coverage of `plan` by the events stored in a data directory."""
    tally = tally_data(data_dir, since_ms=since_ms, until_ms=until_ms, tag=tag)
    return build_report(plan, tally, Scope(str(data_dir), since_ms, until_ms, tag))
