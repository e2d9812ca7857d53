"""A fork while a sender thread is still importing its modules (docs/reliability.md, T13, found by the battery).

gunicorn `--preload` makes the app (and its client) in the master and forks
the workers at once. The sender threads import http.client and ssl when they
start; a fork in the middle of that import left each worker a half-initialised
`maidian.sdk._http`, its senders died on ImportError, and its events were
never sent. A fork now waits for those imports (`_lifecycle.sender_imports`).
Here a slow import makes the fork land inside it every time.

The first connection imports too: `socket.getaddrinfo` encodes the host name
with the `idna` codec, whose module is loaded on first use. A fork during that
import left each worker a module lock held by a thread that no longer exists:
its sender blocked on it for good and the worker's events were never sent
(seen once in a few dozen T13 runs). `sender_imports` loads the codec too,
and a first round trip must import nothing more.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tests.conftest import ROOT
from tests.sdk.sink import Sink

CHILD = textwrap.dedent(
    """
    import importlib.abc, os, sys, time

    class SlowImport(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == sys.argv[2]:
                time.sleep(0.5)  # a sender thread is inside this import meanwhile
            return None

    sys.meta_path.insert(0, SlowImport())
    from maidian.sdk import Client

    client = Client(sys.argv[1], write_key="wk_test")
    client.track("stock_order_submit", {"n": 0})
    client.flush(0)  # send now, without waiting: the first connection starts
    time.sleep(0.2)  # the senders are importing
    pid = os.fork()
    if pid == 0:
        for _ in range(5):
            client.track("stock_order_submit", {"n": 1})
        os._exit(0 if client.flush(5) else 3)
    _, status = os.waitpid(pid, 0)
    sys.exit(os.waitstatus_to_exitcode(status) or (0 if client.flush(5) else 4))
    """
)


@pytest.mark.parametrize("module", ["http.client", "encodings.idna"])
def test_a_fork_during_the_senders_imports_leaves_the_child_a_working_sender(sink: Sink, module: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, sink.url, module],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ImportError" not in proc.stderr
    assert len(sink.stored) == 6  # the parent's one and the child's five


FIRST_ROUND_TRIP = textwrap.dedent(
    """
    import sys
    from maidian.sdk import Client
    from maidian.sdk._lifecycle import sender_imports

    sender_imports()
    before = set(sys.modules)
    client = Client(sys.argv[1].replace("127.0.0.1", "localhost"), write_key="wk_test")
    client.track("stock_order_submit", {"n": 1})
    assert client.flush(5)
    client.close(5)
    print(" ".join(sorted(set(sys.modules) - before)))
    """
)


def test_a_senders_first_round_trip_imports_nothing_a_fork_could_catch_half_done(sink: Sink) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", FIRST_ROUND_TRIP, sink.url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert proc.stdout.split() == []
    assert len(sink.stored) == 1
