"""The raw and quarantine logs on local disk: the writer that appends to them.

Appending happens here only; the privacy operations' segment rewrites
(rewrite.py) replace whole segments through `write_atomically`, with every
writer lock held.

A data directory (docs/collector.md, "Data directory")::

    raw/          accepted events: <writer>-<n>.seg segments (frames.py)
    quarantine/   quarantined events with their reasons, same format
    state/        dedup snapshots (dedup-<writer>.snap) and writer locks
    catalog.sqlite, identity.sqlite   derived state, rebuildable from the logs

Each writer process owns the segments named after its writer id (`w0`, `w1`,
...) and holds an exclusive lock on them; any number of readers may read any
segment at any time.

Durability (`StorageConfig.durability`):
- `fsync` (default): a frame is appended with one write, and the request that
  made it is answered only after an fsync that started after the write has
  returned. One fsync covers every frame written before it started (group
  commit): while one fsync runs, new frames gather for the next.
- `write`: the request is answered once the write has returned (the frame is
  in the kernel's page cache, safe from a process crash); a background fsync
  runs every `sync_interval_ms`, so a power loss loses at most the frames
  acknowledged in the last interval plus the fsync's own duration.

A failed write (ENOSPC, EIO) is truncated back so the segment never holds a
torn frame in its interior, the writer is marked unhealthy (`/readyz` 503), and
the request gets 503 with Retry-After; nothing unpersisted is acknowledged. The
next write tries again, so serving resumes as soon as space is back. A failed
fsync retires the segment (the kernel may have dropped its dirty pages) and
fails every request waiting on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from maidian.collector.errors import DataDirError, Unavailable
from maidian.collector.settings import Durability
from maidian.collector.store.frames import MAGIC, Damage, scan_segment, segment_files

__all__ = [
    "Appended",
    "DataDir",
    "LogWriter",
    "Recovered",
    "sync_dir",
    "try_lock",
    "write_atomically",
]

# Seconds a sender is asked to wait when the disk refuses a write: long enough
# for an operator or a log rotation to free space, short enough to catch up fast.
DISK_RETRY_AFTER_S: Final = 5.0
# Seconds to wait when the writer is behind: about a hundred group commits.
BEHIND_RETRY_AFTER_S: Final = 1.0


@dataclass(frozen=True, slots=True)
class DataDir:
    """The layout of a data directory."""

    root: Path

    @property
    def raw(self) -> Path:
        return self.root / "raw"

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def catalog(self) -> Path:
        return self.root / "catalog.sqlite"

    @property
    def identity(self) -> Path:
        return self.root / "identity.sqlite"

    def snapshot(self, writer: str) -> Path:
        return self.state / f"dedup-{writer}.snap"

    @classmethod
    def existing(cls, path: Path | str) -> DataDir:
        """The data directory at `path`, for readers: refused when it is not one (it has no `raw/`)."""
        data = cls(Path(path))
        if not data.raw.is_dir():
            raise DataDirError(f"{path}: not a maidian data directory (no raw/ in it)")
        return data

    def create(self) -> DataDir:
        for d in (self.root, self.raw, self.quarantine, self.state):
            d.mkdir(parents=True, exist_ok=True)
        return self


# What `write_atomically` names its new file before the rename; a crash may leave one behind.
TMP_SUFFIX: Final = ".tmp"


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that a crash leaves either the old or the new file, synced."""
    tmp = path.with_suffix(path.suffix + TMP_SUFFIX)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    sync_dir(path.parent)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def sync_dir(directory: Path) -> None:
    """Make a directory's entries (new, renamed, deleted files) durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def try_lock(path: Path) -> int | None:
    """An exclusive lock on `path` (created if missing), held by the returned descriptor; None when taken."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


@dataclass(frozen=True, slots=True)
class Appended:
    """Where a frame went; `committed` resolves once it is durable (None: already durable enough)."""

    segment: str
    offset: int
    end: int
    committed: asyncio.Future[None] | None


@dataclass(frozen=True, slots=True)
class Recovered:
    """What start-up recovery found in one writer's segments."""

    segments: int
    torn_bytes: dict[str, int] = field(default_factory=dict)
    # Frames that fail their checks (interior, or a whole frame at a segment's end): reported, kept in place.
    damaged: list[Damage] = field(default_factory=list)


@dataclass(slots=True)
class _Segment:
    name: str
    fd: int
    size: int
    created_s: float


class LogWriter:
    """Appends frames to one writer's segments in a log directory, with group commit.

    Use from one asyncio event loop: `append` is synchronous (one write
    syscall); in `fsync` mode its `committed` future resolves after the
    covering fsync, which runs on a helper thread so that writes continue
    meanwhile. `append_sync` writes and fsyncs at once, for offline tools.
    """

    def __init__(
        self,
        directory: Path,
        writer: str,
        *,
        durability: Durability = "fsync",
        sync_interval_s: float = 0.2,
        segment_max_bytes: int = 128 << 20,
        segment_max_age_s: float = 3600.0,
        max_unsynced_bytes: int = 64 << 20,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self.writer = writer
        self.durability = durability
        self.sync_interval_s = sync_interval_s
        self.segment_max_bytes = segment_max_bytes
        self.segment_max_age_s = segment_max_age_s
        self.max_unsynced_bytes = max_unsynced_bytes
        self._clock = clock
        self._lock_fd: int | None = None
        self._current: _Segment | None = None
        self._retired: list[_Segment] = []
        self._next_number = 1
        self.healthy = True
        self.last_error: str | None = None
        self.written_bytes = 0
        self.synced_bytes = 0
        self.fsync_count = 0
        self.fsync_seconds = 0.0
        self.fsync_seconds_max = 0.0
        self.write_errors = 0
        # Synced end offset per segment name: what a dedup snapshot may claim as covered.
        self.synced_ends: dict[str, int] = {}
        self._pending_ends: dict[str, int] = {}
        self._round: asyncio.Future[None] | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._closing = False

    # -- opening and recovery --------------------------------------------------

    def open(self, verified: Mapping[str, int] | None = None) -> Recovered:
        """Lock this writer's segments, truncate torn tails (and nothing else), and start a new segment.

        Damaged frames (frames.py: interior ones, or a whole frame at a
        segment's end) are left in place and returned in `Recovered.damaged`.

        `verified` maps segment names to offsets already known good (from a
        snapshot), so only the bytes after them are checked.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = try_lock(self.directory / f"{self.writer}.lock")
        if fd is None:
            raise DataDirError(
                f"{self.directory}: writer {self.writer!r} is in use by another process; give each process its own"
                " writer id"
            )
        self._lock_fd = fd
        torn: dict[str, int] = {}
        damaged: list[Damage] = []
        segments = segment_files(self.directory, self.writer)
        for path in segments:
            start = (verified or {}).get(path.name, 0)
            size = path.stat().st_size
            if start > size:
                start = 0
            found = scan_segment(path, start)
            damaged.extend(found.damaged)
            end = found.size
            if found.tail is not None:
                if found.tail_torn:
                    end = found.end
                else:
                    damaged.append(found.tail)
            if end < size:
                torn[path.name] = size - end
                with open(path, "r+b") as f:
                    f.truncate(end)
                    f.flush()
                    os.fsync(f.fileno())
            self.synced_ends[path.name] = end
            number = _number_of(path.name)
            self._next_number = max(self._next_number, number + 1)
        return Recovered(segments=len(segments), torn_bytes=torn, damaged=damaged)

    def _new_segment(self) -> _Segment:
        name = f"{self.writer}-{self._next_number:08d}.seg"
        self._next_number += 1
        path = self.directory / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        try:
            _write_all(fd, MAGIC)
            os.fsync(fd)
            sync_dir(self.directory)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        self.synced_ends[name] = len(MAGIC)
        return _Segment(name, fd, len(MAGIC), self._clock())

    # -- appending -------------------------------------------------------------

    @property
    def unsynced_bytes(self) -> int:
        return self.written_bytes - self.synced_bytes

    @property
    def current_segment(self) -> str | None:
        return None if self._current is None else self._current.name

    def _segment_for(self, size: int) -> _Segment:
        seg = self._current
        if seg is not None and seg.size > len(MAGIC):
            full = seg.size + size > self.segment_max_bytes
            old = self._clock() - seg.created_s > self.segment_max_age_s
            if full or old:
                self._retired.append(seg)
                seg = None
                self._current = None
        if seg is None:
            seg = self._current = self._new_segment()
        return seg

    def _write(self, frame: bytes) -> tuple[_Segment, int]:
        if self._closing:
            raise Unavailable("the collector is shutting down", retry_after_s=BEHIND_RETRY_AFTER_S)
        if self.durability == "fsync" and self.unsynced_bytes > self.max_unsynced_bytes:
            raise Unavailable("the log writer is behind; retry later", retry_after_s=BEHIND_RETRY_AFTER_S)
        try:
            seg = self._segment_for(len(frame))
        except OSError as exc:
            self._fail(exc)
            raise Unavailable("the collector cannot write to its disk", retry_after_s=DISK_RETRY_AFTER_S) from exc
        offset = seg.size
        try:
            _write_all(seg.fd, frame)
        except OSError as exc:
            self._fail(exc)
            try:
                os.ftruncate(seg.fd, offset)
            except OSError:
                # Cannot take the torn bytes back: stop using this segment. Recovery
                # truncates it at the next start, and readers stop at the torn frame.
                self._retired.append(seg)
                self._current = None
            raise Unavailable("the collector cannot write to its disk", retry_after_s=DISK_RETRY_AFTER_S) from exc
        seg.size += len(frame)
        self.written_bytes += len(frame)
        self._pending_ends[seg.name] = seg.size
        return seg, offset

    def _fail(self, exc: OSError) -> None:
        self.healthy = False
        self.write_errors += 1
        self.last_error = os.strerror(exc.errno) if exc.errno else type(exc).__name__

    def append(self, frame: bytes) -> Appended:
        """Append one encoded frame; raise `Unavailable` (503) when it cannot be written."""
        seg, offset = self._write(frame)
        if self.durability == "write":
            self._mark_good()
            return Appended(seg.name, offset, seg.size, None)
        if self._round is None:
            self._round = asyncio.get_running_loop().create_future()
        if self._wake is not None:
            self._wake.set()
        return Appended(seg.name, offset, seg.size, self._round)

    def append_sync(self, frame: bytes) -> Appended:
        """Append one frame and fsync it before returning (offline tools)."""
        seg, offset = self._write(frame)
        os.fsync(seg.fd)
        self.synced_bytes = self.written_bytes
        self.synced_ends.update(self._pending_ends)
        self._pending_ends.clear()
        self._mark_good()
        return Appended(seg.name, offset, seg.size, None)

    def _mark_good(self) -> None:
        if not self.healthy:
            self.healthy = True
            self.last_error = None

    # -- syncing -----------------------------------------------------------------

    async def start(self) -> None:
        """Start the group-commit (or periodic sync) task on the running loop."""
        self._wake = asyncio.Event()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"maidian-fsync-{self.writer}")
        self._task = asyncio.create_task(self._sync_loop(), name=f"maidian-sync-{self.writer}")

    def _sync_fds(self, fds: list[int]) -> float:
        started = time.perf_counter()
        for fd in fds:
            os.fsync(fd)
        return time.perf_counter() - started

    async def sync_once(self) -> None:
        """Make every frame written so far durable; resolve (or fail) the requests waiting for it."""
        assert self._pool is not None
        waiting, self._round = self._round, None
        target = self.written_bytes
        ends = dict(self._pending_ends)
        self._pending_ends.clear()
        retired, self._retired = self._retired, []
        segments = [*retired, *([self._current] if self._current is not None else [])]
        loop = asyncio.get_running_loop()
        try:
            took = await loop.run_in_executor(self._pool, self._sync_fds, [s.fd for s in segments])
        except OSError as exc:
            self._fail(exc)
            # The kernel may have dropped the dirty pages: never write to this segment again.
            if self._current is not None and self._current in segments:
                self._retired.append(self._current)
                self._current = None
            for seg in retired:
                with contextlib.suppress(OSError):
                    os.close(seg.fd)
            if waiting is not None and not waiting.done():
                waiting.set_exception(
                    Unavailable("the collector cannot sync its disk", retry_after_s=DISK_RETRY_AFTER_S)
                )
                waiting.exception()  # retrieved here; requests that await it see it too
            return
        for seg in retired:
            with contextlib.suppress(OSError):
                os.close(seg.fd)
        self.fsync_count += 1
        self.fsync_seconds += took
        self.fsync_seconds_max = max(self.fsync_seconds_max, took)
        self.synced_bytes = max(self.synced_bytes, target)
        self.synced_ends.update(ends)
        self._mark_good()
        if waiting is not None and not waiting.done():
            waiting.set_result(None)

    async def _sync_loop(self) -> None:
        assert self._wake is not None
        while True:
            if self.durability == "fsync":
                await self._wake.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.sync_interval_s)
            self._wake.clear()
            if self._pending_ends or self._retired or self._round is not None:
                await self.sync_once()
            if self._closing:
                return

    async def close(self) -> None:
        """Refuse new frames, sync everything written, and release the segments and the lock.

        The sync task is asked to finish rather than cancelled, so a commit in
        progress still resolves (or fails) the requests waiting for it.
        """
        self._closing = True
        if self._task is not None and self._wake is not None:
            self._wake.set()
            await self._task
            self._task = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self.close_sync()

    def close_sync(self) -> None:
        """Sync and close without an event loop (offline tools, and after `close`)."""
        self._closing = True
        for seg in [*self._retired, *([self._current] if self._current else [])]:
            with contextlib.suppress(OSError):
                os.fsync(seg.fd)
            with contextlib.suppress(OSError):
                os.close(seg.fd)
        self.synced_ends.update(self._pending_ends)
        self._pending_ends.clear()
        self._retired = []
        self._current = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _number_of(name: str) -> int:
    try:
        return int(name.rsplit("-", 1)[1].split(".", 1)[0])
    except (IndexError, ValueError):
        return 0


def pid_writer_id(prefix: str = "w") -> str:
    """A writer id unique to this process (tools that write while a server may be running)."""
    return f"{prefix}{os.getpid()}"
