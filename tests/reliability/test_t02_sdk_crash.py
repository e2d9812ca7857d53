"""T2, SDK crash mid-flush: an app tracking a workload into a disk spool is killed with SIGKILL again and again.

Each life of the host (host.py `workload`) resumes the spool left by the last
one, tracks the next events of the workload and sends through the fault proxy,
whose small random delays keep batches in flight when the kill lands. After
the last kill a final life tracks the rest and flushes. Every event whose
`track()` returned (the ledger) must be stored exactly once; an event whose
call was cut by the kill may or may not be (`maybe`). Each life must start
(no crash loop) and the spool must stay within its cap.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

from tests.reliability.figures import Figures
from tests.reliability.ledger import Ledger, server_errors
from tests.reliability.procs import CollectorProcess, Host
from tests.reliability.profile import Profile
from tests.reliability.proxy import Fault, FaultProxy
from tests.reliability.store import read_store

SPOOL_MAX_BYTES = 8 << 20
SEGMENT_BYTES = 128 << 10
RATE_EV_S = 1500.0


def read_ledger(path: Path) -> list[tuple[int, str]]:
    out = []
    try:
        text = path.read_text()
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        n, _, eid = line.partition(" ")
        if n.isdigit() and eid:
            out.append((int(n), eid))
    return out


def spool_bytes(spool: Path) -> int:
    return sum(p.stat().st_size for p in spool.glob("*.seg")) if spool.exists() else 0


def test_kill_9_mid_flush(
    tmp_path: Path, profile: Profile, figures: Figures, proxied: CollectorProcess, proxy: FaultProxy
) -> None:
    collector = proxied
    rng = random.Random(2)
    proxy.policy = lambda r: Fault(delay_s=rng.uniform(0, 0.05)) if r.path == "/v1/batch" else None
    spool = tmp_path / "spool"
    ledger_path = tmp_path / "ledger"
    total = profile.t2_events
    per_life = max(1, total // (profile.t2_kills + 1))
    options = {
        "url": proxy.url,
        "spool": spool,
        "ledger": ledger_path,
        "rate": RATE_EV_S,
        "spool_max_bytes": SPOOL_MAX_BYTES,
        "segment_bytes": SEGMENT_BYTES,
        "batch_events": 100,
        "linger_s": 0.02,
    }
    sources: list[str] = []
    started = 0
    biggest_spool = 0
    next_n = 0
    for life in range(profile.t2_kills):
        host = Host("workload", tmp_path / "host.log", start=next_n, end=min(total, next_n + 2 * per_life), **options)
        sources.append(host.line("ready")["ready"])
        started += 1
        time.sleep(rng.uniform(0.0, 2 * per_life / RATE_EV_S))
        host.kill()
        figures.crashes += 1
        biggest_spool = max(biggest_spool, spool_bytes(spool))
        done = read_ledger(ledger_path)
        next_n = max((n for n, _ in done), default=-1) + 1
        assert life < 5 or next_n > 0, "the hosts never tracked anything"
    final = Host("workload", tmp_path / "host.log", start=next_n, end=total, flush_timeout=120, **options)
    sources.append(final.line("ready")["ready"])
    started += 1
    result = final.line("flushed", timeout_s=180)
    assert final.wait() == 0
    assert result["flushed"], result
    assert result["dropped"] == {}, result

    entries = read_ledger(ledger_path)
    ledger = Ledger()
    ledger.track(eid for _n, eid in entries)
    last_seq: dict[str, int] = {}
    for _n, eid in entries:
        source, _, seq = eid.rpartition("-")
        last_seq[source] = max(last_seq.get(source, 0), int(seq))
    # A call the kill cut short: the next id of each life may exist, or not.
    ledger.maybe.update(f"{s}-{last_seq.get(s, 0) + 1}" for s in sources)
    ledger.ack(proxy.acks())
    ledger.indeterminate.update(proxy.indeterminate())
    assert {n for n, _ in entries} >= set(range(total)), "the workload was not tracked to its end"
    store = read_store(collector.config.parent / "data")
    check = ledger.check(store)
    figures.add_check(check)
    figures.status_5xx += server_errors(proxy.statuses())
    figures.note(
        f"{started}/{profile.t2_kills + 1} host lives started; largest spool {biggest_spool:,} B "
        f"(cap {SPOOL_MAX_BYTES:,} + one segment); {len(proxy.sent_ids()) - check.stored:,} events sent more than "
        f"once; {len(check.undelivered_ids)} undelivered"
    )
    check.assert_clean()
    assert started == profile.t2_kills + 1
    assert biggest_spool <= SPOOL_MAX_BYTES + SEGMENT_BYTES
    assert figures.status_5xx == 0
