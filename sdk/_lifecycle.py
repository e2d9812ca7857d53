"""Process lifecycle: flush at exit within a budget, and start afresh in a forked child.

- Exit: one `atexit` hook closes every live client, sharing one budget (the
  largest `Timeouts.exit_s` among them), so exit is never held longer than that
  however many clients there are or however dead the collector is. Sender
  threads are daemons: they never hold exit on their own.
- `os.fork`: the child inherits the parent's memory, buffer included, but none
  of its threads. Each client in the child gets a new source id, an empty
  buffer and new locks, and starts its sender when it is next used: the
  parent's events are sent once, by the parent.
- `multiprocessing` (fork start method) ends its children with `os._exit`,
  which skips `atexit`; a child's clients are therefore also closed by a
  multiprocessing finalizer registered in the child.
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


def unregister(client: Lifecycle) -> None:
    _clients.discard(client)


def _at_exit() -> None:
    clients = list(_clients)
    if not clients:
        return
    deadline = time.monotonic() + max(c._exit_budget_s() for c in clients)
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
    if mp_util is not None:
        for client in clients:
            mp_util.register_after_fork(client, _close_with_multiprocessing)


def _close_with_multiprocessing(client: Lifecycle) -> None:
    """Runs in a multiprocessing child after its own fork bookkeeping: close at its exit."""
    import multiprocessing.util

    def close() -> None:
        client._exit_within(time.monotonic() + client._exit_budget_s())

    multiprocessing.util.Finalize(client, close, exitpriority=10)


atexit.register(_at_exit)
os.register_at_fork(
    before=SENDER_IMPORTS.acquire,
    after_in_parent=SENDER_IMPORTS.release,
    after_in_child=SENDER_IMPORTS.release,
)
os.register_at_fork(after_in_child=_after_fork_in_child)
