"""A known QA session on the mini plan: what a test build sends, and the coverage numbers it must give."""

from __future__ import annotations

from typing import Any

from tests.collector.helpers import DEVICE, now_ms


def _track(seq: int, name: str, props: dict[str, Any], *, tag: str, anon: str = "dev-qa") -> dict[str, Any]:
    return {
        "type": "track",
        "event": name,
        "event_id": f"{DEVICE}-{seq}",
        "time": now_ms(),
        "identities": {"anonymous_id": anon},
        "properties": {**props, "$lib": "maidian-python", "$test_tag": tag},
    }


ORDER = {"stock_code": "600519", "side": "buy", "price": 1688.5, "quantity": 200}


def session() -> list[dict[str, Any]]:
    """Twelve events: five accepted, five quarantined, one duplicate and one profile operation.

    stock_order_submit: 3 accepted (one with a masked mobile), 2 quarantined
    (enum on side; quantity missing); account_login: 2 accepted (one without
    `method`); stock_order_filled from an app key: quarantined (`trigger`);
    stock_teleport, not in the plan: 2 quarantined (`unknown_event`); one
    profile_set; the second order sent again (a duplicate: never counted).
    Tags: t1 on everything but three events tagged t2.
    """
    events = [
        _track(1, "stock_order_submit", ORDER, tag="t1"),
        _track(2, "stock_order_submit", {**ORDER, "mobile": "138****5678"}, tag="t1"),
        _track(3, "stock_order_submit", ORDER, tag="t2"),
        _track(4, "stock_order_submit", {**ORDER, "side": "hold"}, tag="t1"),
        _track(5, "stock_order_submit", {k: v for k, v in ORDER.items() if k != "quantity"}, tag="t2"),
        _track(6, "account_login", {"method": "sms"}, tag="t1", anon="设备-甲"),
        _track(7, "account_login", {}, tag="t1"),
        _track(8, "stock_order_filled", {"stock_code": "600519", "filled_quantity": 200}, tag="t1"),
        _track(9, "stock_teleport", {"stock_name": "贵州茅台"}, tag="t1"),
        _track(10, "stock_teleport", {}, tag="t2"),
        {
            "type": "profile_set",
            "event_id": f"{DEVICE}-11",
            "time": now_ms(),
            "identities": {"anonymous_id": "dev-qa"},
            "properties": {"risk_level": "C3"},
        },
    ]
    return [*events, dict(events[1])]  # the second order again: a duplicate
