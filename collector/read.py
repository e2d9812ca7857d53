"""Reading stored data back: a person's events, exports, the quarantine and its replay, rebuilds.

Readers never need the server: they read the segments (any process may, at
any time) and bring the catalog up to date first (`Catalog.catch_up`), so what
they print includes everything acknowledged so far.

Every reader deduplicates by event id, so the rare raw duplicate (two
processes storing one retried event at the same instant, docs/collector.md,
"Two processes") never shows.

An event as readers print it is the event as it was sent, with `time` set to
the corrected time and these fields added: `device_time` (the time as sent),
`received_at`, `source` (the write key's or server source's name) and, when
there are any, `flags` (`future`, `clock_skew`, `no_sent_at`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgspec

from maidian.collector.errors import NoSuchPerson
from maidian.collector.identity.graph import IdentityGraph
from maidian.collector.identity.types import PersonId
from maidian.collector.pipeline.dedup import ScopedSeenIds, head_scope
from maidian.collector.pipeline.recovery import load_dedup_state
from maidian.collector.store.catalog import Catalog
from maidian.collector.store.feed import IdentityFeed
from maidian.collector.store.frames import (
    Damage,
    Frame,
    decode_body,
    read_frame_at,
    scan_segment,
    sealed,
    segment_files,
)
from maidian.collector.store.heads import build_accepted_frame
from maidian.collector.store.ids import id_ranges, split_event_id
from maidian.collector.store.log import DataDir, LogWriter, pid_writer_id
from maidian.tracking_plan import Plan, Validator
from maidian.tracking_plan.pii import hash_value

__all__ = [
    "Attribution",
    "NoSuchPerson",
    "PersonView",
    "ReplayReport",
    "event_order",
    "export_events",
    "find_person_events",
    "frame_records",
    "lookup_values",
    "person_events",
    "person_view",
    "quarantine_records",
    "rebuild",
    "replay_quarantine",
    "resolve_person",
    "sdk_drops",
]

_decoder = msgspec.msgpack.Decoder()
_json_decoder = msgspec.json.Decoder()
# Far beyond any window: a reader must never forget an id it has printed.
_FOREVER_S: Final = 1e12


def _records(frame: Frame) -> Iterator[dict[str, Any]]:
    body = decode_body(frame)
    head = frame.head
    for i, raw in enumerate(body.events):
        event = _decoder.decode(raw) if isinstance(raw, bytes) else raw
        if not isinstance(event, dict):
            continue
        record = dict(event)
        record["device_time"] = event.get("time")
        record["time"] = body.times[i] if i < len(body.times) else event.get("time")
        record["received_at"] = head.get("at")
        record["source"] = head.get("src")
        if i in body.flags:
            record["flags"] = body.flags[i]
        yield record


def _catch_up(data: DataDir, plan: Plan | None) -> tuple[Catalog, IdentityFeed]:
    catalog = Catalog(data)
    feed = IdentityFeed.for_plan(data, plan) if plan is not None else IdentityFeed(data, _default_policy())
    catalog.catch_up(feed)
    return catalog, feed


def _default_policy() -> Any:
    from maidian.collector.identity.types import IdentityPolicy

    return IdentityPolicy()


@dataclass(frozen=True, slots=True)
class PersonView:
    """One person's events as the identity graph attributes them, and what that needed.

    `members` are the person's identities (or the one asked for, when the
    graph does not know it); `events` the stored events attributed to the
    person, each once, in (time, source, sequence) order; `shared` the members
    that events attributed to someone else carry too (a branch pad used by
    several tellers): they are not the person's alone, so a deletion keeps
    them in those events and does not suppress them.
    """

    person: PersonId | None
    members: frozenset[tuple[str, str]]
    events: list[dict[str, Any]]
    shared: frozenset[tuple[str, str]]

    @property
    def own(self) -> frozenset[tuple[str, str]]:
        """The members no one else's events carry."""
        return self.members - self.shared


class Attribution:
    """`IdentityGraph.attribute`, remembered per identity set and trust (a person's events share a few sets)."""

    def __init__(self, graph: IdentityGraph) -> None:
        self.graph = graph
        self._known: dict[tuple[bool, tuple[tuple[Any, Any], ...]], PersonId | None] = {}

    def __call__(self, identities: Any, trusted: bool) -> PersonId | None:
        if not isinstance(identities, dict):
            return None
        try:
            key = (trusted, tuple(identities.items()))
            hit = self._known.get(key, _MISSING)
        except TypeError:  # an unhashable value: not cached
            return self.graph.attribute(identities, trusted=trusted)
        if hit is _MISSING:
            hit = self._known[key] = self.graph.attribute(identities, trusted=trusted)
        return hit  # type: ignore[return-value]


_MISSING: Final = object()
_HEX64: Final = re.compile(r"^[0-9a-f]{64}$")


def event_order(record: dict[str, Any]) -> tuple[int, str, int]:
    """(time, source, sequence): events of one millisecond in their SDK's order (`...-9` before `...-10`)."""
    eid = str(record.get("event_id"))
    pair = split_event_id(eid)
    t = record.get("time", 0)
    return (t if isinstance(t, int) else 0, *(pair if pair is not None else (eid, 0)))


def lookup_values(plan: Plan, value: str, identity_type: str | None, pii_key: bytes | None) -> list[tuple[str, str]]:
    """(type, value) pairs to look a typed value up by: as typed, or its keyed hash for the plan's hashed types.

    A value for a type the plan tags `x-pii: hash` is stored as
    HMAC-SHA256(key, value) in hex: a support agent or an officer types the
    raw mobile number, and it is hashed with the key the apps hashed with
    (`MAIDIAN_PII_KEY`). A value already in hash form is used as it is.
    """
    types = [identity_type] if identity_type else list(plan.identities)
    out = []
    for t in types:
        spec = plan.identities.get(t)
        if spec is None:
            continue
        if spec.pii == "hash":
            if _HEX64.match(value):
                out.append((t, value))
            elif pii_key:
                out.append((t, hash_value(value, pii_key)))
        else:
            out.append((t, value))
    return out


def resolve_person(
    catalog: Catalog, graph: IdentityGraph, value: str, identity_type: str | None
) -> tuple[PersonId | None, frozenset[tuple[str, str]]]:
    """The person owning an identity value (of this type, if given), and their identities."""
    person = graph.find(value, identity_type)
    if person is not None:
        members = {(t, v) for t, values in graph.identities_of(person).items() for v in values}
    else:
        types = [identity_type] if identity_type else catalog.identity_types_of(value)
        members = {(t, value) for t in types}
    return person, frozenset(members)


def person_view(
    data: DataDir, catalog: Catalog, graph: IdentityGraph, value: str, identity_type: str | None = None
) -> PersonView:
    """The events attributed to the person who owns `value` (see `PersonView`).

    Reads only the frames the catalog's identity index lists for the person's
    identities: the cost follows the person's own data, whatever others send.
    """
    person, members = resolve_person(catalog, graph, value, identity_type)
    attribute = Attribution(graph)
    out: dict[tuple[str, str], dict[str, Any]] = {}
    shared: set[tuple[str, str]] = set()
    for segment, offset in catalog.frames_of(set(members)):
        frame = read_frame_at(data.raw / segment, offset)
        if frame is None:
            continue
        trusted = bool(frame.head.get("trusted"))
        scope = head_scope(frame.head)
        for record in _records(frame):
            ids = record.get("identities")
            if not isinstance(ids, dict):
                continue
            carried = {(t, v) for t, v in ids.items() if (t, v) in members}
            if not carried:
                continue
            if attribute(ids, trusted) != person:
                shared |= carried
                continue
            eid = record.get("event_id")
            if isinstance(eid, str):
                out.setdefault((scope, eid), record)
    events = sorted(out.values(), key=event_order)
    return PersonView(person, members, events, frozenset(shared))


def person_events(
    data_dir: Path,
    value: str,
    identity_type: str | None = None,
    *,
    plan: Plan | None = None,
    pii_key: bytes | None = None,
) -> list[dict[str, Any]]:
    """Every stored event attributed to the person that owns this identity, in (time, source, sequence) order.

    Includes events from before the person logged in: they carry only the
    anonymous id, which the identity graph ties to the person. Leaves out
    the events of others that carry one of the person's identities (a second
    teller on a shared pad, a link the graph refused): `IdentityGraph.attribute`
    decides each event. With the plan and `pii_key`, a raw value of a hashed
    identity type (a mobile number) is hashed first (`lookup_values`).
    """
    return find_person_events(data_dir, value, identity_type, plan=plan, pii_key=pii_key).events


def find_person_events(
    data_dir: Path,
    value: str,
    identity_type: str | None = None,
    *,
    plan: Plan | None = None,
    pii_key: bytes | None = None,
) -> PersonView:
    """`person_events` with the person it found (for the audit log); NoSuchPerson when nothing is stored."""
    data = DataDir.existing(data_dir)
    catalog, feed = _catch_up(data, plan)
    try:
        if plan is not None and pii_key:
            for t, v in lookup_values(plan, value, identity_type, pii_key):
                if feed.graph.person_of(t, v) is not None:
                    value, identity_type = v, t
                    break
        view = person_view(data, catalog, feed.graph, value, identity_type)
        if not view.events:
            raise NoSuchPerson("no stored event carries that identity")
        return view
    finally:
        catalog.close()
        feed.close()


def export_events(
    data_dir: Path,
    *,
    since_ms: int | None = None,
    until_ms: int | None = None,
    quarantined: bool = False,
    progress: Callable[[int, int], None] | None = None,
    accepted: bool = True,
    on_damage: Callable[[str, Damage], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """Every accepted event (and quarantined ones when asked), in log order, deduplicated.

    `accepted=False` leaves the accepted events out (only quarantined ones).
    A damaged frame is skipped and the frames after it are read
    (store/frames.py); `on_damage(log, damage)` hears of each one, and of the
    tail of a segment no writer appends to any more.

    `since_ms`/`until_ms` bound the corrected time (inclusive, exclusive).
    Frames whose time range misses the bounds are skipped without
    decompressing them. `progress(done_bytes, total_bytes)` is called as the
    segments are read.
    """
    data = DataDir.existing(data_dir)
    logs = ([("raw", data.raw)] if accepted else []) + ([("quarantine", data.quarantine)] if quarantined else [])
    paths = [(name, p) for name, d in logs for p in segment_files(d)]
    total = sum(p.stat().st_size for _n, p in paths)
    done = 0
    scoped = ScopedSeenIds(_FOREVER_S)
    lo = since_ms if since_ms is not None else -(1 << 62)
    hi = until_ms if until_ms is not None else 1 << 62
    for name, path in paths:
        scanned = scan_segment(path)
        if on_damage is not None:
            tail = [scanned.tail] if scanned.tail is not None and sealed(path) else []
            for damage in [*scanned.damaged, *tail]:
                on_damage(name, damage)
        for frame in scanned.frames:
            done_here = frame.end
            if progress is not None:
                progress(done + done_here, total)
            if name == "raw":
                if frame.head.get("tmax", hi) < lo or frame.head.get("tmin", lo) >= hi:
                    continue
                seen = scoped.of(head_scope(frame.head))
                for record in _records(frame):
                    eid = record.get("event_id")
                    if not (lo <= record["time"] < hi) or not isinstance(eid, str) or eid in seen:
                        continue
                    seen.add((eid,), 0)
                    yield record
            else:
                yield from _quarantine_records(frame, lo, hi)
        done += path.stat().st_size
    if progress is not None:
        progress(total, total)


def _quarantine_records(frame: Frame, lo: int, hi: int) -> Iterator[dict[str, Any]]:
    body = decode_body(frame)
    fmt = frame.head.get("fmt", "msgpack")
    for i, raw in enumerate(body.events):
        t = body.times[i] if i < len(body.times) else 0
        if not lo <= t < hi or raw == b"":  # b"": a record deleted on request (privacy/operations.py)
            continue
        yield {
            "quarantined": True,
            "time": t,
            "received_at": frame.head.get("at"),
            "source": frame.head.get("src"),
            "reasons": body.reasons[i] if i < len(body.reasons) else [],
            "event": _decode_quarantined(raw, fmt),
        }


def _decode_quarantined(raw: bytes, fmt: str) -> Any:
    try:
        value = (_decoder if fmt == "msgpack" else _json_decoder).decode(raw)
        msgspec.json.encode(value)  # printable as JSON?
        return value
    except (msgspec.DecodeError, msgspec.EncodeError, TypeError, ValueError, RecursionError, UnicodeError):
        return {"undecodable_base64": _b64(raw)}


def _b64(raw: bytes) -> str:
    import base64

    return base64.b64encode(raw).decode()


def sdk_drops(data_dir: Path) -> list[tuple[str, str, int]]:
    """(source, reason, count): what each sender reported it dropped, the largest count per reason."""
    data = DataDir.existing(data_dir)
    catalog = Catalog(data)
    try:
        catalog.catch_up()
        return catalog.sdk_drops()
    finally:
        catalog.close()


def quarantine_records(data_dir: Path, rule: str | None = None) -> list[dict[str, Any]]:
    """The quarantine index: one summary per quarantined event (no event values)."""
    data = DataDir.existing(data_dir)
    catalog = Catalog(data)
    try:
        catalog.catch_up()
        return list(catalog.quarantined(rule))
    finally:
        catalog.close()


@dataclass(frozen=True, slots=True)
class ReplayReport:
    """What a replay did: events moved into the raw log, already there, still invalid."""

    moved: int
    duplicate: int
    still_invalid: int
    already_replayed: int


def replay_quarantine(
    data_dir: Path, plan: Plan, *, window_s: float = 8 * 86_400, now: Callable[[], float] = time.time
) -> ReplayReport:
    """Re-validate quarantined events against `plan`; move the ones that now pass into the raw log, once.

    Once: a moved event's quarantine position is recorded in its raw frame's
    head (and so in the catalog's `replayed`), and its id is then seen, so a
    second replay moves nothing. The event keeps its original receive time
    and source; a `trigger: server` event still needs its original sender to
    have been a signed source.
    """
    from maidian.collector.pipeline.decode import decode_event
    from maidian.collector.pipeline.judge import Judge

    data = DataDir.existing(data_dir)
    catalog = Catalog(data)
    try:
        catalog.catch_up()
        pending = [r for r in catalog.quarantined() if not r["replayed"]]
        already = sum(1 for r in catalog.quarantined() if r["replayed"])
    finally:
        catalog.close()
    now_ms = int(now() * 1000)
    state = load_dedup_state(data, None, window_s, now_ms)
    judge = Judge(plan, Validator(plan), _limits(), window_s=window_s, future_tolerance_s=3600)
    writer_id = pid_writer_id("r")
    writer = LogWriter(data.raw, writer_id)
    writer.open()
    moved = duplicate = invalid = 0
    try:
        by_frame: dict[tuple[str, int], list[int]] = {}
        for r in pending:
            by_frame.setdefault((r["segment"], r["offset"]), []).append(r["index"])
        for (segment, offset), indexes in sorted(by_frame.items()):
            frame = read_frame_at(data.quarantine / segment, offset)
            if frame is None:
                continue
            body = decode_body(frame)
            head = frame.head
            fmt = head.get("fmt", "msgpack")
            stored: list[tuple[dict[str, Any], Any, int, list[str] | None]] = []
            ids: list[str] = []
            refs: list[list[Any]] = []
            seen = state.seen.of(head_scope(head))
            for idx in indexes:
                raw = msgspec.Raw(body.events[idx])
                event, problem = decode_event(raw, fmt, judge.limits)
                if problem is not None or not isinstance(event, dict):
                    invalid += 1
                    continue
                batch = _one_event_batch(raw, fmt)
                verdict = judge.judge(batch, trusted=bool(head.get("trusted")), received_ms=int(head.get("at", now_ms)))
                if not verdict.valid:
                    invalid += 1
                    continue
                _i, ev, _raw, _corrected, flags = verdict.valid[0]
                corrected = body.times[idx] if idx < len(body.times) else ev["time"]
                eid = ev["event_id"]
                if eid in seen or eid in ids:
                    duplicate += 1
                    refs.append([segment, offset, idx])  # done: the event is in the raw log already
                    continue
                encoded = raw if fmt == "msgpack" else msgspec.Raw(msgspec.msgpack.encode(ev))
                stored.append((ev, encoded, corrected, flags))
                ids.append(eid)
                refs.append([segment, offset, idx])
            if not refs:
                continue
            kept: tuple[str, ...] = ("at", "src", "kind", "trusted", "sent_at", "lib", "lib_version")
            new_head: dict[str, Any] = {k: head[k] for k in kept if k in head}
            new_head["rid"] = f"replay:{segment}:{offset}"
            new_head["plan_version"] = plan.version
            new_head["replay"] = refs
            ranges, opaque = id_ranges(ids)
            writer.append_sync(build_accepted_frame(new_head, stored, ranges, opaque))
            seen.add(ids, now_ms)
            moved += len(stored)
    finally:
        writer.close_sync()
        (data.raw / f"{writer_id}.lock").unlink(missing_ok=True)  # a one-off writer id
    catalog = Catalog(data)
    try:
        catalog.catch_up()
    finally:
        catalog.close()
    return ReplayReport(moved=moved, duplicate=duplicate, still_invalid=invalid, already_replayed=already)


def _limits() -> Any:
    from maidian.tracking_plan.envelope import DEFAULT_LIMITS

    return DEFAULT_LIMITS


def _one_event_batch(raw: msgspec.Raw, fmt: str) -> Any:
    from maidian.collector.pipeline.decode import Batch

    return Batch(events=[raw], format=fmt, sent_at=None)  # type: ignore[arg-type]


def rebuild(data_dir: Path, plan: Plan | None = None) -> dict[str, int]:
    """Delete every derived file (catalog, dedup snapshots, identity graph) and rebuild from the logs."""
    data = DataDir.existing(data_dir)
    for path in (data.catalog, data.identity):
        for suffix in ("", "-wal", "-shm"):
            p = path.with_name(path.name + suffix)
            if p.exists():
                p.unlink()
    if data.state.is_dir():
        for snap in data.state.glob("dedup-*.snap"):
            snap.unlink()
    catalog, feed = _catch_up(data, plan)
    try:
        counts = catalog.counts()
        return {
            "accepted": sum(n for (_name, outcome), n in counts.items() if outcome == "accepted"),
            "quarantined": sum(n for (_name, outcome), n in counts.items() if outcome == "quarantined"),
            "refusals": len(catalog.refusals()),
        }
    finally:
        catalog.close()
        feed.close()


def frame_records(frame: Frame) -> Iterator[dict[str, Any]]:
    """The events of one raw-log frame as readers print them (see the module docstring)."""
    return _records(frame)
