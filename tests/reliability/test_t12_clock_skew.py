"""T12, clock skew: devices whose clocks are days, hours or years off, at epoch 0, or jumping back mid-session.

The app's clock is moved by replacing the SDK's one time source
(`maidian.sdk._api._time_ns`), which stamps both each event's `time` and the
batch's `sent_at`; the collector's clock is the truth. Checked: with
`sent_at`, each stored (corrected) time is within 1 s of the true time; every
event more than 1 h ahead is clamped to its receive time and flagged
`future`; a batch without `sent_at` keeps device times and clamps the future
ones; events older than the 8-day dedup window are quarantined (`too_old`);
each device's events stay in sequence order in the log; and the same events
sent again under another skew are answered `duplicate`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest
import zstandard

from maidian.collector.read import export_events
from maidian.sdk import BatchLimits, Client, _api
from tests.reliability.constants import KEY
from tests.reliability.figures import Figures
from tests.reliability.ledger import Ledger
from tests.reliability.load import order_event
from tests.reliability.procs import CollectorProcess, batch_body, http_post, key_headers
from tests.reliability.store import read_store

DAY_S = 86_400
ORDER = {"stock_code": "600519", "side": "buy", "price": 1688.5, "quantity": 100}


class DeviceClock:
    """The SDK's wall clock, `skew_s` away from the truth."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.skew_s = 0.0
        monkeypatch.setattr(_api, "_time_ns", lambda: time.time_ns() + int(self.skew_s * 1e9))


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[DeviceClock]:
    return DeviceClock(monkeypatch)


def track(proxy_url: str, clock: DeviceClock, plan: list[tuple[float, int]]) -> tuple[str, list[float]]:
    """Track with the device clock at each (skew, count); send after the last; the true time of each event."""
    truth: list[float] = []
    with Client(proxy_url, write_key=KEY, batch=BatchLimits(max_events=500, linger_s=3600)) as client:
        for skew_s, count in plan:
            clock.skew_s = skew_s
            for _ in range(count):
                truth.append(time.time())
                client.track("stock_order_submit", ORDER)
        assert client.flush(30)
        return client.source_id, truth


def test_clock_skew(
    tmp_path: Path, figures: Figures, collectors: Callable[..., CollectorProcess], clock: DeviceClock
) -> None:
    collector = collectors()
    data = collector.config.parent / "data"
    cases: dict[str, list[tuple[float, int]]] = {
        "-3 d": [(-3 * DAY_S, 20)],
        "+2 h": [(2 * 3600, 20)],
        "+10 y": [(10 * 365 * DAY_S, 20)],
        "epoch 0": [(-time.time(), 20)],
        "jump back 2 h": [(0, 10), (-2 * 3600, 10)],
    }
    sources: dict[str, str] = {}
    truths: dict[str, list[float]] = {}
    for name, plan in cases.items():
        sources[name], truths[name] = track(collector.url, clock, plan)
    clock.skew_s = 0
    stored = {r["event_id"]: r for r in export_events(data)}
    worst_error_s = 0.0
    future_flagged = 0
    for name, source in sources.items():
        for i, true_s in enumerate(truths[name], 1):
            record = stored[f"{source}-{i}"]
            flags = record.get("flags", [])
            if name == "jump back 2 h" and i <= 10:
                # Tracked before the clock went back: 2 h ahead of the batch's sent_at, so "future".
                assert "future" in flags
                assert record["time"] == record["received_at"]
                future_flagged += 1
                continue
            worst_error_s = max(worst_error_s, abs(record["time"] / 1000 - true_s))
            assert "future" not in flags
    # No sent_at: device times are kept, and one 2 h ahead is clamped and flagged.
    now_ms = int(time.time() * 1000)
    events = [order_event("a" * 32, 1, now_ms + 2 * 3600_000, "dev-nosentat"), order_event("a" * 32, 2, now_ms, "d")]
    raw = msgspec.msgpack.encode({"lib": "battery", "events": events})
    status, _ = http_post(collector.url + "/v1/batch", zstandard.ZstdCompressor().compress(raw), key_headers())
    assert status == 200
    # Older than the dedup window (true time, right clock): quarantined, never accepted.
    old = [order_event("b" * 32, k, now_ms - 9 * DAY_S * 1000, "dev-old") for k in (1, 2)]
    status, body = http_post(collector.url + "/v1/batch", batch_body(old), key_headers())
    results = msgspec.json.decode(body)["results"]
    assert [r["status"] for r in results] == ["quarantined", "quarantined"]
    assert {r["reasons"][0]["rule"] for r in results} == {"too_old"}
    # The same events under another skew: duplicates, not new events.
    resend = [order_event("a" * 32, 2, now_ms, "d")]
    status, body = http_post(
        collector.url + "/v1/batch", batch_body(resend, sent_at=now_ms + 3 * DAY_S * 1000), key_headers()
    )
    assert [r["status"] for r in msgspec.json.decode(body)["results"]] == ["duplicate"]
    assert collector.stop() == 0
    stored = {r["event_id"]: r for r in export_events(data)}
    nosent = stored["a" * 32 + "-1"]
    assert set(nosent["flags"]) == {"no_sent_at", "future"}
    assert nosent["time"] == nosent["received_at"]
    assert stored["a" * 32 + "-2"]["time"] == now_ms  # no sent_at: the device time is kept
    # Each device's events are in sequence order in the log.
    order_ok = _sequence_order_kept(read_store(data).raw)
    ledger = Ledger()
    for name, source in sources.items():
        ledger.track(f"{source}-{i}" for i in range(1, len(truths[name]) + 1))
    ledger.track(["a" * 32 + "-1", "a" * 32 + "-2"])
    ledger.quarantine_expected.update(e["event_id"] for e in old)
    ledger.acked = set(ledger.tracked)
    check = ledger.check(read_store(data))
    figures.add_check(check)
    figures.inputs += sum(len(t) for t in truths.values()) + 5
    figures.note(
        f"corrected times within {worst_error_s * 1000:.0f} ms of the truth for skews of -3 d, +2 h, +10 y and "
        f"epoch 0; {future_flagged}/10 events ahead by 2 h clamped and flagged; 2/2 events 9 days old quarantined"
    )
    check.assert_clean()
    assert worst_error_s <= 1.0
    assert order_ok


def _sequence_order_kept(raw_ids: list[str]) -> bool:
    last: dict[str, int] = {}
    for eid in raw_ids:
        source, _, seq = eid.rpartition("-")
        if int(seq) <= last.get(source, 0):
            return False
        last[source] = int(seq)
    return True
