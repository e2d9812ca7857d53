"""The HTTP floor: an aiohttp server whose handler only reads the body and answers a fixed 200.

Run as a subprocess by benchmarks/collector.py; prints its port on stderr. It
runs on the event loop `maidian serve` picks by default (uvloop when
installed), so the floor and the collector pay the same loop's costs.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from aiohttp import web

from maidian.collector.run.serve import loop_factory


async def handle(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=b'{"accepted":0}', content_type="application/json")


async def main() -> None:
    app = web.Application(handler_args={"auto_decompress": False}, client_max_size=4 << 20)
    app.router.add_post("/v1/batch", handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"listening on http://127.0.0.1:{port}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    with asyncio.Runner(loop_factory=loop_factory("auto")) as runner:
        runner.run(main())
