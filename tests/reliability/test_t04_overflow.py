"""T4, spool overflow: an outage longer than the buffer holds. Cap 10,000 events, 15,000 tracked.

The collector is unreachable (the fault proxy refuses) while an app tracks
15,000 events into a buffer capped at 10,000: a memory queue, or a disk spool
whose byte cap holds exactly 10,000 of these events in segments of 500. Then
the collector comes back and the app flushes. Checked:

- the policy, exactly: with `drop_oldest` each drop takes the oldest events
  still waiting (those the sender already held in a request it keeps
  retrying are not waiting, and are delivered: at most `max_in_flight`
  batches, taken before the first request failed, since a failing sender
  takes nothing new), with `drop_newest` the newest; nothing else is
  missing, nothing is delivered twice;
- the loss counter: `stats.dropped["overflow"]` equals the events tracked
  and never stored, exactly (15,000 - 10,000 - what the sender held);
- the report reaches the collector on recovery (the batch's `dropped` field):
  `maidian drops` and /metrics show the same count;
- the spool's disk use stays within its cap plus one segment; no exception
  reaches the app.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from maidian.sdk import BatchLimits, Client, QueueLimits, SpoolConfig
from tests.reliability.constants import KEY
from tests.reliability.figures import Figures
from tests.reliability.ledger import Ledger, server_errors
from tests.reliability.procs import CollectorProcess, http_get
from tests.reliability.proxy import FaultProxy
from tests.reliability.store import read_store

CAP = 10_000
TRACKED = 15_000
SEGMENT_EVENTS = 500
ORDER = {"stock_code": "600519", "side": "buy", "price": 1688.5, "quantity": 100}


def _runs(ids: list[int]) -> list[tuple[int, int]]:
    """Sorted ids as (first, last) runs of consecutive ids."""
    runs: list[tuple[int, int]] = []
    for i in ids:
        if runs and runs[-1][1] == i - 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs


def frame_bytes(tmp: Path) -> int:
    """The size of one of these events in a spool, measured with a client of the same shape."""
    spool = tmp / "measure"
    with Client("http://127.0.0.1:9", write_key=KEY, spool=str(spool)) as client:
        client.track("stock_order_submit", ORDER)
        size = sum(p.stat().st_size for p in spool.glob("*.seg"))
        client._core._buffer.settle([])  # nothing: the client is closed with its one event left
    for p in spool.iterdir():
        p.unlink()
    return size


@pytest.mark.parametrize(
    ("buffer", "policy"), [("memory", "drop_oldest"), ("spool", "drop_oldest"), ("memory", "drop_newest")]
)
def test_overflow_policy_and_loss_report(
    tmp_path: Path,
    figures: Figures,
    collectors: Callable[..., CollectorProcess],
    proxy: FaultProxy,
    buffer: str,
    policy: str,
) -> None:
    collector = collectors()
    proxy.set_upstream(None)  # the outage starts before the first event
    spool = None
    segment_bytes = 0
    if buffer == "spool":
        size = frame_bytes(tmp_path)
        segment_bytes = size * SEGMENT_EVENTS
        spool = SpoolConfig(str(tmp_path / "spool"), max_bytes=size * CAP, segment_bytes=segment_bytes)
    reported: dict[str, int] = {}
    client = Client(
        proxy.url,
        write_key=KEY,
        spool=spool,
        queue=QueueLimits(max_events=CAP, overflow=policy),  # type: ignore[arg-type]
        batch=BatchLimits(max_events=500, linger_s=0.05),
        on_drop=lambda reason, n: reported.__setitem__(reason, reported.get(reason, 0) + n),
    )
    exceptions = 0
    disk_max = 0
    try:
        for i in range(TRACKED):
            try:
                client.track("stock_order_submit", ORDER)
            except Exception:
                exceptions += 1
            if spool is not None and i % 250 == 0:
                disk_max = max(disk_max, sum(p.stat().st_size for p in Path(spool.path).glob("*.seg")))
        source = client.source_id
        held = client.stats.in_flight
        dropped = client.stats.dropped.get("overflow", 0)
        proxy.set_upstream(collector.url)
        assert client.flush(60)
    finally:
        client.close(10)
    tracked = [f"{source}-{i}" for i in range(1, TRACKED + 1)]
    ledger = Ledger()
    ledger.track(tracked)
    ledger.ack(proxy.acks())
    stored = read_store(collector.config.parent / "data")
    missing = [i for i, eid in enumerate(tracked, 1) if eid not in stored.ids]
    check = ledger.check(stored)
    figures.add_check(check)
    figures.status_5xx += server_errors(proxy.statuses())

    assert exceptions == 0
    assert check.lost == 0
    assert check.unexpected == 0
    assert check.dup_deduped == 0
    assert check.dup_raw == 0
    assert reported == client.stats.dropped == {"overflow": dropped}
    assert dropped == len(missing), "the loss counter does not match what is missing"
    if buffer == "memory":
        assert dropped == TRACKED - CAP - held
    if policy == "drop_oldest":
        # Each drop took the oldest events still waiting. Older than the last one dropped, only
        # what the sender took into requests before it learnt of the outage survives: at most
        # `max_in_flight` batches of at most 500 events, all of them held and delivered.
        # (When they were taken depends on the threads: the first request may fail only after
        # the first drops, so they need not be the very first ids.)
        gone = set(missing)
        kept = [i for i in range(1, missing[-1]) if i not in gone]
        runs = _runs(kept)
        assert len(runs) <= 2, f"events older than dropped ones survived outside the sender's batches: {runs}"
        assert len(kept) <= min(held, 2 * 500), f"{len(kept)} older events survived, the sender held {held}"
    else:
        assert missing == list(range(TRACKED - dropped + 1, TRACKED + 1)), "not the newest events"
    if spool is not None:
        assert disk_max <= spool.max_bytes + segment_bytes
        assert [p.name for p in Path(spool.path).iterdir()] == ["lock"] or not any(Path(spool.path).glob("*.seg"))

    # The collector heard about it: the catalog (maidian drops) and /metrics, within a few index rounds.
    from maidian.collector.read import sdk_drops

    deadline = time.monotonic() + 10
    shown = 0.0
    while time.monotonic() < deadline:
        _status, text = http_get(collector.url + "/metrics")
        m = re.search(r'maidian_sdk_dropped_events_total\{reason="overflow"\} (\d+)', text.decode())
        shown = float(m.group(1)) if m else 0.0
        if shown == dropped:
            break
        time.sleep(0.1)
    assert shown == dropped
    assert sdk_drops(collector.config.parent / "data") == [(source, "overflow", dropped)]
    figures.note(
        f"{buffer} {policy}: {dropped:,} dropped (counter exact; {held} held by the sender and delivered); "
        f"collector's record {dropped:,}" + (f"; spool at most {disk_max:,} B" if spool else "")
    )
    assert os.path.exists(collector.config)
