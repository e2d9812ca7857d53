"""T9, partition mid-request: the proxy resets connections after 1-99% of a request body, 200 times.

Four clients send through the fault proxy; every other request (at random) is
cut after a random share of its body, both ways, with a TCP reset. The SDK
retries the same bytes. Checked: the collector appended no partial batch
(every stored frame holds exactly the events of one request that arrived
whole), nothing is lost, nothing is stored twice, and no request got a 500.
"""

from __future__ import annotations

import random
import re
import threading
from pathlib import Path

from maidian.collector.store.frames import decode_body, iter_log
from maidian.sdk import BatchLimits, Client, RetryPolicy
from tests.reliability.constants import KEY
from tests.reliability.figures import Figures
from tests.reliability.ledger import Ledger, server_errors
from tests.reliability.procs import CollectorProcess, http_get
from tests.reliability.profile import Profile
from tests.reliability.proxy import Fault, FaultProxy
from tests.reliability.store import read_store

CLIENTS = 4
ORDER = {"stock_code": "600519", "side": "buy", "price": 1688.5, "quantity": 100}


def test_resets_mid_body(
    tmp_path: Path,
    profile: Profile,
    figures: Figures,
    proxied: CollectorProcess,
    proxy: FaultProxy,
) -> None:
    collector = proxied
    rng = random.Random(9)
    lock = threading.Lock()
    resets = [0]

    def cut(r: object) -> Fault | None:
        with lock:
            if resets[0] >= profile.t9_resets or rng.random() < 0.5:
                return None
            resets[0] += 1
            return Fault("reset_mid_body", fraction=rng.uniform(0.01, 0.99))

    proxy.policy = lambda r: cut(r) if r.path == "/v1/batch" else None
    # Retry timing is T5's subject: short backoff here keeps 200 partitions quick.
    clients = [
        Client(
            proxy.url,
            write_key=KEY,
            batch=BatchLimits(max_events=50, linger_s=0.02),
            retry=RetryPolicy(base_s=0.05, cap_s=0.5),
        )
        for _ in range(CLIENTS)
    ]
    try:
        round_ = 0
        while resets[0] < profile.t9_resets and round_ < 10_000:
            for c in clients:
                for _ in range(50):
                    c.track("stock_order_submit", ORDER)
            round_ += 1
            if round_ % 4 == 0:
                for c in clients:
                    assert c.flush(60)
        for c in clients:
            assert c.flush(60)
    finally:
        for c in clients:
            c.close(5)
    complete = {frozenset(ex.ids) for ex in proxy.snapshot() if ex.forwarded and ex.path == "/v1/batch"}
    data = collector.config.parent / "data"
    frames = list(iter_log(data / "raw"))
    partial = 0
    for frame in frames:
        ids = {msg["event_id"] for msg in _events(frame)}
        if frozenset(ids) not in complete:
            partial += 1
    _status, metrics = http_get(collector.url + "/metrics")
    errors_500 = sum(
        int(n) for n in re.findall(r'maidian_requests_total\{path="[^"]*",status="500"\} (\d+)', metrics.decode())
    )
    ledger = Ledger()
    for c in clients:
        ledger.track(f"{c.source_id}-{n}" for n in range(1, c.stats.tracked + 1))
    ledger.ack(proxy.acks())
    ledger.indeterminate.update(proxy.indeterminate())
    check = ledger.check(read_store(data))
    figures.add_check(check)
    figures.inputs += resets[0]
    figures.status_5xx += server_errors(proxy.statuses()) + errors_500
    figures.note(f"{resets[0]} requests reset mid-body; {len(frames)} frames stored, {partial} of them partial")
    check.assert_clean()
    assert resets[0] == profile.t9_resets
    assert partial == 0
    assert errors_500 == 0


def _events(frame: object) -> list[dict[str, object]]:
    import msgspec

    body = decode_body(frame)  # type: ignore[arg-type]
    return [msgspec.msgpack.decode(raw) if isinstance(raw, bytes) else raw for raw in body.events]
