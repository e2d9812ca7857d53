"""The raw log's on-disk format: segments of checksummed, length-prefixed frames.

A segment file starts with the 8-byte magic `MDNLOG01`, then holds frames back
to back::

    [u32 little-endian: payload length][u32 little-endian: CRC-32 of the payload][payload]
    payload = msgpack [1, head, body]          (version 1)
    body    = zstd( msgpack {"e": [event, ...], "t": [time, ...], "f": {index: [flag, ...]}, "r": [...]} )

One frame holds the events one request stored (accepted ones in `raw/`,
quarantined ones in `quarantine/`). The head is small and uncompressed: it
carries what the derived state needs — the request's metadata, the event ids
(as sequence ranges per SDK source, plus opaque ids), one identity
observation per distinct identity set, the event-name counts and the time
range — so deduplication, the identity index and coverage counters are rebuilt
by reading heads only, never decompressing bodies. The body keeps each event
exactly as it arrived (msgpack, copied verbatim) with the corrected times,
flags and, for quarantine frames, every reason.

Rules:
- a frame is valid when its length fits in the file, its CRC matches and its
  payload decodes. Every payload starts with the same two bytes (msgpack
  `[1, ...`: 0x93 0x01), the frame magic. A reader that meets an invalid frame
  resynchronises: it looks for the next offset whose header is followed by
  the frame magic and whose frame is valid, reports the bytes in between as
  damaged (`Damage`, with the event ids its head names when the head still
  decodes) and goes on. One flipped bit costs the frame it is in, never the
  frames after it.
- the bytes after the last valid frame of a segment are its tail. A tail is
  torn (`Scan.tail_torn`) when it is what an interrupted append leaves: fewer
  bytes than a header, a header whose length runs past the end of the file
  (and whose CRC does not match the bytes that are there), or only zeros (a
  power cut after the file grew). Recovery truncates a torn tail and nothing
  else; a whole frame that fails its checks at the end of a segment is damage
  like any other, reported and left in place. A segment's tail is final once
  a newer segment of the same writer exists (writers never append to an older
  segment); until then it may be a frame being written, so readers stop there.
- frames are never rewritten in place; deleting a person's data rewrites a
  whole segment into a new file (docs/collector.md, "Deleting and exporting").
"""

from __future__ import annotations

import mmap
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import msgspec
import zstandard

from maidian.collector.store.ids import event_ids_of

__all__ = [
    "FRAME_HEADER",
    "FRAME_MAGIC",
    "MAGIC",
    "Body",
    "Damage",
    "Frame",
    "Scan",
    "decode_body",
    "encode_frame",
    "frame_of",
    "head_event_ids",
    "iter_log",
    "read_frame_at",
    "read_frames",
    "read_heads_at",
    "scan",
    "scan_frames",
    "scan_segment",
    "sealed",
    "segment_files",
]

MAGIC: Final = b"MDNLOG01"
FRAME_HEADER: Final = struct.Struct("<II")
"""Each frame's header: payload length and CRC-32 of the payload, both u32 little-endian."""
VERSION: Final = 1
# Level 1: twice as fast as level 3 for about the same size on batches (measured here).
_LEVEL: Final = 1
# A frame is at most one request's events: 16 MiB decoded; anything longer is corruption.
MAX_FRAME_BYTES: Final = 64 << 20
# The first bytes of every payload: msgpack's fixarray of 3, then the version.
FRAME_MAGIC: Final = bytes((0x93, VERSION))

_encoder = msgspec.msgpack.Encoder()
_payload_decoder = msgspec.msgpack.Decoder(tuple[int, dict[str, Any], bytes])
_body_decoder = msgspec.msgpack.Decoder(dict[str, Any])
# The content checksum (4 bytes) tells an intact body from a damaged one when a frame fails its CRC.
_compressor = zstandard.ZstdCompressor(level=_LEVEL, write_checksum=True)
_decompressor = zstandard.ZstdDecompressor()
_event_decoder = msgspec.msgpack.Decoder()
H = TypeVar("H")
_ZSTD_MAGIC: Final = b"\x28\xb5\x2f\xfd"


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame as read back: where it is, its head, and its still-compressed body."""

    segment: str
    offset: int
    end: int
    head: dict[str, Any]
    body: bytes


@dataclass(frozen=True, slots=True)
class Body:
    """A decoded body: events as decoded values (bytes for an event that could not be decoded)."""

    events: list[Any]
    times: list[int]
    flags: dict[int, list[str]]
    reasons: list[Any]


def encode_frame(head: dict[str, Any], body: dict[str, Any]) -> bytes:
    """One frame, ready to append. `body["e"]` may hold `msgspec.Raw` events, copied as they are."""
    packed = _compressor.compress(_encoder.encode(body))
    return frame_of(_encoder.encode((VERSION, head, packed)))


def frame_of(payload: bytes) -> bytes:
    """A frame around an encoded payload: its header, then the payload."""
    return FRAME_HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def decode_body(frame: Frame) -> Body:
    """Decompress and decode a frame's body."""
    raw = _body_decoder.decode(_decompressor.decompress(frame.body))
    flags = {int(k): list(v) for k, v in (raw.get("f") or {}).items()}
    return Body(events=raw.get("e", []), times=raw.get("t", []), flags=flags, reasons=raw.get("r", []))


@dataclass(frozen=True, slots=True)
class Damage:
    """Bytes of a segment that are not a valid frame: what was lost there, as far as can be told.

    `event_ids` are the ids the damaged frame's head names, when the head
    still decodes (a flipped bit in the compressed body leaves it readable);
    `events` is the head's event count, or None when the head is unreadable.
    """

    segment: str
    offset: int
    length: int
    events: int | None
    event_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Scan:
    """What a segment's bytes hold: the valid frames, the damage between them, and the tail.

    `end` is the file offset where the tail starts (after the last valid
    frame, and after any whole damaged frames that follow it, which are in
    `damaged`); `size` is where the scanned bytes end.
    """

    frames: list[Frame]
    damaged: list[Damage]
    end: int
    size: int
    tail_torn: bool
    tail: Damage | None


def scan(data: bytes | memoryview, segment: str, base: int = 0) -> Scan:
    """Scan the bytes of a segment from file offset `base`: frames, interior damage and tail.

    `base` must be a frame boundary (0, or a previous scan's `end`).
    """
    raw = data if isinstance(data, bytes) else bytes(data)
    view = memoryview(raw)
    size = len(raw)
    frames: list[Frame] = []
    damaged: list[Damage] = []
    pos = 0
    if base == 0:
        if raw.startswith(MAGIC):
            pos = len(MAGIC)
        elif size < len(MAGIC) and MAGIC.startswith(raw):  # cut short at creation
            return Scan([], [], 0, size, True, _damage(view, segment, 0, size, 0) if size else None)
        else:
            nxt = _resync(raw, view, 0)
            if nxt is None:
                *whole, last = _damages(view, segment, 0, size, 0)
                return Scan([], whole, last.offset, size, _torn(view, last.offset), last)
            damaged.extend(_damages(view, segment, 0, nxt, 0))
            pos = nxt
    while pos < size:
        frame = _frame_at(view, pos, segment, base)
        if frame is not None:
            frames.append(frame)
            pos = frame.end - base
            continue
        nxt = _resync(raw, view, pos)
        if nxt is None:
            break
        damaged.extend(_damages(view, segment, pos, nxt, base))
        pos = nxt
    if pos >= size:
        return Scan(frames, damaged, base + size, base + size, False, None)
    *whole, last = _damages(view, segment, pos, size, base)
    damaged.extend(whole)
    return Scan(frames, damaged, last.offset, base + size, _torn(view, last.offset - base), last)


def _frame_at(view: memoryview, pos: int, segment: str, base: int) -> Frame | None:
    """The valid frame at `pos` of `view`, or None."""
    if pos + FRAME_HEADER.size > len(view):
        return None
    length, crc = FRAME_HEADER.unpack_from(view, pos)
    begin = pos + FRAME_HEADER.size
    end = begin + length
    if length > MAX_FRAME_BYTES or end > len(view):
        return None
    payload = view[begin:end]
    if zlib.crc32(payload) != crc:
        return None
    try:
        version, head, body = _payload_decoder.decode(payload)
    except msgspec.DecodeError:
        return None
    if version != VERSION:
        return None
    return Frame(segment, base + pos, base + end, head, body)


def _resync(raw: bytes, view: memoryview, bad: int) -> int | None:
    """The offset of the first valid frame after the invalid one at `bad`, or None when there is none."""
    at = bad + FRAME_HEADER.size + 1
    while True:
        at = raw.find(FRAME_MAGIC, at)
        if at < 0:
            return None
        candidate = at - FRAME_HEADER.size
        if _frame_at(view, candidate, "", 0) is not None:
            return candidate
        at += 1


def _torn(view: memoryview, pos: int) -> bool:
    """Whether the bytes from `pos` (no valid frame among them) are what an interrupted append leaves.

    Not torn: a whole frame is there (its declared length fits), or the CRC
    matches everything after the header (a whole frame whose length field is
    damaged). Anything else (a short header, a frame cut short, zeros, bytes
    that are no frame at all) cannot hold an acknowledged frame.
    """
    rest = view[pos:]
    if len(rest) < FRAME_HEADER.size or not rest.tobytes().strip(b"\x00"):
        return True
    length, crc = FRAME_HEADER.unpack_from(rest, 0)
    if length <= MAX_FRAME_BYTES and FRAME_HEADER.size + length <= len(rest):
        return False
    return bool(zlib.crc32(rest[FRAME_HEADER.size :]) != crc)


def _damages(view: memoryview, segment: str, begin: int, end: int, base: int) -> list[Damage]:
    """The damaged bytes [begin, end) of `view` as frames: split where a length field leads to a frame header."""
    out: list[Damage] = []
    pos = begin
    while pos < end:
        cut = end
        if pos + FRAME_HEADER.size <= end:
            length, _crc = FRAME_HEADER.unpack_from(view, pos)
            stop = pos + FRAME_HEADER.size + length
            header_next = (
                stop + FRAME_HEADER.size + len(FRAME_MAGIC) <= end
                and view[stop + FRAME_HEADER.size : stop + FRAME_HEADER.size + len(FRAME_MAGIC)] == FRAME_MAGIC
            )
            if pos < stop < end and header_next:
                cut = stop
        out.append(_damage(view, segment, pos, cut, base))
        pos = cut
    return out


def _damage(view: memoryview, segment: str, begin: int, end: int, base: int) -> Damage:
    """The damaged bytes [begin, end) of `view`, with what their head still tells."""
    region = view[begin:end]
    body_ids, checked = _salvage_body_ids(region)
    head = None if checked else _salvage_head(region)
    if head is None:
        return Damage(segment, base + begin, end - begin, len(body_ids) if body_ids else None, body_ids)
    n = head.get("n")
    return Damage(segment, base + begin, end - begin, n if isinstance(n, int) else None, head_event_ids(head))


def _salvage_head(region: memoryview) -> dict[str, Any] | None:
    """A damaged frame's head when it still decodes (its length field ignored: the region is the frame)."""
    if len(region) <= FRAME_HEADER.size:
        return None
    try:
        _version, head, _body = _payload_decoder.decode(region[FRAME_HEADER.size :])
    except (msgspec.DecodeError, ValueError):
        return None
    return head


def _salvage_body_ids(region: memoryview) -> tuple[tuple[str, ...], bool]:
    """The event ids in a damaged frame's body, and whether zstd's content checksum vouches for them.

    The body is the payload's last element, a msgpack bin of zstd: look for a
    zstd frame magic right after a bin header whose length reaches exactly the
    end of the region, and read the ids of the events it decompresses to.
    Bodies carry a content checksum (older ones may not): a body that passes
    it is intact, so the damage is in the header or head, and its ids are the
    frame's.
    """
    raw = region.tobytes()
    at = len(raw)
    while at > 0:
        at = raw.rfind(_ZSTD_MAGIC, 0, at)
        if at < 0:
            break
        size = len(raw) - at
        for width, tag in ((1, 0xC4), (2, 0xC5), (4, 0xC6)):
            if at > width and raw[at - width - 1] == tag and int.from_bytes(raw[at - width : at], "big") == size:
                found = _body_ids(raw[at:])
                if found is not None:
                    return found
        at -= 1
    return (), False


def _body_ids(packed: bytes) -> tuple[tuple[str, ...], bool] | None:
    try:
        params = zstandard.get_frame_parameters(packed)
        if not 0 <= params.content_size <= MAX_FRAME_BYTES:
            return None
        body = _body_decoder.decode(_decompressor.decompress(packed))
        out = []
        for raw in body.get("e") or ():
            event = _event_decoder.decode(raw) if isinstance(raw, bytes) else raw
            if isinstance(event, dict) and isinstance(event.get("event_id"), str):
                out.append(event["event_id"])
    except (zstandard.ZstdError, msgspec.DecodeError, ValueError, TypeError):
        return None
    return tuple(out), bool(params.has_checksum)


def head_event_ids(head: dict[str, Any]) -> tuple[str, ...]:
    """The event ids a frame head names: its sequence ranges and opaque ids, or its quarantine summary."""
    try:
        out = event_ids_of(head.get("seq") or {}, head.get("oid") or ())
        if not out:
            out = [str(entry[0]) for entry in head.get("q") or () if entry]
    except (AttributeError, TypeError, ValueError, IndexError, KeyError):  # a damaged head may hold anything
        return ()
    return tuple(out)


def scan_frames(data: bytes | memoryview, segment: str, base: int = 0) -> tuple[list[Frame], int]:
    """The valid frames in `data`, the bytes of a segment from file offset `base`, and where validity ends.

    Damaged frames between valid ones are skipped (`scan` reports them); the
    end (a file offset) is after the last valid frame, where a tail begins.
    """
    found = scan(data, segment, base)
    return found.frames, found.end


def scan_segment(path: Path, start: int = 0) -> Scan:
    """`scan` of a segment file from offset `start` (an empty scan for a missing file)."""
    try:
        with open(path, "rb") as f:
            if start:
                f.seek(start)
            data = f.read()
    except FileNotFoundError:
        return Scan([], [], 0, 0, False, None)
    return scan(data, path.name, start)


def sealed(path: Path) -> bool:
    """Whether a segment is final: its writer has started a newer one, so nothing is appended to it again."""
    writer = path.name.rsplit("-", 1)[0]
    later = [p for p in segment_files(path.parent, writer) if p.name > path.name]
    return bool(later)


def read_frames(path: Path, start: int = 0) -> tuple[list[Frame], int]:
    """The valid frames of a segment file from offset `start`, and where the last one ends (0 for a missing file)."""
    found = scan_segment(path, start)
    return found.frames, found.end


def segment_files(directory: Path, writer: str | None = None) -> list[Path]:
    """Segment files in a log directory, in order (by writer, then number)."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    out = [directory / n for n in names if n.endswith(".seg") and (writer is None or n.startswith(writer + "-"))]
    out.sort(key=lambda p: p.name)
    return out


def iter_log(directory: Path) -> Iterator[Frame]:
    """Every valid frame of every segment in a log directory, in order."""
    for path in segment_files(directory):
        frames, _ = read_frames(path)
        yield from frames


def read_frame_at(path: Path, offset: int) -> Frame | None:
    """The one frame at `offset` of a segment, or None when it is not a valid frame."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            header = f.read(FRAME_HEADER.size)
            if len(header) < FRAME_HEADER.size:
                return None
            length, _crc = FRAME_HEADER.unpack(header)
            if length > MAX_FRAME_BYTES:
                return None
            data = header + f.read(length)
    except FileNotFoundError:
        return None
    frames, _ = scan_frames(data, path.name, offset)
    return frames[0] if frames else None


def read_heads_at(path: Path, offsets: list[int], head_type: type[H]) -> Iterator[tuple[int, H]]:
    """(offset, head as `head_type`) of the valid frames at these offsets of one segment.

    One open and one read per segment (a memory map), bodies left undecoded; a
    `msgspec.Struct` naming only the fields wanted skips the rest of each head.
    """
    # The body as bytes (a copy of a few KB), not a view: nothing may point into the map once it closes.
    decoder = msgspec.msgpack.Decoder(tuple[int, head_type, bytes])  # type: ignore[valid-type]
    try:
        with open(path, "rb") as f:
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (FileNotFoundError, ValueError):  # ValueError: an empty file cannot be mapped
        return
    with data:
        view = memoryview(data)
        size = len(view)
        payload = view[0:0]
        try:
            for offset in sorted(offsets):
                begin = offset + FRAME_HEADER.size
                if begin > size:
                    continue
                length, crc = FRAME_HEADER.unpack_from(view, offset)
                payload = view[begin : begin + length]
                if length > MAX_FRAME_BYTES or len(payload) < length or zlib.crc32(payload) != crc:
                    continue
                try:
                    version, head, _body = decoder.decode(payload)
                except msgspec.DecodeError:
                    continue
                if version == VERSION:
                    yield offset, head
        finally:
            del payload
            view.release()
