"""Process lifecycle: flush at exit within a budget, and start afresh in a forked child.

- Exit: one `atexit` hook closes every live client, sharing one budget (the
  largest `Timeouts.exit_s` among them), so exit is never held longer than that
  however many clients there are or however dead the collector is. The hook
  itself stops at 95% of the budget, leaving the rest to the interpreter's
  teardown. Sender threads are daemons: they never hold exit on their own.
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
  child whose SIGTERM disposition is still the default when its first client
  is registered (inherited or made there), the SDK handles SIGTERM: a small
  daemon thread runs the exit hook within the budget and ends the process
  with status 128 + 15, as the signal would have. The thread is woken through
  `signal.set_wakeup_fd`, which the C-level handler writes from whichever
  thread the signal lands on: a Python handler alone would run only when the
  main thread executes bytecode, and a worker blocked on its task queue's
  lock never does (a pool could hang in `terminate()`). Where the wakeup fd
  is already taken, the Python handler wakes the thread instead. A worker
  already leaving (multiprocessing's exit function or the exit hook has
  started) finishes its own exit. No signal mask is changed, so processes
  the worker starts are not affected; sender threads block SIGINT and
  SIGTERM (`quiet_signals`) so that such signals reach the main thread.
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
import contextlib
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
_EXIT_ONCE = threading.Lock()


def sender_imports() -> type[HttpTransport]:
    """Import what a sender thread needs, whole, before any fork; returns the transport class."""
    with SENDER_IMPORTS:
        import codecs
        import email.utils  # noqa: F401  # Retry-After dates (retry.parse_retry_after)
        import signal  # noqa: F401  # quiet_signals

        # The first connection's getaddrinfo encodes the host name with this codec, loaded on first use.
        codecs.lookup("idna")

        import zstandard  # noqa: F401  # batch compression (core.SdkCore._wrap)

        from ._http import HttpTransport
    return HttpTransport


def quiet_signals() -> None:
    """Block SIGINT and SIGTERM in the calling (sender) thread, so the kernel delivers them to the main thread.

    Python runs signal handlers in the main thread only, and a blocking call
    there (a pool worker waiting on its task queue's lock) is interrupted only
    when the signal lands on that thread: delivered to a sender thread, the
    main thread would never see it.
    """
    import signal

    signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGINT, signal.SIGTERM))


def register(client: Lifecycle) -> None:
    """Close `client` at exit and reset it in forked children."""
    _clients.add(client)
    if _in_multiprocessing_child():
        _hook_multiprocessing_exit()


def unregister(client: Lifecycle) -> None:
    _clients.discard(client)


def _at_exit() -> None:
    with _EXIT_ONCE:  # the atexit hook, a multiprocessing finalizer and SIGTERM's thread may meet here
        _exiting[0] = os.getpid()
        _close_all()


def _close_all() -> None:
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
    """In a multiprocessing child: run the exit hook as one of its finalizers, and on SIGTERM."""
    if _hooked_in[0] == os.getpid():
        return
    _hooked_in[0] = os.getpid()
    import multiprocessing.util

    multiprocessing.util.Finalize(None, _at_exit, exitpriority=10)
    if threading.current_thread() is threading.main_thread():
        import signal

        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            _handle_sigterm(signal)


def _handle_sigterm(signal: Any) -> None:
    r, w = os.pipe()
    os.set_blocking(w, False)
    previous = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    if previous != -1:  # the program (asyncio, say) owns the wakeup fd: leave it theirs
        signal.set_wakeup_fd(previous)

    def wake(signum: int, frame: object) -> None:
        with contextlib.suppress(OSError):
            os.write(w, bytes((signum,)))

    signal.signal(signal.SIGTERM, wake)
    threading.Thread(target=_exit_on_sigterm, args=(r, signal.SIGTERM), name="maidian-sigterm", daemon=True).start()


def _exit_on_sigterm(r: int, sigterm: int) -> None:
    while sigterm not in os.read(r, 64):  # the wakeup fd also carries other handled signals
        pass
    mp_util = sys.modules.get("multiprocessing.util")
    if _exiting[0] == os.getpid() or getattr(mp_util, "_exiting", False):
        return  # already leaving (Pool.terminate signals workers on their way out): that exit flushes
    _at_exit()
    os._exit(128 + sigterm)


atexit.register(_at_exit)
os.register_at_fork(
    before=SENDER_IMPORTS.acquire,
    after_in_parent=SENDER_IMPORTS.release,
    after_in_child=SENDER_IMPORTS.release,
)
os.register_at_fork(after_in_child=_after_fork_in_child)
