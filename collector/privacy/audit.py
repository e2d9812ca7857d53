"""The privacy audit log: who read, exported or deleted which person's data, when, and why.

Every person-level read or export the command line makes (`maidian events
--person`, `maidian privacy export|delete`) appends one record to
`<data>/audit/privacy.jsonl`, and `maidian privacy audit` lists them. A
record names the person by the identity graph's pseudonymous person id
(docs/identity.md, "Person ids"), never by the value asked for, so no mobile
number, clear or hashed, is written here; a value the graph does not know is
recorded as `(not found)`.

Records are JSON lines, appended with O_APPEND and fsynced before the
command prints its answer, never rewritten: concurrent commands each add
whole lines. The support view keeps its trail with this class too, in
`<data>/audit/support.jsonl` (collector/http/support_routes.py).
"""

from __future__ import annotations

import getpass
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

__all__ = ["NOT_FOUND", "AuditLog", "AuditRecord", "current_actor"]

_FILE: Final = "privacy.jsonl"
# A reason is a ticket number and a sentence, not a document.
MAX_REASON_CHARS: Final = 500
NOT_FOUND: Final = "(not found)"


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One person-level access: when (epoch ms), who and in which role, what, whose (a person id), why."""

    at_ms: int
    actor: str
    role: str
    action: str
    person: str
    reason: str


def current_actor() -> str:
    """The operating-system user running the command (`--actor` overrides it)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


class AuditLog:
    """Append-only audit records in one file under the data directory."""

    def __init__(self, data_dir: Path, clock: Callable[[], float] = time.time, *, name: str = _FILE) -> None:
        self.path = Path(data_dir) / "audit" / name
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
