"""The catalog: state derived from the logs, kept in SQLite for the read side.

`catalog.sqlite` holds what readers need without scanning every segment:

- `progress`: how far each segment of each log has been indexed (the catalog's
  position in the log; `lag_bytes` is what remains);
- `identity_frames`: for each identity (type, value), the raw-log frames that
  carry it, so `maidian events --person` reads only that person's frames;
- `observations`: one identity observation per distinct identity set per
  frame (frames.py), with the frame's receive time and position, the identity
  graph's input, fed to it in order (`observation_of` gives each its order
  time: docs/identity.md, "Trust"); a deletion replaces the rows of the
  frames it rewrote with their new heads';
- `refusals`: the identity links the graph refused, with rule and type only;
- `counts`: events per name and outcome (coverage);
- `quarantine` and `replayed`: every quarantined event and which of them a
  replay has moved into the raw log;
- `damaged`: frames that failed their checks while being indexed or when a
  writer recovered its segments (frames.py, "Damage"), with the event ids
  they held as far as can be told; skipped, never fatal;
- `sdk_drops`: the largest loss count each sender reported per reason (the
  batch's `dropped` field, cumulative per source), and `sdk_drop_totals`, their
  sum per reason, kept as the counts grow.

Everything here is rebuilt from frame heads by `catch_up`, which any process
may run at any time (the server does, every `index_interval_s`, off the
request path; readers do before answering). It runs in `BEGIN IMMEDIATE`
transactions, so several processes following one data directory index each
frame once. Deleting the file (`maidian rebuild`) loses nothing.

The identity graph (identity/graph.py) persists itself at its own path. The
catalog remembers how many observations it has fed it, as a checkpoint in the
graph's own transaction that names the catalog's generation (a random number
made with the catalog's tables). A graph fed from another generation (the
catalog was rebuilt, or made by an older layout, which is emptied and rebuilt
on open) is started again from nothing and fed every observation.
"""

from __future__ import annotations

import json
import secrets
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from maidian.collector.errors import DataDirError
from maidian.collector.identity.types import Observation, Refusal
from maidian.collector.sqlite import connect
from maidian.collector.store.feed import IdentityFeed, observation_of
from maidian.collector.store.frames import Damage, Frame, read_frame_at, scan_segment, sealed, segment_files
from maidian.collector.store.log import DataDir

__all__ = ["Catalog", "CatchUp", "IdentityFeed", "observation_of"]

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER);
CREATE TABLE IF NOT EXISTS progress(log TEXT, segment TEXT, offset INTEGER, PRIMARY KEY(log, segment));
CREATE TABLE IF NOT EXISTS identity_frames(
    type TEXT, value TEXT, segment TEXT, offset INTEGER, PRIMARY KEY(type, value, segment, offset)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS identity_frames_value ON identity_frames(value);
CREATE TABLE IF NOT EXISTS observations(
    id INTEGER PRIMARY KEY, event_id TEXT, time INTEGER, kind TEXT, identities TEXT, trusted INTEGER,
    at INTEGER, segment TEXT, offset INTEGER
);
CREATE INDEX IF NOT EXISTS observations_frame ON observations(segment, offset);
CREATE TABLE IF NOT EXISTS refusals(
    id INTEGER PRIMARY KEY, event_id TEXT, rule TEXT, identity_type TEXT, message TEXT
);
CREATE TABLE IF NOT EXISTS counts(name TEXT, outcome TEXT, n INTEGER, PRIMARY KEY(name, outcome)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS quarantine(
    segment TEXT, offset INTEGER, idx INTEGER, event_id TEXT, name TEXT, rules TEXT, received_at INTEGER,
    PRIMARY KEY(segment, offset, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS replayed(segment TEXT, offset INTEGER, idx INTEGER, PRIMARY KEY(segment, offset, idx))
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sdk_drops(source TEXT, reason TEXT, n INTEGER, PRIMARY KEY(source, reason)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sdk_drop_totals(reason TEXT PRIMARY KEY, n INTEGER) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS damaged(
    log TEXT, segment TEXT, offset INTEGER, length INTEGER, events INTEGER, event_ids TEXT,
    PRIMARY KEY(log, segment, offset)
) WITHOUT ROWID;
"""
# The layout `_SCHEMA` makes. A catalog of another layout is derived data: it is emptied and rebuilt.
_LAYOUT: Final = 2
_TABLES: Final = (
    "meta",
    "progress",
    "identity_frames",
    "observations",
    "refusals",
    "counts",
    "quarantine",
    "replayed",
    "sdk_drops",
    "sdk_drop_totals",
    "damaged",
)
# Readers and the server's indexer may hold the file at once; wait rather than fail.
_BUSY_TIMEOUT_MS: Final = 10_000


@dataclass(frozen=True, slots=True)
class CatchUp:
    """What one `catch_up` indexed."""

    frames: int
    events: int
    observations: int
    refusals: list[Refusal]


# Checkpoint attempts before giving up on a reader that keeps the WAL busy.
_CHECKPOINT_TRIES: Final = 20


class Catalog:
    """The derived catalog of one data directory."""

    def __init__(self, data: DataDir) -> None:
        self.data = data
        # One thread at a time uses it (the server's indexer thread), not always the one that opened it.
        self.db = connect(data.catalog, timeout_s=_BUSY_TIMEOUT_MS / 1000)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        self.generation = self._layout()

    def _layout(self) -> str:
        """The catalog's generation; a catalog of an older layout is emptied first (it is rebuilt from the logs)."""
        db = self.db
        layout = db.execute("SELECT value FROM meta WHERE key = 'layout'").fetchone()
        generation = db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        if layout is not None and int(layout[0]) == _LAYOUT and generation is not None:
            return str(generation[0])  # the usual case: no write lock taken
        db.execute("BEGIN IMMEDIATE")
        try:
            layout = db.execute("SELECT value FROM meta WHERE key = 'layout'").fetchone()
            generation = db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
            if layout is None or int(layout[0]) != _LAYOUT or generation is None:
                for table in _TABLES:
                    db.execute(f"DROP TABLE IF EXISTS {table}")
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    db.execute(statement)
                generation = (secrets.randbits(62),)
                db.execute("INSERT INTO meta VALUES ('layout', ?)", (_LAYOUT,))
                db.execute("INSERT INTO meta VALUES ('generation', ?)", generation)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return str(generation[0])

    def close(self) -> None:
        self.db.close()

    # -- following the logs -------------------------------------------------------

    def lag_bytes(self) -> int:
        """Log bytes not yet indexed."""
        done = {(log, seg): off for log, seg, off in self.db.execute("SELECT log, segment, offset FROM progress")}
        lag = 0
        for log, directory in (("raw", self.data.raw), ("quarantine", self.data.quarantine)):
            for path in segment_files(directory):
                try:
                    size = path.stat().st_size
                except FileNotFoundError:
                    continue
                lag += max(0, size - done.get((log, path.name), 0))
        return lag

    def catch_up(self, feed: IdentityFeed | None = None) -> CatchUp:
        """Index every frame written since the last call, then feed the identity graph."""
        frames = events = 0
        for log, directory in (("raw", self.data.raw), ("quarantine", self.data.quarantine)):
            for path in segment_files(directory):
                f, e = self._index_segment(log, path)
                frames += f
                events += e
        observed = 0
        refusals: list[Refusal] = []
        if feed is not None:
            observed, refusals = self._feed(feed)
        return CatchUp(frames, events, observed, refusals)

    def _index_segment(self, log: str, path: Path) -> tuple[int, int]:
        row = self.db.execute("SELECT offset FROM progress WHERE log=? AND segment=?", (log, path.name)).fetchone()
        start = row[0] if row else 0
        try:
            if path.stat().st_size <= start:
                return 0, 0
        except FileNotFoundError:
            return 0, 0
        scanned = scan_segment(path, start)
        found, end = scanned.frames, scanned.end
        damage = list(scanned.damaged)
        if scanned.tail is not None and sealed(path):  # never appended to again: the tail is final
            damage.append(scanned.tail)
            end = scanned.size
        if not found and not damage:
            return 0, 0
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT offset FROM progress WHERE log=? AND segment=?", (log, path.name)).fetchone()
            if (row[0] if row else 0) != start:  # another process got here first
                db.execute("ROLLBACK")
                return 0, 0
            events = 0
            counts: Counter[tuple[str, str]] = Counter()
            for frame in found:
                events += self._index_raw(frame, counts) if log == "raw" else self._index_quarantine(frame, counts)
            # One upsert per event name for the whole pass: a frame of a large plan names hundreds.
            db.executemany(
                "INSERT INTO counts(name, outcome, n) VALUES (?, ?, ?)"
                " ON CONFLICT(name, outcome) DO UPDATE SET n = n + ?",
                [(name, outcome, n, n) for (name, outcome), n in counts.items()],
            )
            self._note_damaged(log, damage)
            db.execute("INSERT OR REPLACE INTO progress(log, segment, offset) VALUES (?, ?, ?)", (log, path.name, end))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return len(found), events

    def _index_raw(self, frame: Frame, counts: Counter[tuple[str, str]]) -> int:
        head = frame.head
        pairs = self.observe_frame(frame.segment, frame.offset, head)
        self.db.executemany(
            "INSERT OR IGNORE INTO identity_frames(type, value, segment, offset) VALUES (?, ?, ?, ?)",
            [(t, v, frame.segment, frame.offset) for t, v in pairs],
        )
        for name, n in head.get("names", {}).items():
            counts[name, "accepted"] += n
        for seg, off, idx in head.get("replay", ()):
            self.db.execute("INSERT OR IGNORE INTO replayed(segment, offset, idx) VALUES (?, ?, ?)", (seg, off, idx))
        self._note_drops(head)
        return int(head.get("n", 0))

    def observe_frame(self, segment: str, offset: int, head: dict[str, Any]) -> set[tuple[str, str]]:
        """Insert a raw frame's identity observations (inside the caller's transaction); its identities."""
        trusted = 1 if head.get("trusted") else 0
        at = head.get("at")
        pairs: set[tuple[str, str]] = set()
        rows = []
        for time, event_id, kind, identities in head.get("obs", ()):
            text = json.dumps(identities, ensure_ascii=False, sort_keys=True)
            rows.append((event_id, time, kind, text, trusted, at, segment, offset))
            pairs.update((str(t), str(v)) for t, v in identities.items())
        self.db.executemany(
            "INSERT INTO observations(event_id, time, kind, identities, trusted, at, segment, offset)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        return pairs

    def observations_carrying(self, identities: set[tuple[str, str]]) -> list[Observation]:
        """Every stored observation that carries one of these identities (a scan: for deletions)."""
        out: dict[int, Observation] = {}
        for value in {v for _t, v in identities}:
            needle = json.dumps(value, ensure_ascii=False)[1:-1]  # as the JSON text holds it
            for row in self.db.execute(
                "SELECT id, event_id, time, kind, identities, trusted, at FROM observations"
                " WHERE instr(identities, ?) > 0",
                (needle,),
            ):
                obs = observation_of(row[1:])
                if any((t, v) in identities for t, v in obs.identities.items()):
                    out[int(row[0])] = obs
        return [out[k] for k in sorted(out)]

    def _note_drops(self, head: dict[str, Any]) -> None:
        """Keep the largest count a sender reported per reason; counts are cumulative, so repeats change nothing."""
        report = head.get("dropped")
        if not isinstance(report, dict):
            return
        source = report.get("source")
        for reason, n in (report.get("counts") or {}).items():
            row = self.db.execute("SELECT n FROM sdk_drops WHERE source=? AND reason=?", (source, reason)).fetchone()
            old = row[0] if row else 0
            if n <= old:
                continue
            self.db.execute("INSERT OR REPLACE INTO sdk_drops(source, reason, n) VALUES (?, ?, ?)", (source, reason, n))
            self.db.execute(
                "INSERT INTO sdk_drop_totals(reason, n) VALUES (?, ?) ON CONFLICT(reason) DO UPDATE SET n = n + ?",
                (reason, n - old, n - old),
            )

    def _index_quarantine(self, frame: Frame, counts: Counter[tuple[str, str]]) -> int:
        head = frame.head
        rows = []
        for idx, entry in enumerate(head.get("q", ())):
            if entry is None:  # a record deleted on request (privacy/operations.py)
                continue
            event_id, name, rules = entry
            rows.append((frame.segment, frame.offset, idx, event_id, name, ",".join(rules), head.get("at")))
            counts[name or "?", "quarantined"] += 1
        self.db.executemany("INSERT OR IGNORE INTO quarantine VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        self._note_drops(head)
        return len(rows)

    # -- the identity graph --------------------------------------------------------

    def _feed(self, feed: IdentityFeed) -> tuple[int, list[Refusal]]:
        """Feed new observations; mirror the graph's refusal record (withdrawals included) in `refusals`."""
        if feed.generation != self.generation:
            if feed.blank:
                # A graph never fed: deleting its file would pull it from under another process that opened
                # it at the same moment (a reader beside a starting server), for nothing.
                feed.generation = self.generation
            else:
                feed.reset(self.generation)  # fed from another catalog (or before trust ordering): start again
        if feed.fed == 0:
            # A graph fed from the start (new, or rebuilt) reports every refusal again.
            self.db.execute("DELETE FROM refusals")
        observed = 0
        changes: list[Refusal] = []
        while True:
            rows = self.db.execute(
                "SELECT id, event_id, time, kind, identities, trusted, at FROM observations WHERE id > ? ORDER BY id"
                " LIMIT 5000",
                (feed.fed,),
            ).fetchall()
            if not rows:
                break
            batch = [observation_of(r[1:]) for r in rows]
            found = feed.graph.observe_many(batch, checkpoint=feed.checkpoint(rows[-1][0]))
            observed += len(batch)
            feed.fed = rows[-1][0]
            changes.extend(found)
            self.record_refusals(found)
        return observed, changes

    def record_refusals(self, changes: list[Refusal]) -> None:
        """Mirror changes to the graph's refusal record (a withdrawn one is deleted), in one transaction."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            for r in changes:
                key = (r.event_id, r.rule, r.identity_type)
                if r.withdrawn:
                    self.db.execute("DELETE FROM refusals WHERE event_id=? AND rule=? AND identity_type=?", key)
                else:
                    self.db.execute(
                        "INSERT INTO refusals(event_id, rule, identity_type, message) VALUES (?, ?, ?, ?)",
                        (*key, r.message),
                    )
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    # -- reading ---------------------------------------------------------------------

    def frames_of(self, identities: set[tuple[str, str]]) -> list[tuple[str, int]]:
        """The raw-log frames (segment, offset) that carry any of these identities, in log order."""
        found: set[tuple[str, int]] = set()
        for t, v in identities:
            found.update(
                self.db.execute("SELECT segment, offset FROM identity_frames WHERE type=? AND value=?", (t, v))
            )
        return sorted(found)

    def identity_types_of(self, value: str) -> list[str]:
        """The identity types under which `value` was seen."""
        return [r[0] for r in self.db.execute("SELECT DISTINCT type FROM identity_frames WHERE value=?", (value,))]

    def quarantined(self, rule: str | None = None) -> Iterator[dict[str, Any]]:
        """Quarantine records in log order, with whether a replay moved them."""
        sql = (
            "SELECT q.segment, q.offset, q.idx, q.event_id, q.name, q.rules, q.received_at,"
            " r.segment IS NOT NULL FROM quarantine q LEFT JOIN replayed r"
            " ON r.segment=q.segment AND r.offset=q.offset AND r.idx=q.idx ORDER BY q.segment, q.offset, q.idx"
        )
        for seg, off, idx, eid, name, rules, at, replayed in self.db.execute(sql):
            rule_list = rules.split(",") if rules else []
            if rule is not None and rule not in rule_list:
                continue
            yield {
                "segment": seg,
                "offset": off,
                "index": idx,
                "event_id": eid,
                "event": name,
                "rules": rule_list,
                "received_at": at,
                "replayed": bool(replayed),
            }

    def refusals(self) -> list[tuple[str, str, str, str]]:
        return list(self.db.execute("SELECT event_id, rule, identity_type, message FROM refusals ORDER BY id"))

    def counts(self) -> dict[tuple[str, str], int]:
        return {(n, o): c for n, o, c in self.db.execute("SELECT name, outcome, n FROM counts")}

    def sdk_drops(self) -> list[tuple[str, str, int]]:
        """(source, reason, count): the largest loss count each sender reported, by source then reason."""
        return list(self.db.execute("SELECT source, reason, n FROM sdk_drops ORDER BY source, reason"))

    def _note_damaged(self, log: str, damage: list[Damage]) -> None:
        self.db.executemany(
            "INSERT OR IGNORE INTO damaged(log, segment, offset, length, events, event_ids) VALUES (?, ?, ?, ?, ?, ?)",
            [(log, d.segment, d.offset, d.length, d.events, json.dumps(d.event_ids)) for d in damage],
        )

    def note_damaged(self, log: str, damage: list[Damage]) -> None:
        """Record damaged frames met elsewhere (a writer's recovery), in their own transaction."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self._note_damaged(log, damage)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def damaged(self) -> list[tuple[str, Damage]]:
        """(log, damage) for every damaged frame indexing met, in log order."""
        rows = self.db.execute(
            "SELECT log, segment, offset, length, events, event_ids FROM damaged ORDER BY log, segment, offset"
        )
        return [(lg, Damage(seg, off, length, n, tuple(json.loads(ids)))) for lg, seg, off, length, n, ids in rows]

    def damaged_count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM damaged").fetchone()[0])

    def sdk_drop_totals(self) -> dict[str, int]:
        """Events senders reported dropped, summed over senders, by reason."""
        return dict(self.db.execute("SELECT reason, n FROM sdk_drop_totals"))

    # -- after a rewrite ----------------------------------------------------------

    def forget_removed(
        self,
        scan: Scan,
        *,
        identities: frozenset[tuple[str, str]] = frozenset(),
        event_ids: frozenset[str] = frozenset(),
    ) -> int:
        """Drop every catalog row that names removed data; secure_delete on, WAL truncated. Returns rows removed."""
        db = self.db
        db.execute("PRAGMA secure_delete=ON")
        removed = 0
        db.execute("BEGIN IMMEDIATE")
        try:
            for log, segment in list(db.execute("SELECT log, segment FROM progress")):
                if (log, segment) not in scan.segments:
                    db.execute("DELETE FROM progress WHERE log=? AND segment=?", (log, segment))
            # Observations mirror the frame heads: the rewritten frames', and (for a re-run after a crash) every
            # frame an observation of the person's identities names, are read again from their heads.
            frames: set[tuple[str, int]] = set(scan.rewritten)
            neighbours: set[tuple[str, str]] = set()
            erased = set(event_ids)
            for value in {v for _t, v in identities}:
                needle = json.dumps(value, ensure_ascii=False)[1:-1]  # as the JSON text holds it
                for segment, offset, text in db.execute(
                    "SELECT segment, offset, identities FROM observations WHERE instr(identities, ?) > 0", (needle,)
                ):
                    pairs = {(str(t), str(v)) for t, v in json.loads(text).items()}
                    if pairs & identities:
                        frames.add((segment, offset))
                        neighbours |= pairs - identities
            heads: dict[tuple[str, int], dict[str, Any] | None] = {}

            def head_at(segment: str, offset: int) -> dict[str, Any] | None:
                if (segment, offset) not in heads:
                    found = scan.rewritten.get((segment, offset))
                    if found is None:
                        frame = read_frame_at(self.data.raw / segment, offset)
                        found = None if frame is None else frame.head
                    heads[(segment, offset)] = found
                return heads[(segment, offset)]

            for segment, offset in sorted(frames):
                cur = db.execute("DELETE FROM observations WHERE segment=? AND offset=?", (segment, offset))
                head = head_at(segment, offset)
                if head is not None:
                    self.observe_frame(segment, offset, head)
                removed += max(0, cur.rowcount - (0 if head is None else len(head.get("obs", ()))))
            if scan.full:
                stale = {
                    row
                    for row in db.execute("SELECT type, value, segment, offset FROM identity_frames")
                    if row not in scan.identity_rows
                }
            else:
                stale = set(scan.stale_rows)
                # The person's identities and those seen beside them: does each indexed frame still carry them?
                for t, v in identities | neighbours:
                    for segment, offset in db.execute(
                        "SELECT segment, offset FROM identity_frames WHERE type=? AND value=?", (t, v)
                    ).fetchall():
                        head = head_at(segment, offset)
                        if head is None or (t, v, segment, offset) not in identity_rows(head, segment, offset):
                            stale.add((t, v, segment, offset))
            db.executemany("DELETE FROM identity_frames WHERE type=? AND value=? AND segment=? AND offset=?", stale)
            removed += len(stale)
            gone = [
                r for r in db.execute("SELECT segment, offset, idx FROM quarantine") if r not in scan.quarantine_rows
            ]
            db.executemany("DELETE FROM quarantine WHERE segment=? AND offset=? AND idx=?", gone)
            db.executemany("DELETE FROM replayed WHERE segment=? AND offset=? AND idx=?", gone)
            removed += len(gone)
            if erased:
                refused = [(e,) for (e,) in db.execute("SELECT DISTINCT event_id FROM refusals") if e in erased]
                db.executemany("DELETE FROM refusals WHERE event_id=?", refused)
                removed += len(refused)
            before = db.execute("SELECT COUNT(*) FROM counts").fetchone()[0]
            db.execute("DELETE FROM counts")
            db.executemany(
                "INSERT INTO counts(name, outcome, n) VALUES (?, ?, ?)", [(*k, n) for k, n in scan.counts.items()]
            )
            removed += max(0, int(before) - len(scan.counts))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.truncate_wal()
        return removed

    def truncate_wal(self) -> None:
        """Checkpoint every WAL frame into the database and cut the WAL to zero bytes."""
        for _ in range(_CHECKPOINT_TRIES):
            busy, _log, _done = self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if not busy:
                return
        raise DataDirError(f"{self.data.catalog}: a reader holds its WAL, which could not be truncated; run again")


@dataclass(slots=True)
class Scan:
    """What the frame heads say after a rewrite (store/rewrite.py), for `Catalog.forget_removed`.

    `full`: collect every frame's identity rows (retention, which compares
    the whole identity index); otherwise only the rows the rewritten frames
    no longer carry (`stale_rows`), which is all a deletion changes.
    """

    full: bool
    identity_rows: set[tuple[str, str, str, int]] = field(default_factory=set)
    stale_rows: set[tuple[str, str, str, int]] = field(default_factory=set)
    quarantine_rows: set[tuple[str, int, int]] = field(default_factory=set)
    segments: set[tuple[str, str]] = field(default_factory=set)
    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    kept: int = 0
    # The new heads of the raw frames a deletion rewrote, by (segment, offset).
    rewritten: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)

    def add_counts(self, log: str, head: dict[str, Any]) -> None:
        counts = self.counts
        if log == "raw":
            for name, n in head.get("names", {}).items():
                counts[(name, "accepted")] = counts.get((name, "accepted"), 0) + n
        else:
            for entry in head.get("q", ()):
                if entry is not None:
                    key = (entry[1] or "?", "quarantined")
                    counts[key] = counts.get(key, 0) + 1


def identity_rows(head: dict[str, Any], segment: str, offset: int) -> set[tuple[str, str, str, int]]:
    """The identity-index rows one raw frame gives (`_index_raw` writes these)."""
    return {
        (str(t), str(v), segment, offset)
        for _t, _e, _k, identities in head.get("obs", ())
        for t, v in identities.items()
    }
