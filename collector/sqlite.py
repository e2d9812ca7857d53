"""The collector's SQLite files: connections whose every error names the file and what to do.

`catalog.sqlite` and `identity.sqlite` are derived from the logs, so a damaged
one is never a dead end: `maidian rebuild` recreates both. sqlite3's own
errors say neither which file nor that; this module translates them once,
where they are met (on every statement a connection opened here runs), into
the collector's error tree:

    SQLITE_CORRUPT, SQLITE_NOTADB      -> DerivedFileError (damaged: rebuild)
    SQLITE_FULL, SQLITE_IOERR          -> DiskError (the disk is full, or failing)
    SQLITE_BUSY, SQLITE_LOCKED         -> DataDirError (another process holds it)
    anything else                      -> DataDirError naming the file
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

from maidian.collector.errors import DataDirError, DerivedFileError, DiskError

__all__ = ["Connection", "connect", "translate"]

# Primary result codes (https://www.sqlite.org/rescode.html); extended codes carry them in the low byte.
_BUSY: Final = 5
_LOCKED: Final = 6
_CORRUPT: Final = 11
_FULL: Final = 13
_IOERR: Final = 10
_NOTADB: Final = 26


def translate(path: Path | str, exc: sqlite3.Error) -> DataDirError:
    """The collector error for a sqlite3 error met on the file at `path`."""
    code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
    if code in (_CORRUPT, _NOTADB):
        return DerivedFileError(
            f"{path}: damaged ({exc}); it is derived from the logs: run `maidian rebuild --data DIR` to recreate it"
        )
    if code in (_FULL, _IOERR):
        return DiskError("ENOSPC" if code == _FULL else "EIO", str(path))
    if code in (_BUSY, _LOCKED):
        return DataDirError(f"{path}: busy in another process; run the command again")
    return DataDirError(f"{path}: unusable ({exc}); if it stays so, `maidian rebuild --data DIR` recreates it")


class Connection(sqlite3.Connection):
    """A connection that raises `translate`d errors from its statements."""

    path: str = ""

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        try:
            return super().execute(sql, parameters)
        except sqlite3.Error as exc:
            raise translate(self.path, exc) from exc

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> sqlite3.Cursor:
        try:
            return super().executemany(sql, parameters)
        except sqlite3.Error as exc:
            raise translate(self.path, exc) from exc

    def executescript(self, sql_script: str, /) -> sqlite3.Cursor:
        try:
            return super().executescript(sql_script)
        except sqlite3.Error as exc:
            raise translate(self.path, exc) from exc


def connect(path: Path | str, *, timeout_s: float, check_same_thread: bool = False) -> Connection:
    """Open `path` in autocommit mode (transactions are explicit) with translated errors."""
    try:
        conn = sqlite3.connect(
            str(path),
            timeout=timeout_s,
            isolation_level=None,
            check_same_thread=check_same_thread,
            factory=Connection,
        )
    except sqlite3.Error as exc:
        raise translate(path, exc) from exc
    conn.path = str(path)
    return conn
