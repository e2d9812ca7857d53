"""Disks that fill up on demand, for T10 (the collector's) and T11 (the SDK's spool).

`small_disk(path, size)` mounts a tmpfs of `size` bytes at `path` when this
process may (root, and a kernel that allows it), and says so; otherwise the
caller falls back to ENOSPC injection (faultfs.py for the collector, a patched
`os.write` for the SDK spool), and skips when neither can be had.
`Filler` takes every free byte of a mounted disk with one file and gives them
back when deleted.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

__all__ = ["Filler", "small_disk"]


@contextlib.contextmanager
def small_disk(path: Path, size_bytes: int) -> Iterator[bool]:
    """Yield True with a tmpfs of `size_bytes` mounted at `path`, or False when mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        yield False
        return
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        yield False
        return
    try:
        yield True
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


class Filler:
    """One file that takes all the free space of the disk it is on."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fill(self) -> int:
        """Write until the disk refuses; the bytes taken."""
        taken = 0
        chunk = bytes(64 << 10)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            while True:
                try:
                    n = os.write(fd, chunk)
                except OSError:
                    if len(chunk) <= 512:
                        break
                    chunk = chunk[: len(chunk) // 2]
                    continue
                taken += n
        finally:
            os.close(fd)
        return taken

    def free(self) -> None:
        self.path.unlink(missing_ok=True)
