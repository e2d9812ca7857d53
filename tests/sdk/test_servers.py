"""The SDK as servers run it: one spool path for many processes, forks, close, exit budgets, fsync.

The whole-process scenarios (gunicorn, pools) are in the battery
(tests/reliability/test_t13_sdk_servers.py); these pin the mechanisms.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from maidian.sdk import BatchLimits, Client, SpoolConfig, Timeouts, _spool
from tests.sdk.conftest import ORDER
from tests.sdk.sink import Sink
from tests.sdk.test_process import finish, run_child


def test_a_clean_restart_continues_the_source_and_its_sequence(sink: Sink, tmp_path: Path) -> None:
    spool = str(tmp_path / "spool")
    with Client(sink.url, write_key="wk_test", spool=spool) as first:
        for _ in range(5):
            first.track("stock_order_submit", ORDER)
        source = first.source_id
    with Client(sink.url, write_key="wk_test", spool=spool) as second:
        second.track("stock_order_submit", ORDER)
        assert second.source_id == source
        assert second.flush(10)
    assert sink.ids() == {f"{source}-{i}" for i in range(1, 7)}  # one range, no gap: dedup stays one interval


def test_after_a_crash_a_new_source_is_used_so_no_id_is_reused(sink: Sink, tmp_path: Path) -> None:
    spool = str(tmp_path / "spool")
    with Client(sink.url, write_key="wk_test", spool=spool) as first:
        first.track("stock_order_submit", ORDER)
    proc, said = run_child("spool", sink.url, "50", spool)  # continues the source, then is killed
    assert said["source"] == first.source_id
    assert sink.wait_for(51)
    proc.kill()
    finish(proc)
    with Client(sink.url, write_key="wk_test", spool=spool) as third:
        assert third.source_id != said["source"]


def test_a_forked_child_gets_its_own_slot_and_never_holds_the_parents_lock(sink: Sink, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    parent = Client(sink.url, write_key="wk_test", spool=str(spool), batch=BatchLimits(linger_s=3600))
    parent_slot = parent._core._buffer.slot  # type: ignore[attr-defined]
    r, w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: track into its own slot, then outlive the parent's client
        code = 1
        try:
            parent.track("stock_order_submit", ORDER)
            slot = parent._core._buffer.slot  # type: ignore[attr-defined]
            os.write(w, f"{slot}\n".encode())
            os.read(go_r, 1)
            code = 0 if parent.flush(10) else 2
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r) as f:
        child_slot = f.readline().strip()
    assert child_slot != parent_slot
    parent.close()
    # The app restarts while the child still lives: the parent's slot must be free.
    restarted = Client(sink.url, write_key="wk_test", spool=str(spool))
    assert restarted._core._buffer.slot == parent_slot  # type: ignore[attr-defined]
    os.write(go_w, b"x")
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    restarted.close()
    assert len(sink.stored) == 1


def test_events_still_in_memory_at_close_are_counted_unsent(sink: Sink) -> None:
    sink.blackhole = True
    drops: list[tuple[str, int]] = []
    client = Client(
        sink.url, write_key="wk_test", timeouts=Timeouts(request_s=30), on_drop=lambda r, n: drops.append((r, n))
    )
    for _ in range(7):
        client.track("stock_order_submit", ORDER)
    assert client.close(0.3) is False
    assert client.stats.dropped == {"unsent": 7}
    assert drops == [("unsent", 7)]


def test_with_a_spool_what_is_left_at_close_stays_on_disk_and_is_not_counted(sink: Sink, tmp_path: Path) -> None:
    sink.blackhole = True
    spool = str(tmp_path / "spool")
    client = Client(sink.url, write_key="wk_test", spool=spool, timeouts=Timeouts(request_s=30))
    for _ in range(7):
        client.track("stock_order_submit", ORDER)
    assert client.close(0.3) is False
    assert client.stats.dropped == {}
    sink.blackhole = False
    with Client(sink.url, write_key="wk_test", spool=spool) as again:
        assert again.flush(10)
    assert len(sink.stored) == 7


def test_track_never_calls_fsync(sink: Sink, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    callers: list[str] = []
    real = os.fsync

    def fsync(fd: Any) -> None:
        callers.append(threading.current_thread().name)
        real(fd)

    monkeypatch.setattr(_spool.os, "fsync", fsync)
    config = SpoolConfig(str(tmp_path / "spool"), segment_bytes=4096, fsync_interval_s=0.01)
    with Client(sink.url, write_key="wk_test", spool=config, batch=BatchLimits(linger_s=0.01)) as client:
        for _ in range(300):  # about 20 rotations
            client.track("stock_order_submit", ORDER)
            time.sleep(0.0005)
        assert client.flush(10)
        host = threading.current_thread().name
        assert callers, "the sender should have fsynced the spool"
        assert host not in callers, "track() waited on fsync"


def test_exit_holds_the_budget_within_ten_percent_against_a_silent_collector(sink: Sink) -> None:
    sink.blackhole = True
    proc, said = run_child("exit", sink.url, "200", "2.0")
    exited, err = finish(proc)
    assert proc.returncode == 0, err
    hooks_done = float(err.split("hooks_done ", 1)[1].split()[0])
    # The exit hooks, from the end of the program to the last hook: the budget, within 10%.
    assert hooks_done - float(said["at"]) <= 2.0 * 1.1  # type: ignore[arg-type]
    # The whole exit, teardown included (2.0-2.1 s on an idle machine; a bound for hangs on a loaded one).
    assert exited - float(said["at"]) <= 2.0 + 2.0  # type: ignore[arg-type]
