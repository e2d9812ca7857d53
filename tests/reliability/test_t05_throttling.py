"""T5, throttling honoured: Retry-After in every form, and a fleet of 100 SDKs coming back after an outage.

The fault proxy answers in place of the collector: 429 with `Retry-After: 3`
for a while, 503 with an HTTP date, `Retry-After: 99999`, `Retry-After: abc`.
The proxy's clock says when each next attempt arrived: none may come earlier
than advised (100 ms tolerance), the wait is capped (600 s by default, checked
on the sans-I/O core; 2 s in a process run with that cap), garbage falls back
to the default backoff, and nothing is lost.

The fleet: 100 clients in one process each track 2 events/s through the
proxy; after a steady spell the collector is unreachable for the profile's
outage, then back. The busiest second after the outage must carry at most
twice the steady request rate (full-jitter backoff spreads the returns).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from email.utils import formatdate
from pathlib import Path

from maidian.sdk import BatchLimits, Client, RetryPolicy
from maidian.sdk.core import Response
from tests.reliability.constants import KEY
from tests.reliability.figures import Figures
from tests.reliability.ledger import Ledger, server_errors
from tests.reliability.procs import CollectorProcess
from tests.reliability.profile import Profile
from tests.reliability.proxy import Exchange, Fault, FaultProxy
from tests.reliability.store import read_store
from tests.sdk.fakes import make_core

ORDER = {"stock_code": "600519", "side": "buy", "price": 1688.5, "quantity": 100}
TOLERANCE_S = 0.1
FLEET = 100


def batches(proxy: FaultProxy) -> list[Exchange]:
    return [ex for ex in proxy.snapshot() if ex.path == "/v1/batch"]


# An answer on another connection counts once it was delivered this long before a request arrived: a
# request that arrives sooner may have been sent before the sender read that answer (two in flight).
_READ_GRACE_S = 0.05


def early_attempts(exchanges: list[Exchange], advised_s: Callable[[Exchange], float | None]) -> list[float]:
    """How much earlier than advised each attempt came (only the ones that were early).

    The advice that binds a request is every Retry-After the sender had surely
    read when it sent it: answers on the same connection (it reads each answer
    before sending the next request there), and answers on its other
    connection delivered at least `_READ_GRACE_S` before the request arrived.
    """
    early = []
    for i, ex in enumerate(exchanges):
        answered = [
            p
            for p in exchanges[:i]
            if p.ended
            and advised_s(p) is not None
            and (p.ended <= ex.at if p.conn == ex.conn else p.ended + _READ_GRACE_S <= ex.at)
        ]
        if not answered:
            continue
        last = max(answered, key=lambda p: p.ended)
        wait = advised_s(last)
        assert wait is not None
        gap = ex.at - last.ended
        if gap < wait - TOLERANCE_S:
            early.append(wait - gap)
    return early


def run_client(proxy: FaultProxy, events: int, retry: RetryPolicy | None = None, flush_s: float = 60) -> list[str]:
    with Client(
        proxy.url, write_key=KEY, batch=BatchLimits(max_events=50, linger_s=0.05), retry=retry or RetryPolicy()
    ) as client:
        for _ in range(events):
            client.track("stock_order_submit", ORDER)
        assert client.flush(flush_s)
        return [f"{client.source_id}-{i}" for i in range(1, events + 1)]


def test_retry_after_in_every_form(
    tmp_path: Path,
    profile: Profile,
    figures: Figures,
    proxied: CollectorProcess,
    proxy: FaultProxy,
) -> None:
    collector = proxied
    ledger = Ledger()

    # 429 with Retry-After: 3 for the profile's throttle window.
    until = time.monotonic() + profile.t5_throttle_s
    proxy.policy = lambda r: Fault.respond(429, "3") if r.at < until and r.path == "/v1/batch" else None
    ledger.track(run_client(proxy, 200, flush_s=profile.t5_throttle_s + 30))
    throttled = batches(proxy)
    early = early_attempts(throttled, lambda p: 3.0 if p.status == 429 else None)
    n429 = sum(1 for ex in throttled if ex.status == 429)
    proxy.policy = None

    # 503 with an HTTP date four seconds ahead (whole seconds: the date format has no fraction).
    start = len(batches(proxy))
    date_s = float(int(time.time()) + 4)
    proxy.script(Fault.respond(503, formatdate(date_s, usegmt=True)))
    ledger.track(run_client(proxy, 20))
    dated = batches(proxy)[start:]
    assert dated[0].status == 503
    date_early = date_s - dated[1].wall

    # Retry-After: 99999 with the cap at 2 s, and garbage.
    start = len(batches(proxy))
    proxy.script(Fault.respond(429, "99999"))
    ledger.track(run_client(proxy, 20, retry=RetryPolicy(max_retry_after_s=2.0)))
    capped = batches(proxy)[start:]
    capped_gap = capped[1].at - capped[0].ended
    start = len(batches(proxy))
    proxy.script(Fault.respond(429, "abc"))
    ledger.track(run_client(proxy, 20))
    garbage = batches(proxy)[start:]
    garbage_gap = garbage[1].at - garbage[0].ended

    # The default cap, on the core itself: 600 s however large the advice.
    core = make_core()
    core.track("stock_order_submit", ORDER, 1)
    core.request_flush()
    batch = core.next_batch(100.0, 1)
    assert batch is not None
    core.on_result(batch, Response(429, retry_after="99999"), 100.0, 1_763_800_000.0)
    default_cap_s = core.next_deadline(100.0) - 100.0

    ledger.ack(proxy.acks())
    check = ledger.check(read_store(collector.config.parent / "data"))
    figures.add_check(check)
    figures.inputs += len(batches(proxy))
    figures.status_5xx += server_errors(s for s in proxy.statuses() if s != 503)
    figures.note(
        f"{n429} answers of 429 (Retry-After: 3), {len(early)} attempts early; HTTP date honoured "
        f"({-date_early:+.2f} s); 99999 capped to {capped_gap:.2f} s (cap 2 s; default cap {default_cap_s:.0f} s); "
        f"'abc' waited {garbage_gap:.2f} s (default backoff)"
    )
    check.assert_clean()
    assert n429 >= profile.t5_throttle_s / 3 - 1
    assert early == [], f"{len(early)} attempts came before Retry-After: {early[:5]}"
    assert date_early <= TOLERANCE_S
    assert 2.0 - TOLERANCE_S <= capped_gap <= 2.0 + RetryPolicy().base_s + 0.5
    assert garbage_gap <= RetryPolicy().base_s + 0.5
    assert default_cap_s == 600.0


def test_a_fleet_comes_back_gently(
    tmp_path: Path,
    profile: Profile,
    figures: Figures,
    proxied: CollectorProcess,
    proxy: FaultProxy,
) -> None:
    collector = proxied
    steady_s = 6.0
    clients = [Client(proxy.url, write_key=KEY) for _ in range(FLEET)]
    ledger = Ledger()
    period_s = 1.0 / (2 * FLEET)  # 2 events/s per client
    try:
        t0 = time.monotonic()
        down_at = t0 + steady_s
        up_at = down_at + profile.t5_fleet_outage_s
        end = up_at + 40.0  # the backoff cap is 30 s: every client has tried again well before
        drained_at = 0.0
        next_look = up_at + 1.0
        i = 0
        while (now := time.monotonic()) < end:
            if now >= down_at and proxy.upstream is not None and now < up_at:
                proxy.set_upstream(None)
            elif now >= up_at and proxy.upstream is None:
                proxy.set_upstream(collector.url)
            if now >= next_look:
                next_look = now + 0.5
                if drained_at == 0.0 and all(c.stats.queued < 10 and c.stats.in_flight < 10 for c in clients):
                    drained_at = now
                    end = now + 3.0  # a few steady seconds after the backlog is gone
            clients[i % FLEET].track("stock_order_submit", ORDER)
            i += 1
            time.sleep(max(0.0, t0 + i * period_s - time.monotonic()))
        for c in clients:
            assert c.flush(30)
            ledger.track(f"{c.source_id}-{n}" for n in range(1, c.stats.tracked + 1))
    finally:
        for c in clients:
            c.close(5)
    per_second = Counter(int(ex.at - t0) for ex in batches(proxy))
    steady = [per_second[s] for s in range(1, int(steady_s))]
    steady_rate = sum(steady) / len(steady)
    after = [per_second[s] for s in range(int(up_at - t0), int(end - t0))]
    peak = max(after)
    ledger.ack(proxy.acks())
    check = ledger.check(read_store(collector.config.parent / "data"))
    figures.add_check(check)
    figures.status_5xx += server_errors(proxy.statuses())
    figures.note(
        f"fleet of {FLEET}: steady {steady_rate:.0f} req/s; busiest second after a "
        f"{profile.t5_fleet_outage_s:.0f} s outage {peak} req/s ({peak / steady_rate:.2f}x); backlog drained "
        f"{drained_at - up_at:.1f} s after it"
    )
    check.assert_clean()
    assert drained_at > 0, "the fleet did not drain its backlog"
    assert peak <= 2 * steady_rate
