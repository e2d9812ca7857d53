"""Process lifecycle: flush at exit within a budget, and start afresh in a forked child.

- Exit: one `atexit` hook closes every live client, sharing one budget (the
  largest `Timeouts.exit_s` among them), so exit is never held longer than that
  however many clients there are or however dead the collector is. The hook
  itself stops at 95% of the budget, leaving the rest to the interpreter's
  teardown. Sender
  threads are daemons: they never hold exit on their own.
- `os.fork`: the child inherits the parent's memory, buffer included, but none
  of its threads. Each client in the child gets its own source id, an empty
  buffer (its own slot of the spool, when one is configured) and new locks,
  and starts its sender when it is next used: the parent's events are sent
  once, by the parent.
- `multiprocessing` ends its children with `os._exit`, which skips `atexit`,
  after running its own finalizers. In a multiprocessing child (inherited
  clients and clients made there alike) the exit hook is therefore also a
  multiprocessing finalizer, so pool workers flush within the budget.
- `Pool.terminate()` (and leaving a `with Pool(...)` block) ends workers
  with SIGTERM, whose default action skips every hook. In a multiprocessing
  child whose SIGTERM disposition is still the default, the SDK turns SIGTERM
  into `SystemExit` (the handler is installed in the main thread when a
  client is registered there or inherited): the worker unwinds, its
  finalizers flush within the budget, and it exits with status 128 + 15. A
  SIGTERM that arrives once the worker is leaving (multiprocessing's exit
  function or the SDK's exit hook has started) is ignored, so it cannot cut the flush short; a second SIGTERM
  before that ends the process at once. A handler the program installed
  itself is never replaced.
- Sender threads import what they need (http.client, ssl, zstandard) when
  they start, off the host's start-up path. A fork in the middle of such an
  import would leave the child a half-initialised module that no import can
  finish (gunicorn `--preload` forks its workers right after the app made its
  client). So those imports run under `SENDER_IMPORTS` (`sender_imports()`),
  and a fork waits for them (`os.register_at_fork(before=...)`). That
  includes the `idna` codec, which the first connection would otherwise load
  (getaddrinfo encodes the host name with it): a first round trip imports
  nothing.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ._http import HttpTransport

__all__ = ["register", "unregister"]


class Lifecycle(Protocol):
    def _exit_within(self, deadline: float) -> None: ...
    def _exit_budget_s(self) -> float: ...
    def _after_fork(self) -> None: ...


_clients: weakref.WeakSet[Any] = weakref.WeakSet()
EXIT_SHARE = 0.95
# Held while a sender thread imports its modules; a fork takes it first (module docstring).
SENDER_IMPORTS = threading.Lock()


def sender_imports() -> type[HttpTransport]:
    """Import what a sender thread needs, whole, before any fork; returns the transport class."""
    with SENDER_IMPORTS:
        import codecs
        import email.utils  # noqa: F401  # Retry-After dates (retry.parse_retry_after)

        # The first connection's getaddrinfo encodes the host name with this codec, loaded on first use.
        codecs.lookup("idna")

        import zstandard  # noqa: F401  # batch compression (core.SdkCore._wrap)

        from ._http import HttpTransport
    return HttpTransport


def register(client: Lifecycle) -> None:
    """Close `client` at exit and reset it in forked children."""
    _clients.add(client)
    if _in_multiprocessing_child():
        _hook_multiprocessing_exit()


def unregister(client: Lifecycle) -> None:
    _clients.discard(client)


def _at_exit() -> None:
    _exiting[0] = os.getpid()
    clients = list(_clients)
    if not clients:
        return
    # The clients get 95% of the budget: the rest is for what follows the hook (joining the
    # senders, the interpreter's teardown), 30-90 ms measured, so the process is gone within it.
    deadline = time.monotonic() + EXIT_SHARE * max(c._exit_budget_s() for c in clients)
    for client in clients:
        try:
            client._exit_within(deadline)
        except Exception:  # noqa: S112  # exit must go on whatever one client does
            continue


def _after_fork_in_child() -> None:
    clients = list(_clients)
    for client in clients:
        client._after_fork()
    mp_util = sys.modules.get("multiprocessing.util")
    if mp_util is not None and clients:
        # Runs after multiprocessing's own fork bookkeeping, which clears the finalizers.
        mp_util.register_after_fork(_at_exit, lambda _hook: _hook_multiprocessing_exit())


_hooked_in: list[int] = [0]  # the process whose multiprocessing exit hook is registered
_exiting: list[int] = [0]  # the process whose exit hook has started


def _in_multiprocessing_child() -> bool:
    process = sys.modules.get("multiprocessing.process")
    return process is not None and process.parent_process() is not None


def _hook_multiprocessing_exit() -> None:
    """In a multiprocessing child: run the exit hook as one of its finalizers, and make SIGTERM unwind."""
    if _hooked_in[0] == os.getpid():
        return
    _hooked_in[0] = os.getpid()
    import multiprocessing.util

    multiprocessing.util.Finalize(None, _at_exit, exitpriority=10)
    if threading.current_thread() is threading.main_thread():
        import signal

        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _unwind_on_sigterm)


def _unwind_on_sigterm(signum: int, frame: object) -> None:
    mp_util = sys.modules.get("multiprocessing.util")
    if _exiting[0] == os.getpid() or getattr(mp_util, "_exiting", False):
        return  # already leaving (Pool.terminate signals workers on their way out): let the exit hooks finish
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise SystemExit(128 + signum)


atexit.register(_at_exit)
os.register_at_fork(
    before=SENDER_IMPORTS.acquire,
    after_in_parent=SENDER_IMPORTS.release,
    after_in_child=SENDER_IMPORTS.release,
)
os.register_at_fork(after_in_child=_after_fork_in_child)
