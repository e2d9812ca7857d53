"""A corrupt or unreadable derived file never shows a traceback: every read command names it and the repair.

`catalog.sqlite` and `identity.sqlite` are derived from the logs, so the
answer to either being damaged is always the same command, `maidian rebuild`;
each read command that needs them exits 2 (unusable input), never 1 (its
"nothing found"). `export` reads the logs alone, so it still answers, exactly.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

from maidian.collector.store.heads import build_accepted_frame
from maidian.collector.store.ids import id_ranges
from maidian.collector.store.log import DataDir, LogWriter

LOGIN = "u_corrupt_1"


def _store(data: DataDir) -> None:
    events = [
        {
            "type": "track",
            "event": "stock_order_submit",
            "event_id": f"dev1-{i}",
            "time": 1_763_800_000_000 + i,
            "identities": {"anonymous_id": "dev1", "login_id": LOGIN},
            "properties": {},
        }
        for i in range(1, 4)
    ]
    writer = LogWriter(data.raw, "w0")
    writer.open()
    try:
        stored: list[tuple[dict[str, Any], Any, int, list[str] | None]] = [
            (e, msgspec.Raw(msgspec.msgpack.encode(e)), e["time"], None) for e in events
        ]
        ranges, opaque = id_ranges([e["event_id"] for e in events])
        head = {"rid": "r1", "at": events[0]["time"], "src": "test", "kind": "write_key", "trusted": False}
        writer.append_sync(build_accepted_frame(head, stored, ranges, opaque))
    finally:
        writer.close_sync()


def _maidian(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "maidian.collector.cli", *args], capture_output=True, text=True, timeout=60, check=False
    )


COMMANDS = {
    "events": lambda d: ("events", "--person", LOGIN, "--data", d),
    "privacy export": lambda d: ("privacy", "export", "--person", LOGIN, "--data", d),
}


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
@pytest.mark.parametrize("derived", ["catalog.sqlite", "identity.sqlite"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_damaged_derived_file_is_named_with_its_repair(
    tmp_path: Path, derived: str, damage: str, command: str
) -> None:
    data = DataDir(tmp_path / "data").create()
    _store(data)
    assert _maidian("rebuild", "--data", str(data.root)).returncode == 0
    target = data.root / derived
    for suffix in ("-wal", "-shm"):
        target.with_name(derived + suffix).unlink(missing_ok=True)
    original = target.read_bytes()
    if damage == "garbage":
        target.write_bytes(b"this is not a database, it was overwritten by something else " * 64)
    else:
        target.write_bytes(original[:100])

    proc = _maidian(*COMMANDS[command](str(data.root)))

    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert derived in proc.stderr
    assert "maidian rebuild" in proc.stderr
    # and the repair it names works
    assert _maidian("rebuild", "--data", str(data.root)).returncode == 0
    assert _maidian(*COMMANDS[command](str(data.root))).returncode == 0


@pytest.mark.parametrize("derived", ["catalog.sqlite", "identity.sqlite"])
def test_export_reads_the_logs_alone_so_a_damaged_derived_file_changes_nothing(tmp_path: Path, derived: str) -> None:
    data = DataDir(tmp_path / "data").create()
    _store(data)
    assert _maidian("rebuild", "--data", str(data.root)).returncode == 0
    before = _maidian("export", "--data", str(data.root))
    (data.root / derived).write_bytes(b"not a database " * 100)
    after = _maidian("export", "--data", str(data.root))
    assert before.returncode == after.returncode == 0
    assert after.stdout == before.stdout
    assert len(after.stdout.splitlines()) == 3
