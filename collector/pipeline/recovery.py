"""Deduplication's memory across restarts: a snapshot plus the frame heads written after it.

A starting collector, a reader that appends (the quarantine replay) and the
background follower of other writers' segments all restore or extend the
same state here, from the heads alone (store/heads.py), so a restart is ready
in well under 2 s and never marks an id seen before its frame is on disk.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import msgspec

from maidian.collector.pipeline.dedup import ScopedSeenIds
from maidian.collector.store.frames import read_frames, segment_files
from maidian.collector.store.log import DataDir

__all__ = ["DedupState", "follow_segments", "load_dedup_state"]

log = logging.getLogger("maidian.collector")


@dataclass(slots=True)
class DedupState:
    """What deduplication knows, and the log offsets that knowledge covers."""

    seen: ScopedSeenIds
    quarantined: ScopedSeenIds
    # (log, segment) -> offset read up to
    offsets: dict[tuple[str, str], int] = field(default_factory=dict)


def load_dedup_state(data: DataDir, writer: str | None, window_s: float, now_ms: int) -> DedupState:
    """Restore dedup from a snapshot (when `writer` has one) plus every frame head after it."""
    state = DedupState(ScopedSeenIds(window_s), ScopedSeenIds(window_s))
    if writer is not None:
        path = data.snapshot(writer)
        try:
            snap = msgspec.msgpack.decode(path.read_bytes())
        except FileNotFoundError:
            snap = None
        except (msgspec.DecodeError, OSError):
            log.warning("dedup snapshot %s is unreadable; rebuilding from the log", path.name)
            snap = None
        if snap is not None:
            try:
                state.seen.restore(snap["seen"])
                state.quarantined.restore(snap["quarantined"])
                state.offsets = {(lg, seg): int(off) for lg, seg, off in snap["offsets"]}
            except ValueError:
                # Written before ids were scoped by sender: the heads hold the scopes, read them all once.
                log.warning("dedup snapshot %s predates sender scopes; rebuilding from the log", path.name)
                state = DedupState(ScopedSeenIds(window_s), ScopedSeenIds(window_s))
    follow_segments(data, state, None)
    state.seen.expire(now_ms)
    state.quarantined.expire(now_ms)
    return state


def follow_segments(data: DataDir, state: DedupState, skip_writer: str | None) -> int:
    """Read frame heads past the known offsets into `state`; returns the frames read."""
    count = 0
    for log_name, directory in (("raw", data.raw), ("quarantine", data.quarantine)):
        target = state.seen if log_name == "raw" else state.quarantined
        for path in segment_files(directory):
            if skip_writer is not None and path.name.startswith(skip_writer + "-"):
                continue
            key = (log_name, path.name)
            start = state.offsets.get(key, 0)
            try:
                if path.stat().st_size <= start:
                    continue
            except FileNotFoundError:
                continue
            frames, end = read_frames(path, start)
            for frame in frames:
                target.add_frame(frame.head)
            count += len(frames)
            if frames or start == 0:
                state.offsets[key] = max(end, start)
    return count
