"""A tiny WSGI application embedding the SDK, served by real gunicorn in the T13 server tests.

Configured the way an operator would: `MAIDIAN_ENDPOINT` and `MAIDIAN_SPOOL`
in the environment, one spool path for every worker. The client is made at
import, so under `--preload` the master makes it and the workers inherit it,
and without `--preload` each worker makes its own.

`GET /track?n=N` tracks one order whose quantity is `100 * (N + 1)` (the
test's ledger key) and answers the worker's pid, source id and spool slot.
Drops are appended to `$MAIDIAN_TEST_DROPS` as `<pid> <reason> <count>` lines.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

from maidian.sdk import Client, Timeouts
from tests.reliability.constants import KEY

ORDER = {"stock_code": "600519", "side": "buy", "price": 1688.5}


def _on_drop(reason: str, count: int) -> None:
    path = os.environ.get("MAIDIAN_TEST_DROPS")
    if path:
        with open(path, "a") as f:
            f.write(f"{os.getpid()} {reason} {count}\n")


client = Client(
    write_key=KEY,
    timeouts=Timeouts(exit_s=float(os.environ.get("MAIDIAN_TEST_EXIT_S", "2.0"))),
    on_drop=_on_drop,
)


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    if environ.get("PATH_INFO") != "/track":  # a readiness probe: nothing tracked
        start_response("204 No Content", [])
        return []
    query = parse_qs(environ.get("QUERY_STRING", ""))
    n = int(query.get("n", ["0"])[0])
    client.track("stock_order_submit", {**ORDER, "quantity": 100 * (n + 1)})
    slot = getattr(client._core._buffer, "slot", None)
    body = json.dumps({"pid": os.getpid(), "source": client.source_id, "slot": slot}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
