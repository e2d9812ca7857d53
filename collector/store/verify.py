"""Checking every frame of a data directory's logs: what `maidian verify` reports.

`verify` reads every segment of `raw/` and `quarantine/` from its first byte
(frames.py, `scan`), whatever the catalog or a snapshot already vouched for,
so it also finds damage that happened after the frames were indexed (a disk
that flips bits at rest). It needs no server and writes nothing; it is safe
while the server runs.

What it reports, per segment:
- damaged frames: bytes that are not a valid frame, with the valid frames on
  both sides kept; the offset, the length, and the event ids the damaged
  frame's head still names (its events are the loss);
- a torn tail: the bytes an interrupted append left at the end (never
  acknowledged; the writer's next start truncates them). At the end of a
  segment its writer is still appending to, it may be a frame being written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from maidian.collector.store.frames import Damage, scan_segment, sealed, segment_files
from maidian.collector.store.log import DataDir

__all__ = ["DamagedFrame", "SegmentCheck", "Verification", "verify"]


@dataclass(frozen=True, slots=True)
class DamagedFrame:
    """A damaged frame and the log it is in."""

    log: str
    damage: Damage


@dataclass(frozen=True, slots=True)
class SegmentCheck:
    """One segment as verified."""

    log: str
    segment: str
    size_bytes: int
    frames: int
    events: int
    damaged: tuple[Damage, ...]
    torn_bytes: int
    sealed: bool


@dataclass(frozen=True, slots=True)
class Verification:
    """Every segment of a data directory, checked."""

    segments: tuple[SegmentCheck, ...]

    @property
    def damaged(self) -> list[DamagedFrame]:
        return [DamagedFrame(s.log, d) for s in self.segments for d in s.damaged]

    @property
    def frames(self) -> int:
        return sum(s.frames for s in self.segments)

    @property
    def events(self) -> int:
        return sum(s.events for s in self.segments)

    @property
    def lost_event_ids(self) -> list[str]:
        return [eid for d in self.damaged for eid in d.damage.event_ids]

    @property
    def clean(self) -> bool:
        return not any(s.damaged for s in self.segments)


def verify(data: DataDir) -> Verification:
    """Check every frame of every segment of both logs."""
    out: list[SegmentCheck] = []
    for log, directory in (("raw", data.raw), ("quarantine", data.quarantine)):
        for path in segment_files(directory):
            out.append(_check(log, path))
    return Verification(tuple(out))


def _check(log: str, path: Path) -> SegmentCheck:
    found = scan_segment(path)
    damaged = list(found.damaged)
    torn = 0
    if found.tail is not None:
        if found.tail_torn:
            torn = found.tail.length
        else:
            damaged.append(found.tail)
    events = sum(int(f.head.get("n", 0)) for f in found.frames)
    return SegmentCheck(log, path.name, found.size, len(found.frames), events, tuple(damaged), torn, sealed(path))
