"""Per-event results through a real app over real files: accepted, duplicate, quarantined with reasons."""

from __future__ import annotations

import asyncio
from typing import Any

from maidian.collector.read import export_events
from tests.collector.helpers import (
    DEVICE,
    body_of,
    filled,
    headers_for,
    now_ms,
    order,
    signed_headers,
    statuses,
)


async def post(client: Any, events: list[Any], path: str = "/v1/batch", **kw: Any) -> Any:
    fmt = kw.pop("fmt", "msgpack")
    encoding = kw.pop("encoding", "zstd")
    resp = await client.post(
        path,
        data=body_of(events, fmt=fmt, encoding=encoding, **kw),
        headers=headers_for(fmt=fmt, encoding=encoding),
    )
    assert resp.status == 200, await resp.text()
    return await resp.json()


def stored_ids(data_dir: Any) -> list[str]:
    return [r["event_id"] for r in export_events(data_dir)]


async def test_t6_partial_rejection(client: Any, data_dir: Any) -> None:
    """docs/reliability.md, T6: 100 events, 7 violations, 1 oversize, 2 known duplicates."""
    first = await post(client, [order(1), order(2)])
    assert statuses(first) == ["accepted", "accepted"]
    events: list[Any] = [order(1), order(2)]  # the two known duplicates
    bad = [
        order(3, side="hold"),
        order(4, price="1688.5"),
        order(5, quantity=150),
        order(6, stock_code="60051X"),
        order(7, side=None),
        order(8, color="red"),
        order(9, id_card="110101199001011234"),
    ]
    events += bad
    events.append(order(10, stock_code="600519", note_padding=None, mobile="1" * 10 + "*"))  # valid, masked
    big = order(11)
    big["properties"]["utm_campaign"] = "x" * (40 << 10)
    events.append(big)
    events += [order(n) for n in range(12, 101)]
    assert len(events) == 100
    result = await post(client, events)
    assert (result["accepted"], result["duplicate"], result["quarantined"]) == (90, 2, 8)
    got = statuses(result)
    assert got[:2] == ["duplicate", "duplicate"]
    assert got[2:9] == ["quarantined"] * 7
    assert got[10] == "quarantined"
    rules = [r["reasons"][0]["rule"] for r in result["results"] if r["status"] == "quarantined"]
    assert rules == ["enum", "type", "range", "pattern", "required", "additional_property", "pii", "too_large"]
    for r in result["results"]:
        if r["status"] == "quarantined":
            for reason in r["reasons"]:
                assert set(reason) == {"rule", "path", "message"}
                assert "110101199001011234" not in reason["message"]
    ids = stored_ids(data_dir)
    assert len(ids) == 92
    assert len(set(ids)) == 92


async def test_duplicates_within_one_request(client: Any, data_dir: Any) -> None:
    result = await post(client, [order(1), order(1), order(2), order(1)])
    assert statuses(result) == ["accepted", "duplicate", "accepted", "duplicate"]
    assert sorted(stored_ids(data_dir)) == sorted([f"{DEVICE}-1", f"{DEVICE}-2"])


async def test_concurrent_requests_store_an_event_once(client: Any, data_dir: Any) -> None:
    batches = [[order(n) for n in range(1, 51)] for _ in range(8)]
    results = await asyncio.gather(*(post(client, b) for b in batches))
    assert sum(r["accepted"] for r in results) == 50
    assert sum(r["duplicate"] for r in results) == 7 * 50
    ids = stored_ids(data_dir)
    assert len(ids) == 50
    assert len(set(ids)) == 50


async def test_opaque_ids_are_deduplicated(client: Any, data_dir: Any) -> None:
    events = [order(1), order(2)]
    events[0]["event_id"] = "import-2026-11-01-000001"
    events[1]["event_id"] = "0193a5b2c3d4e5f60718293a4b5c6d7e-007"  # not canonical: opaque
    assert statuses(await post(client, events)) == ["accepted", "accepted"]
    assert statuses(await post(client, events)) == ["duplicate", "duplicate"]


async def test_debug_gives_verdicts_and_stores_nothing(client: Any, data_dir: Any) -> None:
    result = await post(client, [order(1), order(2, side="hold"), order(3)], path="/v1/debug")
    assert statuses(result) == ["accepted", "quarantined", "accepted"]
    assert result["results"][1]["reasons"][0]["rule"] == "enum"
    assert "time" in result["results"][0]
    assert stored_ids(data_dir) == []
    # Nothing was marked seen: storing afterwards accepts them.
    assert statuses(await post(client, [order(1)])) == ["accepted"]
    # And debug reports what a real post would say about an event already stored.
    assert statuses(await post(client, [order(1)], path="/v1/debug")) == ["duplicate"]


async def test_json_and_gzip_bodies(client: Any, data_dir: Any) -> None:
    assert statuses(await post(client, [order(1)], fmt="json", encoding="gzip")) == ["accepted"]
    assert statuses(await post(client, [order(2)], fmt="json", encoding="identity")) == ["accepted"]
    assert statuses(await post(client, [order(3)], encoding="gzip")) == ["accepted"]
    assert statuses(await post(client, [order(4)], encoding="identity")) == ["accepted"]
    assert statuses(await post(client, [order(1)], fmt="json")) == ["duplicate"]
    records = {r["event_id"]: r for r in export_events(data_dir)}
    assert records[f"{DEVICE}-1"]["properties"]["price"] == 1688.5


async def test_server_trigger_events_need_a_signed_source(client: Any, data_dir: Any) -> None:
    forged = await post(client, [filled("fill-1")])
    assert statuses(forged) == ["quarantined"]
    assert [r["rule"] for r in forged["results"][0]["reasons"]] == ["trigger"]
    body = body_of([filled("fill-2")])
    resp = await client.post("/v1/batch", data=body, headers=signed_headers(body))
    assert resp.status == 200, await resp.text()
    assert statuses(await resp.json()) == ["accepted"]
    assert stored_ids(data_dir) == ["fill-2"]


async def test_time_is_corrected_for_device_clock_skew(client: Any, data_dir: Any) -> None:
    day = 86_400_000
    now = now_ms()
    skew = -3 * day  # the device's clock is three days behind
    events = [order(1, t=now + skew - 5_000), order(2, t=now + skew - 1_000)]
    result = await post(client, events, sent_at=now + skew)
    assert statuses(result) == ["accepted", "accepted"]
    records = {r["event_id"]: r for r in export_events(data_dir)}
    first = records[f"{DEVICE}-1"]
    assert abs(first["time"] - (now - 5_000)) < 1_000
    assert first["device_time"] == now + skew - 5_000
    assert "clock_skew" in first["flags"]


async def test_a_clock_within_a_second_is_trusted_as_it_is(client: Any, data_dir: Any) -> None:
    """Correcting a synced clock would only add the request's delay and reorder events across senders."""
    now = now_ms()
    events = [order(1, t=now - 2_000), order(2, t=now - 1_999)]
    assert statuses(await post(client, events[:1], sent_at=now - 900)) == ["accepted"]
    assert statuses(await post(client, events[1:], sent_at=now + 900)) == ["accepted"]
    records = {r["event_id"]: r for r in export_events(data_dir)}
    assert records[f"{DEVICE}-1"]["time"] == now - 2_000
    assert records[f"{DEVICE}-2"]["time"] == now - 1_999
    assert "clock_skew" not in (records[f"{DEVICE}-1"].get("flags") or [])


async def test_future_events_are_clamped_and_old_ones_quarantined(client: Any, data_dir: Any) -> None:
    now = now_ms()
    future = order(1, t=now + 2 * 3_600_000)
    old = order(2, t=now - 9 * 86_400_000)
    result = await post(client, [future, old], sent_at=now)
    assert statuses(result) == ["accepted", "quarantined"]
    assert result["results"][1]["reasons"][0]["rule"] == "too_old"
    (record,) = export_events(data_dir)
    assert "future" in record["flags"]
    assert abs(record["time"] - now) < 5_000
    assert record["device_time"] == future["time"]


async def test_a_quarantined_event_sent_again_is_stored_once(client: Any, data_dir: Any) -> None:
    bad = order(1, side="hold")
    for _ in range(3):
        assert statuses(await post(client, [bad])) == ["quarantined"]
    quarantined = [r for r in export_events(data_dir, quarantined=True) if r.get("quarantined")]
    assert len(quarantined) == 1
    assert quarantined[0]["reasons"][0]["rule"] == "enum"


async def test_a_sent_at_near_2_64_is_quarantined_not_a_500(client: Any, data_dir: Any) -> None:
    """Found by the T20 fuzzer: the corrected time fell below int64 and the quarantine frame did not encode."""
    result = await post(client, [order(1), order(2, side="hold")], sent_at=2**64 - 1)
    assert statuses(result) == ["quarantined", "quarantined"]
    assert result["results"][0]["reasons"][0]["rule"] == "too_old"
    quarantined = [r for r in export_events(data_dir, quarantined=True) if r.get("quarantined")]
    assert len(quarantined) == 2
