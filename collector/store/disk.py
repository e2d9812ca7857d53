"""Naming the ways a data directory's disk refuses work, for the commands that read and rewrite it.

SQLite reports a full disk as its own error code (SQLITE_FULL), the OS as an
errno; `disk_error` turns either into one `DiskError` naming the cause, so a
command ends with a message and its exit code instead of a traceback. Every
writer of the data directory leaves it consistent when a write fails (SQLite
rolls its transaction back; segments are replaced by rename, frames appended
whole), so running the command again once space is back finishes the job.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from typing import Final

from maidian.collector.errors import DiskError

__all__ = ["disk_error"]

_ERRNOS: Final = {
    errno.ENOSPC: "ENOSPC",
    errno.EDQUOT: "EDQUOT",
    errno.EIO: "EIO",
    errno.EROFS: "EROFS",
    errno.EFBIG: "EFBIG",
}
_WHAT: Final = {
    "ENOSPC": "its disk is full",
    "EDQUOT": "its disk quota is used up",
    "EIO": "its disk reports an I/O error",
    "EROFS": "its file system is read-only",
    "EFBIG": "a file reached the largest size allowed",
}
# SQLite's primary result codes for the same causes (the extended codes keep them in their low byte).
_SQLITE: Final = {13: "ENOSPC", 10: "EIO", 8: "EROFS"}  # SQLITE_FULL, SQLITE_IOERR, SQLITE_READONLY


def disk_error(exc: BaseException) -> DiskError | None:
    """The `DiskError` `exc` amounts to, or None when it is not the disk refusing."""
    name: str | None = None
    where = ""
    if isinstance(exc, OSError) and exc.errno in _ERRNOS:
        name = _ERRNOS[exc.errno]
        if exc.filename is not None:
            where = f" (writing {os.fsdecode(exc.filename)})"
    elif isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if isinstance(code, int):
            name = _SQLITE.get(code & 0xFF)
        where = " (the catalog or the identity graph)"
    if name is None:
        return None
    return DiskError(
        f"the data directory cannot be used: {_WHAT[name]} ({name}){where}; nothing is left half-done: "
        "free space (or fix the disk) and run the command again",
        errno_name=name,
    )
