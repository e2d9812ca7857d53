"""A full disk that refuses the spool's next segment file (docs/reliability.md, T11, found by the battery).

Rotation used to close the active segment's descriptor before creating the
next file; when the disk refused the file, the spool kept the closed
descriptor's number, later opens reused it, frames could be written into
another file, and `close()` raised EBADF into the app. Now the new file is
made first, and a refusal falls back to the memory buffer like a refused write.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from maidian.sdk import _spool
from maidian.sdk._spool import Spool
from maidian.sdk.config import QueueLimits, SpoolConfig

FRAME = b"x" * 100  # 108 bytes with its length and checksum


class _NoNewFiles:
    def __init__(self, real: Any) -> None:
        self._real = real
        self.refuse = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def open(self, path: Any, flags: int, mode: int = 0o777) -> int:
        if self.refuse and flags & os.O_CREAT and not os.path.exists(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        fd: int = self._real.open(path, flags, mode)
        return fd


def test_a_refused_segment_file_falls_back_to_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = SpoolConfig(str(tmp_path / "spool"), segment_bytes=108 * 3, fsync_interval_s=0)
    spool = Spool(config, QueueLimits(max_events=10))
    for _ in range(3):
        assert spool.put(FRAME) == 0
    disk = _NoNewFiles(os)
    monkeypatch.setattr(_spool, "os", disk)
    assert spool.put(FRAME) == 0  # the segment is full: it must rotate, and the disk says no
    assert spool._fallback.pending() == 1
    active = tmp_path / "spool" / "000000000001.seg"
    assert os.fstat(spool._write_fd).st_ino == active.stat().st_ino, "the spool lost its segment's descriptor"
    disk.refuse = False
    assert spool.put(FRAME) == 0  # space is back: a new segment, on disk again
    assert (tmp_path / "spool" / "000000000002.seg").stat().st_size == 108
    assert spool.pending() == 5
    spool.close()
    again = Spool(config, QueueLimits(max_events=10))
    assert again.pending() == 4  # the frames on disk; the one in memory went with the closed spool
    again.close()
