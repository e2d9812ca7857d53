"""A host process for the SDK's process tests, run as `python tests/sdk/child.py MODE URL N [SPOOL]`.

- `exit`: track N events and return from main without flush() or close().
- `async-exit`: the same from a coroutine under `asyncio.run`, with an `AsyncClient`.
- `spool`: track N events into a disk spool, say so, then keep sending until killed.

It prints one JSON line: the client's source id and how many events it tracked.
At exit, once every exit hook has run (the SDK's included), it writes
`hooks_done <monotonic time>` to stderr.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import sys
import time

# Registered before the SDK registers its own hook: atexit runs hooks last-in first-out, so this runs after it.
atexit.register(lambda: print(f"hooks_done {time.monotonic()}", file=sys.stderr, flush=True))

from maidian.sdk import AsyncClient, BatchLimits, Client, Timeouts  # noqa: E402

ORDER = {"stock_code": "600519", "stock_name": "贵州茅台", "side": "buy", "price": 1688.5, "quantity": 100}


async def track_async(url: str, count: int) -> None:
    """Track from a coroutine and let asyncio.run end the loop: no flush, no aclose."""
    client = AsyncClient(url, write_key="wk_test")
    for i in range(count):
        client.track("stock_order_submit", {**ORDER, "quantity": i})
    print(json.dumps({"source": client.source_id, "tracked": client.stats.tracked, "at": time.monotonic()}), flush=True)
    await asyncio.sleep(0)


def main() -> None:
    mode, url, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if mode == "async-exit":
        asyncio.run(track_async(url, count))
        return
    if mode == "exit":
        budget = float(sys.argv[4]) if len(sys.argv) > 4 else 2.0
        client = Client(url, write_key="wk_test", timeouts=Timeouts(exit_s=budget, request_s=30))
    else:
        client = Client(url, write_key="wk_test", spool=sys.argv[4], batch=BatchLimits(max_events=100, linger_s=0.01))
    for i in range(count):
        client.track("stock_order_submit", {**ORDER, "quantity": i})
    print(json.dumps({"source": client.source_id, "tracked": client.stats.tracked, "at": time.monotonic()}), flush=True)
    if mode == "spool":
        while True:
            time.sleep(1)


if __name__ == "__main__":
    main()
