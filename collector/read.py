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

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgspec

from maidian.collector.errors import CollectorError, NoSuchPerson
from maidian.collector.pipeline.dedup import SeenIds
from maidian.collector.pipeline.recovery import load_dedup_state
from maidian.collector.store.catalog import Catalog, IdentityFeed
from maidian.collector.store.frames import Frame, decode_body, read_frame_at, read_frames, segment_files
from maidian.collector.store.heads import build_accepted_frame
from maidian.collector.store.ids import id_ranges
from maidian.collector.store.log import DataDir, LogWriter, pid_writer_id
from maidian.tracking_plan import Plan, Validator

__all__ = [
    "NoSuchPerson",
    "ReplayReport",
    "export_events",
    "person_events",
    "quarantine_records",
    "rebuild",
    "replay_quarantine",
    "sdk_drops",
]

_decoder = msgspec.msgpack.Decoder()
_json_decoder = msgspec.json.Decoder()
# Far beyond any window: a reader must never forget an id it has printed.
_FOREVER_S: Final = 1e12


def _open(data_dir: Path) -> DataDir:
    data = DataDir(Path(data_dir))
    if not data.raw.is_dir():
        raise CollectorError(f"{data_dir}: not a maidian data directory (no raw/ in it)")
    return data


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


def person_events(
    data_dir: Path, value: str, identity_type: str | None = None, *, plan: Plan | None = None
) -> list[dict[str, Any]]:
    """Every stored event of the person that owns this identity, ordered by (corrected) time.

    Includes events from before the person logged in: they carry only the
    anonymous id, which the identity graph ties to the person.
    """
    data = _open(data_dir)
    catalog, feed = _catch_up(data, plan)
    try:
        graph = feed.graph
        person = graph.find(value, identity_type)
        if person is not None:
            members = {(t, v) for t, values in graph.identities_of(person).items() for v in values}
        else:
            types = [identity_type] if identity_type else catalog.identity_types_of(value)
            members = {(t, value) for t in types}
        if not members:
            raise NoSuchPerson("no stored event carries that identity")
        out: dict[str, dict[str, Any]] = {}
        for segment, offset in catalog.frames_of(members):
            frame = read_frame_at(data.raw / segment, offset)
            if frame is None:
                continue
            for record in _records(frame):
                ids = record.get("identities")
                if not isinstance(ids, dict) or not any((t, v) in members for t, v in ids.items()):
                    continue
                eid = record.get("event_id")
                if isinstance(eid, str) and eid not in out:
                    out[eid] = record
        if not out:
            raise NoSuchPerson("no stored event carries that identity")
        return sorted(out.values(), key=lambda r: (r.get("time", 0), str(r.get("event_id"))))
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
) -> Iterator[dict[str, Any]]:
    """Every accepted event (and quarantined ones when asked), in log order, deduplicated.

    `accepted=False` leaves the accepted events out (only quarantined ones).

    `since_ms`/`until_ms` bound the corrected time (inclusive, exclusive).
    Frames whose time range misses the bounds are skipped without
    decompressing them. `progress(done_bytes, total_bytes)` is called as the
    segments are read.
    """
    data = _open(data_dir)
    logs = ([("raw", data.raw)] if accepted else []) + ([("quarantine", data.quarantine)] if quarantined else [])
    paths = [(name, p) for name, d in logs for p in segment_files(d)]
    total = sum(p.stat().st_size for _n, p in paths)
    done = 0
    seen = SeenIds(_FOREVER_S)
    lo = since_ms if since_ms is not None else -(1 << 62)
    hi = until_ms if until_ms is not None else 1 << 62
    for name, path in paths:
        frames, _end = read_frames(path)
        for frame in frames:
            done_here = frame.end
            if progress is not None:
                progress(done + done_here, total)
            if name == "raw":
                if frame.head.get("tmax", hi) < lo or frame.head.get("tmin", lo) >= hi:
                    continue
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
    data = _open(data_dir)
    catalog = Catalog(data)
    try:
        catalog.catch_up()
        return catalog.sdk_drops()
    finally:
        catalog.close()


def quarantine_records(data_dir: Path, rule: str | None = None) -> list[dict[str, Any]]:
    """The quarantine index: one summary per quarantined event (no event values)."""
    data = _open(data_dir)
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

    data = _open(data_dir)
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
                if eid in state.seen or eid in ids:
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
            state.seen.add(ids, now_ms)
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
    data = _open(data_dir)
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
