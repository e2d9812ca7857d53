"""`diff_plans`: each kind of change classified, and the version rule."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest

from maidian.tracking_plan import Validator, parse_plan
from maidian.tracking_plan.diff import check_version, diff_plans
from tests.conftest import MINI_PLAN

MINI: dict[str, Any] = json.loads(MINI_PLAN.read_text())
Change = Callable[[dict[str, Any]], object]

SUBMIT = "/events/stock_order_submit"
P = SUBMIT + "/properties/properties"


def mini() -> dict[str, Any]:
    return copy.deepcopy(MINI)


def props(doc: dict[str, Any], event: str = "stock_order_submit") -> dict[str, Any]:
    found: dict[str, Any] = doc["events"][event]["properties"]["properties"]
    return found


def changes(change: Change, before: Change | None = None) -> list[tuple[str, str, str]]:
    old = mini()
    if before is not None:
        before(old)
    new = copy.deepcopy(old)
    change(new)
    result = diff_plans(parse_plan(json.dumps(old)), parse_plan(json.dumps(new)))
    return [(c.semver, c.path, c.message) for c in result.changes]


# (what, set-up of the old plan or None, the change, semver, path)
TABLE: list[tuple[str, Change | None, Change, str, str]] = [
    # -- breaking -------------------------------------------------------------------------------
    ("event removed", None, lambda d: d["events"].pop("account_login"), "major", "/events/account_login"),
    ("property removed", None, lambda d: props(d).pop("mobile"), "major", P + "/mobile"),
    (
        "common property removed",
        None,
        lambda d: d["common_properties"]["properties"].pop("utm_campaign"),
        "major",
        "/common_properties/properties/utm_campaign",
    ),
    (
        "user property removed",
        None,
        lambda d: d["user_properties"]["properties"].pop("tags"),
        "major",
        "/user_properties/properties/tags",
    ),
    (
        "business line removed",
        lambda d: d["business_lines"].update({"fund": {}}),
        lambda d: d["business_lines"].pop("fund"),
        "major",
        "/business_lines/fund",
    ),
    ("identity type removed", None, lambda d: d["identities"].pop("customer_no"), "major", "/identities/customer_no"),
    (
        "new required property",
        None,
        lambda d: (
            props(d).update({"account": {"type": "string"}}),
            d["events"]["stock_order_submit"]["properties"]["required"].append("account"),
        ),
        "major",
        P + "/account",
    ),
    (
        "optional property becomes required",
        None,
        lambda d: d["events"]["stock_order_submit"]["properties"]["required"].append("mobile"),
        "major",
        SUBMIT + "/properties/required",
    ),
    (
        "new required common property",
        None,
        lambda d: d["common_properties"].update({"required": ["utm_source"]}),
        "major",
        "/common_properties/required",
    ),
    (
        "new required common property, declared at once",
        None,
        lambda d: (
            d["common_properties"]["properties"].update({"channel": {"type": "string"}}),
            d["common_properties"].update({"required": ["channel"]}),
        ),
        "major",
        "/common_properties/properties/channel",
    ),
    ("type changed", None, lambda d: props(d)["price"].update({"type": "string"}), "major", P + "/price/type"),
    ("number to integer", None, lambda d: props(d)["price"].update({"type": "integer"}), "major", P + "/price/type"),
    (
        "type removed from a list",
        lambda d: props(d)["side"].update({"type": ["string", "null"]}),
        lambda d: props(d)["side"].update({"type": "string"}),
        "major",
        P + "/side/type",
    ),
    (
        "type added where there was none",
        lambda d: props(d).update({"note": {}}),
        lambda d: props(d).update({"note": {"type": "string"}}),
        "major",
        P + "/note/type",
    ),
    ("enum value removed", None, lambda d: props(d)["side"].update({"enum": ["buy"]}), "major", P + "/side/enum"),
    (
        "enum added",
        None,
        lambda d: props(d)["mobile"].update({"enum": ["a"]}),
        "major",
        P + "/mobile/enum",
    ),
    ("const added", None, lambda d: props(d)["mobile"].update({"const": "x"}), "major", P + "/mobile/const"),
    ("minimum raised", None, lambda d: props(d)["quantity"].update({"minimum": 200}), "major", P + "/quantity/minimum"),
    (
        "minimum made exclusive",
        None,
        lambda d: (props(d)["quantity"].pop("minimum"), props(d)["quantity"].update({"exclusiveMinimum": 100})),
        "major",
        P + "/quantity/exclusiveMinimum",
    ),
    ("maximum added", None, lambda d: props(d)["price"].update({"maximum": 1e6}), "major", P + "/price/maximum"),
    (
        "maximum lowered",
        lambda d: props(d)["price"].update({"maximum": 1e6}),
        lambda d: props(d)["price"].update({"maximum": 1e5}),
        "major",
        P + "/price/maximum",
    ),
    (
        "exclusive maximum at the same value",
        lambda d: props(d)["price"].update({"maximum": 10}),
        lambda d: (props(d)["price"].pop("maximum"), props(d)["price"].update({"exclusiveMaximum": 10})),
        "major",
        P + "/price/exclusiveMaximum",
    ),
    (
        "multipleOf changed",
        None,
        lambda d: props(d)["quantity"].update({"multipleOf": 300}),
        "major",
        P + "/quantity/multipleOf",
    ),
    (
        "multipleOf added",
        None,
        lambda d: props(d)["price"].update({"multipleOf": 0.01}),
        "major",
        P + "/price/multipleOf",
    ),
    (
        "minLength raised",
        None,
        lambda d: props(d)["mobile"].update({"minLength": 11}),
        "major",
        P + "/mobile/minLength",
    ),
    (
        "maxLength lowered",
        None,
        lambda d: d["common_properties"]["properties"]["utm_source"].update({"maxLength": 64}),
        "major",
        "/common_properties/properties/utm_source/maxLength",
    ),
    (
        "maxItems added",
        None,
        lambda d: d["user_properties"]["properties"]["tags"].update({"maxItems": 3}),
        "major",
        "/user_properties/properties/tags/maxItems",
    ),
    ("pattern added", None, lambda d: props(d)["mobile"].update({"pattern": "^1"}), "major", P + "/mobile/pattern"),
    (
        "pattern changed in a definition",
        None,
        lambda d: d["$defs"]["stock_code"].update({"pattern": "^[0-9]{5}$"}),
        "major",
        P + "/stock_code/pattern",
    ),
    ("format added", None, lambda d: props(d)["mobile"].update({"format": "email"}), "major", P + "/mobile/format"),
    (
        "additionalProperties closed on an object",
        lambda d: props(d).update({"leg": {"type": "object", "properties": {"a": {}}}}),
        lambda d: props(d)["leg"].update({"additionalProperties": False}),
        "major",
        P + "/leg/additionalProperties",
    ),
    (
        "additionalProperties closed on an event",
        lambda d: d["events"]["account_login"]["properties"].update({"additionalProperties": True}),
        lambda d: d["events"]["account_login"]["properties"].update({"additionalProperties": False}),
        "major",
        "/events/account_login/properties/additionalProperties",
    ),
    (
        "settings close additional properties",
        lambda d: d.update({"settings": {"additional_properties": True}}),
        lambda d: d.update({"settings": {"additional_properties": False}}),
        "major",
        "/settings/additional_properties",
    ),
    (
        "unknown events quarantined",
        lambda d: d.update({"settings": {"unknown_events": "accept"}}),
        lambda d: d.update({"settings": {"unknown_events": "quarantine"}}),
        "major",
        "/settings/unknown_events",
    ),
    (
        "trigger changed",
        None,
        lambda d: d["events"]["stock_order_filled"].update({"trigger": "client"}),
        "major",
        "/events/stock_order_filled/trigger",
    ),
    (
        "trigger made server",
        None,
        lambda d: d["events"]["account_login"].update({"trigger": "server"}),
        "major",
        "/events/account_login/trigger",
    ),
    ("PII tag added", None, lambda d: props(d)["price"].update({"x-pii": "drop"}), "major", P + "/price/x-pii"),
    ("PII tag changed", None, lambda d: props(d)["mobile"].update({"x-pii": "hash"}), "major", P + "/mobile/x-pii"),
    ("mask tag removed", None, lambda d: props(d)["mobile"].pop("x-pii"), "major", P + "/mobile/x-pii"),
    (
        "identity no longer unique",
        None,
        lambda d: d["identities"]["customer_no"].update({"unique": False}),
        "minor",
        "/identities/customer_no/unique",
    ),
    (
        "identity gains uniqueness",
        lambda d: d["identities"]["customer_no"].update({"unique": False}),
        lambda d: d["identities"]["customer_no"].update({"unique": True}),
        "major",
        "/identities/customer_no/unique",
    ),
    (
        "identity gains a pattern",
        None,
        lambda d: d["identities"]["mobile_hash"].update({"pattern": "^[0-9a-f]{64}$"}),
        "major",
        "/identities/mobile_hash/pattern",
    ),
    (
        "identity PII tag added",
        None,
        lambda d: d["identities"]["customer_no"].update({"x-pii": "hash"}),
        "major",
        "/identities/customer_no/x-pii",
    ),
    (
        "uniqueItems required",
        None,
        lambda d: d["user_properties"]["properties"]["tags"].update({"uniqueItems": True}),
        "major",
        "/user_properties/properties/tags/uniqueItems",
    ),
    (
        "nested required property",
        lambda d: props(d).update({"leg": {"type": "object", "properties": {"a": {}}}}),
        lambda d: props(d)["leg"].update({"required": ["a"]}),
        "major",
        P + "/leg/required",
    ),
    (
        "array items narrowed",
        None,
        lambda d: d["user_properties"]["properties"]["tags"]["items"].update({"maxLength": 8}),
        "major",
        "/user_properties/properties/tags/items/maxLength",
    ),
    # -- compatible: additions and widenings (minor) -----------------------------------------------------
    ("event added", None, lambda d: d["events"].update({"account_logout": {}}), "minor", "/events/account_logout"),
    ("optional property added", None, lambda d: props(d).update({"note": {}}), "minor", P + "/note"),
    (
        "optional common property added",
        None,
        lambda d: d["common_properties"]["properties"].update({"channel": {"type": "string"}}),
        "minor",
        "/common_properties/properties/channel",
    ),
    ("enum value added", None, lambda d: props(d)["side"]["enum"].append("short"), "minor", P + "/side/enum"),
    ("enum removed", None, lambda d: props(d)["side"].pop("enum"), "minor", P + "/side/enum"),
    (
        "integer to number",
        None,
        lambda d: props(d)["quantity"].update({"type": "number"}),
        "minor",
        P + "/quantity/type",
    ),
    (
        "null allowed",
        None,
        lambda d: props(d)["side"].update({"type": ["string", "null"]}),
        "minor",
        P + "/side/type",
    ),
    ("minimum lowered", None, lambda d: props(d)["quantity"].update({"minimum": 1}), "minor", P + "/quantity/minimum"),
    (
        "exclusive minimum made inclusive",
        None,
        lambda d: (props(d)["price"].pop("exclusiveMinimum"), props(d)["price"].update({"minimum": 0})),
        "minor",
        P + "/price/minimum",
    ),
    (
        "multipleOf divided",
        None,
        lambda d: props(d)["quantity"].update({"multipleOf": 50}),
        "minor",
        P + "/quantity/multipleOf",
    ),
    (
        "maxLength raised",
        None,
        lambda d: d["common_properties"]["properties"]["utm_source"].update({"maxLength": 256}),
        "minor",
        "/common_properties/properties/utm_source/maxLength",
    ),
    ("pattern removed", None, lambda d: d["$defs"]["stock_code"].pop("pattern"), "minor", P + "/stock_code/pattern"),
    (
        "required dropped",
        None,
        lambda d: d["events"]["stock_order_submit"]["properties"]["required"].remove("price"),
        "minor",
        SUBMIT + "/properties/required",
    ),
    ("drop tag removed", None, lambda d: props(d)["id_card"].pop("x-pii"), "minor", P + "/id_card/x-pii"),
    (
        "additionalProperties opened",
        None,
        lambda d: d["events"]["account_login"]["properties"].update({"additionalProperties": True}),
        "minor",
        "/events/account_login/properties/additionalProperties",
    ),
    ("business line added", None, lambda d: d["business_lines"].update({"fund": {}}), "minor", "/business_lines/fund"),
    (
        "identity type added",
        None,
        lambda d: d["identities"].update({"fund_account": {}}),
        "minor",
        "/identities/fund_account",
    ),
    (
        "identity priority",
        None,
        lambda d: d["identities"]["customer_no"].update({"priority": 5}),
        "minor",
        "/identities/customer_no/priority",
    ),
    (
        "property moved to common_properties",
        None,
        lambda d: (d["common_properties"]["properties"].update({"mobile": props(d).pop("mobile")}),),
        "minor",
        P + "/mobile",
    ),
    (
        "unknown events accepted",
        None,
        lambda d: d.update({"settings": {"unknown_events": "accept"}}),
        "minor",
        "/settings/unknown_events",
    ),
    # -- compatible: documentation (patch) -------------------------------------------------------------
    (
        "description",
        None,
        lambda d: d["events"]["account_login"].update({"description": "新描述"}),
        "patch",
        "/events/account_login/description",
    ),
    (
        "owner",
        None,
        lambda d: d["events"]["account_login"].update({"owner": "x"}),
        "patch",
        "/events/account_login/owner",
    ),
    (
        "fires_when",
        None,
        lambda d: d["events"]["account_login"].update({"fires_when": "x"}),
        "patch",
        "/events/account_login/fires_when",
    ),
    (
        "status",
        None,
        lambda d: d["events"]["account_login"].update({"status": "deprecated"}),
        "patch",
        "/events/account_login/status",
    ),
    ("examples", None, lambda d: props(d)["side"].update({"examples": ["buy"]}), "patch", P + "/side"),
    ("property description", None, lambda d: props(d)["side"].update({"description": "x"}), "patch", P + "/side"),
    (
        "business line owner",
        None,
        lambda d: d["business_lines"]["stock"].update({"owner": "x"}),
        "patch",
        "/business_lines/stock",
    ),
    ("plan description", None, lambda d: d.update({"description": "x"}), "patch", "/description"),
]


@pytest.mark.parametrize(("what", "before", "change", "semver", "path"), TABLE, ids=[row[0] for row in TABLE])
def test_each_change_is_classified(what: str, before: Change | None, change: Change, semver: str, path: str) -> None:
    found = changes(change, before)
    assert (semver, path) in {(s, p) for s, p, _ in found}, found
    # Nothing is louder than it should be: the change's own level is the highest one found.
    order = ["patch", "minor", "major"]
    assert max(order.index(s) for s, _, _ in found) == order.index(semver), found


def test_identical_plans_have_no_changes() -> None:
    assert changes(lambda d: None) == []


def test_moving_a_schema_into_defs_is_no_change() -> None:
    def change(d: dict[str, Any]) -> None:
        d["$defs"]["side"] = props(d)["side"]
        props(d)["side"] = {"$ref": "#/$defs/side"}

    assert changes(change) == []


def test_messages_say_what_changed() -> None:
    [(_, _, message)] = changes(lambda d: props(d)["side"].update({"enum": ["buy", "hold"]}), None)[:1]
    assert message == 'enum values removed: "sell"'
    found = {m for _, _, m in changes(lambda d: props(d)["side"].update({"enum": ["buy", "sell", "hold"]}))}
    assert found == {'enum values added: "hold"'}
    found = {m for _, _, m in changes(lambda d: props(d)["price"].update({"exclusiveMinimum": 1}))}
    assert found == {"range narrowed: > 0 -> > 1"}


def test_the_diff_is_in_json_shape() -> None:
    old = parse_plan(MINI_PLAN.read_text())
    doc = mini()
    doc["version"] = "1.1.0"
    doc["events"]["account_logout"] = {"description": "x"}
    result = diff_plans(old, parse_plan(json.dumps(doc)))
    assert result.to_dict() == {
        "changes": [
            {
                "kind": "compatible",
                "semver": "minor",
                "path": "/events/account_logout",
                "message": "event 'account_logout' added",
            }
        ],
        "breaking": 0,
        "compatible": 1,
        "version": {
            "old": "1.0.0",
            "new": "1.1.0",
            "needed": "minor",
            "expected": "1.1.0",
            "ok": True,
            "message": "1.0.0 -> 1.1.0: ok (additions need 1.1.0 or later)",
        },
        "ok": True,
    }


@pytest.mark.parametrize(
    ("old", "new", "needed", "ok", "expected"),
    [
        ("1.0.0", "2.0.0", "major", True, "2.0.0"),
        ("1.4.2", "1.5.0", "major", False, "2.0.0"),
        ("1.4.2", "3.0.0", "major", True, "2.0.0"),
        ("0.4.2", "0.5.0", "major", True, "0.5.0"),
        ("0.4.2", "0.4.3", "major", False, "0.5.0"),
        ("0.4.2", "0.5.0", "minor", True, "0.5.0"),
        ("1.4.2", "1.5.0", "minor", True, "1.5.0"),
        ("1.4.2", "1.4.3", "minor", False, "1.5.0"),
        ("1.4.2", "1.4.3", "patch", True, "1.4.3"),
        ("1.4.2", "1.4.2", "patch", False, "1.4.3"),
        ("1.4.2", "1.4.2", "none", True, "1.4.2"),
        ("1.4.2", "1.5.0", "none", True, "1.4.2"),
        ("1.4.2", "1.4.1", "none", False, "1.4.2"),
        ("1.4.2", "1.3.9", "patch", False, "1.4.3"),
        ("1.4.2", "2.0.0-rc.1", "major", True, "2.0.0"),
        ("2.0.0-rc.1", "2.0.0-rc.2", "major", True, "2.0.0-rc.2"),
        ("2.0.0-rc.1", "2.0.0", "major", True, "2.0.0"),
        ("2.0.0-rc.2", "2.0.0-rc.1", "patch", False, "2.0.0-rc.2"),
        ("2.0.0-rc.1", "2.0.0-rc.1", "patch", False, "2.0.0-rc.1"),
        ("2.0.0-rc.9", "2.0.0-rc.10", "major", True, "2.0.0-rc.10"),
        ("2.0.0-alpha", "2.0.0-alpha.1", "minor", True, "2.0.0-alpha.1"),
    ],
)
def test_the_version_rule(old: str, new: str, needed: str, ok: bool, expected: str) -> None:
    verdict = check_version(old, new, needed)  # type: ignore[arg-type]
    assert (verdict.ok, verdict.expected) == (ok, expected), verdict.message
    assert verdict.message.startswith(f"{old} -> {new}: ")


def test_a_verdict_names_the_version_expected() -> None:
    assert check_version("1.4.2", "1.5.0", "major").message == "1.4.2 -> 1.5.0: breaking changes need 2.0.0 or later"
    assert check_version("0.4.2", "0.4.3", "major").message == (
        "0.4.2 -> 0.4.3: breaking changes or additions in 0.x need 0.5.0 or later"
    )
    assert check_version("1.4.2", "1.4.1", "none").message == "1.4.2 -> 1.4.1: the version went backwards"


def test_passing_needs_an_adequate_version_and_no_breaking_change_unless_allowed() -> None:
    old = parse_plan(MINI_PLAN.read_text())
    doc = mini()
    doc["events"].pop("account_login")
    for version, strict, allowed in (("1.1.0", False, False), ("2.0.0", False, True)):
        doc["version"] = version
        result = diff_plans(old, parse_plan(json.dumps(doc)))
        assert result.passes() is strict
        assert result.passes(allow_breaking=True) is allowed


def corpus() -> list[dict[str, Any]]:
    """Events the mini plan accepts on the wire, near the edges of its schemas."""
    masked = "138****5678"
    track = [
        ("stock_order_submit", {"stock_code": "600519", "side": "buy", "price": 1688.5, "quantity": 200}),
        ("stock_order_submit", {"stock_code": "000001", "side": "sell", "price": 0.01, "quantity": 100}),
        (
            "stock_order_submit",
            {"stock_code": "600519", "side": "buy", "price": 1e9, "quantity": 10**6, "mobile": masked},
        ),
        ("stock_order_submit", {"stock_code": "600519", "side": "buy", "price": 1, "quantity": 100, "$lib": "x"}),
        ("stock_order_filled", {"stock_code": "600519", "filled_quantity": 1, "utm_source": "x" * 128}),
        ("account_login", {}),
        ("account_login", {"method": "sms", "utm_campaign": "双十一"}),
    ]
    events: list[dict[str, Any]] = [
        {
            "type": "track",
            "event": name,
            "event_id": f"s-{i}",
            "time": 1_763_800_000_000,
            "identities": {"anonymous_id": "d-1", "customer_no": "0123456789", "mobile_hash": "a" * 64},
            "properties": properties,
        }
        for i, (name, properties) in enumerate(track)
    ]
    for i, properties in enumerate(
        [{"risk_level": "C3", "login_count": 0, "tags": ["a", "a"], "real_name": "张**"}, {"tags": []}]
    ):
        events.append(
            {
                "type": "profile_set",
                "event_id": f"p-{i}",
                "time": 1,
                "identities": {"login_id": "u-1"},
                "properties": properties,
            }
        )
    return events


@pytest.mark.parametrize(
    ("what", "before", "change", "semver", "path"),
    [row for row in TABLE if row[3] != "major"],
    ids=[row[0] for row in TABLE if row[3] != "major"],
)
def test_compatible_changes_keep_every_valid_event_valid(
    what: str, before: Change | None, change: Change, semver: str, path: str
) -> None:
    old_doc = mini()
    if before is not None:
        before(old_doc)
    new_doc = copy.deepcopy(old_doc)
    change(new_doc)
    old, new = Validator(parse_plan(json.dumps(old_doc))), Validator(parse_plan(json.dumps(new_doc)))
    accepted = [e for e in corpus() if old.is_valid(e)]
    assert len(accepted) == len(corpus())
    assert [e for e in accepted if not new.is_valid(e)] == []
