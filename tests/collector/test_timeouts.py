"""Slow senders cannot hold the collector's connections or request slots (docs/reliability.md, T8).

Found by the reliability battery: a body that stopped arriving held one of the
`max_in_flight` slots for ever, and a connection that never finished its
request head (or sat idle) stayed open for aiohttp's default hour. Now a body
with no progress for `server.body_timeout_s` is answered 408, and `maidian
serve` closes connections without a whole request head after
`server.idle_timeout_s`.
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from maidian.collector.http.app import COLLECTOR, make_app
from tests.collector.helpers import KEY, body_of, headers_for, make_config, order, statuses
from tests.reliability.procs import CollectorProcess, write_config


async def test_a_stalled_body_is_answered_408_and_frees_its_slot(aiohttp_client: Any, tmp_path: Path) -> None:
    config = make_config(tmp_path / "data")
    config = replace(config, server=replace(config.server, body_timeout_s=0.3))
    client = await aiohttp_client(make_app(config))
    body = body_of([order(1)])
    head = (
        "POST /v1/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/msgpack\r\nContent-Encoding: zstd\r\n"
        f"X-Maidian-Write-Key: {KEY}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    writer.write(head + body[: len(body) // 2])
    await writer.drain()
    started = time.monotonic()
    answer = await asyncio.wait_for(reader.read(4096), 10)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
    assert b'"code":"timeout"' in answer
    assert time.monotonic() - started < 5
    writer.close()
    collector = client.server.app[COLLECTOR]
    assert collector.in_flight == 0
    resp = await client.post("/v1/batch", data=body, headers=headers_for())
    assert statuses(await resp.json()) == ["accepted"]  # nothing of the stalled request was stored


def test_serve_closes_connections_without_a_whole_request_head(tmp_path: Path) -> None:
    config = write_config(tmp_path / "collector.toml", tmp_path / "data", extra="[server]\nidle_timeout_s = 1.0\n")
    proc = CollectorProcess(config).start()
    try:
        idle = socket.create_connection(("127.0.0.1", proc.port))
        dribbling = socket.create_connection(("127.0.0.1", proc.port))
        dribbling.sendall(b"POST /v1/batch HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        for sock in (idle, dribbling):
            sock.settimeout(0.2)
        closed: dict[str, float] = {}
        while len(closed) < 2 and time.monotonic() - started < 10:
            for name, sock in (("idle", idle), ("dribbling", dribbling)):
                if name in closed:
                    continue
                try:
                    if name == "dribbling":
                        sock.sendall(b"X")
                    if sock.recv(100) == b"":
                        closed[name] = time.monotonic() - started
                except TimeoutError:
                    continue
                except OSError:
                    closed[name] = time.monotonic() - started
        idle.close()
        dribbling.close()
        assert set(closed) == {"idle", "dribbling"}, closed
        assert max(closed.values()) < 5
    finally:
        assert proc.stop() == 0
