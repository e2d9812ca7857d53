"""Every status code of the protocol, with its error body and Retry-After where it applies."""

from __future__ import annotations

import errno
import io
import os
from typing import Any

import pytest

from maidian.collector.http.app import COLLECTOR
from tests.collector.helpers import (
    KEY,
    LIMITED_KEY,
    OLD_KEY,
    REVOKED_KEY,
    body_of,
    compress,
    headers_for,
    order,
    statuses,
)


async def error_of(resp: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    body = await resp.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    if code is not None:
        assert body["error"]["code"] == code
    assert body["error"]["message"]
    return body["error"]  # type: ignore[no-any-return]


async def test_400_for_a_body_that_is_not_a_batch(client: Any) -> None:
    for data, code in (
        (compress(b"\xc1\xc1\xc1", "zstd"), "undecodable"),
        (b"not zstd at all", "undecodable"),
        (compress(b"\x93\x01\x02\x03", "zstd"), "bad_batch"),  # an array, not a map
        (compress(b"\x81\xa6events\xa3abc", "zstd"), "bad_batch"),  # events is not a list
    ):
        await error_of(await client.post("/v1/batch", data=data, headers=headers_for()), 400, code)


async def test_400_for_a_chain_of_encodings(client: Any) -> None:
    h = headers_for()
    h["Content-Encoding"] = "gzip, zstd"
    await error_of(await client.post("/v1/batch", data=body_of([order(1)]), headers=h), 400, "bad_encoding")


async def test_401_and_403(client: Any) -> None:
    body = body_of([order(1)])
    await error_of(await client.post("/v1/batch", data=body, headers=headers_for(key=None)), 401, "unauthenticated")
    await error_of(await client.post("/v1/batch", data=body, headers=headers_for(key="nope")), 401)
    await error_of(await client.post("/v1/batch", data=body, headers=headers_for(key=REVOKED_KEY)), 403, "forbidden")
    error = await error_of(
        await client.post(f"/v1/batch?write_key={KEY}", data=body, headers=headers_for(key=None)), 401
    )
    assert "X-Maidian-Write-Key" in error["message"]
    assert KEY not in error["message"]


async def test_rotation_accepts_both_keys(client: Any) -> None:
    for n, key in enumerate((KEY, OLD_KEY), 1):
        resp = await client.post("/v1/batch", data=body_of([order(n)]), headers=headers_for(key=key))
        assert statuses(await resp.json()) == ["accepted"]


async def test_413_for_bodies_over_the_limits(client: Any) -> None:
    big = io.BytesIO(os.urandom((1 << 20) + 1))
    await error_of(await client.post("/v1/batch", data=big, headers=headers_for(encoding="identity")), 413)
    many = body_of([order(n) for n in range(1, 2002)])
    await error_of(await client.post("/v1/batch", data=many, headers=headers_for()), 413, "too_large")


async def test_415_for_unknown_media(client: Any) -> None:
    h = headers_for()
    h["Content-Type"] = "text/plain"
    await error_of(await client.post("/v1/batch", data=body_of([order(1)]), headers=h), 415)
    h = headers_for()
    h["Content-Encoding"] = "br"
    await error_of(await client.post("/v1/batch", data=body_of([order(1)]), headers=h), 415)


async def test_429_for_a_key_over_its_quota_and_not_for_others(client: Any) -> None:
    ok = await client.post(
        "/v1/batch", data=body_of([order(n) for n in range(1, 11)]), headers=headers_for(key=LIMITED_KEY)
    )
    assert ok.status == 200
    resp = await client.post(
        "/v1/batch", data=body_of([order(n) for n in range(11, 21)]), headers=headers_for(key=LIMITED_KEY)
    )
    await error_of(resp, 429, "rate_limited")
    assert int(resp.headers["Retry-After"]) >= 1
    other = await client.post("/v1/batch", data=body_of([order(21)]), headers=headers_for())
    assert other.status == 200


class _FullDisk:
    """An os.write that fails with ENOSPC while `full` is set."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.full = True

    def __call__(self, fd: int, data: Any) -> int:
        if self.full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return int(self.real(fd, data))


async def test_503_while_the_disk_is_full_and_recovery_without_restart(
    client: Any, data_dir: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from maidian.collector.store import log as storage

    assert statuses(await (await client.post("/v1/batch", data=body_of([order(1)]), headers=headers_for())).json()) == [
        "accepted"
    ]
    disk = _FullDisk(os.write)
    monkeypatch.setattr(storage.os, "write", disk)
    resp = await client.post("/v1/batch", data=body_of([order(2)]), headers=headers_for())
    error = await error_of(resp, 503, "unavailable")
    assert int(resp.headers["Retry-After"]) >= 1
    assert "disk" in error["message"]
    ready = await client.get("/readyz")
    assert ready.status == 503
    assert (await ready.json())["reason"] == "disk"
    assert (await client.get("/healthz")).status == 200
    disk.full = False
    resp = await client.post("/v1/batch", data=body_of([order(2)]), headers=headers_for())
    assert statuses(await resp.json()) == ["accepted"]  # event 2 was never marked seen
    assert (await client.get("/readyz")).status == 200
    collector = client.server.app[COLLECTOR]
    assert collector.raw.write_errors == 1


async def test_503_when_the_writer_is_behind(client: Any) -> None:
    collector = client.server.app[COLLECTOR]
    collector.raw.max_unsynced_bytes = -1  # any unsynced byte is too many
    collector.raw.written_bytes += 1
    resp = await client.post("/v1/batch", data=body_of([order(1)]), headers=headers_for())
    await error_of(resp, 503)
    assert resp.headers["Retry-After"] == "1"
    collector.raw.written_bytes -= 1


async def test_503_while_stopping(client: Any) -> None:
    collector = client.server.app[COLLECTOR]
    collector.stopping = True
    try:
        resp = await client.post("/v1/batch", data=body_of([order(1)]), headers=headers_for())
        await error_of(resp, 503)
        assert (await client.get("/readyz")).status == 503
    finally:
        collector.stopping = False


async def test_unknown_paths_and_methods_are_4xx(client: Any) -> None:
    assert (await client.get("/v1/batch")).status == 405
    assert (await client.post("/v2/batch", data=b"")).status == 404


async def test_a_connection_cut_mid_body_stores_nothing(client: Any, data_dir: Any) -> None:
    """docs/reliability.md, T9: a reset after part of the body appends no partial batch."""
    import asyncio
    import socket
    import struct

    from maidian.collector.read import export_events

    body = body_of([order(k) for k in range(1, 201)])
    head = (
        "POST /v1/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/msgpack\r\nContent-Encoding: zstd\r\n"
        f"X-Maidian-Write-Key: {KEY}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    collector = client.server.app[COLLECTOR]
    for fraction, reset in ((0.01, False), (0.5, True), (0.99, True)):
        _reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
        writer.write(head + body[: int(len(body) * fraction)])
        await writer.drain()
        if reset:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()
        deadline = asyncio.get_running_loop().time() + 5
        while collector.in_flight and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
    assert collector.raw.written_bytes == 0
    assert list(export_events(data_dir)) == []
    assert collector.metrics.requests.get(("/v1/batch", 500), 0) == 0
    resp = await client.post("/v1/batch", data=body, headers=headers_for())
    assert (await resp.json())["accepted"] == 200
