"""A reader over a collector's stored data, independent of the collector's own readers where it matters.

- `read_store`: every event id in every raw-log frame *body* (decoded, not
  taken from the frame heads, so a head that disagreed with its body would
  show), the deduplicated view as `maidian export` gives it, and the ids in the
  quarantine log.
- `scan_segments`: per segment, what is not a valid frame: a torn tail (an
  append cut short) is allowed only at the end of each writer's newest
  segment, and only until the next start truncates it; anything else
  (damaged frames, a whole bad frame at the end) is interior corruption.
- `sqlite_integrity`: `PRAGMA integrity_check` of every SQLite file in the data
  directory.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

import msgspec

from maidian.collector.read import export_events
from maidian.collector.store.frames import decode_body, read_frames, scan_segment, segment_files
from tests.reliability.ledger import Stored

__all__ = ["Segments", "read_store", "scan_segments", "sqlite_integrity"]

_decode = msgspec.msgpack.Decoder()


def _ids_in(directory: Path) -> list[str]:
    out: list[str] = []
    for path in segment_files(directory):
        frames, _end = read_frames(path)
        for frame in frames:
            for raw in decode_body(frame).events:
                try:
                    event = _decode.decode(raw) if isinstance(raw, bytes) else raw
                except (msgspec.DecodeError, ValueError):  # UnicodeDecodeError included: quarantined bytes
                    continue
                if isinstance(event, dict) and isinstance(event.get("event_id"), str):
                    out.append(event["event_id"])
    return out


def read_store(data_dir: Path) -> Stored:
    """What the data directory holds (the server may be running: readers never need it stopped)."""
    raw = _ids_in(data_dir / "raw")
    deduped = [r["event_id"] for r in export_events(data_dir)]
    quarantined = set(_ids_in(data_dir / "quarantine"))
    return Stored(raw=raw, deduped=deduped, quarantined=quarantined)


@dataclass(frozen=True, slots=True)
class Segments:
    """Torn tails (segment -> bytes) at the newest segment of a writer, and everything else that is invalid."""

    torn: dict[str, int]
    interior: dict[str, int]
    frames: int


def scan_segments(data_dir: Path) -> Segments:
    torn: dict[str, int] = {}
    interior: dict[str, int] = {}
    count = 0
    for log in ("raw", "quarantine"):
        paths = segment_files(data_dir / log)
        newest: dict[str, Path] = {}
        for p in paths:
            newest[p.name.split("-", 1)[0]] = p  # sorted by name: the last one per writer wins
        for path in paths:
            scanned = scan_segment(path)
            count += len(scanned.frames)
            key = f"{log}/{path.name}"
            bad = sum(d.length for d in scanned.damaged)
            if scanned.tail is not None:
                if scanned.tail_torn and newest.get(path.name.split("-", 1)[0]) == path:
                    torn[key] = scanned.tail.length
                else:
                    bad += scanned.tail.length
            if bad:
                interior[key] = bad
    return Segments(torn, interior, count)


def sqlite_integrity(data_dir: Path) -> dict[str, str]:
    """`integrity_check` of each SQLite file ("ok" when healthy)."""
    out: dict[str, str] = {}
    for path in sorted(data_dir.glob("*.sqlite")):
        db = sqlite3.connect(path, timeout=30)
        try:
            out[path.name] = ";".join(row[0] for row in db.execute("PRAGMA integrity_check"))
        finally:
            db.close()
    return out
