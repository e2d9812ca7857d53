"""`maidian serve`: run the collector until SIGTERM, then drain, sync and exit.

Shutdown, on SIGTERM or SIGINT: `/readyz` turns 503 at once (load balancers
stop sending), the listening sockets close, requests in flight finish (up to
`shutdown_timeout_s`), the logs are synced and closed, the dedup snapshot is
written and the catalog catches up. Then the process exits 0.

Several worker processes (`server.workers`): each binds the same port with
SO_REUSEPORT (the kernel spreads connections across them) and writes its own
segments under its own writer id (`w0`, `w1`, ...) in one data directory;
each follows the others' frame heads into its deduplication state
(docs/collector.md, "Two processes"). They answer `/metrics` and the live
view as one service, over private unix sockets (http/workers.py). The parent
only starts, watches and stops them.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace

from maidian.collector.config import ConfigSource, with_storage
from maidian.collector.errors import ConfigError
from maidian.collector.http.workers import Workers
from maidian.collector.settings import Config

__all__ = ["loop_factory", "serve"]

log = logging.getLogger("maidian.collector")

# Allocations between young-generation collections (CPython's default is 700): a
# 500-event batch allocates about 15,000 objects, none of them in cycles.
_GC_GEN0_THRESHOLD = 50_000


def _say(message: str) -> None:
    """One status line on stderr, in one write: worker processes share the stream."""
    os.write(sys.stderr.fileno(), f"maidian: {message}\n".encode())


async def _run(config: Config, source: ConfigSource | None, workers: Workers | None = None) -> None:
    from aiohttp import web

    from maidian.collector.http.app import AUTH, COLLECTOR, make_app
    from maidian.collector.http.live_routes import LIVE, mount_live_data
    from maidian.collector.http.workers import PEERS, WORKERS, Peers, start_internal

    app = make_app(config)
    if workers is not None:
        app[WORKERS] = workers
        app[PEERS] = Peers(workers)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        shutdown_timeout=config.server.shutdown_timeout_s,
        # aiohttp arms this at a connection's start and after each answer, and closes a connection still
        # waiting for a whole request head when it fires: idle keep-alive and slowloris headers alike.
        keepalive_timeout=config.server.idle_timeout_s,
    )
    await runner.setup()
    collector = app[COLLECTOR]
    site = web.TCPSite(
        runner, config.server.host, config.server.port, reuse_port=config.server.reuse_port or None, backlog=1024
    )
    await site.start()
    internal = None
    if workers is not None:
        internal = await start_internal(collector, workers, app.get(LIVE), mount_live_data)
    # The plan's compiled schemas and everything loaded so far live for the whole
    # process: move them out of the collector's way, and let young garbage build
    # up longer between collections (docs/decisions.md, "Collector: garbage collection").
    gc.freeze()
    gc.set_threshold(_GC_GEN0_THRESHOLD, 20, 20)
    port = config.server.port
    server = getattr(site, "_server", None)
    if server is not None and server.sockets:
        port = server.sockets[0].getsockname()[1]
    loop_name = type(asyncio.get_running_loop()).__module__.split(".", 1)[0]
    durability = config.storage.durability if config.sink.kind == "local" else "kafka-acks-all"
    _say(
        f"listening on http://{config.server.host}:{port} writer={collector.writer_id} "
        f"durability={durability} loop={loop_name} ready_in_s={collector.ready_after_s:.3f}"
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def reload_keys() -> None:
        if source is None:
            return
        try:
            fresh = source.resolve()
        except ConfigError as exc:
            _say(f"SIGHUP: the configuration is unusable, keeping the old keys: {exc}")
            return
        app[AUTH].reload(fresh.auth)
        active = sum(1 for k in fresh.auth.write_keys if not k.revoked)
        _say(f"reloaded keys: {active} active write keys, {len(fresh.auth.sources)} server sources")

    loop.add_signal_handler(signal.SIGHUP, reload_keys)
    await stop.wait()
    collector.stopping = True
    _say("stopping: draining requests in flight")
    # Stop accepting, then let requests in flight finish, bodies included (aiohttp's own
    # shutdown stops reading from connections, which would cut a body still arriving).
    await site.stop()
    if not await collector.wait_idle(config.server.shutdown_timeout_s):
        _say("requests still in flight at the shutdown timeout; closing them")
    await runner.cleanup()
    if internal is not None:
        await internal.cleanup()
        await app[PEERS].close()
    _say("stopped")


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop a worker runs on: uvloop's when chosen or (for "auto") installed; None for asyncio's own."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigError(
                "server.event_loop: 'uvloop' is not installed (pip install 'maidian[collector]')"
            ) from None
        return None
    return uvloop.new_event_loop


def _worker(config: Config, source: ConfigSource | None = None, workers: Workers | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with (
        contextlib.suppress(KeyboardInterrupt),
        asyncio.Runner(loop_factory=loop_factory(config.server.event_loop)) as runner,
    ):
        runner.run(_run(config, source, workers))


def serve(config: Config, source: ConfigSource | None = None) -> int:
    """Run the collector (and its worker processes) until SIGTERM; the exit code.

    With `source`, SIGHUP resolves the configuration again and swaps in its
    write keys and server sources (rotation and revocation without a restart).
    """
    loop_factory(config.server.event_loop)  # refuse an uninstalled loop here, not in each worker
    if config.server.workers == 1:
        _worker(config, source)
        return 0
    return _supervise(config, source)


def _supervise(config: Config, source: ConfigSource | None) -> int:
    # Hold the port (bound, never listening: it takes no connections) so that
    # every worker binds the same one, even when port 0 asked for any free port.
    holder = socket.socket(socket.AF_INET6 if ":" in config.server.host else socket.AF_INET, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind((config.server.host, config.server.port))
    port = holder.getsockname()[1]
    ctx = multiprocessing.get_context("spawn")
    # The workers' private unix sockets and shared flag (http/workers.py): 0700, removed at exit.
    socket_dir = tempfile.mkdtemp(prefix="maidian-")
    Workers.prepare(socket_dir)
    session_key = secrets.token_bytes(32)
    workers = []
    for i in range(config.server.workers):
        # One indexer is enough: the others would read the same frames to lose the race for them.
        worker_config = with_storage(config, writer_id=f"w{i}", index_catalog=i == 0)
        worker_config = replace(worker_config, server=replace(config.server, port=port, workers=1, reuse_port=True))
        sibling = Workers(i, config.server.workers, socket_dir, session_key)
        proc = ctx.Process(target=_worker, args=(worker_config, source, sibling), name=f"maidian-w{i}")
        proc.start()
        workers.append(proc)
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for proc in workers:
            if proc.pid is not None and proc.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate() if signum == signal.SIGTERM else proc.kill()

    def hangup(_signum: int, _frame: object) -> None:
        for proc in workers:
            if proc.pid is not None and proc.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGHUP)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, lambda s, f: forward(signal.SIGTERM, f))
    signal.signal(signal.SIGHUP, hangup)
    code = 0
    try:
        while True:
            alive = [p for p in workers if p.is_alive()]
            if not alive:
                break
            if not stopping and len(alive) < len(workers):
                log.error("a worker exited; stopping the others")
                code = 1
                forward(signal.SIGTERM, None)
            time.sleep(0.2)
    finally:
        holder.close()
        shutil.rmtree(socket_dir, ignore_errors=True)
    for proc in workers:
        proc.join()
        if proc.exitcode not in (0, -signal.SIGTERM):
            code = 1
    return code
