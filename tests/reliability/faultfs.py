"""A fault file layer under the collector's log writer: power-loss simulation and a disk that fills up.

The seam: `maidian.collector.store.log` is the only module that writes the
logs, and it reaches the disk only through its module-level `os` (`open`,
`write`, `fsync`, `ftruncate`, `close`). This launcher replaces that one
name with `FaultyOs` before the collector starts, so the layer exists only in
processes started through it (`python -m tests.reliability.faultfs ...`);
production code has no switch for it (docs/reliability.md, "The fault file
layer"). `test_faultfs_sees_every_log_write` checks that the seam still
catches every segment write, so a change in collector/store/log.py cannot silently
bypass it.

What it does:
- Sync journal (`--journal FILE`): before each fsync it notes the file's size
  (everything written before the fsync call is covered by it), so after a
  SIGKILL the harness knows how many bytes of each file were synced.
  `lose_unsynced` then does to the files what a power cut may do to bytes that
  were written but not synced: drop them, keep a random part of them, or
  garble them (random bytes or zeros of the same length).
- A disk that fills (`--capacity FILE`): the file holds how many more bytes
  writes may add; past it, `write` fails with ENOSPC without writing anything.
  The harness frees space by writing a bigger number (or `inf`) to the file.
"""

from __future__ import annotations

import errno
import os
import random
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["FaultyOs", "Lost", "install", "lose_unsynced", "synced_sizes"]


class FaultyOs:
    """The `os` module as collector/store/log.py sees it, with a sync journal and an optional capacity."""

    def __init__(self, real: Any, journal: str | None, capacity: str | None) -> None:
        self._real = real
        self._paths: dict[int, str] = {}
        self._lock = threading.Lock()
        self._journal_fd = real.open(journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) if journal else -1
        self._capacity_path = capacity
        self._capacity_mtime = -1.0
        self._left = float("inf")
        self.writes = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def open(self, path: Any, flags: int, mode: int = 0o777, **kw: Any) -> int:
        fd: int = self._real.open(path, flags, mode, **kw)
        with self._lock:
            self._paths[fd] = os.path.abspath(os.fspath(path))
        return fd

    def close(self, fd: int) -> None:
        with self._lock:
            self._paths.pop(fd, None)
        self._real.close(fd)

    def _room(self) -> float:
        path = self._capacity_path
        if path is None:
            return float("inf")
        try:
            mtime = self._real.stat(path).st_mtime
        except FileNotFoundError:
            return float("inf")
        if mtime != self._capacity_mtime:
            self._capacity_mtime = mtime
            with open(path) as f:
                text = f.read().strip()
            self._left = float(text) if text else float("inf")
        return self._left

    def write(self, fd: int, data: Any) -> int:
        size = len(data)
        with self._lock:
            if self._room() < size:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self._left -= size
            self.writes += 1
        n: int = self._real.write(fd, data)
        return n

    def fsync(self, fd: int) -> None:
        path = self._paths.get(fd)
        size = self._real.fstat(fd).st_size if path is not None else 0
        self._real.fsync(fd)
        if path is not None and self._journal_fd >= 0:
            line = f"{path}\t{size}\n".encode()
            self._real.write(self._journal_fd, line)


def install(journal: str | None, capacity: str | None) -> FaultyOs:
    """Put the layer under maidian.collector.store.log (in this process only)."""
    from maidian.collector.store import log as storage

    faulty = FaultyOs(os, journal, capacity)
    storage.os = faulty  # type: ignore[attr-defined]  # the documented seam
    return faulty


def synced_sizes(journal: Path) -> dict[str, int]:
    """The last synced size the journal noted for each file."""
    out: dict[str, int] = {}
    try:
        text = journal.read_text()
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        path, _, size = line.rpartition("\t")
        if path and size.isdigit():
            out[path] = int(size)
    return out


@dataclass(frozen=True, slots=True)
class Lost:
    files: int  # files that had unsynced bytes
    bytes: int  # unsynced bytes that did not survive as written


def lose_unsynced(data_dir: Path, journal: Path, mode: str, rng: random.Random) -> Lost:
    """After a SIGKILL: treat the logs' unsynced bytes as a power cut would (`drop`, `partial`, `garble`, `zeros`)."""
    synced = synced_sizes(journal)
    files = lost = 0
    for log in ("raw", "quarantine"):
        for path in sorted((data_dir / log).glob("*.seg")):
            size = path.stat().st_size
            keep = min(synced.get(str(path.resolve()), 0), size)
            if keep == size:
                continue
            files += 1
            lost += size - keep
            with open(path, "r+b") as f:
                if mode == "drop":
                    f.truncate(keep)
                elif mode == "partial":
                    f.truncate(keep + rng.randrange(0, size - keep))
                elif mode in ("garble", "zeros"):
                    f.seek(keep)
                    n = size - keep
                    f.write(bytes(n) if mode == "zeros" else rng.randbytes(n))
                else:
                    raise ValueError(mode)
    return Lost(files, lost)


def main(argv: list[str]) -> int:
    journal = capacity = None
    while argv and argv[0].startswith("--"):
        flag, value, argv = argv[0], argv[1], argv[2:]
        if flag == "--journal":
            journal = value
        elif flag == "--capacity":
            capacity = value
        else:
            raise SystemExit(f"unknown flag {flag}")
    install(journal, capacity)
    from maidian.collector.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
