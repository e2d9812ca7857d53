"""`maidian.sdk.testing.Recorder`: what an app developer's unit test sees."""

from __future__ import annotations

import pytest

from maidian.sdk import InvalidEvent
from maidian.sdk.testing import TEST_PII_KEY, Recorder
from maidian.tracking_plan.model import Plan
from maidian.tracking_plan.pii import hash_value
from tests.conftest import MINI_PLAN


def buy(client: Recorder, code: str, quantity: int) -> None:
    """App code under test: it only knows the client's recording API."""
    client.track("stock_order_submit", {"stock_code": code, "side": "buy", "price": 10.5, "quantity": quantity})


def test_assert_tracked_matches_a_subset_of_properties() -> None:
    recorder = Recorder(MINI_PLAN)
    buy(recorder, "600519", 100)
    event = recorder.assert_tracked("stock_order_submit", stock_code="600519", quantity=100)
    assert event["properties"]["side"] == "buy"
    recorder.assert_tracked("stock_order_submit", count=1)
    recorder.assert_not_tracked("account_login")
    recorder.assert_valid()


def test_a_failed_assertion_lists_what_was_tracked() -> None:
    recorder = Recorder(MINI_PLAN)
    buy(recorder, "600519", 100)
    with pytest.raises(AssertionError) as info:
        recorder.assert_tracked("stock_order_submit", stock_code="000001")
    assert "stock_order_submit {'stock_code': '600519'" in str(info.value)
    with pytest.raises(AssertionError, match="was tracked"):
        recorder.assert_not_tracked("stock_order_submit")


def test_strict_by_default_with_a_plan_so_a_violation_fails_at_the_call(mini_plan: Plan) -> None:
    recorder = Recorder(mini_plan)
    with pytest.raises(InvalidEvent) as info:
        buy(recorder, "60051X", 150)
    assert {v.rule for v in info.value.violations} == {"pattern", "range"}
    assert recorder.events == []


def test_warn_mode_records_and_reports_what_the_collector_would_quarantine(mini_plan: Plan) -> None:
    recorder = Recorder(mini_plan, mode="warn")
    buy(recorder, "60051X", 100)
    assert len(recorder.tracked("stock_order_submit")) == 1
    with pytest.raises(AssertionError, match="break the plan"):
        recorder.assert_valid()
    recorder.clear()
    assert recorder.events == []
    recorder.assert_valid()


def test_events_are_recorded_as_they_would_leave_the_device(mini_plan: Plan) -> None:
    recorder = Recorder(mini_plan)
    recorder.login("u_1")
    recorder.bind("mobile_hash", "13812345678")
    recorder.track(
        "stock_order_submit",
        {"stock_code": "600519", "side": "buy", "price": 1.0, "quantity": 100, "mobile": "13812345678", "id_card": "x"},
    )
    event = recorder.assert_tracked("stock_order_submit", mobile="138****5678")
    assert "id_card" not in event["properties"]
    assert event["identities"]["mobile_hash"] == hash_value("13812345678", TEST_PII_KEY)
    assert [e["type"] for e in recorder.events] == ["bind", "bind", "track"]


def test_without_a_plan_anything_is_recorded() -> None:
    recorder = Recorder()
    recorder.track("anything_goes", {"x": 1})
    recorder.profile_set({"risk_level": "C3"})
    recorder.assert_tracked("anything_goes", x=1)
    assert recorder.events[1]["type"] == "profile_set"
    assert recorder.flush()
    assert recorder.close()
