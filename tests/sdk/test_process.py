"""The SDK inside real processes: exit without flush, kill -9 with a spool, fork."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from maidian.sdk import BatchLimits, Client
from tests.sdk.conftest import ORDER
from tests.sdk.sink import Sink

CHILD = Path(__file__).with_name("child.py")


def run_child(*args: str) -> tuple[subprocess.Popen[str], dict[str, object]]:
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        _, err = proc.communicate(timeout=10)
        pytest.fail(f"child said nothing: {err}")
    return proc, json.loads(line)


def finish(proc: subprocess.Popen[str], timeout_s: float = 30) -> tuple[float, str]:
    """Wait for the child; (monotonic time it was seen gone, its stderr)."""
    _, err = proc.communicate(timeout=timeout_s)
    return time.monotonic(), err


def expected_ids(source: object, count: int) -> set[str]:
    return {f"{source}-{i}" for i in range(1, count + 1)}


def test_exit_without_flush_delivers_everything_within_the_budget(sink: Sink) -> None:
    proc, said = run_child("exit", sink.url, "3000", "2.0")
    exited, err = finish(proc)
    assert proc.returncode == 0, err
    assert sink.ids() == expected_ids(said["source"], 3000)
    assert exited - float(said["at"]) < 2.0 + 1.0  # type: ignore[arg-type]


def test_an_async_client_delivers_at_exit_after_its_loop_is_gone(sink: Sink) -> None:
    proc, said = run_child("async-exit", sink.url, "2000")
    exited, err = finish(proc)
    assert proc.returncode == 0, err
    assert sink.ids() == expected_ids(said["source"], 2000)
    assert exited - float(said["at"]) < 2.0 + 1.0  # type: ignore[arg-type]


def test_exit_is_never_held_longer_than_the_budget_by_a_dead_collector(sink: Sink) -> None:
    sink.blackhole = True
    proc, said = run_child("exit", sink.url, "100", "1.0")
    exited, err = finish(proc)
    assert proc.returncode == 0, err
    assert exited - float(said["at"]) < 1.0 + 1.0  # type: ignore[arg-type]


def test_kill_9_with_a_spool_then_a_new_client_delivers_everything(sink: Sink, tmp_path: Path) -> None:
    sink.delay_s = 0.05  # slow enough that kills land while batches are in flight
    spool = str(tmp_path / "spool")
    expected: set[str] = set()
    rng = random.Random(3)
    for _ in range(3):
        proc, said = run_child("spool", sink.url, "3000", spool)
        expected |= expected_ids(said["source"], int(said["tracked"]))  # type: ignore[arg-type]
        time.sleep(rng.uniform(0.0, 0.2))
        proc.send_signal(signal.SIGKILL)
        finish(proc)
    assert len(sink.ids()) < len(expected), "the kills should have left events unsent"
    with Client(sink.url, write_key="wk_test", spool=spool) as resumed:
        assert resumed.flush(30)
        assert resumed.stats.dropped == {}
    assert expected - sink.ids() == set(), "lost events"
    assert len(sink.stored) == len(expected)  # after deduplication, each event once
    assert not list((tmp_path / "spool").rglob("*.seg")), "a segment was left behind"


def fork_client(sink: Sink) -> Client:
    # Nothing is sent before the fork: the parent's whole buffer is inherited by each child.
    return Client(sink.url, write_key="wk_test", batch=BatchLimits(max_events=100_000, linger_s=3600))


def test_os_fork_children_send_their_own_events_once_and_never_the_parents(sink: Sink) -> None:
    client = fork_client(sink)
    for _ in range(1000):
        client.track("stock_order_submit", ORDER)
    parent_source = client.source_id
    children = []
    for _ in range(4):
        pid = os.fork()
        if pid == 0:  # the child
            code = 1
            try:
                assert client.source_id != parent_source
                assert client.stats.queued == 0
                for _ in range(1000):
                    client.track("stock_order_submit", ORDER)
                started = time.monotonic()
                code = 0 if client.flush(5) and time.monotonic() - started <= 5 else 2
            finally:
                os._exit(code)
        children.append(pid)
    for pid in children:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    assert client.flush(10)
    assert len(sink.stored) == 5000
    assert len(sink.raw) == 5000, "a child re-sent its parent's buffer"
    sources = {e.rsplit("-", 1)[0] for e in sink.stored}
    assert len(sources) == 5
    client.close()


def _mp_child(url: str) -> None:
    # No flush, no close: multiprocessing ends the child with os._exit, which skips atexit.
    client = _MP_CLIENT[0]
    for _ in range(1000):
        client.track("stock_order_submit", ORDER)


_MP_CLIENT: list[Client] = []


def test_multiprocessing_fork_children_deliver_without_flush(sink: Sink) -> None:
    client = fork_client(sink)
    _MP_CLIENT[:] = [client]
    for _ in range(1000):
        client.track("stock_order_submit", ORDER)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_mp_child, args=(sink.url,)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(15)
        assert p.exitcode == 0
    assert client.flush(10)
    assert len(sink.stored) == 5000
    assert len(sink.raw) == 5000
    client.close()
