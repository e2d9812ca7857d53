"""T13, fork safety: 1,000 events before the fork, then children that each track 1,000 of their own.

Against a real collector behind the fault proxy (which sees every id sent):
`os.fork` children that flush and leave with `os._exit`, `multiprocessing`
(fork) children that never flush, and gunicorn `--preload`'s shape (the
client made in a master process, workers forked from it and leaving through
a normal exit). Every event must be stored once, no id may be sent by two
processes (a child re-sending its parent's inherited buffer), each child's
flush must take at most 5 s, and a SQLite handle opened before a fork must
never be used by the child (the identity graph's pid check).
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from maidian.collector.identity.graph import IdentityGraph
from maidian.collector.identity.types import Observation
from maidian.sdk import BatchLimits, Client
from tests.reliability.constants import KEY
from tests.reliability.figures import Figures
from tests.reliability.ledger import Ledger, server_errors
from tests.reliability.procs import CollectorProcess, Host
from tests.reliability.proxy import FaultProxy
from tests.reliability.store import read_store

ORDER = {"stock_code": "600519", "side": "buy", "price": 1688.5, "quantity": 100}
CHILDREN = 4
EACH = 1000


def _parent_client(url: str) -> Client:
    # Nothing is sent before the fork: the parent's whole buffer is what the children inherit.
    return Client(url, write_key=KEY, batch=BatchLimits(max_events=100_000, linger_s=3600))


def _check(
    figures: Figures, proxy: FaultProxy, collector: CollectorProcess, expected: dict[str, int], note: str
) -> None:
    ledger = Ledger()
    for source, count in expected.items():
        ledger.track(f"{source}-{i}" for i in range(1, count + 1))
    ledger.ack(proxy.acks())
    check = ledger.check(read_store(collector.config.parent / "data"))
    sent = Counter(proxy.sent_ids())
    resent = sum(n - 1 for n in sent.values() if n > 1)
    figures.add_check(check)
    figures.status_5xx += server_errors(proxy.statuses())
    figures.note(f"{note}; {len(expected)} sources; ids sent more than once: {resent}")
    check.assert_clean()
    assert resent == 0, "an inherited buffer was sent again by a child"


@pytest.mark.timeout(120)
def test_os_fork(figures: Figures, collectors: Callable[..., CollectorProcess], proxy: FaultProxy) -> None:
    collector = collectors()
    proxy.set_upstream(collector.url)
    client = _parent_client(proxy.url)
    for _ in range(EACH):
        client.track("stock_order_submit", ORDER)
    parent = client.source_id
    r, w = os.pipe()
    children = []
    for _ in range(CHILDREN):
        pid = os.fork()
        if pid == 0:  # the child: report its source and flush time, then leave without exit hooks
            code = 1
            try:
                for _ in range(EACH):
                    client.track("stock_order_submit", ORDER)
                started = time.monotonic()
                flushed = client.flush(5)
                took = time.monotonic() - started
                os.write(w, f"{client.source_id} {client.stats.tracked} {took:.3f} {int(flushed)}\n".encode())
                code = 0
            finally:
                os._exit(code)
        children.append(pid)
    os.close(w)
    for pid in children:
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    with os.fdopen(r) as f:
        reports = [line.split() for line in f.read().splitlines()]
    assert client.flush(10)
    client.close()
    expected = {parent: EACH, **{src: int(n) for src, n, _t, _f in reports}}
    flush_s = [float(t) for _s, _n, t, _f in reports]
    assert len(expected) == CHILDREN + 1
    assert all(f == "1" for *_x, f in reports)
    assert max(flush_s) <= 5.0
    _check(figures, proxy, collector, expected, f"os.fork: children flushed in at most {max(flush_s):.2f} s")


_MP_CLIENT: list[Client] = []


def _mp_child(queue: multiprocessing.Queue[tuple[str, int]]) -> None:
    client = _MP_CLIENT[0]
    for _ in range(EACH):
        client.track("stock_order_submit", ORDER)
    queue.put((client.source_id, client.stats.tracked))
    # No flush, no close: multiprocessing ends the child with os._exit; the SDK's finalizer sends.


@pytest.mark.timeout(120)
def test_multiprocessing_fork(figures: Figures, collectors: Callable[..., CollectorProcess], proxy: FaultProxy) -> None:
    collector = collectors()
    proxy.set_upstream(collector.url)
    client = _parent_client(proxy.url)
    _MP_CLIENT[:] = [client]
    for _ in range(EACH):
        client.track("stock_order_submit", ORDER)
    ctx = multiprocessing.get_context("fork")
    queue: multiprocessing.Queue[tuple[str, int]] = ctx.Queue()
    procs = [ctx.Process(target=_mp_child, args=(queue,)) for _ in range(CHILDREN)]
    started = time.monotonic()
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    took = time.monotonic() - started
    reports = [queue.get(timeout=5) for _ in procs]
    queue.close()
    queue.join_thread()
    assert client.flush(10)
    client.close()
    expected = {client.source_id: EACH, **dict(reports)}
    _check(figures, proxy, collector, expected, f"multiprocessing: 4 children tracked and delivered in {took:.2f} s")


def test_preloaded_master_and_workers(
    tmp_path: Path, figures: Figures, collectors: Callable[..., CollectorProcess], proxy: FaultProxy
) -> None:
    collector = collectors()
    proxy.set_upstream(collector.url)
    host = Host("preload", tmp_path / "host.log", url=proxy.url, start=EACH, end=EACH, workers=CHILDREN)
    lines = [host.line("worker", 30) for _ in range(CHILDREN)]
    master = host.line("master", 60)
    assert host.wait(30) == 0
    assert master["worker_codes"] == [0] * CHILDREN
    expected = {master["master"]: EACH, **{line["source"]: EACH for line in lines}}
    _check(figures, proxy, collector, expected, "gunicorn --preload shape: a master and 4 forked workers")


def test_no_sqlite_handle_crosses_fork(tmp_path: Path, figures: Figures) -> None:
    graph = IdentityGraph(tmp_path / "identity.sqlite")
    graph.observe_many([Observation("e-1", 1, "track", {"anonymous_id": "dev-1", "login_id": "u-1"})])
    parent_conn = graph._store._conn
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            person = graph.person_of("login_id", "u-1")
            store = graph._store
            ok = person is not None and store.pid == os.getpid() and store._conn is not parent_conn
            graph.observe_many([Observation("e-2", 2, "track", {"anonymous_id": "dev-2", "login_id": "u-2"})])
            os.write(w, b"ok" if ok else b"shared")
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    with os.fdopen(r, "rb") as f:
        said = f.read()
    assert said == b"ok", "the child used the parent's SQLite connection"
    assert graph._store.pid == os.getpid()
    assert graph._store._conn is parent_conn
    assert graph.person_of("login_id", "u-2") is not None  # the child's write, seen through the parent's handle
    graph.close()
    figures.note("identity graph: the child opened its own SQLite connection (pid check); the parent kept its own")
