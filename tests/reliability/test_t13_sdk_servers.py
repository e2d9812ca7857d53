"""T13, the SDK in real servers: gunicorn, `multiprocessing.Pool` and `ProcessPoolExecutor`, 0 events lost.

Every scenario runs a real collector on 127.0.0.1 and tracks orders whose
quantity is the ledger key (`100 * (n + 1)`); the check reads the collector's
deduplicated store and counts each key: missing keys are lost events, a key
stored twice (two event ids) is a duplicate an id could not absorb.

- gunicorn sync workers, 2 and 4, with and without `--preload`, all with one
  `MAIDIAN_SPOOL` path: every worker starts (each claims its own slot), every
  request's event is stored once after a graceful stop (SIGTERM: the workers'
  exit hooks flush), and no event was counted as dropped.
- A restart with fewer workers: 4 workers track while the collector is down
  and are stopped (their events stay in 4 slots); 2 workers started later on
  the same path adopt every slot and deliver everything.
- `multiprocessing.Pool` (fork) leaving its `with` block (which terminates the
  workers with SIGTERM) and with `maxtasksperchild` (workers that end mid-run),
  with a client inherited from the parent (with a spool: a slot per worker)
  and one made in the worker's initializer; `ProcessPoolExecutor` (fork) with
  an inherited client and a spool.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from maidian.collector.read import export_events
from maidian.sdk import BatchLimits, Client, Timeouts
from tests.conftest import ROOT
from tests.reliability.constants import KEY
from tests.reliability.figures import Figures
from tests.reliability.ledger import Ledger, Stored
from tests.reliability.procs import CollectorProcess

REQUESTS = 300
TASKS = 400
ORDER = {"stock_code": "600519", "side": "buy", "price": 1688.5}
GUNICORN = Path(sys.executable).with_name("gunicorn")
SPOOLED = " (with a spool)"


def _key(n: int) -> str:
    return str(100 * (n + 1))


def _stored(data_dir: Path) -> Stored:
    keys = [
        str(e["properties"]["quantity"])
        for e in export_events(data_dir)
        if e.get("event") == "stock_order_submit" and isinstance(e.get("properties"), dict)
    ]
    return Stored(raw=keys, deduped=keys)


def _check(figures: Figures, collector: CollectorProcess, tracked: Iterable[int], note: str) -> None:
    ledger = Ledger()
    ledger.track(_key(n) for n in tracked)
    ledger.ack(ledger.tracked)  # each event's request was answered before the worker left
    stored = _stored(collector.config.parent / "data")
    twice = sum(c - 1 for c in Counter(stored.deduped).values() if c > 1)
    check = ledger.check(stored)
    figures.add_check(check)
    figures.note(f"{note}: lost {check.lost}, stored twice {twice}")
    check.assert_clean()
    assert twice == 0, f"{twice} events were stored under two ids"


# -- gunicorn ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Gunicorn:
    """`gunicorn tests.reliability.wsgi_app:app` with sync workers, stopped gracefully with SIGTERM."""

    def __init__(self, tmp: Path, *, workers: int, preload: bool, endpoint: str, spool: Path, exit_s: float) -> None:
        if not GUNICORN.exists():
            pytest.fail(f"gunicorn is not installed next to {sys.executable} (the dev extra brings it)")
        self.port = _free_port()
        self.drops = tmp / "drops.log"
        self.log = tmp / "gunicorn.log"
        cmd = [str(GUNICORN), "-k", "sync", "-w", str(workers), "-b", f"127.0.0.1:{self.port}"]
        cmd += ["--graceful-timeout", "30", "--timeout", "60"]
        if preload:
            cmd.append("--preload")
        env = dict(
            os.environ,
            MAIDIAN_ENDPOINT=endpoint,
            MAIDIAN_SPOOL=str(spool),
            MAIDIAN_TEST_DROPS=str(self.drops),
            MAIDIAN_TEST_EXIT_S=str(exit_s),
            PYTHONPATH=str(ROOT),
        )
        with open(self.log, "ab") as err:
            self.proc = subprocess.Popen(
                [*cmd, "tests.reliability.wsgi_app:app"], cwd=ROOT, env=env, stdout=err, stderr=err
            )
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"gunicorn exited ({self.proc.returncode}): {self.log.read_text()[-3000:]}")
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/ready", timeout=5).close()
                break
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"gunicorn did not answer within 30 s: {self.log.read_text()[-3000:]}")
            time.sleep(0.05)

    def get(self, n: int) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.port}/track?n={n}"
        with urllib.request.urlopen(url, timeout=10) as resp:  # 127.0.0.1 only
            said: dict[str, Any] = json.loads(resp.read())
            return said

    def load(self, numbers: range, threads: int = 8) -> list[dict[str, Any]]:
        answers: list[dict[str, Any]] = []
        lock = threading.Lock()
        todo = iter(numbers)

        def worker() -> None:
            while True:
                with lock:
                    n = next(todo, None)
                if n is None:
                    return
                said = self.get(n)
                with lock:
                    answers.append(said)

        pool = [threading.Thread(target=worker) for _ in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join(60)
        return answers

    def stop(self, timeout_s: float = 60) -> float:
        """SIGTERM (a graceful stop) and wait; the seconds it took."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise
        return time.monotonic() - started

    def dropped(self) -> list[str]:
        return self.drops.read_text().splitlines() if self.drops.exists() else []


@pytest.mark.timeout(120)
@pytest.mark.parametrize("workers", [2, 4])
@pytest.mark.parametrize("preload", [False, True], ids=["workers", "preload"])
def test_gunicorn_workers_share_one_spool_path(
    tmp_path: Path, figures: Figures, collectors: Callable[..., CollectorProcess], workers: int, preload: bool
) -> None:
    collector = collectors()
    spool = tmp_path / "spool"
    server = Gunicorn(tmp_path, workers=workers, preload=preload, endpoint=collector.url, spool=spool, exit_s=5)
    answers = server.load(range(1, REQUESTS + 1))
    stop_s = server.stop()
    assert server.proc.returncode == 0, server.log.read_text()[-3000:]
    slots = {a["pid"]: a["slot"] for a in answers}
    assert server.dropped() == []
    assert not list(spool.rglob("*.seg")), "events were left in the spool after a graceful stop"
    # Every worker that served claimed a slot of its own under the one path.
    assert len(slots) >= 2, "the load reached one worker only"
    assert len(set(slots.values())) == len(slots)
    assert all(slots.values())
    _check(
        figures,
        collector,
        range(1, REQUESTS + 1),
        f"gunicorn sync, {workers} workers{', --preload' if preload else ''}: {REQUESTS} requests served by "
        f"{len(slots)} workers, graceful stop in {stop_s:.1f} s",
    )


@pytest.mark.timeout(120)
def test_a_restart_with_fewer_workers_adopts_every_slot(
    tmp_path: Path, figures: Figures, collectors: Callable[..., CollectorProcess]
) -> None:
    spool = tmp_path / "spool"
    down = f"http://127.0.0.1:{_free_port()}"  # nothing listens there: every attempt is refused
    first = Gunicorn(tmp_path, workers=4, preload=False, endpoint=down, spool=spool, exit_s=0.5)
    first.load(range(1, REQUESTS + 1))
    first.stop()
    left = {p.parent for p in spool.rglob("*.seg")}
    assert len(left) >= 2, "the first run should have left events in several slots"
    collector = collectors()
    second = Gunicorn(tmp_path, workers=2, preload=False, endpoint=collector.url, spool=spool, exit_s=5)
    data = collector.config.parent / "data"
    deadline = time.monotonic() + 30
    while len(_stored(data).deduped) < REQUESTS and time.monotonic() < deadline:
        time.sleep(0.2)
    second.stop()
    assert not list(spool.rglob("*.seg")), "some slot was stranded"
    assert second.dropped() == []
    _check(
        figures,
        collector,
        range(1, REQUESTS + 1),
        f"restart: 4 workers left events in {len(left)} slots with the collector down; 2 workers adopted them all",
    )


# -- multiprocessing -------------------------------------------------------------------------

_CLIENT: list[Client] = []


def _track(n: int) -> int:
    _CLIENT[0].track("stock_order_submit", {**ORDER, "quantity": 100 * (n + 1)})
    return os.getpid()


def _make_client(url: str) -> None:
    _CLIENT[:] = [Client(url, write_key=KEY, timeouts=Timeouts(exit_s=5))]


def _parent_client(url: str, spool: Path) -> Client:
    # A long linger: nothing leaves a worker before it exits, so its exit path must send everything.
    # With a spool: each worker claims its own slot under the parent's path.
    client = Client(url, write_key=KEY, spool=str(spool), batch=BatchLimits(linger_s=3600), timeouts=Timeouts(exit_s=5))
    _CLIENT[:] = [client]
    return client


@pytest.mark.timeout(120)
@pytest.mark.parametrize("made", ["inherited", "initializer"])
def test_pool_workers_deliver_when_terminated_and_when_recycled(
    tmp_path: Path, figures: Figures, collectors: Callable[..., CollectorProcess], made: str
) -> None:
    collector = collectors()
    ctx = multiprocessing.get_context("fork")
    spool = tmp_path / "spool"
    client = _parent_client(collector.url, spool) if made == "inherited" else None
    init: dict[str, Any] = {"initializer": _make_client, "initargs": (collector.url,)} if client is None else {}
    started = time.monotonic()
    with ctx.Pool(4, **init) as pool:  # leaving the block terminates the workers (SIGTERM)
        pids = set(pool.map(_track, range(TASKS), chunksize=10))
    with ctx.Pool(4, maxtasksperchild=3, **init) as pool:  # workers that end after 3 chunks
        pids |= set(pool.map(_track, range(TASKS, 2 * TASKS), chunksize=10))
        pool.close()
        pool.join()
    took = time.monotonic() - started
    if client is not None:
        assert client.stats.tracked == 0
        client.close()
        assert not list(spool.rglob("*.seg")), "a worker left events in its slot"
    _check(
        figures,
        collector,
        range(2 * TASKS),
        f"multiprocessing.Pool, client {made}{SPOOLED if client else ''}: {2 * TASKS} tasks in {len(pids)} "
        f"worker processes (terminated, then recycled) in {took:.1f} s",
    )


@pytest.mark.timeout(120)
def test_process_pool_executor_workers_deliver_at_shutdown(
    tmp_path: Path, figures: Figures, collectors: Callable[..., CollectorProcess]
) -> None:
    collector = collectors()
    client = _parent_client(collector.url, tmp_path / "spool")
    started = time.monotonic()
    with ProcessPoolExecutor(4, mp_context=multiprocessing.get_context("fork")) as pool:
        pids = set(pool.map(_track, range(TASKS), chunksize=10))
    took = time.monotonic() - started
    client.close()
    _check(
        figures,
        collector,
        range(TASKS),
        f"ProcessPoolExecutor, with a spool: {TASKS} tasks in {len(pids)} worker processes, shut down in {took:.1f} s",
    )
