"""Vendor mappings in a plan: the meta-schema, the typed accessor and the loader's target checks."""

from __future__ import annotations

import json
from typing import Any

import pytest

from maidian.tracking_plan import EventMapping, PlanLoadError, VendorMapping, load_plan, parse_plan
from maidian.tracking_plan.errors import PlanProblem
from tests.conftest import DATA, MINI_PLAN

VENDOR_PLAN = DATA / "vendor.plan.json"


def vendor_doc() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(VENDOR_PLAN.read_text())
    return doc


def problems_of(doc: dict[str, Any]) -> tuple[PlanProblem, ...]:
    with pytest.raises(PlanLoadError) as info:
        parse_plan(json.dumps(doc, indent=2, ensure_ascii=False), "plan.json")
    return info.value.problems


def test_a_plan_without_mappings_has_empty_vendor_mappings() -> None:
    plan = load_plan(MINI_PLAN)
    assert plan.mappings == {}
    assert plan.vendor_mapping("sensors") == VendorMapping("sensors")
    assert plan.vendor_mapping("segment").events == {}


def test_the_accessor_gives_typed_event_property_and_identity_maps() -> None:
    mapping = load_plan(VENDOR_PLAN).vendor_mapping("sensors")
    assert mapping.events["SubmitOrder"] == EventMapping("stock_order_submit")
    assert mapping.events["LoginResult"] == EventMapping("account_login", {"LoginMethod": "method"})
    assert mapping.properties["StockCode"] == "stock_code"
    assert mapping.properties["DebugFlag"] is None
    assert mapping.identities == {"$identity_mobile": "mobile_hash"}


def test_an_unknown_vendor_is_a_caller_error() -> None:
    with pytest.raises(ValueError, match="unknown vendor 'mixpanel'"):
        load_plan(VENDOR_PLAN).vendor_mapping("mixpanel")


def test_property_names_of_an_event_and_of_the_whole_plan() -> None:
    plan = load_plan(VENDOR_PLAN)
    assert plan.property_names("account_login") == {"method", "utm_source", "utm_medium", "utm_campaign"}
    everything = plan.property_names()
    assert {"stock_code", "risk_level", "page_path", "utm_source"} <= everything
    assert "$lib" not in everything


@pytest.mark.parametrize(
    ("where", "value", "pointer", "message"),
    [
        (("mappings", "sensor"), {}, "/mappings", "unknown key 'sensor'"),
        (("mappings", "sensors", "events", "X"), 5, "/mappings/sensors/events/X", "expected string or object"),
        (("mappings", "sensors", "events", "X"), {"properties": {}}, "/mappings/sensors/events/X", "'event'"),
        (("mappings", "sensors", "events", "X"), {"event": "app_launch", "props": {}}, "", "unknown key 'props'"),
        (("mappings", "sensors", "properties", "A"), 1, "/mappings/sensors/properties/A", "expected null or string"),
        (("mappings", "segment", "traits"), {}, "/mappings/segment", "unknown key 'traits'"),
    ],
)
def test_the_meta_schema_is_precise_about_mappings(
    where: tuple[str, ...], value: Any, pointer: str, message: str
) -> None:
    doc = vendor_doc()
    node = doc
    for key in where[:-1]:
        node = node.setdefault(key, {})
    node[where[-1]] = value
    found = problems_of(doc)
    assert any(p.code == "meta-schema" and message in p.message and p.pointer.startswith(pointer) for p in found), found


def test_x_annotations_are_allowed_in_mappings() -> None:
    doc = vendor_doc()
    doc["mappings"]["x-note"] = "migrated 2024"
    doc["mappings"]["sensors"]["x-owner"] = "growth"
    doc["mappings"]["sensors"]["events"]["LoginResult"]["x-ticket"] = "MD-7"
    plan = parse_plan(json.dumps(doc))
    assert plan.vendor_mapping("sensors").events["LoginResult"].event == "account_login"


def test_every_mapping_target_must_exist_and_each_problem_is_located() -> None:
    doc = vendor_doc()
    sensors = doc["mappings"]["sensors"]
    sensors["events"]["BuyFund"] = "fund_buy"
    sensors["events"]["LoginResult"]["properties"]["Channel"] = "channel"
    sensors["events"]["$pageview"]["properties"]["Qty"] = "quantity"  # declared, but by another event
    sensors["properties"]["Colour"] = "colour"
    sensors["identities"]["$identity_email"] = "email_hash"
    text = json.dumps(doc, indent=2, ensure_ascii=False)
    with pytest.raises(PlanLoadError) as info:
        parse_plan(text, "plan.json")
    found = {p.pointer: p for p in info.value.problems}
    assert all(p.code == "mapping-target" for p in found.values())
    assert set(found) == {
        "/mappings/sensors/events/BuyFund",
        "/mappings/sensors/events/LoginResult/properties/Channel",
        "/mappings/sensors/events/$pageview/properties/Qty",
        "/mappings/sensors/properties/Colour",
        "/mappings/sensors/identities/$identity_email",
    }
    assert "'fund_buy', which is not an event in the plan" in found["/mappings/sensors/events/BuyFund"].message
    assert (
        "event 'app_page_view' does not declare" in found["/mappings/sensors/events/$pageview/properties/Qty"].message
    )
    assert "login_id" in found["/mappings/sensors/identities/$identity_email"].message
    where = found["/mappings/sensors/properties/Colour"]
    assert where.line == text[: text.index('"Colour"')].count("\n") + 1


def test_targets_may_be_presets_common_user_or_builtin_identities() -> None:
    doc = vendor_doc()
    doc["mappings"]["segment"]["properties"].update({"appVersion": "$app_version", "campaign": "utm_campaign"})
    doc["mappings"]["segment"]["identities"] = {"userId": "customer_no", "anonymousId": "anonymous_id"}
    doc["mappings"]["segment"]["events"]["Logged In"]["properties"]["source"] = "utm_source"
    plan = parse_plan(json.dumps(doc))
    assert plan.vendor_mapping("segment").identities["userId"] == "customer_no"
