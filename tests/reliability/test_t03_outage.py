"""T3, collector outage: the collector is stopped while an app tracks 300 events/s, then started again.

The host (host.py `paced`, memory buffer) tracks through the fault proxy for
the whole run, timing every `track()` call and sampling its RSS. The
collector is stopped (SIGTERM) a few seconds in, and a new one is started on
the same data directory after the profile's outage. Checked: nothing lost,
the backlog drained within 60 s of the restart, `track()` p99 under 1 ms
throughout, RSS growth within the buffer's cap plus 8 MiB, and at most
outage/20 s + 10 send attempts while the collector was away.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from tests.reliability.figures import Figures
from tests.reliability.ledger import Ledger, server_errors
from tests.reliability.procs import CollectorProcess, Host
from tests.reliability.profile import Profile
from tests.reliability.proxy import FaultProxy
from tests.reliability.store import read_store

RATE_EV_S = 300.0
LEAD_S = 4.0
TAIL_S = 4.0
QUEUE_MAX = 20_000
# docs/sdk.md: about 380 bytes of memory per buffered order event.
BYTES_PER_EVENT = 400


def sleep_until(t: float) -> None:
    time.sleep(max(0.0, t - time.monotonic()))


def test_collector_outage(
    tmp_path: Path,
    profile: Profile,
    figures: Figures,
    collectors: Callable[..., CollectorProcess],
    proxy: FaultProxy,
) -> None:
    collector = collectors()
    proxy.set_upstream(collector.url)
    outage_s = profile.t3_outage_s
    host = Host(
        "paced",
        tmp_path / "host.log",
        url=proxy.url,
        rate=RATE_EV_S,
        duration=LEAD_S + outage_s + TAIL_S,
        queue_max=QUEUE_MAX,
        flush_timeout=120,
    )
    ready = host.line("ready")
    t0 = float(ready["at"])
    sleep_until(t0 + LEAD_S)
    assert collector.stop() == 0
    proxy.set_upstream(None)
    down_at = time.monotonic()
    sleep_until(t0 + LEAD_S + outage_s)
    collector = collectors(collector.config)
    proxy.set_upstream(collector.url)
    up_at = time.monotonic()
    done = host.line("done", timeout_s=outage_s + 180)
    assert host.wait() == 0

    attempts = sum(1 for ex in proxy.snapshot() if ex.path == "/v1/batch" and down_at <= ex.at < up_at)
    drain_s = float(done["flushed_at"]) - up_at
    growth_kib = int(done["rss_max_kib"]) - int(done["rss_before_kib"])
    ledger = Ledger()
    ledger.track(f"{done['source']}-{i}" for i in range(1, int(done["tracked"]) + 1))
    ledger.ack(proxy.acks())
    ledger.indeterminate.update(proxy.indeterminate())
    check = ledger.check(read_store(collector.config.parent / "data"))
    figures.add_check(check)
    figures.status_5xx += server_errors(proxy.statuses())
    allowed_attempts = outage_s / 20 + 10
    cap_kib = QUEUE_MAX * BYTES_PER_EVENT // 1024 + 8 * 1024
    figures.note(
        f"outage {outage_s:.0f} s: {attempts} send attempts (at most {allowed_attempts:.1f}); drained "
        f"{drain_s:.1f} s after the restart; track() p99 {done['p99_us']:.1f} µs, max {done['max_us']:.0f} µs; "
        f"RSS +{growth_kib:,} KiB (at most {cap_kib:,})"
    )
    check.assert_clean()
    assert done["flushed"], done
    assert done["exceptions"] == 0
    assert done["dropped"] == {}, done
    assert drain_s <= 60
    assert attempts <= allowed_attempts
    assert float(done["p99_us"]) < 1000
    assert growth_kib <= cap_kib
