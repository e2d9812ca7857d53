"""`maidian import sensors-log`: LoggingConsumer files through the live pipeline, once each, resumable.

Generated rotated files (tests/collector/sensors_logs.py) are imported with the
command, twice, and read back with `maidian export`: every record stored once.
History older than the deduplication window goes in only with
`--backfill-since`, once; following a directory still being written resumes
from its checkpoint without losing or repeating a line.
"""

from __future__ import annotations

import gzip
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from maidian.collector.cli import main
from maidian.collector.config import resolve_config
from maidian.collector.run.vendor_import import ImportOptions, import_vendor_files
from tests.collector.sensors_logs import import_config, record, segment_message, write_rotated
from tests.conftest import ROOT

RECORDS = 3_000
DAY_MS = 86_400_000


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def exported(capsys: pytest.CaptureFixture[str], config: Path, *, quarantined: bool = False) -> list[dict[str, Any]]:
    data = str(config.parent / "data")
    code, out, err = run(capsys, "export", "--data", data, *(["--quarantined"] if quarantined else []))
    assert code == 0, err
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_rotated_files_imported_twice_are_stored_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = import_config(tmp_path)
    files = write_rotated(tmp_path / "logs", RECORDS, days=3, start_ms=int(time.time() * 1000) - 3_600_000)
    names = [str(f) for f in files]

    code, out, err = run(capsys, "import", "sensors-log", "--config", str(config), *names)
    assert code == 0, err
    first = json.loads(out)
    assert (first["records"], first["accepted"], first["duplicate"], first["quarantined"]) == (RECORDS, RECORDS, 0, 0)
    code, out, err = run(capsys, "import", "sensors-log", "--config", str(config), *names)
    assert code == 0, err
    second = json.loads(out)
    assert (second["accepted"], second["duplicate"]) == (0, RECORDS)

    stored = exported(capsys, config)
    assert len(stored) == len({e["event_id"] for e in stored}) == RECORDS
    assert {e["event"] for e in stored} == {"stock_order_submit"}
    assert stored[0]["properties"]["stock_name"] == "贵州茅台"
    assert {e["source"] for e in stored} == {"orders-backend"}
    assert stored[0]["event_id"].startswith("sensors:h:")


def test_a_bad_line_is_quarantined_and_the_rest_imported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = import_config(tmp_path)
    log = tmp_path / "service.log.2026-11-01"
    now = int(time.time() * 1000)
    lines = [json.dumps(record(1, now)), '{"type": "track", "event": ', "[1, 2]", json.dumps(record(2, now))]
    log.write_text("\n".join(lines) + "\n", "utf-8")
    code, out, err = run(capsys, "import", "sensors-log", "--config", str(config), "--project", "orders", str(log))
    assert code == 0, err
    assert json.loads(out)["accepted"] == 2
    assert len(exported(capsys, config)) == 2
    kept = [q for q in exported(capsys, config, quarantined=True) if q.get("quarantined")]
    assert sorted(r["rule"] for q in kept for r in q["reasons"]) == ["vendor_record", "vendor_record"]


def test_history_goes_in_only_with_backfill_and_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = import_config(tmp_path)
    old_ms = int(time.time() * 1000) - 40 * DAY_MS  # older than the 8-day deduplication window
    files = [str(f) for f in write_rotated(tmp_path / "logs", 300, days=2, start_ms=old_ms)]

    code, out, _err = run(capsys, "import", "sensors-log", "--config", str(config), *files)
    assert (code, json.loads(out)["quarantined"]) == (0, 300)  # too_old without back-fill
    since = time.strftime("%Y-%m-%d", time.gmtime(old_ms / 1000 - 86_400))
    for expected in ({"accepted": 300, "duplicate": 0}, {"accepted": 0, "duplicate": 300}):
        code, out, err = run(
            capsys, "import", "sensors-log", "--config", str(config), "--backfill-since", since, *files
        )
        assert code == 0, err
        summary = json.loads(out)
        assert {k: summary[k] for k in expected} == expected
    stored = exported(capsys, config)
    assert len(stored) == len({e["event_id"] for e in stored}) == 300


def test_following_a_directory_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    config = resolve_config(file=import_config(tmp_path), env={})
    logs = tmp_path / "logs"
    logs.mkdir()
    checkpoint = tmp_path / "import.checkpoint"
    now = int(time.time() * 1000)
    today = logs / "service.log.2026-11-01"
    lines = [json.dumps(record(n, now + n)) for n in range(10)]
    today.write_text("\n".join(lines[:5]) + "\n" + lines[5][:20], "utf-8")  # the app is mid-line

    def passes(n: int) -> Any:
        calls = iter(range(n + 1))
        return lambda: next(calls) >= n

    options = ImportOptions(follow_dir=logs, project="orders", checkpoint=checkpoint, poll_s=0.01)
    first = import_vendor_files(config, options, stop=passes(1))
    assert (first.lines, first.accepted) == (5, 5)  # the unfinished line waits

    with today.open("a", encoding="utf-8") as out:  # the line is finished, the day rotates
        out.write(lines[5][20:] + "\n" + "\n".join(lines[6:8]) + "\n")
    (logs / "service.log.2026-11-02").write_text("\n".join(lines[8:]) + "\n", "utf-8")
    second = import_vendor_files(config, options, stop=passes(2))
    assert (second.lines, second.accepted, second.duplicate) == (5, 5, 0)
    assert second.files == 2

    today.write_text(lines[0] + "\n" + json.dumps(record(99, now)) + "\n", "utf-8")  # replaced by a shorter file
    third = import_vendor_files(config, options, stop=passes(1))
    assert (third.lines, third.accepted, third.duplicate) == (2, 1, 1)


def test_a_segment_archive_imported_twice_is_stored_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = import_config(tmp_path)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(time.time() - 3600))
    archive = tmp_path / "segment-2026-12-07.json.gz"
    with gzip.open(archive, "wt", encoding="utf-8") as out:
        for n in range(250):
            out.write(json.dumps(segment_message(n, stamp), ensure_ascii=False) + "\n")
    argv = ["import", "segment-archive", "--config", str(config), "--write-key-name", "web-app", str(archive)]
    for expected in ({"accepted": 250, "duplicate": 0}, {"accepted": 0, "duplicate": 250}):
        code, out, err = run(capsys, *argv)
        assert code == 0, err
        summary = json.loads(out)
        assert {k: summary[k] for k in expected} == expected
    stored = exported(capsys, config)
    assert len(stored) == len({e["event_id"] for e in stored}) == 250
    assert {e["source"] for e in stored} == {"web-app"}
    assert stored[0]["properties"]["stock_name"] == "贵州茅台"
    code, _out, err = run(
        capsys, "import", "segment-archive", "--config", str(config), "--write-key-name", "nobody", str(archive)
    )
    assert code == 2


def test_the_follow_process_survives_sigkill_and_stops_on_sigterm(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--follow` as a process, the LogAgent role: killed mid-way and restarted, every line is stored once."""
    config = import_config(tmp_path)
    logs = tmp_path / "logs"
    logs.mkdir()
    now = int(time.time() * 1000)
    today = logs / "service.log.2026-12-07"
    cmd = [sys.executable, "-m", "maidian.collector.cli", "import", "sensors-log", "--config", str(config)]
    cmd += ["--follow", str(logs), "--checkpoint", str(tmp_path / "sa.checkpoint")]

    def append(first: int, count: int) -> None:
        with today.open("a", encoding="utf-8") as out:
            out.writelines(json.dumps(record(n, now + n)) + "\n" for n in range(first, first + count))

    def stored_count(expected: int) -> int:
        deadline = time.monotonic() + 60
        while True:
            capsys.readouterr()
            code = main(["export", "--data", str(tmp_path / "data")])
            n = len(capsys.readouterr().out.splitlines()) if code == 0 else 0
            if n >= expected or time.monotonic() > deadline:
                return n
            time.sleep(0.2)

    def start(name: str) -> subprocess.Popen[bytes]:
        with (tmp_path / f"{name}.out").open("wb") as out, (tmp_path / f"{name}.err").open("wb") as err:
            return subprocess.Popen(cmd, stdout=out, stderr=err, cwd=ROOT)

    append(0, 2500)
    follower = start("first")
    try:
        assert stored_count(2500) == 2500
        follower.kill()  # a crash: the checkpoint may lag what is stored
        follower.wait(30)
        append(2500, 1500)
        follower = start("second")
        assert stored_count(4000) == 4000
        follower.send_signal(signal.SIGTERM)
        follower.wait(60)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait(30)
    assert follower.returncode == 0, (tmp_path / "second.err").read_text()
    summary = json.loads((tmp_path / "second.out").read_text())
    assert summary["records"] < 4000  # resumed from the checkpoint, not from the start
    stored = exported(capsys, config)
    assert len(stored) == len({e["event_id"] for e in stored}) == 4000
