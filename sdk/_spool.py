"""The disk spool: packed events that survive `kill -9` and wait for the next client.

One configured path serves any number of processes. Each live client claims a
*slot*, a directory of its own under the path, by locking it:

    <path>/                   slot 0 (the layout of a single-process spool)
        lock                  flock(LOCK_EX) by the live client that owns the slot
        source.json           the slot's source id, next sequence number and drop counts,
                              written at a clean close and removed when the slot is claimed
        000000000001.seg      frames: <u32 length><u32 crc32><packed event>, appended
        000000000001.ack      u32 frame numbers of that segment the collector has settled
        slot-1/, slot-2/ ...  slots 1, 2, ...: the same files

Rules:
- A client claims the lowest slot whose lock is free (its previous owner is
  gone, or there was none), so worker N of a restarted server usually takes
  back its own files. It then *adopts* every other unlocked slot that still
  holds segments (an orphan of a process that died and was not replaced): it
  holds their locks and sends their frames first, with their original ids, so
  nothing is stranded however the number of processes changes.
- The lock descriptors are close-on-exec, and a forked child closes its copies
  without unlocking (`abandon`): a child outliving its parent never keeps the
  parent's slot locked.
- `put` (the host's thread) appends one frame with one `write(2)` to the active
  segment: once it returns, the event is in the OS and survives the death of
  the process. It never calls fsync: the sender fsyncs the active segment at
  most every `SpoolConfig.fsync_interval_s`, and a segment retired by rotation
  is fsynced and closed by the sender, outside the spool's lock.
- The sender reads frames back in order (`take`), and records settled frames
  in the segment's `.ack` file (`settle`). A segment whose every frame is
  settled, and that is no longer written to, is deleted with its `.ack`.
- On open, a torn tail (a frame cut short, or whose checksum fails) is
  truncated away; settled frames are skipped; everything else is sent again
  with its original event id, so the collector's deduplication absorbs any
  frame that was delivered but whose settlement was not yet written.
- The slot's source id is persisted (`source.json`): a client that closed
  cleanly leaves its source id and the next sequence number, and the next
  owner of the slot continues the same range, so the collector's
  deduplication ranges stay one per device. The file is removed (and the
  removal made durable) when a slot is claimed, so after a crash or a power
  cut the next owner starts a new source: a sequence number is never reused.
- Caps (per slot): total bytes (`max_bytes`) and age (`max_age_s`, judged by a
  segment's last write). At the byte cap, `drop_oldest` deletes the oldest
  segment, `drop_newest` refuses the new event; expired segments are deleted.
  Only frames that were never handed to the sender count as dropped (a frame in
  flight still has its bytes in memory), and every drop is counted.
- If the disk refuses a write (ENOSPC, EIO), or a new segment file, the
  partial frame is cut off and the event goes to a bounded memory buffer
  instead; the spool is tried again on the next event. A segment's
  descriptor is retired only once the next segment's file exists.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from ._buffer import MemoryBuffer
from .config import QueueLimits, SpoolConfig
from .errors import ConfigError

__all__ = ["SourceRecord", "Spool", "read_opt_out", "write_opt_out"]

_HEAD: Final = struct.Struct("<II")
_ACK: Final = struct.Struct("<I")
EXPIRED: Final = "expired"
OVERFLOW: Final = "overflow"
RECORD: Final = "source.json"
OPTED_OUT: Final = "opted_out"
SLOT_PREFIX: Final = "slot-"
# Slots are claimed lowest first; more than this many live processes on one path is a configuration mistake.
MAX_SLOTS: Final = 4096


class SourceRecord(msgspec.Struct, frozen=True):
    """What a slot remembers after a clean close: whose events it held and where their ids stopped."""

    source: str
    next_seq: int
    dropped: dict[str, int] = msgspec.field(default_factory=dict)


@dataclass(slots=True, eq=False)
class _Segment:
    directory: str
    number: int
    count: int = 0  # frames in the file
    size: int = 0  # bytes in the file
    taken: int = 0  # frames [0, taken) were handed to the sender (or skipped as settled)
    offset: int = 0  # file offset of frame `taken`
    settled: set[int] = field(default_factory=set)
    mtime: float = 0.0
    fd: int = -1  # read descriptor, opened on demand


def _slot_dir(root: str, index: int) -> str:
    return root if index == 0 else os.path.join(root, f"{SLOT_PREFIX}{index}")


def _try_lock(directory: str) -> int | None:
    """A locked descriptor of `directory`'s lock file, or None when a live client holds it."""
    fd = os.open(os.path.join(directory, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    return fd


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _segment_numbers(directory: str) -> list[int]:
    return sorted(int(n[:-4]) for n in os.listdir(directory) if n.endswith(".seg") and n[:-4].isdigit())


def read_opt_out(root: str) -> bool:
    """True when the device behind this spool path opted out (`write_opt_out`)."""
    return os.path.exists(os.path.join(root, OPTED_OUT))


def write_opt_out(root: str, opted_out: bool) -> None:
    """Persist the device's consent choice next to its spool, durably."""
    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, OPTED_OUT)
    if opted_out:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    _fsync_dir(root)


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
        self._root = config.path
        self._adopted: dict[str, int] = {}  # orphan slot directory -> its lock descriptor
        try:
            os.makedirs(self._root, exist_ok=True)
            self._dir, self._lock_fd = self._claim()
            self.record = self._take_record()
        except OSError as exc:
            raise ConfigError(f"spool {self._root!r} cannot be opened: {exc}") from exc
        self._fallback = MemoryBuffer(queue.max_events, queue.overflow)
        self._unreported: dict[str, int] = {}
        self._segments: list[_Segment] = []
        self._retired: list[int] = []  # write descriptors of rotated segments: the sender fsyncs and closes them
        self._pending = 0
        self._bytes = 0
        self._closed = False
        self._last_fsync = 0.0
        self._dirty = False
        self._next_number = 1
        try:
            self._adopt_orphans()
            self._recover(self._dir)
            self._active = self._new_segment()
        except OSError as exc:
            self._release()
            raise ConfigError(f"spool {self._root!r} cannot be opened: {exc}") from exc

    @property
    def slot(self) -> str:
        """The directory this client owns."""
        return self._dir

    # -- slots, recovery ----------------------------------------------------------------

    def _claim(self) -> tuple[str, int]:
        for index in range(MAX_SLOTS):
            directory = _slot_dir(self._root, index)
            os.makedirs(directory, exist_ok=True)
            fd = _try_lock(directory)
            if fd is not None:
                return directory, fd
        raise ConfigError(f"spool {self._root!r}: all {MAX_SLOTS} slots are held by live clients")

    def _take_record(self) -> SourceRecord | None:
        """Read the slot's record of a clean close, and remove it durably: it is good for one life only."""
        path = os.path.join(self._dir, RECORD)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        os.unlink(path)
        _fsync_dir(self._dir)
        try:
            record = msgspec.json.decode(data, type=SourceRecord)
        except msgspec.DecodeError:
            return None
        return record if record.next_seq >= 1 else None

    def _adopt_orphans(self) -> None:
        candidates = [_slot_dir(self._root, 0)]
        with os.scandir(self._root) as entries:
            for entry in entries:
                suffix = entry.name[len(SLOT_PREFIX) :]
                if entry.name.startswith(SLOT_PREFIX) and suffix.isdigit() and entry.is_dir():
                    candidates.append(entry.path)
        for directory in candidates:
            if directory == self._dir or not _segment_numbers(directory):
                continue
            fd = _try_lock(directory)
            if fd is None:
                continue  # a live client owns it
            self._adopted[directory] = fd
            self._recover(directory)
            if not any(seg.directory == directory for seg in self._segments):
                self._let_go(directory)

    def _let_go(self, directory: str) -> None:
        fd = self._adopted.pop(directory, None)
        if fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _path(self, seg: _Segment, ext: str) -> str:
        return os.path.join(seg.directory, f"{seg.number:012d}.{ext}")

    def _recover(self, directory: str) -> None:
        now = self._clock()
        for number in _segment_numbers(directory):
            if directory == self._dir:
                self._next_number = number + 1
            seg = self._scan(directory, number)
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

    def _scan(self, directory: str, number: int) -> _Segment:
        seg = _Segment(directory, number)
        path = self._path(seg, "seg")
        with open(path, "rb") as f:
            data = f.read()
        seg.mtime = os.stat(path).st_mtime
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
        ack_path = self._path(seg, "ack")
        if os.path.exists(ack_path):
            with open(ack_path, "rb") as f:
                acks = f.read()
            whole = len(acks) - len(acks) % _ACK.size
            seg.settled = {i for (i,) in _ACK.iter_unpack(acks[:whole]) if i < seg.count}
            if whole != len(acks):
                os.truncate(ack_path, whole)
        return seg

    def _new_segment(self) -> _Segment:
        seg = _Segment(self._dir, self._next_number, mtime=self._clock())
        self._write_fd = os.open(self._path(seg, "seg"), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self._next_number += 1
        self._segments.append(seg)
        return seg

    def _delete(self, seg: _Segment) -> None:
        if seg.fd >= 0:
            os.close(seg.fd)
            seg.fd = -1
        for ext in ("seg", "ack"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path(seg, ext))

    def _forget(self, seg: _Segment) -> None:
        """Remove a segment from the spool and the disk; an adopted slot left empty is released."""
        self._segments.remove(seg)
        self._delete(seg)
        if seg.directory in self._adopted and not any(s.directory == seg.directory for s in self._segments):
            self._let_go(seg.directory)

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
        """Start a new active segment; raises OSError, with nothing changed, when the file cannot be made.

        The old descriptor is retired, not fsynced here: this runs on the host's thread.
        """
        old = self._write_fd
        self._active = self._new_segment()
        self._retired.append(old)

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
            seg = self._segments[0]
            lost = self._unsent(seg)
            dropped += lost
            self._pending -= lost
            self._bytes -= seg.size
            self._forget(seg)
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
            retired, self._retired = self._retired, []
            sync_fd = self._due_sync()
            for seg in list(self._segments):
                if len(events) >= max_events or size >= max_bytes:
                    break
                size = self._take_from(seg, events, refs, size, max_events=max_events, max_bytes=max_bytes)
        self._sync_outside_lock(retired, sync_fd)
        return events, refs

    def _due_sync(self) -> int:
        """The active descriptor when an fsync is due (the caller fsyncs it outside the lock), else -1."""
        interval = self.config.fsync_interval_s
        now = self._clock()
        if interval > 0 and self._dirty and now - self._last_fsync >= interval:
            self._last_fsync = now
            self._dirty = False
            return self._write_fd
        return -1

    def _sync_outside_lock(self, retired: list[int], sync_fd: int) -> None:
        fsync = self.config.fsync_interval_s > 0
        for fd in retired:
            with contextlib.suppress(OSError):
                if fsync:
                    os.fsync(fd)
                os.close(fd)
        if sync_fd >= 0:
            # A concurrent close() may have closed it: EBADF is harmless here.
            with contextlib.suppress(OSError):
                os.fsync(sync_fd)

    def _take_from(
        self, seg: _Segment, events: list[bytes], refs: list[Any], size: int, *, max_events: int, max_bytes: int
    ) -> int:
        if seg.taken >= seg.count:
            return size
        if seg.fd < 0:
            seg.fd = os.open(self._path(seg, "seg"), os.O_RDONLY | os.O_CLOEXEC)
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
                    self._bytes -= seg.size
                    self._forget(seg)
                    continue
                with contextlib.suppress(OSError):
                    fd = os.open(self._path(seg, "ack"), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
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
            self._forget(seg)
            self._note_drop(EXPIRED, lost)

    def _report_drops(self) -> None:
        if not self._unreported or self._on_drop is None:
            return
        drops, self._unreported = self._unreported, {}
        for reason, count in drops.items():
            self._on_drop(reason, count)

    def pending(self) -> int:
        return self._pending + self._fallback.pending()

    def memory_pending(self) -> int:
        """Events waiting in the memory fallback (a refusing disk): they do not outlive the process."""
        return self._fallback.pending()

    def disk_bytes(self) -> int:
        return self._bytes

    def purge(self) -> int:
        """Delete every waiting event, on disk and in memory (opt-out); returns how many were waiting."""
        with self._lock:
            if self._closed:
                return 0
            gone = self.pending()
            self._fallback.clear()
            for seg in list(self._segments):
                if seg is not self._active:
                    self._forget(seg)
            old = self._write_fd
            with contextlib.suppress(OSError):
                os.ftruncate(old, 0)
            active = self._active
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path(active, "ack"))
            active.count = active.size = active.taken = active.offset = 0
            active.settled = set()
            self._pending = 0
            self._bytes = 0
            return gone

    def close(self, record: SourceRecord | None = None) -> None:
        """Release the slot; with `record`, leave it for the slot's next owner (a clean close)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            fsync = self.config.fsync_interval_s > 0
            for fd in [*self._retired, self._write_fd]:
                with contextlib.suppress(OSError):
                    if fsync:
                        os.fsync(fd)
                    os.close(fd)
            self._retired = []
            for seg in self._segments:
                if seg.fd >= 0:
                    os.close(seg.fd)
                    seg.fd = -1
            if len(self._active.settled) >= self._active.count:
                self._delete(self._active)
            if record is not None:
                with contextlib.suppress(OSError):
                    self._write_record(record)
            self._release()

    def _write_record(self, record: SourceRecord) -> None:
        path = os.path.join(self._dir, RECORD)
        scratch = path + ".new"
        fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, msgspec.json.encode(record))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(scratch, path)
        _fsync_dir(self._dir)

    def _release(self) -> None:
        for directory in list(self._adopted):
            self._let_go(directory)
        with contextlib.suppress(OSError):
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        with contextlib.suppress(OSError):
            os.close(self._lock_fd)

    def abandon(self) -> None:
        """In a forked child: close the inherited descriptors without unlocking or touching the parent's files.

        flock belongs to the open file description the parent shares: closing the
        child's copies leaves the parent's locks held, and unlocking would release them.
        """
        self._closed = True
        fds = [self._lock_fd, self._write_fd, *self._retired, *self._adopted.values()]
        fds += [seg.fd for seg in self._segments if seg.fd >= 0]
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
