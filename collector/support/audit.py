"""The support view's audit trail: who looked at which person, when, and why.

A stand-in with the interface the collector's privacy audit log offers
(`append(actor, role, action, person, reason)` and `list()`), kept in
`<data>/audit/support.jsonl`: one JSON line per record, appended and fsynced
before the page gets its answer, never rewritten. A record names the person
by the identity graph's pseudonymous person id, never by an identity value,
so no mobile number (clear or hashed) is ever written here.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

__all__ = ["AuditLog", "AuditRecord"]

_FILE: Final = "support.jsonl"
# Reasons longer than this are cut: a reason is a ticket number and a sentence, not a document.
MAX_REASON_CHARS: Final = 500


@dataclass(frozen=True, slots=True)
class AuditRecord:
    at_ms: int
    actor: str
    role: str
    action: str
    person: str
    reason: str


class AuditLog:
    """Append-only audit records in one file under the data directory."""

    def __init__(self, data_dir: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(data_dir) / "audit" / _FILE
        self.clock = clock
        self._lock = threading.Lock()

    def append(self, actor: str, role: str, action: str, person: str, reason: str) -> AuditRecord:
        """Write one record durably (fsync) and return it."""
        record = AuditRecord(int(self.clock() * 1000), actor, role, action, person, reason[:MAX_REASON_CHARS])
        line = json.dumps(asdict(record), ensure_ascii=False, separators=(",", ":")) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line.encode())
                os.fsync(fd)
            finally:
                os.close(fd)
        return record

    def list(self, *, limit: int = 500, before: int | None = None) -> list[AuditRecord]:
        """The newest records first: at most `limit`, those before line number `before` when given."""
        try:
            lines = self.path.read_text("utf-8").splitlines()
        except FileNotFoundError:
            return []
        end = len(lines) if before is None else max(0, min(before, len(lines)))
        out = []
        for line in reversed(lines[max(0, end - limit) : end]):
            try:
                out.append(AuditRecord(**json.loads(line)))
            except (ValueError, TypeError):
                continue
        return out
