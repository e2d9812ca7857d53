"""Admission (issue 14, item 1): credentials before the body, a total body deadline, slots shared per sender.

In-process, on a real app over 127.0.0.1, with requests written as raw bytes
so a body can stop half-way. The battery's T8 (`test_t08_slow_bodies.py`)
runs the same attack at scale against `maidian serve`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from maidian.collector.http.app import GATE, make_app
from tests.collector.helpers import OLD_KEY, body_of, headers_for, make_config, order, signed_headers

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _app(aiohttp_client: Any, tmp_path: Path, **server: Any) -> TestClient[Any, Any]:
    config = make_config(tmp_path / "data")
    config = replace(config, server=replace(config.server, **server))
    client: TestClient[Any, Any] = await aiohttp_client(make_app(config))
    return client


async def _head_only(client: TestClient[Any, Any], path: str, headers: dict[str, str], length: int) -> Stream:
    """A request whose head is sent whole and whose body (of `length` bytes) has not started."""
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    writer.write(f"POST {path} HTTP/1.1\r\nHost: x\r\n{lines}Content-Length: {length}\r\n\r\n".encode())
    await writer.drain()
    return reader, writer


async def _status(reader: asyncio.StreamReader, timeout_s: float = 10) -> int:
    line = await asyncio.wait_for(reader.readline(), timeout_s)
    return int(line.split()[1])


async def _until(condition: Any, timeout_s: float = 5) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.01)


async def test_no_credentials_is_refused_before_any_body_byte(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await _app(aiohttp_client, tmp_path)
    gate = client.server.app[GATE]
    reader, writer = await _head_only(client, "/v1/batch", headers_for(key=None), 100_000)
    assert await _status(reader) == 401
    reader2, writer2 = await _head_only(client, "/v1/batch", headers_for(key="mk_wrong_0000"), 100_000)
    assert await _status(reader2) == 401
    assert gate.admission.held == {}
    for w in (writer, writer2):
        w.close()


async def test_a_signed_head_is_checked_before_the_body(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await _app(aiohttp_client, tmp_path)
    body = body_of([order(1)])
    unknown = signed_headers(body, source="no-such-service")
    stale = signed_headers(body, timestamp=int(time.time()) - 3600)
    for headers in (unknown, stale):
        reader, writer = await _head_only(client, "/v1/batch", headers, len(body))
        assert await _status(reader) == 401
        writer.close()
    # A good head waits for its body; the signature over it is checked then.
    forged = signed_headers(body)
    reader, writer = await _head_only(client, "/v1/batch", forged, len(body))
    gate = client.server.app[GATE]
    await _until(lambda: gate.admission.held.get("source:orders-service") == 1)
    writer.write(body[:-1] + bytes([body[-1] ^ 1]))
    assert await _status(reader) == 401
    writer.close()


async def test_a_body_has_a_total_deadline_that_bytes_do_not_renew(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await _app(aiohttp_client, tmp_path, body_timeout_s=0.5)
    body = body_of([order(1)])
    reader, writer = await _head_only(client, "/v1/batch", headers_for(), len(body))
    started = time.monotonic()
    answer = asyncio.ensure_future(_status(reader))
    sent = 0
    while not answer.done() and sent < len(body) - 1:
        writer.write(body[sent : sent + 1])
        sent += 1
        await asyncio.sleep(0.05)  # the sender's pace: a byte every 50 ms, far under any per-read timeout
    assert await answer == 408
    assert time.monotonic() - started < 3
    assert sent < len(body) - 1, "the body arrived whole before the deadline"
    writer.close()
    assert client.server.app[GATE].admission.held == {}


async def test_slots_are_shared_per_sender_with_a_pool_for_the_unauthenticated(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    client = await _app(
        aiohttp_client, tmp_path, max_in_flight=4, max_in_flight_per_sender=2, max_in_flight_unauthenticated=1
    )
    admission = client.server.app[GATE].admission
    body = body_of([order(1)])
    held: list[Stream] = []
    # Two stalled bodies with one key take its share: a third request of that key gets 503, another key's is served.
    for _ in range(2):
        held.append(await _head_only(client, "/v1/batch", headers_for(), len(body)))
    await _until(lambda: admission.held.get("key:current") == 2)
    resp = await client.post("/v1/batch", data=body, headers=headers_for())
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "1"
    resp = await client.post("/v1/batch", data=body_of([order(2)]), headers=headers_for(key=OLD_KEY))
    assert resp.status == 200
    ready = await client.get("/readyz")
    assert ready.status == 200
    assert (await ready.json())["in_flight"] == 2
    # A stalled Sensors request holds the unauthenticated pool's one slot: the next one gets 503, the keys do not.
    held.append(await _head_only(client, "/sa", {"Content-Type": "application/x-www-form-urlencoded"}, 1000))
    await _until(lambda: admission.held.get("") == 1)
    resp = await client.post("/sa", data=b"data=x", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status == 503
    # The other key fills the rest: every authenticated slot is taken, and /readyz says so.
    for _ in range(2):
        held.append(await _head_only(client, "/v1/batch", headers_for(key=OLD_KEY), len(body)))
    await _until(lambda: admission.authenticated == 4)
    ready = await client.get("/readyz")
    assert ready.status == 503
    assert (await ready.json())["reason"] == "overloaded"
    signed_body = body_of([order(3)])
    resp = await client.post("/v1/batch", data=signed_body, headers=signed_headers(signed_body))
    assert resp.status == 503
    # Finishing the bodies frees the slots.
    for reader, writer in held[:2]:
        writer.write(body)
        assert await _status(reader) == 200
    for _reader, writer in held:
        writer.close()
    await _until(lambda: admission.held == {})
    assert (await client.get("/readyz")).status == 200
    text = await (await client.get("/metrics")).text()
    assert 'maidian_admission_refused_total{pool="sender"} 1' in text
    assert 'maidian_admission_refused_total{pool="total"} 1' in text
    assert 'maidian_admission_refused_total{pool="unauthenticated"} 1' in text
