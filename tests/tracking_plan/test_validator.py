"""Each violation rule, with a passing and a failing event, and the validator's guarantees."""

from __future__ import annotations

import copy
import enum
import json
from typing import Any

import pytest

from maidian.tracking_plan import Validator, load_plan, parse_plan
from maidian.tracking_plan.pii import hash_value, mask_value
from tests.conftest import MINI_PLAN

PLAN = load_plan(MINI_PLAN)
WIRE = Validator(PLAN)
SOURCE = Validator(PLAN, stage="source")


def order(**props: Any) -> dict[str, Any]:
    base = {"stock_code": "600519", "side": "buy", "price": 1688.5, "quantity": 200, "$lib": "maidian-python"}
    base.update(props)
    return {
        "type": "track",
        "event": "stock_order_submit",
        "event_id": "0193a5b2c3d4e5f60718293a4b5c6d7e-1",
        "time": 1_763_800_000_000,
        "identities": {"anonymous_id": "dev-1", "login_id": "u-1"},
        "properties": {k: v for k, v in base.items() if v is not None},
    }


def rules(event: Any, validator: Validator = WIRE) -> list[tuple[str, str]]:
    return [(v.rule, v.path) for v in validator.validate(event)]


def test_a_valid_event_has_no_violations() -> None:
    assert WIRE.validate(order()) == []
    assert WIRE.is_valid(order(utm_source="wechat", mobile="138****5678"))


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (order(side="hold"), [("enum", "/properties/side")]),
        (order(price="1688.5"), [("type", "/properties/price")]),
        (order(price=0), [("range", "/properties/price")]),
        (order(quantity=150), [("range", "/properties/quantity")]),
        (order(stock_code="60051X"), [("pattern", "/properties/stock_code")]),
        (order(side=None), [("required", "/properties/side")]),
        (order(color="red"), [("additional_property", "/properties/color")]),
        (order(**{"$made_up": 1}), [("property_name", "/properties/$made_up")]),
        (order(**{"$lib": 7}), [("type", "/properties/$lib")]),
        (order(utm_source="x" * 129), [("length", "/properties/utm_source")]),
        (order(id_card="110101199001011234"), [("pii", "/properties/id_card")]),
        (order(mobile="13812345678"), [("pii", "/properties/mobile")]),
    ],
)
def test_property_rules(event: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    assert rules(event) == expected
    assert not WIRE.is_valid(event)


def test_unknown_event() -> None:
    event = order()
    event["event"] = "stock_order_teleport"
    assert rules(event)[0] == ("unknown_event", "/event")


def test_unknown_events_can_be_accepted_by_policy() -> None:
    doc = json.loads(MINI_PLAN.read_text())
    doc["settings"] = {"unknown_events": "accept"}
    lenient = Validator(parse_plan(json.dumps(doc)))
    event = order(anything_snake=1)
    event["event"] = "stock_order_teleport"
    assert lenient.validate(event) == []
    event["properties"]["BadName"] = 1
    assert rules(event, lenient) == [("property_name", "/properties")]


@pytest.mark.parametrize(
    ("identities", "expected"),
    [
        ({}, [("missing_identity", "/identities")]),
        ({"anonymous_id": ""}, [("invalid_identity", "/identities/anonymous_id")]),
        ({"anonymous_id": 42}, [("invalid_identity", "/identities/anonymous_id")]),
        ({"anonymous_id": "d", "qq_number": "1"}, [("unknown_identity", "/identities/qq_number")]),
        ({"customer_no": "12345"}, [("invalid_identity", "/identities/customer_no")]),
        ({"mobile_hash": "13812345678"}, [("pii", "/identities/mobile_hash")]),
        ({"anonymous_id": "x" * 256}, [("invalid_identity", "/identities/anonymous_id")]),
    ],
)
def test_identity_rules(identities: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    event = order()
    event["identities"] = identities
    assert rules(event) == expected


def test_identities_pass_when_declared_and_well_formed() -> None:
    event = order()
    event["identities"] = {"customer_no": "0012345678", "mobile_hash": hash_value("13812345678", b"k")}
    assert WIRE.validate(event) == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda e: e.pop("event_id"), [("envelope", "/event_id")]),
        (lambda e: e.update(time="2025-01-01"), [("envelope", "/time")]),
        (lambda e: e.update(time=-1), [("envelope", "/time")]),
        (lambda e: e.update(type="trace"), [("envelope", "/type")]),
        (lambda e: e.update(extra=1), [("envelope", "/extra")]),
        (lambda e: e.pop("identities"), [("missing_identity", "/identities")]),
        (lambda e: e.update(event=["x"]), [("envelope", "/event")]),
    ],
)
def test_envelope_rules(change: Any, expected: list[tuple[str, str]]) -> None:
    event = order()
    change(event)
    assert rules(event) == expected


def test_profile_operations() -> None:
    def op(type_: str, props: dict[str, Any], identities: dict[str, str] | None = None) -> dict[str, Any]:
        ids = identities or {"login_id": "u-1"}
        return {"type": type_, "event_id": "e-1", "time": 1, "identities": ids, "properties": props}

    assert WIRE.validate(op("profile_set", {"risk_level": "C3", "real_name": mask_value("张三丰")})) == []
    assert rules(op("profile_set", {"risk_level": "C9"})) == [("enum", "/properties/risk_level")]
    assert rules(op("profile_set", {"real_name": "张三丰"})) == [("pii", "/properties/real_name")]
    assert WIRE.validate(op("profile_increment", {"login_count": 1})) == []
    assert rules(op("profile_increment", {"risk_level": 1})) == [("additional_property", "/properties/risk_level")]
    assert WIRE.validate(op("profile_append", {"tags": ["vip"]})) == []
    assert WIRE.validate(op("profile_unset", {"tags": True})) == []
    assert WIRE.validate(op("profile_delete", {})) == []
    assert WIRE.validate(op("bind", {}, {"login_id": "u-1", "customer_no": "0012345678"})) == []
    assert rules(op("bind", {}, {"login_id": "u-1"})) == [("missing_identity", "/identities")]


def test_source_stage_checks_raw_values_before_pii_tags_apply() -> None:
    raw = order(mobile="13812345678", id_card="110101199001011234")
    assert SOURCE.validate(raw) == []
    assert [r for r, _ in rules(raw)] == ["pii", "pii"]


def test_messages_never_quote_the_value() -> None:
    canary = "13999999999"
    event = order(stock_code=canary, side=canary, price=canary, mobile=canary, utm_source=canary * 20)
    event["identities"] = {"customer_no": canary, "mobile_hash": canary}
    text = json.dumps([v.to_dict() for v in WIRE.validate(event)], ensure_ascii=False)
    assert canary not in text
    assert len(WIRE.validate(event)) >= 7


@pytest.mark.parametrize(
    "garbage",
    [
        None,
        1,
        "x",
        [],
        [order()],
        {"type": None},
        {"type": "track"},
        {"type": "track", "event": {}},
        {"type": "track", "event": "stock_order_submit", "properties": b"bytes"},
        {"type": "profile_set", "properties": {1: 2}},
        {"type": "track", "event": "x" * 10_000},
    ],
)
def test_validate_never_raises(garbage: Any) -> None:
    violations = WIRE.validate(garbage)
    assert violations
    assert not WIRE.is_valid(garbage)


def test_non_json_values_are_named() -> None:
    event = order(note=b"\x00")
    assert rules(event) == [("type", "/properties/note")]
    event = order()
    event["properties"] = {1: "x"}
    assert rules(event) == [("type", "/properties")]


class _Text(str):
    pass


class _Count(int):
    pass


class _Side(enum.StrEnum):
    BUY = "buy"


@pytest.mark.parametrize(
    ("props", "path", "actual"),
    [
        ({"side": _Text("buy")}, "/properties/side", "_Text"),
        ({"quantity": _Count(200)}, "/properties/quantity", "_Count"),
        ({_Text("note"): "x"}, "/properties/note", "_Text"),
    ],
)
def test_subclasses_of_json_scalars_are_named_not_raised(props: dict[Any, Any], path: str, actual: str) -> None:
    # The compiled validator takes str and int enums and raises on any other subclass.
    event = order()
    event["properties"].update(props)
    assert not WIRE.is_valid(event)
    [violation] = WIRE.validate(event)
    assert (violation.rule, violation.path, violation.actual) == ("type", path, actual)


def test_str_enums_are_plain_values() -> None:
    assert WIRE.validate(order(side=_Side.BUY)) == []


def test_validating_does_not_change_the_event() -> None:
    event = order(side="hold")
    before = copy.deepcopy(event)
    WIRE.validate(event)
    assert event == before
