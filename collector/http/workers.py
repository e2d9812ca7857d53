"""The worker processes of one collector (`server.workers`) answering as one service.

`maidian serve --workers N` runs N processes that share the port (SO_REUSEPORT),
so any request (a scrape, a live page, its event stream) may reach any of
them. What would differ per process is made one here:

- `/metrics`: the worker scraped asks every other worker for its metrics
  snapshot and renders their sum (metrics.py, `merge`). A worker that does
  not answer within `PEER_TIMEOUT_S` counts with the last snapshot it gave,
  so no counter goes backwards; `maidian_workers_answering` says how many
  answered.
- the live view (docs/guide-operator.md): `w0` keeps the one live hub (its
  history, numbering and session coverage). The other workers forward their
  judged events to it, but only while a page is watching (`w0` keeps one byte,
  `watching`, that they read per request), and relay their pages' data
  requests (`/live/info`, `/live/stream`, `/live/coverage`) to it. Sessions
  are signed (live_routes.py), so one issued by any worker is valid on all.

The workers talk over unix sockets, `w<i>.sock`, in a directory the
supervisor makes for the run, readable by the collector's user only (0700),
and removes at exit. Nothing on them is reachable from the network.

    GET  /_w/metrics        this worker's metrics snapshot (msgpack)
    POST /_w/live/judged    (w0) one request's judged events from another worker (msgpack)
    GET  /live/info, /live/stream, /live/coverage   (w0) the live view's data, for relaying
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mmap
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import aiohttp
import msgspec
from aiohttp import web

from maidian.collector.metrics import Snapshot, merge, render
from maidian.collector.qa.live import LiveHub, judged_events

if TYPE_CHECKING:
    from maidian.collector.pipeline.auth import Principal
    from maidian.collector.pipeline.decode import Batch
    from maidian.collector.pipeline.ingest import Outcome
    from maidian.collector.service import Collector

__all__ = ["PEERS", "WORKERS", "Forwarder", "Peers", "Workers", "relay", "start_internal", "watching_flag"]

log = logging.getLogger("maidian.collector")

# How long a scrape waits for another worker's snapshot (a worker is one event loop: a scrape waits at
# most one batch's work on it).
PEER_TIMEOUT_S: Final = 2.0
# How long a relayed live request waits for w0 to listen (it may start after this worker).
RELAY_WAIT_S: Final = 10.0
# Forwarded requests waiting to be sent to w0; beyond it the oldest are dropped and counted (a slow w0
# must not slow ingestion, as a slow page must not: qa/live.py).
_FORWARD_QUEUE: Final = 1000
_WATCHING: Final = "watching"
_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode


@dataclass(frozen=True, slots=True)
class Workers:
    """This worker's place among its siblings, and what they share."""

    index: int
    count: int
    socket_dir: str
    session_key: bytes

    def socket(self, index: int) -> str:
        return os.path.join(self.socket_dir, f"w{index}.sock")

    @property
    def watching_path(self) -> str:
        return os.path.join(self.socket_dir, _WATCHING)

    @classmethod
    def prepare(cls, socket_dir: str) -> None:
        """Make the shared files in a new socket directory (the supervisor, before starting workers)."""
        with open(os.path.join(socket_dir, _WATCHING), "wb") as f:
            f.write(b"\0")


WORKERS: Final = web.AppKey("workers", Workers)


def _client(path: str) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.UnixConnector(path=path), timeout=aiohttp.ClientTimeout(total=None, connect=PEER_TIMEOUT_S)
    )


class Peers:
    """The other workers, as seen from this one: their metrics, and the live view's owner (w0)."""

    def __init__(self, workers: Workers) -> None:
        self.workers = workers
        self.sessions = {i: _client(workers.socket(i)) for i in range(workers.count) if i != workers.index}
        self.last: dict[int, Snapshot] = {}
        self.answering = 1

    async def _snapshot(self, index: int) -> Snapshot | None:
        try:
            async with asyncio.timeout(PEER_TIMEOUT_S):
                async with self.sessions[index].get("http://w/_w/metrics") as resp:
                    if resp.status != 200:
                        return self.last.get(index)
                    snap: Snapshot = _decode(await resp.read())
        except (aiohttp.ClientError, OSError, TimeoutError, msgspec.DecodeError):
            return self.last.get(index)
        self.last[index] = snap
        self.answering += 1
        return snap

    async def metrics_text(self, own: Snapshot) -> str:
        """Every worker's metrics, added up, in the Prometheus text format."""
        self.answering = 1
        found = await asyncio.gather(*(self._snapshot(i) for i in self.sessions))
        merged = merge([own, *(s for s in found if s is not None)])
        gauges = dict(merged["gauges"])
        gauges["maidian_workers_answering"] = ("Worker processes whose metrics this scrape added up.", self.answering)
        return render({**merged, "gauges": gauges})

    async def close(self) -> None:
        for session in self.sessions.values():
            await session.close()


PEERS: Final = web.AppKey("workers_peers", Peers)


class _Flag:
    """w0's one byte saying whether a live page is watching, mapped by every worker."""

    def __init__(self, path: str, *, writable: bool) -> None:
        self._fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
        self._map = mmap.mmap(self._fd, 1, access=mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ)

    def get(self) -> bool:
        return self._map[0] != 0

    def set(self, on: bool) -> None:
        self._map[0] = 1 if on else 0

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)


class Forwarder:
    """A worker other than w0: sends its judged events to w0's live hub while a page watches."""

    def __init__(self, workers: Workers) -> None:
        self.flag = _Flag(workers.watching_path, writable=False)
        self.session = _client(workers.socket(0))
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(_FORWARD_QUEUE)
        self.dropped = 0
        self.sent = 0
        self.relays: set[asyncio.Task[object]] = set()
        self.ending = False
        self._task: asyncio.Task[None] | None = None

    def end_relays(self) -> None:
        """End every relayed request (shutdown)."""
        self.ending = True
        for task in list(self.relays):
            task.cancel()

    def observe(self, batch: Batch, principal: Principal, outcome: Outcome, stored: bool, received_ms: int) -> None:
        """The pipeline's hook (always attached here): one byte read when nobody watches."""
        if not self.flag.get():
            return
        try:
            judged = judged_events(batch, outcome.results)
            body = _encode([principal.name, "batch" if stored else "debug", received_ms, judged])
        except (msgspec.EncodeError, TypeError, ValueError, OverflowError):
            self.dropped += len(batch.events)  # an event msgpack cannot carry (a JSON integer past 64 bits)
            return
        if self.queue.full():
            self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(body)

    def start(self) -> None:
        self._task = asyncio.create_task(self._send(), name="maidian-live-forward")

    async def _send(self) -> None:
        while True:
            body = await self.queue.get()
            try:
                async with self.session.post("http://w/_w/live/judged", data=body) as resp:
                    await resp.read()
                self.sent += 1
            except (aiohttp.ClientError, OSError) as exc:
                self.dropped += 1
                log.warning("live view: could not forward events to worker w0 (%s)", exc)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.session.close()
        self.flag.close()


async def relay(request: web.Request, forwarder: Forwarder) -> web.StreamResponse:
    """Answer a live page's data request with w0's answer, streamed as it comes (the event stream too).

    Relays in progress end when the forwarder closes (`Forwarder.end_relays`): a relayed stream would
    otherwise hold this worker's shutdown until the timeout.
    """
    task = asyncio.current_task()
    assert task is not None
    forwarder.relays.add(task)
    try:
        return await _relay(request, forwarder.session)
    except asyncio.CancelledError:
        if not forwarder.ending:
            raise
        raise web.HTTPServiceUnavailable(text="stopping") from None
    finally:
        forwarder.relays.discard(task)


async def _relay(request: web.Request, session: aiohttp.ClientSession) -> web.StreamResponse:
    headers = {k: v for k, v in request.headers.items() if k.lower() == "last-event-id"}
    deadline = asyncio.get_running_loop().time() + RELAY_WAIT_S
    while True:
        try:
            upstream = await session.get(f"http://w{request.rel_url}", headers=headers)
            break
        except (aiohttp.ClientError, OSError) as exc:
            # w0 may still be starting (workers start side by side): wait for it a little.
            if asyncio.get_running_loop().time() >= deadline:
                log.warning("live view: worker w0 does not answer (%s)", exc)
                raise web.HTTPServiceUnavailable(text="the live view's worker (w0) does not answer") from None
            await asyncio.sleep(0.1)
    try:
        response = web.StreamResponse(status=upstream.status)
        response.headers["X-Maidian-Worker"] = f"w{request.app[WORKERS].index}"  # which worker relayed it
        for name in ("Content-Type", "X-Accel-Buffering"):
            if name in upstream.headers:
                response.headers[name] = upstream.headers[name]
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response
    except (aiohttp.ClientError, ConnectionError):
        return response
    finally:
        upstream.release()


LiveMount = Callable[[web.Application, LiveHub], None]
"""Serves a live hub's data routes on an application (live_routes.mount_live_data)."""


def internal_app(
    collector: Collector, workers: Workers, hub: LiveHub | None, mount_live_data: LiveMount
) -> web.Application:
    """The routes one worker serves its siblings on its unix socket."""
    app = web.Application(client_max_size=64 << 20)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=_encode(collector.metrics.snapshot()), content_type="application/msgpack")

    app.router.add_get("/_w/metrics", metrics)
    if hub is not None and workers.index == 0:
        mount_live_data(app, hub)  # for the pages of the workers that relay to this one

        async def judged(request: web.Request) -> web.Response:
            source, route, received_ms, events = _decode(await request.read())
            hub.add_judged([tuple(e) for e in events], source, route, received_ms)
            return web.Response(status=204)

        app.router.add_post("/_w/live/judged", judged)
    return app


async def start_internal(
    collector: Collector, workers: Workers, hub: LiveHub | None, mount_live_data: LiveMount
) -> web.AppRunner:
    """Listen on this worker's unix socket (removed first if a previous run left it)."""
    path = workers.socket(workers.index)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    app = internal_app(collector, workers, hub, mount_live_data)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.UnixSite(runner, path).start()
    return runner


def watching_flag(workers: Workers) -> Callable[[bool], None]:
    """For w0's hub: keep the shared `watching` byte up to date."""
    flag = _Flag(workers.watching_path, writable=True)
    return flag.set
