"""T6, partial rejection: one batch of 100 with 7 plan violations, 1 oversize event and 2 known duplicates.

The two duplicates are made the way they happen: a first client sends them,
the collector stores them, the answer is lost (fault proxy), and the client
stops with them still in its spool. A second client on the same spool resumes
them and tracks 98 more, and everything goes in one request. Expected: 90
stored, 8 quarantined with their rules (0 dropped silently), 2 `duplicate`,
no retry of any of the 10, and an empty spool afterwards.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from maidian.sdk import BatchLimits, Client
from tests.reliability.constants import KEY
from tests.reliability.figures import Figures
from tests.reliability.ledger import Ledger, server_errors
from tests.reliability.procs import CollectorProcess
from tests.reliability.proxy import Fault, FaultProxy
from tests.reliability.store import read_store

ORDER = {"stock_code": "600519", "side": "buy", "price": 1688.5, "quantity": 100}
VIOLATIONS: list[tuple[str, dict[str, Any], str]] = [
    ("stock_order_submit", {**ORDER, "side": "hold"}, "enum"),
    ("stock_order_submit", {**ORDER, "stock_code": "ABC"}, "pattern"),
    ("stock_order_submit", {k: v for k, v in ORDER.items() if k != "price"}, "required"),
    ("stock_order_submit", {**ORDER, "price": -1}, "range"),
    ("stock_order_submit", {**ORDER, "quantity": "many"}, "type"),
    ("stock_order_bogus", ORDER, "unknown_event"),
    ("stock_order_filled", {"stock_code": "600519", "filled_quantity": 100}, "trigger"),
]
OVERSIZE = ("stock_order_submit", {**ORDER, "memo": "x" * (40 << 10)}, "too_large")


def test_one_batch_partly_refused(
    tmp_path: Path,
    figures: Figures,
    proxied: CollectorProcess,
    proxy: FaultProxy,
) -> None:
    collector = proxied
    spool = str(tmp_path / "spool")
    batch = BatchLimits(max_events=500, linger_s=30.0)
    proxy.policy = lambda r: Fault("drop_response") if r.path == "/v1/batch" else None
    first = Client(proxy.url, write_key=KEY, spool=spool, batch=batch)
    first.track("stock_order_submit", ORDER)
    first.track("stock_order_submit", ORDER)
    known = [f"{first.source_id}-1", f"{first.source_id}-2"]
    assert not first.close(1.0), "the answer was dropped: the two events must still wait in the spool"
    assert set(known) <= read_store(collector.config.parent / "data").ids
    proxy.policy = None
    sent_before = len(proxy.snapshot())

    quarantined: list[tuple[str, list[Any]]] = []
    second = Client(
        proxy.url,
        write_key=KEY,
        spool=spool,
        batch=batch,
        on_quarantine=lambda eid, _name, reasons: quarantined.append((eid, list(reasons))),
    )
    valid = [("stock_order_submit", ORDER, "")] * 45
    cases = [*valid, *VIOLATIONS, OVERSIZE, *valid]
    for name, props, _rule in cases:
        second.track(name, props)
    assert second.flush(30)
    stats = second.stats
    second.close(5)

    requests = [ex for ex in proxy.snapshot()[sent_before:] if ex.path == "/v1/batch"]
    assert len(requests) == 1, f"expected one request, got {len(requests)}"
    answer = requests[0]
    assert len(answer.ids) == 100
    assert answer.ids[:2] == tuple(known)
    # The second client continues the first's source and sequence (a spool keeps both across a clean close),
    # so its events are the request's ids after the two it adopted, in the order they were tracked.
    assert len(answer.ids[2:]) == len(cases)
    expected_rule = {eid: rule for eid, (_n, _p, rule) in zip(answer.ids[2:], cases, strict=True) if rule}
    statuses = dict(zip(answer.ids, answer.results or [], strict=True))
    store = read_store(collector.config.parent / "data")
    ledger = Ledger()
    ledger.track([*known, *answer.ids])
    ledger.quarantine_expected.update(expected_rule)
    ledger.ack(proxy.acks())
    check = ledger.check(store)
    figures.add_check(check)
    figures.inputs += 100
    figures.status_5xx += server_errors(proxy.statuses())
    rules = {eid: sorted({r["rule"] for r in reasons}) for eid, reasons in quarantined}
    shown = sorted({r for v in rules.values() for r in v})
    figures.note(f"answers: {sorted(set(statuses.values()))}; quarantine rules {shown}")

    assert sum(1 for s in statuses.values() if s == "accepted") == 90
    assert [statuses[eid] for eid in known] == ["duplicate", "duplicate"]
    assert {eid for eid, s in statuses.items() if s == "quarantined"} == set(expected_rule)
    assert store.quarantined >= set(expected_rule), "a quarantined event is missing from the quarantine log"
    assert rules == {eid: [rule] for eid, rule in expected_rule.items()}
    assert stats.quarantined == 8
    assert stats.duplicates == 2
    assert stats.dropped == {}
    later = [i for ex in proxy.snapshot()[sent_before + 1 :] for i in ex.ids if i in statuses]
    assert later == [], "an answered event was sent again"
    # Nothing left to send: no segment, only the lock and the persisted source (docs/sdk.md).
    assert sorted(p.name for p in Path(spool).iterdir()) == ["lock", "source.json"]
    assert check.lost == 0
    assert check.unexpected == 0
    assert len(store.ids & set(answer.ids)) == 92  # the 90 new, and the two stored before
