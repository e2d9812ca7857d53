"""The disk spool: packed events that survive `kill -9` and wait for the next client.

Layout of a spool directory:

    lock                 flock(LOCK_EX) by the live client: two never share a spool
    000000000001.seg     frames: <u32 length><u32 crc32><packed event>, appended
    000000000001.ack     u32 frame numbers of that segment the collector has settled

Rules:
- `put` (the host's thread) appends one frame with one `write(2)` to the active
  segment: once it returns, the event is in the OS and survives the death of
  the process. Power loss is bounded by the sync policy: the sender fsyncs the
  active segment at most every `SpoolConfig.fsync_interval_s`.
- The sender reads frames back in order (`take`), and records settled frames
  in the segment's `.ack` file (`settle`). A segment whose every frame is
  settled, and that is no longer written to, is deleted with its `.ack`.
- On open, a torn tail (a frame cut short, or whose checksum fails) is
  truncated away; settled frames are skipped; everything else is sent again
  with its original event id, so the collector's deduplication absorbs any
  frame that was delivered but whose settlement was not yet written.
- Caps: total bytes (`max_bytes`) and age (`max_age_s`, judged by a segment's
  last write). At the byte cap, `drop_oldest` deletes the oldest segment,
  `drop_newest` refuses the new event; expired segments are deleted. Only
  frames that were never handed to the sender count as dropped (a frame in
  flight still has its bytes in memory), and every drop is counted.
- If the disk refuses a write (ENOSPC, EIO), or a new segment file, the
  partial frame is cut off and the event goes to a bounded memory buffer
  instead; the spool is tried again on the next event. A segment's
  descriptor is closed only once the next segment's file exists.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from ._buffer import MemoryBuffer
from .config import QueueLimits, SpoolConfig
from .errors import ConfigError

__all__ = ["Spool"]

_HEAD: Final = struct.Struct("<II")
_ACK: Final = struct.Struct("<I")
EXPIRED: Final = "expired"
OVERFLOW: Final = "overflow"


@dataclass(slots=True, eq=False)
class _Segment:
    number: int
    count: int = 0  # frames in the file
    size: int = 0  # bytes in the file
    taken: int = 0  # frames [0, taken) were handed to the sender (or skipped as settled)
    offset: int = 0  # file offset of frame `taken`
    settled: set[int] = field(default_factory=set)
    mtime: float = 0.0
    fd: int = -1  # read descriptor, opened on demand


class Spool:
    """A `Buffer` on disk (see the module docstring)."""

    def __init__(
        self,
        config: SpoolConfig,
        queue: QueueLimits,
        *,
        on_drop: Callable[[str, int], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._drop_oldest = queue.overflow == "drop_oldest"
        self._on_drop = on_drop
        self._clock = clock
        self._lock = threading.Lock()
        self._dir = config.path
        try:
            os.makedirs(self._dir, exist_ok=True)
            self._lock_fd = os.open(os.path.join(self._dir, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise ConfigError(f"spool {self._dir!r} cannot be opened: {exc}") from exc
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._lock_fd)
            raise ConfigError(f"spool {self._dir!r} is in use by another live client") from exc
        self._fallback = MemoryBuffer(queue.max_events, queue.overflow)
        self._unreported: dict[str, int] = {}
        self._segments: list[_Segment] = []
        self._pending = 0
        self._bytes = 0
        self._closed = False
        self._last_fsync = 0.0
        self._dirty = False
        self._recover()
        self._active = self._new_segment()

    # -- paths and recovery ---------------------------------------------------------

    def _path(self, number: int, ext: str) -> str:
        return os.path.join(self._dir, f"{number:012d}.{ext}")

    def _recover(self) -> None:
        numbers = sorted(int(n[:-4]) for n in os.listdir(self._dir) if n.endswith(".seg") and n[:-4].isdigit())
        now = self._clock()
        for number in numbers:
            seg = self._scan(number)
            unsettled = seg.count - len(seg.settled)
            if unsettled <= 0:
                self._delete(seg)
                continue
            if now - seg.mtime > self.config.max_age_s:
                self._delete(seg)
                self._note_drop(EXPIRED, unsettled)
                continue
            self._segments.append(seg)
            self._pending += unsettled
            self._bytes += seg.size

    def _scan(self, number: int) -> _Segment:
        path = self._path(number, "seg")
        with open(path, "rb") as f:
            data = f.read()
        seg = _Segment(number, mtime=os.stat(path).st_mtime)
        view = memoryview(data)
        pos = 0
        while pos + _HEAD.size <= len(data):
            length, crc = _HEAD.unpack_from(data, pos)
            end = pos + _HEAD.size + length
            if end > len(data) or zlib.crc32(view[pos + _HEAD.size : end]) != crc:
                break
            pos = end
            seg.count += 1
        if pos != len(data):  # a torn tail: cut it off so later appends stay readable
            os.truncate(path, pos)
        seg.size = pos
        ack_path = self._path(number, "ack")
        if os.path.exists(ack_path):
            with open(ack_path, "rb") as f:
                acks = f.read()
            whole = len(acks) - len(acks) % _ACK.size
            seg.settled = {i for (i,) in _ACK.iter_unpack(acks[:whole]) if i < seg.count}
            if whole != len(acks):
                os.truncate(ack_path, whole)
        return seg

    def _new_segment(self) -> _Segment:
        number = self._segments[-1].number + 1 if self._segments else 1
        seg = _Segment(number, mtime=self._clock())
        self._write_fd = os.open(self._path(number, "seg"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._segments.append(seg)
        return seg

    def _delete(self, seg: _Segment) -> None:
        if seg.fd >= 0:
            os.close(seg.fd)
            seg.fd = -1
        for ext in ("seg", "ack"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path(seg.number, ext))

    def _note_drop(self, reason: str, count: int) -> None:
        if count:
            self._unreported[reason] = self._unreported.get(reason, 0) + count

    # -- the host's path ----------------------------------------------------------------

    def put(self, packed: bytes) -> int:
        frame = _HEAD.pack(len(packed), zlib.crc32(packed)) + packed
        with self._lock:
            if self._closed:
                return self._fallback.put(packed)
            dropped = 0
            if self._bytes + len(frame) > self.config.max_bytes:
                if not self._drop_oldest:
                    return 1
                dropped = self._drop_oldest_segments(len(frame))
            try:
                if self._active.size + len(frame) > self.config.segment_bytes and self._active.count:
                    self._rotate()  # a full disk may refuse the new file: then nothing changed, fall back
                written = os.write(self._write_fd, frame)
                if written != len(frame):
                    raise OSError("short write")
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(self._write_fd, self._active.size)
                return dropped + self._fallback.put(packed)
            seg = self._active
            seg.count += 1
            seg.size += len(frame)
            seg.mtime = self._clock()
            self._bytes += len(frame)
            self._pending += 1
            self._dirty = True
            return dropped

    def _rotate(self) -> None:
        """Start a new active segment; raises OSError, with nothing changed, when the file cannot be made."""
        old = self._write_fd
        if self.config.fsync_interval_s > 0:
            with contextlib.suppress(OSError):
                os.fsync(old)
        self._active = self._new_segment()  # the old descriptor is closed only once the new one exists
        os.close(old)

    def _drop_oldest_segments(self, need: int) -> int:
        dropped = 0
        while self._bytes + need > self.config.max_bytes and self._segments:
            if self._segments[0] is self._active:
                if not self._active.count:
                    break
                try:
                    self._rotate()
                except OSError:
                    break  # no room for a new segment: keep the active one (the write falls back to memory)
            seg = self._segments.pop(0)
            lost = self._unsent(seg)
            dropped += lost
            self._pending -= lost
            self._bytes -= seg.size
            self._delete(seg)
        return dropped

    @staticmethod
    def _unsent(seg: _Segment) -> int:
        return seg.count - seg.taken - sum(1 for i in seg.settled if i >= seg.taken)

    # -- the sender's path ------------------------------------------------------------------

    def take(self, max_events: int, max_bytes: int) -> tuple[list[bytes], list[Any]]:
        events, refs = self._fallback.take(max_events, max_bytes)
        refs = [None] * len(events)
        size = sum(map(len, events))
        with self._lock:
            self._expire()
            self._report_drops()
            self._sync()
            for seg in list(self._segments):
                if len(events) >= max_events or size >= max_bytes:
                    break
                size = self._take_from(seg, events, refs, size, max_events=max_events, max_bytes=max_bytes)
        return events, refs

    def _take_from(
        self, seg: _Segment, events: list[bytes], refs: list[Any], size: int, *, max_events: int, max_bytes: int
    ) -> int:
        if seg.taken >= seg.count:
            return size
        if seg.fd < 0:
            seg.fd = os.open(self._path(seg.number, "seg"), os.O_RDONLY)
        budget = max(max_bytes - size, 0) + _HEAD.size + (64 << 10)
        data = os.pread(seg.fd, min(seg.size - seg.offset, budget), seg.offset)
        pos = 0
        while seg.taken < seg.count and len(events) < max_events and pos + _HEAD.size <= len(data):
            length, _crc = _HEAD.unpack_from(data, pos)
            end = pos + _HEAD.size + length
            if end > len(data):
                break
            if events and size + length > max_bytes:
                break
            index = seg.taken
            seg.taken += 1
            seg.offset += end - pos
            pos = end
            if index in seg.settled:
                continue
            events.append(data[end - length : end])
            refs.append((seg, index))
            size += length
            self._pending -= 1
        return size

    def settle(self, refs: Sequence[Any]) -> None:
        by_segment: dict[_Segment, list[int]] = {}
        for ref in refs:
            if ref is not None:
                by_segment.setdefault(ref[0], []).append(ref[1])
        if not by_segment:
            return
        with self._lock:
            if self._closed:
                return
            for seg, indices in by_segment.items():
                if seg not in self._segments:
                    continue  # dropped at a cap while these were in flight
                seg.settled.update(indices)
                if seg is not self._active and len(seg.settled) >= seg.count:
                    self._segments.remove(seg)
                    self._bytes -= seg.size
                    self._delete(seg)
                    continue
                with contextlib.suppress(OSError):
                    fd = os.open(self._path(seg.number, "ack"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                    try:
                        os.write(fd, b"".join(_ACK.pack(i) for i in indices))
                    finally:
                        os.close(fd)

    def _expire(self) -> None:
        now = self._clock()
        for seg in list(self._segments):
            if seg is self._active or now - seg.mtime <= self.config.max_age_s:
                continue
            lost = self._unsent(seg)
            self._pending -= lost
            self._bytes -= seg.size
            self._segments.remove(seg)
            self._delete(seg)
            self._note_drop(EXPIRED, lost)

    def _sync(self) -> None:
        interval = self.config.fsync_interval_s
        now = self._clock()
        if interval > 0 and self._dirty and now - self._last_fsync >= interval:
            with contextlib.suppress(OSError):
                os.fsync(self._write_fd)
            self._last_fsync = now
            self._dirty = False

    def _report_drops(self) -> None:
        if not self._unreported or self._on_drop is None:
            return
        drops, self._unreported = self._unreported, {}
        for reason, count in drops.items():
            self._on_drop(reason, count)

    def pending(self) -> int:
        return self._pending + self._fallback.pending()

    def disk_bytes(self) -> int:
        return self._bytes

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            with contextlib.suppress(OSError):
                if self.config.fsync_interval_s > 0:
                    os.fsync(self._write_fd)
                os.close(self._write_fd)
            for seg in self._segments:
                if seg.fd >= 0:
                    os.close(seg.fd)
                    seg.fd = -1
            if len(self._active.settled) >= self._active.count:
                self._delete(self._active)
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)

    def abandon(self) -> None:
        """In a forked child: forget the parent's spool without touching its lock or files."""
        self._closed = True
