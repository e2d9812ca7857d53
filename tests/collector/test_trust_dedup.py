"""Sender-scoped deduplication (issue 13, event-id squatting), as an attacker with the public app key would try it.

Event ids are deduplicated within the scope of their sender (the write key's
name or the signed source), so ids sent first from one scope never make
another scope's events look stored, and `/v1/debug` answers only about the
caller's own scope.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
from aiohttp.test_utils import TestClient

from maidian.collector.pipeline.recovery import load_dedup_state
from maidian.collector.read import export_events
from maidian.collector.store.log import DataDir
from tests.collector.helpers import OLD_KEY, body_of, filled, headers_for, now_ms, order, signed_headers, statuses

FILL_IDS = [f"tradegw-fill-20261207-{n}" for n in range(1, 21)]
VICTIM_DEVICE = "5" * 32


def _squat(event_id: str) -> dict[str, Any]:
    """A trivial client event that carries someone else's id."""
    event = order(1, anon="attacker-pad")
    event["event_id"] = event_id
    return event


async def _post(client: TestClient[Any, Any], events: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
    body = body_of(events)
    headers = (
        signed_headers(body)
        if kw.get("signed")
        else headers_for(key=kw.get("key", headers_for()["X-Maidian-Write-Key"]))
    )
    resp = await client.post(kw.get("path", "/v1/batch"), data=body, headers=headers)
    assert resp.status == 200, await resp.text()
    result: dict[str, Any] = await resp.json()
    return result


async def test_app_key_cannot_squat_the_gateways_fill_ids(client: TestClient[Any, Any], data_dir: Path) -> None:
    squat = await _post(client, [_squat(eid) for eid in FILL_IDS])
    assert statuses(squat) == ["accepted"] * 20
    fills = await _post(client, [filled(eid) for eid in FILL_IDS], signed=True)
    assert statuses(fills) == ["accepted"] * 20
    again = await _post(client, [filled(eid) for eid in FILL_IDS], signed=True)
    assert statuses(again) == ["duplicate"] * 20  # the gateway's own retry is still deduplicated
    stored = [e for e in export_events(data_dir) if e["event"] == "stock_order_filled"]
    assert sorted(e["event_id"] for e in stored) == sorted(FILL_IDS)
    assert {e["source"] for e in stored} == {"orders-service"}


async def test_a_second_key_cannot_squat_a_devices_ids(client: TestClient[Any, Any], data_dir: Path) -> None:
    theirs = [order(n, device=VICTIM_DEVICE, anon="victim-phone") for n in range(1, 11)]
    squat = [dict(e, identities={"anonymous_id": "attacker"}) for e in theirs]
    assert statuses(await _post(client, squat, key=OLD_KEY)) == ["accepted"] * 10
    assert statuses(await _post(client, theirs)) == ["accepted"] * 10
    mine = [e for e in export_events(data_dir) if e["identities"]["anonymous_id"] == "victim-phone"]
    assert len(mine) == 10


async def test_debug_answers_nothing_about_another_scopes_ids(client: TestClient[Any, Any]) -> None:
    await _post(client, [filled(eid) for eid in FILL_IDS[:5]], signed=True)
    probe = await _post(client, [_squat(eid) for eid in FILL_IDS[:5]], path="/v1/debug")
    assert statuses(probe) == ["accepted"] * 5  # the same answer as for ids nobody sent
    mine = await _post(client, [_squat("my-own-id")])
    assert statuses(mine) == ["accepted"]
    assert statuses(await _post(client, [_squat("my-own-id")], path="/v1/debug")) == ["duplicate"]


async def test_a_data_directory_from_before_scopes_keeps_its_duplicates(
    client: TestClient[Any, Any], data_dir: Path
) -> None:
    """Migration: an unscoped snapshot is set aside and the heads scope every old id by its frame's sender."""
    await _post(client, [_squat(eid) for eid in FILL_IDS[:3]])
    await _post(client, [filled(eid) for eid in FILL_IDS[:3]], signed=True)
    await client.close()
    data = DataDir(data_dir)
    legacy = {"seen": {"sources": {}, "opaque": dict.fromkeys(FILL_IDS[:3], 1)}, "quarantined": {}, "offsets": []}
    data.snapshot("w0").write_bytes(msgspec.msgpack.encode(legacy))
    state = load_dedup_state(data, "w0", 8 * 86_400, now_ms())
    assert all(state.seen.contains("s:orders-service", eid) for eid in FILL_IDS[:3])
    assert all(state.seen.contains("k:current", eid) for eid in FILL_IDS[:3])
    assert not state.seen.contains("k:previous", FILL_IDS[0])
