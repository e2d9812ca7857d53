"""The raw log on real files: frames, torn tails, restarts, deduplication that survives them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from maidian.collector.errors import DataDirError
from maidian.collector.read import export_events, quarantine_records
from maidian.collector.store.catalog import Catalog
from maidian.collector.store.frames import MAGIC, encode_frame, read_frames, scan_segment, segment_files
from maidian.collector.store.log import DataDir, LogWriter
from tests.collector.conftest import ClientFactory
from tests.collector.helpers import DEVICE, body_of, headers_for, order, statuses


async def post(client: Any, events: list[Any]) -> list[str]:
    resp = await client.post("/v1/batch", data=body_of(events), headers=headers_for())
    assert resp.status == 200, await resp.text()
    return statuses(await resp.json())


def test_frames_round_trip_and_a_bad_one_costs_only_itself(tmp_path: Path) -> None:
    path = tmp_path / "w0-00000001.seg"
    frames = [encode_frame({"n": i}, {"e": [], "t": []}) for i in range(3)]
    path.write_bytes(MAGIC + b"".join(frames))
    found, end = read_frames(path)
    assert [f.head["n"] for f in found] == [0, 1, 2]
    assert end == path.stat().st_size
    data = bytearray(path.read_bytes())
    second = len(MAGIC) + len(frames[0])
    data[second + 12] ^= 0xFF  # corrupt the second frame's payload
    path.write_bytes(bytes(data))
    found, end = read_frames(path)
    assert [f.head["n"] for f in found] == [0, 2]
    assert end == path.stat().st_size
    scanned = scan_segment(path)
    assert [(d.offset, d.length) for d in scanned.damaged] == [(second, len(frames[1]))]
    assert scanned.tail is None
    found, _ = read_frames(path, second + len(frames[1]))  # reading from an offset
    assert [f.head["n"] for f in found] == [2]


def test_one_writer_per_writer_id(tmp_path: Path) -> None:
    a = LogWriter(tmp_path, "w0")
    a.open()
    with pytest.raises(DataDirError, match="in use"):
        LogWriter(tmp_path, "w0").open()
    LogWriter(tmp_path, "w1").open()
    a.close_sync()


def test_rotation_by_size(tmp_path: Path) -> None:
    w = LogWriter(tmp_path, "w0", segment_max_bytes=300)
    w.open()
    for i in range(5):
        w.append_sync(encode_frame({"n": i}, {"e": [os.urandom(150)]}))
    w.close_sync()
    segments = segment_files(tmp_path)
    assert len(segments) >= 3
    heads = [f.head["n"] for p in segments for f in read_frames(p)[0]]
    assert heads == [0, 1, 2, 3, 4]


async def test_dedup_survives_a_restart(start: ClientFactory, data_dir: Path) -> None:
    client = await start()
    assert await post(client, [order(1), order(2)]) == ["accepted", "accepted"]
    await client.close()
    client = await start()
    assert await post(client, [order(2), order(3)]) == ["duplicate", "accepted"]
    await client.close()
    # Without the snapshot, the log alone restores it.
    for snap in (data_dir / "state").glob("dedup-*.snap"):
        snap.unlink()
    client = await start()
    assert await post(client, [order(1), order(3), order(4)]) == ["duplicate", "duplicate", "accepted"]
    await client.close()
    ids = sorted(r["event_id"] for r in export_events(data_dir))
    assert ids == sorted(f"{DEVICE}-{n}" for n in (1, 2, 3, 4))


@pytest.mark.parametrize("garbage", [b"\x01", os.urandom(7), os.urandom(300), "partial"])
async def test_a_torn_tail_is_truncated_and_the_catalog_rebuilt(
    start: ClientFactory, data_dir: Path, garbage: Any
) -> None:
    client = await start()
    assert await post(client, [order(1), order(2)]) == ["accepted", "accepted"]
    assert await post(client, [order(3, side="hold")]) == ["quarantined"]
    await client.close()
    (segment,) = [p for p in segment_files(data_dir / "raw") if p.stat().st_size > len(MAGIC)]
    good_size = segment.stat().st_size
    if garbage == "partial":
        whole = encode_frame({"n": 1}, {"e": [b"x" * 200], "t": [0]})
        garbage = whole[: len(whole) // 2]
    with open(segment, "ab") as f:
        f.write(garbage)
    (data_dir / "catalog.sqlite").unlink()
    client = await start()
    assert segment.stat().st_size == good_size
    assert await post(client, [order(2), order(4)]) == ["duplicate", "accepted"]
    await client.close()
    ids = sorted(r["event_id"] for r in export_events(data_dir))
    assert ids == sorted(f"{DEVICE}-{n}" for n in (1, 2, 4))
    assert [r["rules"] for r in quarantine_records(data_dir)] == [["enum"]]
    catalog = Catalog(DataDir(data_dir))
    try:
        assert catalog.lag_bytes() == 0
        assert catalog.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert catalog.counts()[("stock_order_submit", "accepted")] == 3
    finally:
        catalog.close()


async def test_write_mode_acknowledges_and_syncs_periodically(start: ClientFactory, data_dir: Path) -> None:
    client = await start(durability="write", sync_interval_ms=20)
    assert await post(client, [order(1)]) == ["accepted"]
    assert await post(client, [order(1)]) == ["duplicate"]
    await client.close()
    assert [r["event_id"] for r in export_events(data_dir)] == [f"{DEVICE}-1"]


async def test_restart_to_ready_is_fast_with_a_snapshot(start: ClientFactory, data_dir: Path) -> None:
    from maidian.collector.http.app import COLLECTOR

    client = await start()
    for n in range(0, 2000, 200):
        await post(client, [order(k) for k in range(n + 1, n + 201)])
    await client.close()
    client = await start()
    collector = client.server.app[COLLECTOR]
    assert collector.ready_after_s < 2.0
    assert await post(client, [order(1999), order(2001)]) == ["duplicate", "accepted"]
    await client.close()
