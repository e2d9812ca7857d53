"""`Client`: the SDK with a background thread, for apps, scripts and threaded servers.

The host's threads only pack events into the buffer (`SdkCore.track`). Up to
`BatchLimits.max_in_flight` daemon sender threads, each with its own keep-alive
`http.client` connection, loop: take the next batch from the core under one
lock, send it outside the lock, hand the answer back under the lock. Nothing
but the standard library is needed.

`flush()` and `close()` return within their timeouts whatever the collector
does: past the budget, requests blocked on a silent collector are aborted by
shutting their sockets down, and the events stay in the buffer (or spool).
"""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import TYPE_CHECKING

from ._api import BaseClient, _wall_ms

if TYPE_CHECKING:
    from ._http import HttpTransport

__all__ = ["Client"]

# flush() without a timeout: long enough for a few round trips and one retry.
DEFAULT_FLUSH_TIMEOUT_S = 10.0


class Client(BaseClient):
    """Track events from any thread; a background thread sends them.

    >>> client = Client("http://127.0.0.1:8106", write_key="wk_live_...")   # doctest: +SKIP
    >>> client.track("stock_order_submit", {"stock_code": "600519", "side": "buy"})  # doctest: +SKIP
    """

    def _start(self) -> None:
        self._lock = threading.Lock()
        self._settled = threading.Condition(self._lock)
        self._wake_event = threading.Event()
        self._stopping = False
        self._transports: list[HttpTransport] = []
        self._threads: list[threading.Thread] = []
        if self.config.debug:
            return
        for i in range(self.config.batch.max_in_flight):
            thread = threading.Thread(target=self._run, name=f"maidian-sender-{i}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _wake(self) -> None:
        self._wake_event.set()

    def _run(self) -> None:
        # http.client (and the ssl module it loads) is imported here, off the host's start-up path,
        # whole before any fork (_lifecycle.sender_imports).
        from ._lifecycle import quiet_signals, sender_imports

        transport = sender_imports().for_config(self.config)
        quiet_signals()
        with self._lock:
            self._transports.append(transport)
            if self._stopping:
                transport.abort()
        wake = self._wake_event
        while True:
            try:
                if not self._step(transport):
                    break
            except Exception as exc:  # a bug must not kill the sender: say so, pause, go on
                self._report_bug(exc)
                wake.wait(1.0)
        transport.close()

    def _step(self, transport: HttpTransport) -> bool:
        """One turn of the sender loop; False when the client is stopping."""
        core = self._core
        lock = self._lock
        wake = self._wake_event
        wake.clear()
        with lock:
            if self._stopping:
                return False
            now = time.monotonic()
            batch = core.next_batch(now, _wall_ms())
            wait_s = 0.0 if batch is not None else core.next_deadline(now) - now
        if batch is None:
            wake.wait(max(wait_s, 0.001))
            return True
        response = transport.send(batch.path, batch.body, batch.headers)
        with lock:
            core.on_result(batch, response, time.monotonic(), time.time())
            self._settled.notify_all()
        wake.set()
        return True

    def flush(self, timeout_s: float = DEFAULT_FLUSH_TIMEOUT_S) -> bool:
        """Send everything tracked so far; True when all of it was answered within `timeout_s`."""
        timeout_s = self._timeout_s(timeout_s, DEFAULT_FLUSH_TIMEOUT_S)
        if self._closed or self.config.debug:
            return self._core.idle()
        if self._slow:
            self._slow_path()
        deadline = time.monotonic() + timeout_s
        with self._lock:
            self._core.request_flush()
        self._wake_event.set()
        with self._settled:
            while not self._core.idle():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._core.stalled_past(deadline):
                    return False
                self._settled.wait(remaining)
        return True

    def close(self, timeout_s: float = DEFAULT_FLUSH_TIMEOUT_S) -> bool:
        """Flush within `timeout_s`, then stop the sender. True when nothing was left unsent.

        What is left stays in the spool (if configured) for the slot's next owner;
        without a spool it is counted as dropped with reason "unsent". Later
        calls are counted as dropped with reason "closed".
        """
        timeout_s = self._timeout_s(timeout_s, DEFAULT_FLUSH_TIMEOUT_S)
        if self._closed:
            return self._core.idle()
        deadline = time.monotonic() + timeout_s
        done = self.flush(timeout_s)
        with self._lock:
            self._stopping = True
            self._closed = True
            self._slow = True
        self._wake_event.set()
        if not done:
            with self._lock:
                for transport in self._transports:
                    transport.abort()
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            self._release_buffer()
        from . import _lifecycle

        _lifecycle.unregister(self)
        return done

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- lifecycle hooks ----------------------------------------------------------------

    def _exit_within(self, deadline: float) -> None:
        self.close(max(0.0, deadline - time.monotonic()))

    def _after_fork(self) -> None:
        super()._after_fork()
        # The parent's threads did not survive the fork; start ours when first used.
        self._threads = []
        self._transports = []
        self._lock = threading.Lock()
        self._settled = threading.Condition(self._lock)
        self._wake_event = threading.Event()
        self._restart = True
        self._slow = True

    def _slow_path(self) -> None:
        if getattr(self, "_restart", False) and not self._closed:
            self._restart = False
            self._slow = self.config.debug or self._opted_out
            self._start()
            return
        super()._slow_path()

    def _needs_restart(self) -> bool:
        return bool(getattr(self, "_restart", False))

    def _sender_lock(self) -> threading.Lock:
        return self._lock
