"""Rewriting segments in place of themselves, and cleaning the catalog after: the machinery of deletion.

A segment is copied to a new file with the chosen events left out, synced,
renamed over the old one and the directory synced, so a crash (kill -9 at any
moment) leaves each segment whole, old or new. Every rewritten frame keeps its
exact length and position: the head is rebuilt for the events that stay and
padded to the old size (`pad`). So every (segment, offset) that derived state
holds (the catalog's identity index, dedup snapshots, the quarantine replay
marks) still names the same frame, and readers never see a frame move. In
quarantine frames, a removed record keeps its index as a tombstone (an empty
record, no reasons), because replays and the quarantine index refer to
records by index.

Which events go is the caller's choice (a `Drop` predicate, and a `HeadFilter`
that skips frames by their head alone); `maidian.collector.privacy` decides
for deletion and retention. The catalog then drops the rows that name removed
data (`Catalog.forget_removed`: secure_delete on, WAL truncated).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import msgspec
import zstandard

from maidian.collector.errors import DataDirError, PrivacyError
from maidian.collector.store.catalog import Scan, identity_rows
from maidian.collector.store.frames import (
    FRAME_HEADER,
    MAGIC,
    Frame,
    frame_of,
    scan_frames,
    segment_files,
)
from maidian.collector.store.heads import build_accepted_frame
from maidian.collector.store.ids import id_ranges
from maidian.collector.store.log import TMP_SUFFIX, DataDir, sync_dir, try_lock, write_atomically

__all__ = [
    "Cleared",
    "Drop",
    "HeadFilter",
    "held_exclusively",
    "remove_leftovers",
    "rewrite_logs",
]

# zstd levels to try, in order, when a rewritten frame does not fit its old size at the level frames use.
_LEVELS: Final = (1, 3, 9, 19)
# Bytes the key of a `pad` entry costs: "pad" as a fixstr.
_PAD_KEY: Final = 4

_encoder = msgspec.msgpack.Encoder()
_decompressor = zstandard.ZstdDecompressor()
_compressors: dict[int, zstandard.ZstdCompressor] = {}


class _Body(msgspec.Struct):
    """A frame body with each event kept as its exact bytes."""

    e: list[msgspec.Raw] = msgspec.field(default_factory=list)
    t: list[int] = msgspec.field(default_factory=list)
    f: dict[str, list[str]] = msgspec.field(default_factory=dict)
    r: list[Any] = msgspec.field(default_factory=list)


_body_decoder = msgspec.msgpack.Decoder(_Body)


@dataclass(slots=True)
class Cleared:
    """What an operation removed, by kind of file, and what it left."""

    raw_events: int = 0
    quarantined_events: int = 0
    segments_rewritten: int = 0
    segments_deleted: int = 0
    catalog_rows: int = 0
    identities: int = 0
    suppressed: int = 0
    kept_events: int = 0
    leftovers: int = 0
    notes: list[str] = field(default_factory=list)
    # The pseudonymous id of the person a deletion was for (the audit log names them so), else "".
    person: str = ""

    def lines(self) -> list[str]:
        """One line per kind, for the command's output."""
        return [
            f"raw log: {self.raw_events} events removed, {self.kept_events} kept",
            f"quarantine: {self.quarantined_events} records removed",
            f"segments: {self.segments_rewritten} rewritten, {self.segments_deleted} deleted",
            f"catalog: {self.catalog_rows} rows removed",
            f"identity graph: {self.identities} identities forgotten",
            f"suppression list: {self.suppressed} identities added",
            f"interrupted runs: {self.leftovers} temporary files removed",
            *self.notes,
        ]


# -- the data directory, held exclusively --------------------------------------------------


@contextlib.contextmanager
def held_exclusively(data: DataDir) -> Iterator[None]:
    """Hold every writer lock of the data directory (and w0's), or refuse: a writer is running."""
    held: list[int] = []
    try:
        for directory in (data.raw, data.quarantine):
            directory.mkdir(exist_ok=True)
            paths = {p.name for p in directory.glob("*.lock")} | {"w0.lock"}
            for name in sorted(paths):
                fd = try_lock(directory / name)
                if fd is None:
                    raise DataDirError(
                        f"{directory / name}: a collector (or another writer) is using {data.root}; stop it first."
                        " Privacy operations rewrite segments and need the data directory to themselves"
                    )
                held.append(fd)
        yield
    finally:
        for fd in held:
            os.close(fd)


def remove_leftovers(data: DataDir) -> int:
    """Temporary files of an interrupted run: never the live copy of anything, so always safe to remove."""
    n = 0
    for directory in (data.raw, data.quarantine, data.state):
        if directory.is_dir():
            for path in directory.glob(f"*{TMP_SUFFIX}"):
                path.unlink()
                n += 1
    return n


# -- frames at their exact size ----------------------------------------------------


def _compress(data: bytes, level: int) -> bytes:
    c = _compressors.get(level)
    if c is None:
        c = _compressors[level] = zstandard.ZstdCompressor(level=level, write_checksum=True)
    return c.compress(data)


def _pad_value(size: int) -> Any:
    """A msgpack value that encodes in exactly `size` bytes (at least 1), or None when none does here.

    Bytes cost a 2-byte header up to 255 and 3 from 256 on, so 258 bytes is
    one bin8 inside a one-item array; 1 byte is the integer 0.
    """
    if size == 1:
        return 0
    if 2 <= size <= 257:
        return bytes(size - 2)
    if size == 258:
        return [bytes(255)]
    if 259 <= size <= 0xFFFF + 3:
        return bytes(size - 3)
    return None


def _fit(head: dict[str, Any], body: bytes, target: int) -> bytes | None:
    """The payload [1, head, body] padded to exactly `target` bytes, or None when it does not fit."""
    bare = _encoder.encode((1, head, body))
    if len(bare) == target:
        return bare
    # A new key costs its name (4 bytes for "pad") and its value; the map's header may grow by a byte or two.
    for grown in (0, 1, 2):
        value = _pad_value(target - len(bare) - _PAD_KEY - grown)
        if value is None:
            continue
        payload = _encoder.encode((1, {**head, "pad": value}, body))
        if len(payload) == target:
            return payload
    return None


def _same_size_frame(frame: Frame, head: dict[str, Any], body: dict[str, Any]) -> bytes:
    """A frame holding `head` and `body` that is exactly as long as `frame`."""
    target = frame.end - frame.offset - FRAME_HEADER.size
    packed = _encoder.encode(body)
    for level in _LEVELS:
        payload = _fit(head, _compress(packed, level), target)
        if payload is not None:
            return frame_of(payload)
    raise PrivacyError(f"{frame.segment} at {frame.offset}: the rewritten frame does not fit its old size")


Drop = Callable[[Any, int, dict[str, Any]], bool]
"""Whether to remove one stored event: (the event or its undecodable bytes, its corrected time, its frame's head)."""


@dataclass(slots=True)
class _FrameChange:
    data: bytes
    head: dict[str, Any]
    removed: int
    kept: int


def _decode_event(raw: msgspec.Raw) -> Any:
    try:
        return msgspec.msgpack.decode(raw)
    except msgspec.DecodeError:
        return bytes(raw)


def _rewrite_raw(frame: Frame, drop: Drop, cutoff_all: bool) -> _FrameChange | None:
    body = _body_decoder.decode(_decompressor.decompress(frame.body))
    events = [_decode_event(r) for r in body.e]
    times = [body.t[i] if i < len(body.t) else 0 for i in range(len(events))]
    keep = [i for i, ev in enumerate(events) if not (cutoff_all or drop(ev, times[i], frame.head))]
    if len(keep) == len(events):
        return None
    meta = {k: v for k, v in frame.head.items() if k not in _DERIVED_RAW}
    stored = [(events[i], body.e[i], times[i], body.f.get(str(i))) for i in keep]
    ids = [str(events[i].get("event_id")) for i in keep if isinstance(events[i], dict)]
    ranges, opaque = id_ranges(ids)
    rebuilt = scan_frames(MAGIC + build_accepted_frame(meta, stored, ranges, opaque), frame.segment)[0][0]
    new_body = _body_decoder.decode(_decompressor.decompress(rebuilt.body))
    data = _same_size_frame(frame, rebuilt.head, _body_dict(new_body))
    return _FrameChange(data, rebuilt.head, len(events) - len(keep), len(keep))


_DERIVED_RAW: Final = frozenset({"n", "seq", "oid", "obs", "names", "tmin", "tmax", "pad"})


def _body_dict(body: _Body) -> dict[str, Any]:
    out: dict[str, Any] = {"e": body.e, "t": body.t}
    if body.f or not body.r:
        out["f"] = body.f
    if body.r:
        out["r"] = body.r
    return out


def _quarantined_event(raw: msgspec.Raw, fmt: str) -> Any:
    """A quarantine record as a value: the decoded event when it decodes, else its bytes."""
    stored = _decode_event(raw)
    if not isinstance(stored, bytes) or not stored:
        return stored
    with contextlib.suppress(msgspec.DecodeError, UnicodeError, RecursionError):
        return (msgspec.msgpack.decode if fmt == "msgpack" else msgspec.json.decode)(stored)
    return stored


def _rewrite_quarantine(frame: Frame, drop: Drop) -> _FrameChange | None:
    body = _body_decoder.decode(_decompressor.decompress(frame.body))
    fmt = frame.head.get("fmt", "msgpack")
    summary = list(frame.head.get("q", ()))
    removed = 0
    kept = 0
    events = list(body.e)
    reasons = list(body.r)
    times = list(body.t)
    for i, raw in enumerate(events):
        if i < len(summary) and summary[i] is None:
            continue  # a tombstone already
        t = times[i] if i < len(times) else 0
        if not drop(_quarantined_event(raw, fmt), t, frame.head):
            kept += 1
            continue
        removed += 1
        events[i] = msgspec.Raw(_encoder.encode(b""))
        if i < len(times):
            times[i] = 0
        if i < len(reasons):
            reasons[i] = []
        while len(summary) <= i:
            summary.append(None)
        summary[i] = None
    if not removed:
        return None
    ids = [s[0] for s in summary if s is not None and isinstance(s[0], str)]
    ranges, opaque = id_ranges(ids)
    head = {k: v for k, v in frame.head.items() if k != "pad"}
    head.update(n=kept, seq=ranges, oid=opaque, q=summary)
    data = _same_size_frame(frame, head, {"e": events, "t": times, "r": reasons})
    return _FrameChange(data, head, removed, kept)


HeadFilter = Callable[[dict[str, Any]], bool]
"""Whether a raw frame may hold events to remove, judged from its head alone."""


def _rewrite_segment(
    path: Path,
    log: str,
    drop: Drop,
    cleared: Cleared,
    scan: Scan,
    *,
    cutoff_ms: int | None,
    may_delete: bool,
    raw_needs: HeadFilter | None,
) -> None:
    """Copy a segment without the dropped events, sync, rename over it, sync the directory."""
    data = path.read_bytes()
    frames, end = scan_frames(data, path.name)
    out = bytearray(data[:end]) if end else bytearray(data)
    changes: dict[int, _FrameChange] = {}
    for frame in frames:
        if log == "raw":
            everything = cutoff_ms is not None and frame.head.get("tmax", cutoff_ms) < cutoff_ms
            untouched = cutoff_ms is not None and frame.head.get("tmin", 0) >= cutoff_ms
            untouched = untouched or (raw_needs is not None and not raw_needs(frame.head))
            change = None if untouched else _rewrite_raw(frame, drop, everything)
        else:
            change = _rewrite_quarantine(frame, drop)
        if change is not None:
            out[frame.offset : frame.end] = change.data
            changes[frame.offset] = change
    removed = sum(c.removed for c in changes.values())
    heads = {f.offset: (changes[f.offset].head if f.offset in changes else f.head) for f in frames}
    kept = sum(int(h.get("n", 0)) for h in heads.values())
    if log == "raw":
        cleared.raw_events += removed
    else:
        cleared.quarantined_events += removed
    if may_delete and frames and kept == 0:
        path.unlink()
        sync_dir(path.parent)
        cleared.segments_deleted += 1
        return
    if changes or len(out) != len(data):
        write_atomically(path, bytes(out))  # a new file, synced, renamed over the old one, directory synced
        if changes:
            cleared.segments_rewritten += 1
    scan.segments.add((log, path.name))
    for frame in frames:
        offset = frame.offset
        head = heads[offset]
        scan.add_counts(log, head)
        if log == "raw":
            scan.kept += int(head.get("n", 0))
            if scan.full:
                scan.identity_rows |= identity_rows(head, path.name, offset)
            elif offset in changes:
                scan.stale_rows |= identity_rows(frame.head, path.name, offset) - identity_rows(head, path.name, offset)
                scan.rewritten[(path.name, offset)] = head
        else:
            for idx, entry in enumerate(head.get("q", ())):
                if entry is not None:
                    scan.quarantine_rows.add((path.name, offset, idx))


def rewrite_logs(
    data: DataDir, drop: Drop, cleared: Cleared, *, cutoff_ms: int | None = None, raw_needs: HeadFilter | None = None
) -> Scan:
    scan = Scan(full=cutoff_ms is not None)
    for log, directory in (("raw", data.raw), ("quarantine", data.quarantine)):
        paths = segment_files(directory)
        newest: dict[str, str] = {}
        for p in paths:
            writer = p.name.rsplit("-", 1)[0]
            newest[writer] = max(newest.get(writer, ""), p.name)
        for path in paths:
            # A writer numbers its next segment after its newest file: keep that one so no name comes back.
            may_delete = cutoff_ms is not None and newest.get(path.name.rsplit("-", 1)[0]) != path.name
            _rewrite_segment(
                path, log, drop, cleared, scan, cutoff_ms=cutoff_ms, may_delete=may_delete, raw_needs=raw_needs
            )
    cleared.kept_events = scan.kept
    return scan
