"""Decompression bombs and hostile payloads (docs/reliability.md, T14, T15): 4xx or per-event quarantine, never 5xx."""

from __future__ import annotations

import gzip
import io
import json
import resource
import struct
import zlib
from typing import Any

import msgspec
import pytest
import zstandard
from aiohttp import ClientSession

from maidian.collector.errors import PayloadTooLarge
from tests.collector.helpers import DEVICE, body_of, headers_for, now_ms, order, statuses

MiB = 1 << 20


def zstd_bomb(inflated: int, *, content_size: bool = True, frames: int = 1) -> bytes:
    out = bytearray()
    per_frame = inflated // frames
    zeros = bytes(MiB)
    for _ in range(frames):
        cctx = zstandard.ZstdCompressor(level=3, write_content_size=content_size)
        if content_size:
            out += cctx.compress(bytes(per_frame)) if per_frame <= 64 * MiB else _streamed(cctx, per_frame, zeros, True)
        else:
            out += _streamed(cctx, per_frame, zeros, False)
    return bytes(out)


def _streamed(cctx: zstandard.ZstdCompressor, size: int, zeros: bytes, content_size: bool) -> bytes:
    sink = io.BytesIO()
    with cctx.stream_writer(sink, size=size if content_size else -1, closefd=False) as w:
        for _ in range(size // MiB):
            w.write(zeros)
    return sink.getvalue()


def gzip_bomb(inflated: int) -> bytes:
    obj = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(MiB)
    parts = [obj.compress(zeros) for _ in range(inflated // MiB)]
    parts.append(obj.flush())
    return b"".join(parts)


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.fixture(scope="module")
def bombs() -> dict[str, tuple[bytes, str]]:
    return {
        "zstd 16 KiB -> 512 MiB": (zstd_bomb(512 * MiB), "zstd"),
        "zstd without content size": (zstd_bomb(256 * MiB, content_size=False), "zstd"),
        "zstd, many frames": (zstd_bomb(64 * MiB, frames=64), "zstd"),
        "gzip 256 MiB": (gzip_bomb(256 * MiB), "gzip"),
    }


async def test_decompression_bombs_are_refused_cheaply(client: Any, bombs: dict[str, tuple[bytes, str]]) -> None:
    before = max_rss_mib()
    for name, (body, encoding) in bombs.items():
        assert len(body) < 1 * MiB, name
        resp = await client.post("/v1/batch", data=body, headers=headers_for(encoding=encoding))
        assert resp.status == 413, (name, await resp.text())
        assert (await resp.json())["error"]["code"] == "too_large"
    # The decoded cap is 16 MiB; the bombs inflate to 64-512 MiB. Allow the cap twice over plus slack.
    assert max_rss_mib() - before < 64, "decompression was not capped"


async def test_bodies_over_the_wire_cap(client: Any) -> None:
    exact = b"\x00" * ((1 << 20) + 1)
    resp = await client.post("/v1/batch", data=io.BytesIO(exact), headers=headers_for(encoding="identity"))
    assert resp.status == 413

    async def chunks() -> Any:
        for _ in range(20):
            yield b"\x00" * (64 << 10)

    # Chunked transfer: no Content-Length, so the cap applies as the body arrives.
    async with ClientSession() as session:
        url = client.make_url("/v1/batch")
        async with session.post(url, data=chunks(), headers=headers_for(encoding="identity")) as resp:
            assert resp.status == 413
            assert "Content-Length" not in resp.request_info.headers


async def test_corrupt_compressed_bodies_are_400(client: Any) -> None:
    good = body_of([order(1)])
    for data, encoding in (
        (good[:-5], "zstd"),
        (gzip.compress(b"x" * 100)[:-9], "gzip"),
        (b"\x1f\x8b garbage", "gzip"),
    ):
        resp = await client.post("/v1/batch", data=data, headers=headers_for(encoding=encoding))
        assert resp.status == 400, await resp.text()


def msgpack_batch(events_bytes: list[bytes]) -> bytes:
    """A msgpack batch whose events are given as raw msgpack, so they can be anything."""
    head = b"\x82" + msgspec.msgpack.encode("sent_at") + msgspec.msgpack.encode(now_ms())
    head += msgspec.msgpack.encode("events") + b"\xdc" + struct.pack(">H", len(events_bytes))
    return head + b"".join(events_bytes)


def event_with_properties(seq: int, props_msgpack: bytes, n_props: int) -> bytes:
    """An order event whose properties map is given as raw msgpack entries."""
    base = order(seq)
    del base["properties"]
    encoded = msgspec.msgpack.encode(base)
    # Turn the 5-entry map into 6 entries and append "properties": {...}.
    assert encoded[0] == 0x85
    return b"\x86" + encoded[1:] + msgspec.msgpack.encode("properties") + bytes([0x80 | n_props]) + props_msgpack


def k(name: str) -> bytes:
    return msgspec.msgpack.encode(name)


HOSTILE_PROPERTIES: dict[str, tuple[bytes, int]] = {
    "10,000-deep arrays": (k("side") + b"\x91" * 10_000 + b"\xc0", 1),
    "ext type": (k("side") + b"\xd4\x05\x01", 1),
    "ext code -128": (k("side") + b"\xd4\x80\x01", 1),
    "NaN": (k("price") + b"\xcb" + struct.pack(">d", float("nan")), 1),
    "infinity": (k("price") + b"\xcb" + struct.pack(">d", float("inf")), 1),
    "uint64 max": (k("quantity") + b"\xcf" + b"\xff" * 8, 1),
    "int64 min": (k("quantity") + b"\xd3\x80" + b"\x00" * 7, 1),
    "invalid UTF-8": (k("side") + b"\xa2\xff\xfe", 1),
    "NUL in a string": (k("side") + msgspec.msgpack.encode("bu\x00y"), 1),
    "integer key": (b"\x01" + k("buy"), 1),
    "duplicate keys": (k("side") + k("buy") + k("side") + k("sell"), 2),
    "__proto__": (k("__proto__") + b"\x80", 1),
    "$set": (k("$set") + b"\x01", 1),
    "a.b": (k("a.b") + b"\x01", 1),
    "SQL in a name": (k("x'; DROP TABLE events;--") + b"\x01", 1),
    "101-character name": (k("a" * 101) + b"\x01", 1),
    "bidi controls": (k("side\u202e") + k("buy"), 1),
    "map header claiming a million entries": (k("side") + b"\xdf" + struct.pack(">I", 1_000_000), 1),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_PROPERTIES))
async def test_hostile_properties_are_quarantined_or_refused(client: Any, name: str) -> None:
    props, n = HOSTILE_PROPERTIES[name]
    good = msgspec.msgpack.encode(order(1))
    bad = event_with_properties(2, props, n)
    body = zstandard.ZstdCompressor().compress(msgpack_batch([good, bad]))
    resp = await client.post("/v1/batch", data=body, headers=headers_for())
    assert resp.status < 500, await resp.text()
    if resp.status == 200:
        result = await resp.json()
        assert result["results"][0] == {"status": "accepted"} or name == "duplicate keys"
        if name != "duplicate keys":  # msgpack decoders keep the last value: a valid event
            assert result["results"][1]["status"] == "quarantined", name
    else:
        assert resp.status in (400, 413)


async def test_a_map_header_claiming_a_million_events(client: Any) -> None:
    body = b"\x82" + k("sent_at") + b"\x01" + k("events") + b"\xdd" + struct.pack(">I", 1_000_000)
    resp = await client.post("/v1/batch", data=zstandard.ZstdCompressor().compress(body), headers=headers_for())
    # Refused on the header's claim, before anything is read after it (the body is also truncated).
    assert resp.status == 413


async def test_hostile_json(client: Any) -> None:
    lone = '{"sent_at": 1, "events": [%s]}'
    event = json.dumps(order(1))
    cases = {
        "5,000-digit integer": event.replace('"quantity": 200', '"quantity": ' + "9" * 5000),
        # Valid for the plan (a multiple of 100 over the minimum) but more than msgpack and the log can hold.
        "40-digit integer": event.replace('"quantity": 200', '"quantity": ' + "5" * 38 + "00"),
        "nested 2**64": event.replace('"buy"', f'"buy", "tags": [{2**64}]'),
        "lone surrogate": event.replace('"buy"', '"\\ud800"'),
        "10,000-deep": event.replace('"buy"', "[" * 10_000 + "]" * 10_000),
        "NaN literal": event.replace("1688.5", "NaN"),
    }
    for name, text in cases.items():
        body = (lone % text).encode()
        resp = await client.post("/v1/batch", data=body, headers=headers_for(fmt="json", encoding="identity"))
        assert resp.status < 500, (name, await resp.text())
        if resp.status == 200:
            assert statuses(await resp.json()) == ["quarantined"], name


async def test_integers_beyond_64_bits(client: Any) -> None:
    """JSON allows any integer, msgpack and the raw log 64 bits: beyond that the event is quarantined, named."""
    text = json.dumps(order(1)).replace('"quantity": 200', '"quantity": ' + str(2**64 + 100 - 2**64 % 100))
    for body, fmt in (
        (f'{{"sent_at": 1, "events": [{text}, {json.dumps(order(2, quantity=2**63 - 8))}]}}', "json"),
        (msgpack_batch([msgspec.msgpack.encode(order(3, quantity=2**64 - 16))]), "msgpack"),
    ):
        data = body.encode() if isinstance(body, str) else body
        headers = headers_for(fmt=fmt, encoding="identity")
        result = await (await client.post("/v1/batch", data=data, headers=headers)).json()
        if fmt == "json":
            assert statuses(result) == ["quarantined", "accepted"]
            (reason,) = result["results"][0]["reasons"]
            assert (reason["rule"], reason["path"]) == ("limit", "/properties/quantity")
            assert "64-bit" in reason["message"]
        else:
            assert statuses(result) == ["accepted"]  # the largest integer msgpack carries is stored
    resp = await client.post(
        "/v1/batch",
        data=f'{{"sent_at": {2**64}, "events": [{json.dumps(order(4))}]}}'.encode(),
        headers=headers_for(fmt="json", encoding="identity"),
    )
    assert resp.status == 400
    assert "sent_at" in await resp.text()


async def test_limits_on_one_event(client: Any) -> None:
    many = order(1, **{f"p{i}": i for i in range(301)})
    deep: Any = "x"
    for _ in range(9):
        deep = [deep]
    nested = order(2, tags=deep)
    long_string = order(3, utm_source="x" * ((8 << 10) + 1))
    resp = await client.post("/v1/batch", data=body_of([many, nested, long_string, order(4)]), headers=headers_for())
    result = await resp.json()
    assert statuses(result) == ["quarantined", "quarantined", "quarantined", "accepted"]
    assert [r["reasons"][0]["rule"] for r in result["results"][:3]] == ["limit", "limit", "limit"]
    assert result["results"][1]["reasons"][0]["path"].startswith("/properties/tags/0")


async def test_a_batch_of_non_events(client: Any) -> None:
    body = body_of([1, "two", None, [], {"type": "track"}, order(1)])
    result = await (await client.post("/v1/batch", data=body, headers=headers_for())).json()
    assert statuses(result) == ["quarantined"] * 5 + ["accepted"]
    assert result["results"][-1] == {"status": "accepted"}
    assert DEVICE


def test_a_gzip_bomb_holds_at_most_the_cap_in_memory() -> None:
    """docs/reliability.md, T14 (found by the battery): gzip is inflated in steps, like zstd.

    One call asking for the whole cap allocated a second cap-sized buffer next
    to the output: 32 MiB held for a 16 MiB cap, and twice the event-loop time.
    """
    import tracemalloc

    from maidian.collector.pipeline.decode import decompress

    member = gzip_bomb(64 * MiB)
    tracemalloc.start()
    try:
        with pytest.raises(PayloadTooLarge):
            decompress(member * 8, "gzip", 16 * MiB)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * MiB, f"{peak / MiB:.1f} MiB held to refuse a 16 MiB cap"
