"""`AsyncClient`: the SDK with an asyncio task, for aiohttp, FastAPI and other asyncio services.

The recording methods are the same plain (not `async`) methods as `Client`'s:
they only pack into the buffer, so they are safe to call from coroutines
without an `await`, and from other threads. One sender task, started on the
running loop when the client is first used, keeps up to
`BatchLimits.max_in_flight` requests in flight over one aiohttp session.

`flush()` and `aclose()` are coroutines and return within their timeouts.
If the program ends with events still buffered and the loop already gone,
the exit hook sends them with the standard-library transport, within the
exit budget.

Needs the `async` extra (`pip install 'maidian[async]'`, which brings aiohttp).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from types import TracebackType

try:
    import aiohttp
except ImportError as exc:  # the base install has no HTTP stack
    raise ImportError("AsyncClient needs aiohttp: pip install 'maidian[async]'") from exc

from ._api import BaseClient, _wall_ms
from .core import Batch, Response

__all__ = ["AsyncClient"]

DEFAULT_FLUSH_TIMEOUT_S = 10.0


def _proxy_settings(proxy: str | None) -> tuple[str | None, dict[str, str] | None]:
    """aiohttp's `proxy` and `proxy_headers` for an http:// proxy URL (credentials moved to a header)."""
    if proxy is None:
        return None, None
    from ._http import proxy_parts

    host, port, headers = proxy_parts(proxy)
    return f"http://{host}:{port}", headers or None


class AsyncClient(BaseClient):
    """Track events from asyncio code; a task on the running loop sends them.

    >>> async with AsyncClient("http://127.0.0.1:8106", write_key="wk_live_...") as client:  # doctest: +SKIP
    ...     client.track("stock_order_submit", {"stock_code": "600519"})
    """

    def _start(self) -> None:
        self._proxy = _proxy_settings(self.config.proxy)
        self._reset_sender()

    def _reset_sender(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake_event: asyncio.Event | None = None
        self._progress: asyncio.Event | None = None
        self._sends: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._slow = True  # start the sender on first use, on the caller's running loop

    def _ensure_started(self) -> bool:
        """Start the sender on the running loop; False when called outside one."""
        if self._task is not None and not self._task.done():
            return True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        if self._closed or self.config.debug:
            return False
        self._loop = loop
        self._wake_event = asyncio.Event()
        self._progress = asyncio.Event()
        self._stopping = False
        self._task = loop.create_task(self._run(), name="maidian-sender")
        return True

    def _wake(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed() or self._task is None or self._task.done():
            self._ensure_started()
            return
        event = self._wake_event
        if event is None:
            return
        if asyncio._get_running_loop() is loop:
            event.set()
        else:
            loop.call_soon_threadsafe(event.set)

    async def _run(self) -> None:
        core = self._core
        assert self._wake_event is not None
        wake = self._wake_event
        timeout = aiohttp.ClientTimeout(total=self.config.timeouts.request_s, connect=self.config.timeouts.connect_s)
        tls: ssl.SSLContext | bool = True
        if self.config.endpoint.startswith("https:"):
            from ._http import tls_context

            tls = tls_context(self.config)
        connector = aiohttp.TCPConnector(limit=self.config.batch.max_in_flight, ssl=tls)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector, auto_decompress=False) as session:
            try:
                while not self._stopping:
                    wake.clear()
                    try:
                        now = time.monotonic()
                        while (batch := core.next_batch(now, _wall_ms())) is not None:
                            task = asyncio.get_running_loop().create_task(self._send(session, batch))
                            self._sends.add(task)
                            task.add_done_callback(self._sends.discard)
                        wait_s = core.next_deadline(time.monotonic()) - time.monotonic()
                    except Exception as exc:  # a bug must not kill the sender: say so, pause, go on
                        self._report_bug(exc)
                        wait_s = 1.0
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wake.wait(), max(wait_s, 0.001))
            finally:
                for task in list(self._sends):
                    task.cancel()
                if self._sends:
                    await asyncio.gather(*self._sends, return_exceptions=True)

    async def _send(self, session: aiohttp.ClientSession, batch: Batch) -> None:
        response = Response(None, error="cancelled")
        try:
            url = self.config.endpoint + batch.path  # the endpoint may carry a path prefix
            proxy, proxy_headers = self._proxy
            headers = batch.headers
            if proxy_headers and not url.startswith("https:"):  # no tunnel: the proxy reads the request's own
                headers = {**headers, **proxy_headers}
            async with session.post(
                url, data=batch.body, headers=headers, proxy=proxy, proxy_headers=proxy_headers
            ) as reply:
                body = await reply.read()
                response = Response(reply.status, body, reply.headers.get("Retry-After"))
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            response = Response(None, error=f"{type(exc).__name__}: {exc}"[:200])
        finally:
            self._core.on_result(batch, response, time.monotonic(), time.time())
            if self._progress is not None:
                self._progress.set()
            if self._wake_event is not None:
                self._wake_event.set()

    async def flush(self, timeout_s: float = DEFAULT_FLUSH_TIMEOUT_S) -> bool:
        """Send everything tracked so far; True when all of it was answered within `timeout_s`."""
        timeout_s = self._timeout_s(timeout_s, DEFAULT_FLUSH_TIMEOUT_S)
        if self._slow and not self._closed:
            self._slow_path()
        if self._closed or self.config.debug or not self._ensure_started():
            return self._core.idle()
        deadline = time.monotonic() + timeout_s
        self._core.request_flush()
        assert self._progress is not None
        progress = self._progress
        self._wake()
        while not self._core.idle():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._core.stalled_past(deadline):
                return False
            progress.clear()
            if self._wake_event is not None:
                self._wake_event.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(progress.wait(), min(remaining, 0.05))
        return True

    async def aclose(self, timeout_s: float = DEFAULT_FLUSH_TIMEOUT_S) -> bool:
        """Flush within `timeout_s`, then stop the sender. True when nothing was left unsent."""
        timeout_s = self._timeout_s(timeout_s, DEFAULT_FLUSH_TIMEOUT_S)
        if self._closed:
            return self._core.idle()
        deadline = time.monotonic() + timeout_s
        done = await self.flush(timeout_s)
        self._closed = True
        self._slow = True
        self._stopping = True
        task = self._task
        if task is not None and not task.done():
            if self._wake_event is not None:
                self._wake_event.set()
            try:
                await asyncio.wait_for(asyncio.shield(task), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._release_buffer()
        from . import _lifecycle

        _lifecycle.unregister(self)
        return done

    async def __aenter__(self) -> AsyncClient:
        self._ensure_started()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # -- lifecycle hooks ------------------------------------------------------------------

    def _exit_within(self, deadline: float) -> None:
        """At interpreter exit the loop is usually gone: drain with the sync transport."""
        if self._closed:
            return
        self._closed = True
        self._slow = True
        self._stopping = True
        loop = self._loop
        if loop is not None and not loop.is_closed() and loop.is_running():
            # The loop lives on in another thread: let it finish its own requests.
            return
        self._drain_sync(deadline)
        self._release_buffer()

    def _after_fork(self) -> None:
        super()._after_fork()
        self._reset_sender()

    def _slow_path(self) -> None:
        if not self._closed and (self._task is None or self._task.done()) and self._ensure_started():
            self._slow = self.config.debug or self._opted_out
            return
        super()._slow_path()

    def _needs_restart(self) -> bool:
        return self._task is None or self._task.done()
