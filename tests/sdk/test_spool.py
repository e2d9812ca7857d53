"""The disk spool on real files: recovery, the lock, caps and a refusing disk."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from maidian.sdk import _spool
from maidian.sdk._spool import SourceRecord, Spool
from maidian.sdk.config import QueueLimits, SpoolConfig
from maidian.sdk.errors import ConfigError

EVENT = b"\x81\xa1x" + b"\xa9" + b"y" * 9  # a tiny msgpack map


def frame_bytes(payload: bytes = EVENT) -> int:
    return 8 + len(payload)


def test_a_torn_tail_is_cut_and_every_whole_frame_is_resent(tmp_path: Path) -> None:
    spool = Spool(SpoolConfig(str(tmp_path), fsync_interval_s=0), QueueLimits())
    for i in range(10):
        spool.put(EVENT + bytes([i]))
    spool.close()
    (segment,) = tmp_path.glob("*.seg")
    whole = segment.stat().st_size
    with segment.open("ab") as f:
        f.write(b"\x40\x00\x00\x00\x01\x02")  # a frame header promising 64 bytes, then the process died
    again = Spool(SpoolConfig(str(tmp_path), fsync_interval_s=0), QueueLimits())
    assert segment.stat().st_size == whole
    assert again.pending() == 10
    events, refs = again.take(100, 1 << 20)
    assert events == [EVENT + bytes([i]) for i in range(10)]
    again.settle(refs[:4])
    again.close()
    third = Spool(SpoolConfig(str(tmp_path), fsync_interval_s=0), QueueLimits())
    assert third.take(100, 1 << 20)[0] == [EVENT + bytes([i]) for i in range(4, 10)]
    third.close()


def test_a_corrupt_frame_ends_the_segment_there(tmp_path: Path) -> None:
    spool = Spool(SpoolConfig(str(tmp_path), fsync_interval_s=0), QueueLimits())
    for _ in range(3):
        spool.put(EVENT)
    spool.close()
    (segment,) = tmp_path.glob("*.seg")
    data = bytearray(segment.read_bytes())
    data[frame_bytes() + 10] ^= 0xFF  # flip a byte inside the second frame
    segment.write_bytes(bytes(data))
    again = Spool(SpoolConfig(str(tmp_path), fsync_interval_s=0), QueueLimits())
    assert again.pending() == 1
    again.close()


def test_live_clients_on_one_path_each_get_a_slot_of_their_own(tmp_path: Path) -> None:
    config = SpoolConfig(str(tmp_path), fsync_interval_s=0)
    spools = [Spool(config, QueueLimits()) for _ in range(3)]
    assert len({s.slot for s in spools}) == 3
    for i, spool in enumerate(spools):
        spool.put(EVENT + bytes([i]))
    for i, spool in enumerate(spools):
        assert spool.take(10, 1 << 20)[0] == [EVENT + bytes([i])]  # nobody reads another's frames
    for spool in spools:
        spool.close()


def test_a_new_client_adopts_the_slots_of_dead_ones_so_nothing_is_stranded(tmp_path: Path) -> None:
    config = SpoolConfig(str(tmp_path), fsync_interval_s=0)
    spools = [Spool(config, QueueLimits()) for _ in range(4)]
    for i, spool in enumerate(spools):
        for j in range(5):
            spool.put(EVENT + bytes([i, j]))
    for spool in spools:
        spool.close()  # four workers gone, unsent frames left in four slots
    survivor = Spool(config, QueueLimits())  # the restarted server has one worker
    events, refs = survivor.take(100, 1 << 20)
    assert sorted(events) == sorted(EVENT + bytes([i, j]) for i in range(4) for j in range(5))
    other = Spool(config, QueueLimits())  # a second process meanwhile: the orphans are held
    assert other.pending() == 0
    survivor.settle(refs)
    survivor.close()
    other.close()
    assert not list(tmp_path.rglob("*.seg"))


def test_a_slot_held_by_a_live_client_is_never_adopted(tmp_path: Path) -> None:
    config = SpoolConfig(str(tmp_path), fsync_interval_s=0)
    live = Spool(config, QueueLimits())
    live.put(EVENT)
    newcomer = Spool(config, QueueLimits())
    assert newcomer.pending() == 0
    assert live.pending() == 1
    newcomer.close()
    live.close()


def test_the_source_id_continues_after_a_clean_close_and_never_after_a_crash(tmp_path: Path) -> None:
    config = SpoolConfig(str(tmp_path), fsync_interval_s=0)
    first = Spool(config, QueueLimits())
    assert first.record is None
    first.close(SourceRecord("a" * 32, 101, {"overflow": 3}))
    second = Spool(config, QueueLimits())
    assert second.record == SourceRecord("a" * 32, 101, {"overflow": 3})
    # second is "killed": its descriptors go away without a close, so no record is written
    second.abandon()
    third = Spool(config, QueueLimits())
    assert third.record is None, "a sequence number could be reused after a crash"
    third.close()


def test_a_spool_that_cannot_be_made_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(ConfigError, match="cannot be opened"):
        Spool(SpoolConfig(str(tmp_path / "file" / "spool")), QueueLimits())


def test_at_the_byte_cap_drop_oldest_drops_whole_old_segments_counted_exactly(tmp_path: Path) -> None:
    size = frame_bytes(EVENT + b"\0\0")
    config = SpoolConfig(str(tmp_path), max_bytes=size * 50, segment_bytes=size * 10, fsync_interval_s=0)
    spool = Spool(config, QueueLimits(overflow="drop_oldest"))
    dropped = sum(spool.put(EVENT + i.to_bytes(2, "big")) for i in range(150))
    kept, _ = spool.take(1000, 1 << 30)
    assert dropped + len(kept) == 150
    assert dropped == 100
    numbers = [int.from_bytes(e[-2:], "big") for e in kept]
    assert numbers == list(range(100, 150))  # the newest are kept, in order
    on_disk = sum(p.stat().st_size for p in tmp_path.glob("*.seg"))
    assert on_disk <= config.max_bytes + config.segment_bytes
    spool.close()


def test_at_the_byte_cap_drop_newest_refuses_new_events(tmp_path: Path) -> None:
    config = SpoolConfig(str(tmp_path), max_bytes=frame_bytes() * 20, segment_bytes=frame_bytes() * 5)
    spool = Spool(config, QueueLimits(overflow="drop_newest"))
    refused = sum(spool.put(EVENT) for _ in range(30))
    assert refused == 10
    assert spool.pending() == 20
    spool.close()


def test_segments_past_the_age_cap_are_dropped_and_reported(tmp_path: Path) -> None:
    now = [1000.0]
    drops: list[tuple[str, int]] = []
    config = SpoolConfig(str(tmp_path), max_age_s=3600, segment_bytes=frame_bytes() * 5, fsync_interval_s=0)
    spool = Spool(config, QueueLimits(), on_drop=lambda r, n: drops.append((r, n)), clock=lambda: now[0])
    for _ in range(12):
        spool.put(EVENT)
    now[0] += 3601
    spool.put(EVENT)  # the active segment is young again
    events, _ = spool.take(100, 1 << 20)
    assert drops == [("expired", 10)]
    assert len(events) == 3
    spool.close()


def test_expired_segments_found_on_open_are_reported(tmp_path: Path) -> None:
    config = SpoolConfig(str(tmp_path), max_age_s=60, fsync_interval_s=0)
    spool = Spool(config, QueueLimits())
    for _ in range(4):
        spool.put(EVENT)
    spool.close()
    drops: list[tuple[str, int]] = []
    later = Spool(config, QueueLimits(), on_drop=lambda r, n: drops.append((r, n)), clock=lambda: 10**12)
    assert later.pending() == 0
    later.take(10, 1 << 20)
    assert drops == [("expired", 4)]
    later.close()


def test_a_refusing_disk_falls_back_to_memory_and_recovers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(SpoolConfig(str(tmp_path), fsync_interval_s=0), QueueLimits(max_events=5))
    real_write = os.write
    full = [True]

    def write(fd: int, data: Any) -> int:
        if full[0] and len(data) > 8:
            real_write(fd, bytes(data)[:5])  # a partial frame, then ENOSPC
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(_spool.os, "write", write)
    drops = sum(spool.put(EVENT + bytes([i])) for i in range(8))
    assert drops == 3  # the memory fallback is bounded too, and counts what it drops
    full[0] = False
    spool.put(EVENT + b"\xff")
    events, refs = spool.take(100, 1 << 20)
    assert events == [EVENT + bytes([i]) for i in range(3, 8)] + [EVENT + b"\xff"]
    spool.settle(refs)
    spool.close()
    again = Spool(SpoolConfig(str(tmp_path), fsync_interval_s=0), QueueLimits())
    assert again.pending() == 0  # the partial frame was cut off, the good one settled
    again.close()
