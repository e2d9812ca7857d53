"""A fork while a sender thread is still importing its modules (RELIABILITY.md T13, found by the battery).

gunicorn `--preload` makes the app (and its client) in the master and forks
the workers at once. The sender threads import http.client and ssl when they
start; a fork in the middle of that import left each worker a half-initialised
`maidian.sdk._http`, its senders died on ImportError, and its events were
never sent. A fork now waits for those imports (`_lifecycle.sender_imports`).
Here a slow `http.client` import makes the fork land inside it every time.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.conftest import ROOT
from tests.sdk.sink import Sink

CHILD = textwrap.dedent(
    """
    import importlib.abc, os, sys, time

    class SlowHttpClient(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "http.client":
                time.sleep(0.5)  # the sender thread is inside `import maidian.sdk._http` meanwhile
            return None

    sys.meta_path.insert(0, SlowHttpClient())
    from maidian.sdk import Client

    client = Client(sys.argv[1], write_key="wk_test")
    time.sleep(0.2)  # the senders have started importing
    pid = os.fork()
    if pid == 0:
        for _ in range(5):
            client.track("stock_order_submit", {"n": 1})
        os._exit(0 if client.flush(5) else 3)
    _, status = os.waitpid(pid, 0)
    sys.exit(os.waitstatus_to_exitcode(status))
    """
)


def test_a_fork_during_the_senders_imports_leaves_the_child_a_working_sender(sink: Sink) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, sink.url], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ImportError" not in proc.stderr
    assert len(sink.stored) == 5
