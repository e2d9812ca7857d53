"""Where the lake's files live inside a data directory, its checkpoint, and its lock.

::

    <data>/lake/
      events/event_date=YYYY-MM-DD/part-<pass>-<n>.parquet    track, bind and unbind events
      profiles/event_date=YYYY-MM-DD/part-<pass>-<n>.parquet  profile_* events (the `users` view's input)
      identities.parquet                                      identity -> person, rewritten each pass
      state.json                                              the checkpoint (raw-log offsets, pass number)
      .lock                                                   held by the one process changing the lake

Promises:
- a pass's files are named after its number and become part of the lake only
  when `state.json` (replaced atomically) says that pass is done; a pass cut
  short leaves files with a larger number, which the next pass deletes first.
- a compaction records what it replaces in `state.json` before renaming its
  output into place, so a crash leaves either the old files or the new one,
  never both, once the next pass has tidied up.
- one process changes the lake at a time (`.lock`, an exclusive flock); the
  privacy operations take it too. Readers never need it: every file they can
  see is whole (written under a temporary name, synced, renamed).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from maidian.collector.errors import DataDirError
from maidian.collector.store.log import sync_dir, try_lock, write_atomically

__all__ = ["LakeDir", "LakeState", "locked"]

STATE_VERSION: Final = 1


@dataclass(frozen=True, slots=True)
class LakeDir:
    """The lake of one data directory."""

    root: Path

    @classmethod
    def of(cls, data_dir: Path) -> LakeDir:
        return cls(Path(data_dir) / "lake")

    @property
    def events(self) -> Path:
        return self.root / "events"

    @property
    def profiles(self) -> Path:
        return self.root / "profiles"

    @property
    def identities(self) -> Path:
        return self.root / "identities.parquet"

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    def tables(self) -> tuple[Path, Path]:
        return self.events, self.profiles

    def partitions(self, table: Path) -> list[Path]:
        """The `event_date=` folders of a table, oldest first."""
        try:
            names = sorted(n for n in os.listdir(table) if n.startswith("event_date="))
        except FileNotFoundError:
            return []
        return [table / n for n in names]

    def files(self, partition: Path) -> list[Path]:
        try:
            return sorted(partition / n for n in os.listdir(partition) if n.endswith(".parquet"))
        except FileNotFoundError:
            return []

    def exists(self) -> bool:
        return self.state.is_file()


@dataclass(slots=True)
class LakeState:
    """The checkpoint: raw-log offsets taken in, the last finished pass, and a compaction under way."""

    offsets: dict[str, int] = field(default_factory=dict)
    passes: int = 0
    timezone: str = "UTC"
    policy: str = ""
    compacting: dict[str, Any] | None = None

    @classmethod
    def load(cls, lake: LakeDir) -> LakeState:
        try:
            raw = json.loads(lake.state.read_bytes())
        except FileNotFoundError:
            return cls()
        if raw.get("version") != STATE_VERSION:
            raise DataDirError(
                f"{lake.state}: a lake checkpoint of another version; rebuild with `maidian lake build --full`"
            )
        return cls(
            offsets={str(k): int(v) for k, v in raw.get("offsets", {}).items()},
            passes=int(raw.get("passes", 0)),
            timezone=str(raw.get("timezone", "UTC")),
            policy=str(raw.get("policy", "")),
            compacting=raw.get("compacting"),
        )

    def save(self, lake: LakeDir) -> None:
        doc = {
            "version": STATE_VERSION,
            "offsets": self.offsets,
            "passes": self.passes,
            "timezone": self.timezone,
            "policy": self.policy,
            "compacting": self.compacting,
        }
        lake.root.mkdir(parents=True, exist_ok=True)
        write_atomically(lake.state, json.dumps(doc, sort_keys=True).encode())


@contextlib.contextmanager
def locked(lake: LakeDir) -> Iterator[None]:
    """Hold the lake's lock; raise `DataDirError` when another process holds it."""
    lake.root.mkdir(parents=True, exist_ok=True)
    fd = try_lock(lake.root / ".lock")
    if fd is None:
        raise DataDirError(f"{lake.root}: another process is changing the lake (a `maidian lake` or a privacy command)")
    try:
        yield
    finally:
        os.close(fd)


def pass_number(path: Path) -> int:
    """The pass a lake file was written by (`part-<pass>-<n>.parquet`, `compact-<pass>.parquet`)."""
    try:
        return int(path.name.split("-")[1].split(".")[0])
    except (IndexError, ValueError):
        return 0


def tidy(lake: LakeDir, state: LakeState) -> int:
    """Remove what a cut-short pass or compaction left; finish a compaction whose output is in place."""
    removed = 0
    pending = state.compacting
    if pending is not None:
        output = lake.root / pending["output"]
        if output.exists():
            for old in pending["replaces"]:
                with contextlib.suppress(FileNotFoundError):
                    (lake.root / old).unlink()
                    removed += 1
        state.compacting = None
        state.save(lake)
    for table in lake.tables():
        for partition in lake.partitions(table):
            for name in os.listdir(partition):
                path = partition / name
                if name.endswith(".tmp") or (name.endswith(".parquet") and pass_number(path) > state.passes):
                    path.unlink()
                    removed += 1
            if not os.listdir(partition):
                partition.rmdir()
        if table.is_dir():
            sync_dir(table)
    return removed


__all__ += ["pass_number", "tidy"]
