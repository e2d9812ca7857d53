"""The batch's `dropped` report (docs/protocol.md, "A batch"): kept per sender and reason, largest count wins.

docs/reliability.md, T4 needs a sender's losses visible at the collector, not only on
the device: in the catalog (`maidian drops`), in /metrics, and rebuilt from the
log. A malformed report is ignored and never costs the batch its events.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import zstandard

from maidian.collector.http.app import COLLECTOR
from maidian.collector.pipeline.decode import read_dropped
from maidian.collector.read import rebuild, sdk_drops
from tests.collector.helpers import DEVICE, headers_for, now_ms, order, statuses
from tests.conftest import ROOT


def body_with(events: list[dict[str, Any]], dropped: Any) -> bytes:
    batch = {"sent_at": now_ms(), "lib": "maidian-python", "events": events, "dropped": dropped}
    return zstandard.ZstdCompressor().compress(msgspec.msgpack.encode(batch))


def report(**counts: int) -> dict[str, Any]:
    return {"source": DEVICE, "counts": counts}


async def metric_lines(client: Any) -> list[str]:
    text = await (await client.get("/metrics")).text()
    return [line for line in text.splitlines() if line.startswith("maidian_sdk_dropped_events_total{")]


async def test_the_largest_count_per_sender_and_reason_is_kept(client: Any, data_dir: Path) -> None:
    sent = [report(overflow=5), report(overflow=3, expired=2), report(overflow=7, expired=2)]
    for seq, dropped in enumerate(sent, 1):
        resp = await client.post("/v1/batch", data=body_with([order(seq)], dropped), headers=headers_for())
        assert statuses(await resp.json()) == ["accepted"]
    # A repeat carried by a batch of duplicates changes nothing.
    resp = await client.post("/v1/batch", data=body_with([order(1)], report(overflow=7)), headers=headers_for())
    assert statuses(await resp.json()) == ["duplicate"]
    await client.server.app[COLLECTOR].catch_up_catalog()
    assert sdk_drops(data_dir) == [(DEVICE, "expired", 2), (DEVICE, "overflow", 7)]
    assert await metric_lines(client) == [
        'maidian_sdk_dropped_events_total{reason="expired"} 2',
        'maidian_sdk_dropped_events_total{reason="overflow"} 7',
    ]


async def test_totals_add_up_over_senders(client: Any, data_dir: Path) -> None:
    other = "f" * 32
    reports = [(DEVICE, report(overflow=4)), (other, {"source": other, "counts": {"overflow": 6}})]
    for seq, (device, dropped) in enumerate(reports, 1):
        await client.post("/v1/batch", data=body_with([order(seq, device=device)], dropped), headers=headers_for())
    await client.server.app[COLLECTOR].catch_up_catalog()
    assert await metric_lines(client) == ['maidian_sdk_dropped_events_total{reason="overflow"} 10']


async def test_a_malformed_report_is_ignored_and_the_events_stored(client: Any, data_dir: Path) -> None:
    malformed = [
        "overflow",
        {"source": DEVICE},
        {"source": DEVICE, "counts": {"overflow": -1}},
        {"source": DEVICE, "counts": {"overflow": 1.5}},
        {"source": DEVICE, "counts": {"overflow": True}},
        {"source": "", "counts": {"overflow": 1}},
        {"source": DEVICE, "counts": {f"r{i}": 1 for i in range(17)}},
        {"source": DEVICE, "counts": {"x" * 33: 1}},
        {"source": 42, "counts": {"overflow": 1}},
        {"source": DEVICE, "counts": {"overflow": 2**53}},  # implausible: no device drops that many
        {"source": "f" * 32, "counts": {"overflow": 1}},  # a device none of the batch's events come from
    ]
    for seq, dropped in enumerate(malformed, 1):
        resp = await client.post("/v1/batch", data=body_with([order(seq)], dropped), headers=headers_for())
        assert statuses(await resp.json()) == ["accepted"], dropped
    assert sdk_drops(data_dir) == []
    assert read_dropped({"source": DEVICE, "counts": {}}) is None


async def test_rebuilt_from_the_log_and_shown_by_the_command(client: Any, data_dir: Path) -> None:
    await client.post("/v1/batch", data=body_with([order(1)], report(overflow=12, too_large=1)), headers=headers_for())
    await client.server.app[COLLECTOR].catch_up_catalog()
    rebuild(data_dir)
    assert sdk_drops(data_dir) == [(DEVICE, "overflow", 12), (DEVICE, "too_large", 1)]
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "maidian.collector.cli", "drops", "--data", str(data_dir), "--format", "json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert [json.loads(line) for line in proc.stdout.splitlines()] == [
        {"source": DEVICE, "reason": "overflow", "dropped": 12},
        {"source": DEVICE, "reason": "too_large", "dropped": 1},
    ]


async def test_metrics_series_stay_bounded_whatever_senders_send(client: Any) -> None:
    """Invented reasons, sources, paths, vendor fields and statuses: /metrics keeps a bounded set of series."""

    async def series() -> int:
        text = await (await client.get("/metrics")).text()
        return sum(1 for line in text.splitlines() if line and not line.startswith("#"))

    await client.post("/v1/batch", data=body_with([order(1)], report(overflow=1)), headers=headers_for())
    await client.server.app[COLLECTOR].catch_up_catalog()
    before = await series()
    for k in range(200):
        device = f"{k:032x}"
        invented = {f"made_up_{k}_{j}": j + 1 for j in range(15)}
        events = [order(1, device=device)]
        await client.post(
            "/v1/batch", data=body_with(events, {"source": device, "counts": invented}), headers=headers_for()
        )
        await client.post(f"/v1/batch/{k}", data=b"", headers=headers_for())  # unknown paths: 404s
        await client.get(f"/nothing-{k}")
    await client.server.app[COLLECTOR].catch_up_catalog()
    after = await series()
    lines = await metric_lines(client)
    # Invented reasons fold into `other` (one series); unknown paths into `path="other"` (one per status).
    assert after - before <= 3, (before, after)
    assert any(line.startswith('maidian_sdk_dropped_events_total{reason="other"}') for line in lines)
