"""The lake writer: accepted events from the raw log into typed Parquet, one pass at a time.

A pass (`build`) brings the catalog and the identity graph up to date, reads
every raw-log frame after the checkpoint, and writes:

- `events` and `profiles` files under `event_date=YYYY-MM-DD/` (the date of
  the event's corrected time in the lake's time zone), one file per date a
  pass touches, so a late event (an offline device) lands in its own date;
- the `identities` table: every identity the lake has seen, with the person
  the identity graph puts it in now.

Promises:
- each row carries `identity_key`, the key of the identity through which the
  graph attributes the event to a person (`IdentityGraph.attribute`: the
  event's highest-priority identity the graph knows). Readers resolve the
  person at query time, `identity_key` -> `identities.person_id`, so when the
  graph later merges two histories (an anonymous journey and a login) every
  earlier row follows without being rewritten (docs/decisions.md, "Lake:
  persons resolved at query time"). `person_id_at_write` keeps the person as
  the pass saw it, for audits and for the comparison.
- after a pass, `identities` holds the graph's current person for every
  identity of every cluster the pass touched; identities of clusters it did
  not touch cannot have moved (only observations move them, and the pass took
  every new observation in). A new identity policy re-resolves them all.
- events are deduplicated by event id within a pass and within a partition
  when it is compacted (a raw duplicate stores the same corrected time).
- a pass only reads frames the catalog had indexed when it started, so every
  identity it attributes is already in the graph.
- crash-safe at any instant (layout.py); the next pass resumes from the
  checkpoint and writes nothing twice.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import time
import zoneinfo
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import zstandard

from maidian.collector.errors import CollectorError
from maidian.collector.identity import IdentityGraph
from maidian.collector.lake.parquet import _ORDER, _Event, _Rows, _Tables, write_table
from maidian.collector.pipeline.dedup import head_scope
from maidian.collector.store.catalog import Catalog, IdentityFeed
from maidian.collector.store.frames import scan_frames, segment_files
from maidian.collector.store.log import DataDir, sync_dir
from maidian.tracking_plan import Plan

from .layout import LakeDir, LakeState, locked, tidy
from .schema import schema_for

__all__ = ["Built", "LakeError", "build", "follow", "identity_key", "write_table"]

# Rows gathered before they are written: about 200 MB of Python objects at most.
BATCH_ROWS: Final = 250_000
# Files a partition may hold before a pass compacts it into one.
COMPACT_FILES: Final = 8
_HOUR_MS: Final = 3_600_000
_DAY_MS: Final = 86_400_000


class LakeError(CollectorError):
    """The lake cannot be built or read as asked (no lake, a broken file, an unknown time zone)."""


def identity_key(identity_type: str, value: str) -> int:
    """The lake's 64-bit key of an identity: the first 8 bytes of BLAKE2b of `type 0x1f value`, signed."""
    digest = hashlib.blake2b(f"{identity_type}\x1f{value}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


@dataclass(frozen=True, slots=True)
class Built:
    """What one pass did."""

    events: int
    profiles: int
    duplicates: int
    files: int
    partitions: list[str]
    compacted: int
    identities: int
    identities_resolved: int
    seconds: float
    frames: int = 0
    read_bytes: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "profiles": self.profiles,
            "duplicates": self.duplicates,
            "files": self.files,
            "partitions": self.partitions,
            "compacted": self.compacted,
            "identities": self.identities,
            "identities_resolved": self.identities_resolved,
            "frames": self.frames,
            "read_bytes": self.read_bytes,
            "seconds": round(self.seconds, 3),
        }


class _Body(msgspec.Struct):
    e: list[_Event]
    t: list[int]
    f: dict[str, list[str]] = {}


_body_decoder: Final = msgspec.msgpack.Decoder(_Body)
_payload_decoder: Final = msgspec.msgpack.Decoder(tuple[int, dict[str, Any], bytes])
_zstd: Final = zstandard.ZstdDecompressor()


class _Attribution:
    """Which identity of an event the graph attributes it through; cached per identity set for the pass."""

    def __init__(self, graph: IdentityGraph) -> None:
        self.graph = graph
        self.priorities = graph.policy.priorities
        # (signed sender?, the event's identities) -> (identity key, person)
        self.cache: dict[tuple[bool, tuple[tuple[str, Any], ...]], tuple[int, str | None]] = {}
        # (type, value) -> the earliest corrected time this pass saw it at
        self.seen: dict[tuple[str, str], int] = {}

    def of(self, identities: dict[str, Any], when: int, trusted: bool) -> tuple[int, str | None]:
        items = tuple(identities.items())
        found = self.cache.get((trusted, items))
        if found is None:
            found = self.cache[trusted, items] = self._resolve(identities, trusted)
        seen = self.seen
        for t, v in items:
            first = seen.get((t, v))
            if first is None or when < first:
                seen[t, v] = when
        return found

    def _resolve(self, identities: Mapping[str, Any], trusted: bool) -> tuple[int, str | None]:
        clean = {str(t): str(v) for t, v in identities.items()}
        order = sorted(clean, key=lambda t: (self.priorities.get(t, 100), t))
        person = self.graph.attribute(clean, trusted=trusted)
        if person is not None:
            for t in order:
                if self.graph.person_of(t, clean[t]) == person:
                    return identity_key(t, clean[t]), person
        if not order:
            return 0, None
        return identity_key(order[0], clean[order[0]]), person


# -- writing Parquet -----------------------------------------------------------------------------------


# -- the pass ------------------------------------------------------------------------------------------


class _Zone:
    """Dates of epoch-ms times in one time zone, the offset cached per hour."""

    def __init__(self, name: str) -> None:
        try:
            self.zone = zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise LakeError(f"unknown time zone {name!r}") from exc
        self.offsets: dict[int, int] = {}

    def day(self, ms: int) -> int:
        hour = ms // _HOUR_MS
        off = self.offsets.get(hour)
        if off is None:
            when = dt.datetime.fromtimestamp(hour * 3600, dt.UTC).astimezone(self.zone)
            delta = when.utcoffset()
            off = self.offsets[hour] = int(delta.total_seconds() * 1000) if delta is not None else 0
        return (ms + off) // _DAY_MS


def _date(day: int) -> str:
    return (dt.date(1970, 1, 1) + dt.timedelta(days=day)).isoformat()


class _Pass:
    def __init__(self, data: DataDir, lake: LakeDir, plan: Plan, state: LakeState, graph: IdentityGraph) -> None:
        self.data = data
        self.lake = lake
        self.state = state
        self.tables = _Tables(plan, schema_for(plan))
        self.attribution = _Attribution(graph)
        self.zone = _Zone(state.timezone)
        self.number = state.passes + 1
        # Rows waiting to be written, per (table, date): a date's rows go out together, in as few files as fit.
        self.pending: dict[tuple[bool, int], _Rows] = {}
        self.pending_rows = 0
        # (sender scope, event id): an id repeats only within its sender's scope (pipeline/dedup.py)
        self.ids: set[tuple[str, str]] = set()
        self.counts = {"events": 0, "profiles": 0, "duplicates": 0, "files": 0, "frames": 0, "bytes": 0}
        self.touched: set[str] = set()
        self.file_numbers: dict[str, int] = {}

    def take(self, limits: Mapping[str, int]) -> dict[str, int]:
        offsets = dict(self.state.offsets)
        for path in segment_files(self.data.raw):
            start = offsets.get(path.name, 0)
            limit = limits.get(path.name, 0)
            if limit <= start:
                continue
            with open(path, "rb") as f:
                f.seek(start)
                data = f.read(limit - start)
            frames, end = scan_frames(data, path.name, start)
            self.counts["bytes"] += end - start
            for frame in frames:
                self._frame(frame.head, frame.body)
                if self.pending_rows >= BATCH_ROWS:
                    self.flush(BATCH_ROWS // 2)
            offsets[path.name] = end
        self.flush(0)
        return offsets

    def _frame(self, head: dict[str, Any], packed: bytes) -> None:
        self.counts["frames"] += 1
        raw = _zstd.decompress(packed)
        try:
            body = _body_decoder.decode(raw)
        except msgspec.ValidationError:
            body = _lenient_body(raw)
        received = int(head.get("at", 0))
        source = str(head.get("src", ""))
        scope = head_scope(head)
        trusted = bool(head.get("trusted"))
        ids = self.ids
        attribution = self.attribution
        day = self.zone.day
        times = body.t
        flags = body.f
        pending = self.pending
        added = 0
        for i, event in enumerate(body.e):
            eid = event.event_id
            if (scope, eid) in ids:
                self.counts["duplicates"] += 1
                continue
            ids.add((scope, eid))
            t = times[i] if i < len(times) else event.time
            key, person = attribution.of(event.identities, t, trusted)
            f = flags.get(str(i)) if flags else None
            d = day(t)
            profile = event.type.startswith("profile_")
            row = (event, t, received, source, ",".join(f) if f else None, key, person, d)
            bucket = pending.get((profile, d))
            if bucket is None:
                bucket = pending[profile, d] = _Rows()
            bucket.groups.setdefault(event.type if profile else event.event or event.type, []).append(row)
            bucket.count += 1
            added += 1
        self.pending_rows += added

    def flush(self, keep_rows: int) -> None:
        """Write the largest pending dates until at most `keep_rows` rows wait."""
        for key in sorted(self.pending, key=lambda k: self.pending[k].count, reverse=True):
            if self.pending_rows <= keep_rows:
                break
            rows = self.pending.pop(key)
            self.pending_rows -= rows.count
            if not rows.count:
                continue
            profile, d = key
            table_dir = self.lake.profiles if profile else self.lake.events
            date = _date(d)
            partition = table_dir / f"event_date={date}"
            partition.mkdir(parents=True, exist_ok=True)
            n = self.file_numbers.get(str(partition), 0) + 1
            self.file_numbers[str(partition)] = n
            table = self.tables.profiles(rows) if profile else self.tables.events(rows)
            write_table(table, partition / f"part-{self.number:08d}-{n:04d}.parquet")
            sync_dir(partition)
            self.counts["files"] += 1
            self.counts["profiles" if profile else "events"] += rows.count
            self.touched.add(f"{table_dir.name}/event_date={date}")
        if keep_rows == 0:
            self.pending.clear()
            self.pending_rows = 0


def _lenient_body(raw: bytes) -> _Body:
    """A body whose events do not all fit `_Event`: keep the ones that do (accepted events always should)."""
    loose = msgspec.msgpack.decode(raw)
    events = []
    for e in loose.get("e", []):
        try:
            events.append(msgspec.convert(e, _Event))
        except msgspec.ValidationError:
            events.append(_Event(type="invalid", event_id=""))
    return _Body(e=events, t=list(loose.get("t", [])), f={str(k): v for k, v in (loose.get("f") or {}).items()})


# -- identities ----------------------------------------------------------------------------------------

_IDENTITIES_SCHEMA: Final = pa.schema(
    [
        ("identity_key", pa.int64()),
        ("person_id", pa.string()),
        ("person_key", pa.int64()),
        ("identity_type", pa.string()),
        ("value", pa.string()),
        ("valid_from", pa.timestamp("ms")),
        ("valid_to", pa.timestamp("ms")),
    ]
)


def read_identities(lake: LakeDir) -> dict[tuple[str, str], list[Any]]:
    """(type, value) -> [key, person, valid_from ms]: the lake's identities table as it stands."""
    if not lake.identities.exists():
        return {}
    table = pq.read_table(lake.identities)
    keys = table["identity_key"].to_pylist()
    persons = table["person_id"].to_pylist()
    types = table["identity_type"].to_pylist()
    values = table["value"].to_pylist()
    since = table["valid_from"].cast(pa.int64()).to_pylist()
    return {(t, v): [k, p, s] for k, p, t, v, s in zip(keys, persons, types, values, since, strict=True)}


def _person_key(person: str) -> int:
    """A person's 64-bit key: what reports group and join by (8 bytes instead of the id's string)."""
    digest = hashlib.blake2b(person.encode(), digest_size=8, person=b"maidian-person").digest()
    return int.from_bytes(digest, "little", signed=True)


def write_identities(lake: LakeDir, known: Mapping[tuple[str, str], list[Any]]) -> None:
    rows = sorted(known.items(), key=lambda kv: kv[1][0])
    table = pa.Table.from_arrays(
        [
            pa.array([r[1][0] for r in rows], pa.int64()),
            pa.array([r[1][1] for r in rows], pa.string()),
            pa.array([None if r[1][1] is None else _person_key(r[1][1]) for r in rows], pa.int64()),
            pa.array([r[0][0] for r in rows], pa.string()),
            pa.array([r[0][1] for r in rows], pa.string()),
            pa.array([r[1][2] for r in rows], pa.timestamp("ms")),
            pa.nulls(len(rows), pa.timestamp("ms")),
        ],
        schema=_IDENTITIES_SCHEMA,
    )
    tmp = lake.identities.with_name(lake.identities.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd")
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, lake.identities)
    sync_dir(lake.root)


def _resolve(
    known: dict[tuple[str, str], list[Any]],
    seen: Mapping[tuple[str, str], int],
    graph: IdentityGraph,
    *,
    everything: bool,
) -> int:
    """Bring `known` up to date with the graph for the clusters this pass touched; the count re-resolved."""
    touched: set[str | None] = set()
    for pair, first in seen.items():
        entry = known.get(pair)
        if entry is None:
            known[pair] = [identity_key(*pair), None, first]
        else:
            touched.add(entry[1])
            entry[2] = min(entry[2], first)
    person_of = graph.person_of
    for pair in seen:
        person = person_of(*pair)
        touched.add(person)
        known[pair][1] = person
    resolved = len(seen)
    touched.discard(None)
    for pair, entry in known.items():
        if (everything or entry[1] in touched) and pair not in seen:
            entry[1] = person_of(*pair)
            resolved += 1
    return resolved


# -- compaction ----------------------------------------------------------------------------------------


def _dedup(table: pa.Table) -> pa.Table:
    """One row per (sender, event id): an id repeats only within its sender's scope."""
    ids = table["event_id"]
    if pc.count_distinct(ids).as_py() == table.num_rows:
        return table
    sources = table["source"].to_pylist() if "source" in table.column_names else [None] * table.num_rows
    first: dict[tuple[object, str], int] = {}
    for i, eid in enumerate(ids.to_pylist()):
        first.setdefault((sources[i], eid), i)
    return table.take(pa.array(sorted(first.values()), pa.int64()))


def compact_partition(lake: LakeDir, state: LakeState, partition: Path, number: int) -> int:
    """Rewrite a partition's files as one, sorted and deduplicated; the files replaced."""
    files = lake.files(partition)
    if len(files) < 2:
        return 0
    tables = [pq.read_table(f) for f in files]
    table = pa.concat_tables(tables, promote_options="permissive").unify_dictionaries().combine_chunks()
    table = _dedup(table).sort_by(_ORDER)
    output = partition / f"compact-{number:08d}.parquet"
    tmp = output.with_name(output.name + ".tmp")
    write_table(table, tmp)
    state.compacting = {
        "output": str(output.relative_to(lake.root)),
        "replaces": [str(f.relative_to(lake.root)) for f in files if f != output],
    }
    state.save(lake)
    os.replace(tmp, output)
    sync_dir(partition)
    for f in files:
        if f != output:
            f.unlink()
    sync_dir(partition)
    state.compacting = None
    state.save(lake)
    return len(files)


# -- the entry points ----------------------------------------------------------------------------------


def _policy_of(graph: IdentityGraph) -> str:
    p = graph.policy
    return json.dumps(
        {
            "unique": sorted(p.unique_types),
            "priorities": sorted(p.priorities.items()),
            "devices": p.max_devices_per_login,
            "one_login": p.one_login_per_anonymous,
            "key": hashlib.sha256(p.person_id_key).hexdigest(),
        },
        sort_keys=True,
    )


def build(
    data_dir: Path,
    plan: Plan,
    *,
    timezone: str | None = None,
    compact_files: int = COMPACT_FILES,
    compact_all: bool = False,
    full: bool = False,
) -> Built:
    """One lake pass over a data directory (`maidian lake build`); see the module docstring."""
    started = time.perf_counter()
    data = DataDir(Path(data_dir))
    if not data.raw.is_dir():
        raise LakeError(f"{data_dir}: not a maidian data directory (no raw/ in it)")
    lake = LakeDir.of(data.root)
    with locked(lake):
        if full:
            _wipe(lake)
        state = LakeState.load(lake)
        if timezone is not None and state.passes and timezone != state.timezone:
            raise LakeError(
                f"the lake is partitioned in {state.timezone}; rebuild it with --full to change the time zone"
            )
        if timezone is not None:
            state.timezone = timezone
        tidy(lake, state)
        limits = {p.name: p.stat().st_size for p in segment_files(data.raw)}
        catalog = Catalog(data)
        feed = IdentityFeed.for_plan(data, plan)
        try:
            catalog.catch_up(feed)
            graph = feed.graph
            run = _Pass(data, lake, plan, state, graph)
            offsets = run.take(limits)
            known = read_identities(lake)
            policy = _policy_of(graph)
            resolved = _resolve(known, run.attribution.seen, graph, everything=policy != state.policy)
            write_identities(lake, known)
        finally:
            catalog.close()
            feed.close()
        state.offsets = offsets
        state.passes = run.number
        state.policy = policy
        state.save(lake)
        compacted = 0
        for table in lake.tables():
            for partition in lake.partitions(table):
                touched = f"{table.name}/{partition.name}" in run.touched
                count = len(lake.files(partition))
                if count > 1 and (compact_all or (touched and count > compact_files)):
                    compacted += compact_partition(lake, state, partition, run.number)
    return Built(
        events=run.counts["events"],
        profiles=run.counts["profiles"],
        duplicates=run.counts["duplicates"],
        files=run.counts["files"],
        partitions=sorted(run.touched),
        compacted=compacted,
        identities=len(known),
        identities_resolved=resolved,
        seconds=time.perf_counter() - started,
        frames=run.counts["frames"],
        read_bytes=run.counts["bytes"],
    )


def _wipe(lake: LakeDir) -> None:
    import shutil

    for table in lake.tables():
        shutil.rmtree(table, ignore_errors=True)
    for path in (lake.identities, lake.state):
        path.unlink(missing_ok=True)


def follow(
    data_dir: Path,
    plan: Plan,
    *,
    interval_s: float = 30.0,
    timezone: str | None = None,
    stop: Callable[[], bool] = lambda: False,
    report: Callable[[Built], None] | None = None,
    sleep: Callable[[float], object] = time.sleep,
) -> int:
    """Run a pass every `interval_s` until `stop()` (`maidian lake follow`); the number of passes run.

    With the default 30 s, an event is queryable at most about a minute after
    it was acknowledged (T+0): half a minute of waiting, plus the pass.
    """
    passes = 0
    while not stop():
        built = build(data_dir, plan, timezone=timezone)
        passes += 1
        if report is not None:
            report(built)
        if stop():
            break
        sleep(interval_s)
    return passes


def lake_files(lake: LakeDir) -> Iterable[Path]:
    """Every Parquet file of the lake's event and profile tables."""
    for table in lake.tables():
        for partition in lake.partitions(table):
            yield from lake.files(partition)


__all__ += ["compact_partition", "lake_files", "read_identities", "write_identities"]
