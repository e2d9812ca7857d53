"""`lint_document`: every rule with a plan that breaks it and a near miss that does not."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest

from maidian.tracking_plan import PlanLoadError
from maidian.tracking_plan.lint import RULES, SUCCESS_WORDS, lint_document, lint_file, pii_meaning
from tests.conftest import MINI_PLAN, ROOT

MINI: dict[str, Any] = json.loads(MINI_PLAN.read_text())
Change = Callable[[dict[str, Any]], object]


def mini() -> dict[str, Any]:
    return copy.deepcopy(MINI)


def props(doc: dict[str, Any], event: str = "stock_order_submit") -> dict[str, Any]:
    found: dict[str, Any] = doc["events"][event]["properties"]["properties"]
    return found


def found(change: Change, **kwargs: Any) -> set[tuple[str, str]]:
    doc = mini()
    change(doc)
    return {(p.code, p.pointer) for p in lint_document(doc, **kwargs)}


SUBMIT = "/events/stock_order_submit"
SUBMIT_PROPS = SUBMIT + "/properties/properties"


def test_the_mini_plan_is_clean() -> None:
    assert lint_document(mini()) == []
    assert lint_file(MINI_PLAN) == []


# Each row: a rule, a change that breaks it, and a pointer where it must be reported.
FAILING: list[tuple[str, Change, str]] = [
    ("prefix-registered", lambda d: d["events"].update({"fund_buy": {"description": "x"}}), "/events/fund_buy"),
    (
        "business-line-mismatch",
        lambda d: d["events"]["account_login"].update({"business_line": "stock"}),
        "/events/account_login/business_line",
    ),
    (
        "business-line-mismatch",
        lambda d: d["events"]["account_login"].update({"business_line": "loans"}),
        "/events/account_login/business_line",
    ),
    ("snake-case", lambda d: d["events"].update({"stock_orderSubmit": {}}), "/events/stock_orderSubmit"),
    ("snake-case", lambda d: d["events"].update({"stock__x": {}}), "/events/stock__x"),
    ("snake-case", lambda d: props(d).update({"Price2": {}}), SUBMIT_PROPS + "/Price2"),
    (
        "snake-case",
        lambda d: props(d).update({"leg": {"type": "object", "properties": {"Code": {}}}}),
        SUBMIT_PROPS + "/leg/properties/Code",
    ),
    (
        "snake-case",
        lambda d: props(d).update({"legs": {"type": "array", "items": {"properties": {"qty-x": {}}}}}),
        SUBMIT_PROPS + "/legs/items/properties/qty-x",
    ),
    ("snake-case", lambda d: d["business_lines"].update({"Fund": {}}), "/business_lines/Fund"),
    ("snake-case", lambda d: d["identities"].update({"fundAccount": {}}), "/identities/fundAccount"),
    ("snake-case", lambda d: d["$defs"].update({"StockCode": {}}), "/$defs/StockCode"),
    ("snake-case", lambda d: d["user_properties"]["properties"].update({"VIP": {}}), "/user_properties/properties/VIP"),
    ("name-length", lambda d: d["events"].update({"stock_" + "x" * 95: {}}), "/events/stock_" + "x" * 95),
    ("name-length", lambda d: props(d).update({"y" * 101: {}}), SUBMIT_PROPS + "/" + "y" * 101),
    (
        "preset-reserved",
        lambda d: d["common_properties"]["properties"].update({"$channel": {"type": "string"}}),
        "/common_properties/properties/$channel",
    ),
    ("preset-reserved", lambda d: props(d).update({"$os": {"type": "string"}}), SUBMIT_PROPS + "/$os"),
    (
        "preset-reserved",
        lambda d: d["user_properties"]["properties"].update({"$lib": {}}),
        "/user_properties/properties/$lib",
    ),
    ("case-clash", lambda d: props(d).update({"stockCode": {"type": "string"}}), SUBMIT_PROPS + "/stockCode"),
    (
        "case-clash",
        lambda d: props(d, "account_login").update({"utmsource": {"type": "string"}}),
        "/events/account_login/properties/properties/utmsource",
    ),
    ("case-clash", lambda d: d["events"].update({"stock_Order_submit": {}}), "/events/stock_Order_submit"),
    ("case-clash", lambda d: d["events"].update({"stock_ordersubmit": {}}), "/events/stock_ordersubmit"),
    (
        "property-type-conflict",
        lambda d: props(d, "stock_order_filled").update({"side": {"type": "integer"}}),
        "/events/stock_order_filled/properties/properties/side/type",
    ),
    (
        "property-type-conflict",
        lambda d: props(d, "account_login").update({"utm_source": {"type": "integer"}}),
        "/events/account_login/properties/properties/utm_source/type",
    ),
    (
        "property-type-conflict",
        lambda d: d["common_properties"]["properties"].update({"$screen_width": {"type": "string"}}),
        "/common_properties/properties/$screen_width/type",
    ),
    (
        "property-type-conflict",
        lambda d: props(d, "account_login").update({"login_count": {"type": "string"}}),
        "/events/account_login/properties/properties/login_count/type",
    ),
    (
        "required-undefined",
        lambda d: d["events"]["stock_order_submit"]["properties"]["required"].append("amount"),
        SUBMIT + "/properties/required/4",
    ),
    (
        "required-undefined",
        lambda d: props(d).update({"leg": {"type": "object", "properties": {}, "required": ["code"]}}),
        SUBMIT_PROPS + "/leg/required/0",
    ),
    (
        "required-undefined",
        lambda d: d["common_properties"].update({"required": ["utm_medium"]}),
        "/common_properties/required/0",
    ),
    ("empty-enum", lambda d: props(d)["side"].update({"enum": []}), SUBMIT_PROPS + "/side/enum"),
    ("empty-enum", lambda d: props(d)["side"].update({"enum": ["buy", "sell", "buy"]}), SUBMIT_PROPS + "/side/enum/2"),
    (
        "empty-enum",
        lambda d: props(d).update({"lots": {"type": "number", "enum": [1, 2, 1.0]}}),
        SUBMIT_PROPS + "/lots/enum/2",
    ),
    ("enum-type", lambda d: props(d)["side"].update({"enum": ["buy", 1]}), SUBMIT_PROPS + "/side/enum/1"),
    ("missing-description", lambda d: d["events"]["account_login"].pop("description"), "/events/account_login"),
    (
        "missing-description",
        lambda d: d["events"]["account_login"].update({"description": "  "}),
        "/events/account_login",
    ),
    (
        "missing-owner",
        lambda d: (d["events"]["account_login"].pop("owner"), d["business_lines"]["account"].pop("owner")),
        "/events/account_login",
    ),
    (
        "success-trigger",
        lambda d: d["events"]["stock_order_filled"].update({"trigger": "client"}),
        "/events/stock_order_filled/trigger",
    ),
    (
        "success-trigger",
        lambda d: d["events"]["stock_order_filled"].pop("trigger"),
        "/events/stock_order_filled",
    ),
    (
        "success-trigger",
        lambda d: d["events"].update({"account_deposit_succeeded_v2": {"description": "x"}}),
        "/events/account_deposit_succeeded_v2",
    ),
    ("pii-tag", lambda d: props(d)["mobile"].update({"x-pii": "encrypt"}), SUBMIT_PROPS + "/mobile/x-pii"),
    ("pii-tag", lambda d: props(d)["quantity"].update({"x-pii": "hash"}), SUBMIT_PROPS + "/quantity/x-pii"),
    (
        "pii-tag",
        lambda d: props(d).update({"contacts": {"type": "array", "x-pii": "mask"}}),
        SUBMIT_PROPS + "/contacts/x-pii",
    ),
    (
        "pii-tag",
        lambda d: d["events"]["stock_order_submit"]["properties"]["required"].append("id_card"),
        SUBMIT + "/properties/required/4",
    ),
    ("pii-tag", lambda d: d["identities"]["mobile_hash"].update({"x-pii": "drop"}), "/identities/mobile_hash/x-pii"),
    ("pii-untagged", lambda d: props(d)["mobile"].pop("x-pii"), SUBMIT_PROPS + "/mobile"),
    ("pii-untagged", lambda d: props(d).update({"bank_card_no": {"type": "string"}}), SUBMIT_PROPS + "/bank_card_no"),
    ("pii-untagged", lambda d: props(d).update({"contact_phone": {}}), SUBMIT_PROPS + "/contact_phone"),
    ("pii-untagged", lambda d: props(d).update({"id_number": {"type": "integer"}}), SUBMIT_PROPS + "/id_number"),
    (
        "pii-untagged",
        lambda d: d["user_properties"]["properties"]["real_name"].pop("x-pii"),
        "/user_properties/properties/real_name",
    ),
    (
        "pii-untagged",
        lambda d: props(d).update({"payee": {"type": "object", "properties": {"home_address": {"type": "string"}}}}),
        SUBMIT_PROPS + "/payee/properties/home_address",
    ),
    ("pii-untagged", lambda d: d["identities"].update({"mobile": {"priority": 5}}), "/identities/mobile"),
    (
        "bad-ref",
        lambda d: props(d).update({"x": {"$ref": "#/$defs/nope"}}),
        SUBMIT_PROPS + "/x/$ref",
    ),
    (
        "bad-ref",
        lambda d: d["$defs"].update({"loop": {"type": "object", "properties": {"a": {"$ref": "#/$defs/loop"}}}}),
        "/$defs/loop/properties/a/$ref",
    ),
    ("bad-regex", lambda d: d["$defs"]["stock_code"].update({"pattern": "[0-9"}), "/$defs/stock_code/pattern"),
    (
        "bad-regex",
        lambda d: d["identities"]["customer_no"].update({"pattern": "(x"}),
        "/identities/customer_no/pattern",
    ),
    (
        "bad-ignore",
        lambda d: d["events"]["account_login"].update({"x-lint-ignore": ["no-such-rule"]}),
        "/events/account_login/x-lint-ignore",
    ),
    (
        "funnel",
        lambda d: d.update({"funnels": {"buy": {"steps": [{"event": "account_login"}, {"event": "stock_nope"}]}}}),
        "/funnels/buy/steps/1/event",
    ),
    (
        "funnel",
        lambda d: d.update({"funnels": {"buy": {"steps": [{"event": "account_login"}] * 2, "identity": "device_id"}}}),
        "/funnels/buy/identity",
    ),
    (
        "funnel-annotation",
        lambda d: (
            d["events"]["account_login"].update({"x-funnel": {"name": "buy", "step": 1}}),
            d["events"]["stock_order_submit"].update({"x-funnel": {"name": "buy", "step": 3}}),
        ),
        "/events/account_login/x-funnel",
    ),
    (
        "funnel-annotation",
        lambda d: (
            d["events"]["stock_order_submit"].update({"x-funnel": {"name": "buy", "step": 1}}),
            d.update({"funnels": {"buy": {"steps": [{"event": "account_login"}, {"event": "stock_order_submit"}]}}}),
        ),
        "/events/stock_order_submit/x-funnel",
    ),
]


@pytest.mark.parametrize(
    ("rule", "change", "pointer"), FAILING, ids=[f"{r}-{i}" for i, (r, _, _) in enumerate(FAILING)]
)
def test_each_rule_reports_where_the_problem_is(rule: str, change: Change, pointer: str) -> None:
    assert (rule, pointer) in found(change)


def test_every_rule_has_a_failing_case() -> None:
    assert {rule for rule, _, _ in FAILING} == set(RULES)


# Near misses: changes that look like a rule's target but are fine.
PASSING: list[tuple[str, Change]] = [
    ("prefix-registered", lambda d: d["events"].update({"stock_margin_buy": {"description": "x"}})),
    (
        "business-line-mismatch",
        lambda d: (
            d["business_lines"].update({"stock_margin": {"owner": "m"}}),
            d["events"].update({"stock_margin_buy": {"description": "x", "business_line": "stock_margin"}}),
        ),
    ),
    ("snake-case", lambda d: props(d).update({"price2": {}, "v2_amount": {}})),
    ("name-length", lambda d: props(d).update({"y" * 100: {}})),
    (
        "preset-reserved",
        lambda d: d["common_properties"].update(
            {"properties": {"$app_version": {"type": "string"}}, "required": ["$app_version"]}
        ),
    ),
    ("case-clash", lambda d: props(d, "account_login").update({"stock_code": {"type": "string"}})),
    ("property-type-conflict", lambda d: props(d, "account_login").update({"price": {"type": "integer"}})),
    (
        "property-type-conflict",
        lambda d: props(d, "account_login").update({"price": {"type": ["number", "null"]}}),
    ),
    ("required-undefined", lambda d: props(d, "account_login").update({"x": {"$ref": "#/$defs/stock_code"}})),
    (
        "required-undefined",
        lambda d: d["events"]["account_login"]["properties"].update({"required": ["utm_source", "$lib"]}),
    ),
    ("empty-enum", lambda d: props(d)["side"].update({"enum": [1, True, "1"]})),
    ("enum-type", lambda d: props(d)["price"].update({"enum": [1, 2.5]})),
    ("enum-type", lambda d: props(d)["side"].update({"type": ["string", "null"], "enum": ["buy", None]})),
    ("missing-owner", lambda d: d["events"]["account_login"].pop("owner")),
    (
        "success-trigger",
        lambda d: d["events"].update(
            {
                "stock_order_success_page_view": {"description": "x"},
                "stock_order_confirm": {"description": "x"},
                "stock_order_pay": {"description": "x"},
            }
        ),
    ),
    ("pii-tag", lambda d: props(d)["mobile"].update({"x-pii": "drop"})),
    (
        "pii-untagged",
        lambda d: props(d).update(
            {
                "phone_model": {"type": "string"},
                "email_verified": {"type": "boolean"},
                "has_email": {"type": "boolean"},
                "ip_address": {"type": "string"},
                "hashed_mobile": {"type": "string"},
                "mobile_type": {"type": "string", "enum": ["ios", "android"]},
                "hotel": {"type": "string"},
                "payee": {
                    "type": "object",
                    "x-pii": "drop",
                    "properties": {"real_name": {"type": "string"}},
                },
            }
        ),
    ),
    ("pii-untagged", lambda d: d["identities"].update({"mobile": {"x-pii": "hash"}})),
    ("bad-ref", lambda d: props(d).update({"x": {"$ref": "#/$defs/stock_code", "maxLength": 6}})),
]


@pytest.mark.parametrize(("rule", "change"), PASSING, ids=[f"{r}-{i}" for i, (r, _) in enumerate(PASSING)])
def test_near_misses_pass(rule: str, change: Change) -> None:
    assert not {(r, p) for r, p in found(change) if r == rule}


def test_a_problem_in_a_definition_is_reported_once_where_it_is_written() -> None:
    def change(d: dict[str, Any]) -> None:
        d["$defs"]["stock_code"]["pattern"] = "[0-9"
        d["$defs"]["stock_code"]["x-pii"] = "encrypt"

    assert found(change) == {("bad-regex", "/$defs/stock_code/pattern"), ("pii-tag", "/$defs/stock_code/x-pii")}


def test_the_lint_reports_what_the_loader_would_refuse_and_more_in_one_run() -> None:
    def change(d: dict[str, Any]) -> None:
        d["events"]["fund_buy"] = {"description": "x", "owner": "funds"}
        props(d)["x"] = {"$ref": "#/$defs/nope"}
        props(d)["orderId"] = {"type": "string"}

    assert {rule for rule, _ in found(change)} == {"prefix-registered", "bad-ref", "snake-case"}


def test_type_conflicts_name_both_types_and_the_odd_place_out() -> None:
    doc = mini()
    for event in ("stock_order_filled", "account_login"):
        props(doc, event)["side"] = {"type": "boolean"}
    [finding] = [p for p in lint_document(doc) if p.code == "property-type-conflict"]
    assert finding.pointer == SUBMIT_PROPS + "/side/type"
    assert finding.message == (
        "property 'side' is string here but boolean elsewhere "
        "(/events/stock_order_filled/properties/properties/side and 1 more)"
    )


def test_common_properties_rule_over_the_majority() -> None:
    doc = mini()
    for event in ("stock_order_submit", "stock_order_filled", "account_login"):
        props(doc, event)["utm_campaign"] = {"type": "integer"}
    findings = [p for p in lint_document(doc) if p.code == "property-type-conflict"]
    assert len(findings) == 3
    assert all("number here but string in common_properties" in p.message for p in findings)


def test_case_clash_keeps_the_snake_case_spelling() -> None:
    doc = mini()
    props(doc, "account_login")["orderId"] = {"type": "string"}
    props(doc, "stock_order_filled")["order_id"] = {"type": "string"}
    [clash] = [p for p in lint_document(doc) if p.code == "case-clash"]
    assert clash.pointer == "/events/account_login/properties/properties/orderId"
    assert "'orderId' differs from 'order_id'" in clash.message


def test_rules_can_be_ignored_for_a_run_or_under_one_object() -> None:
    def change(d: dict[str, Any]) -> None:
        d["events"]["stock_video_completed"] = {"description": "x", "x-lint-ignore": ["success-trigger"]}
        d["events"]["stock_order_filled"]["trigger"] = "client"
        props(d)["nickName"] = {"type": "string", "x-lint-ignore": "snake-case"}
        props(d)["contact_phone"] = {"type": "string"}

    assert found(change) == {
        ("success-trigger", "/events/stock_order_filled/trigger"),
        ("pii-untagged", SUBMIT_PROPS + "/contact_phone"),
    }
    assert found(change, ignore=["pii-untagged", "success-trigger"]) == set()


def test_findings_carry_lines_and_columns_in_document_order() -> None:
    doc = mini()
    props(doc)["orderId"] = {"type": "string"}
    doc["events"]["account_login"]["trigger"] = "client"
    doc["events"]["account_login"].pop("description")
    text = json.dumps(doc, indent=2)
    findings = lint_document(doc, text=text, source="plan.json")
    assert [p.line for p in findings] == sorted(p.line or 0 for p in findings)
    [snake] = [p for p in findings if p.code == "snake-case"]
    lines = text.splitlines()
    assert snake.line is not None
    assert snake.column is not None
    assert lines[snake.line - 1][snake.column - 1 :].startswith('"orderId"')
    assert str(snake).startswith(f"plan.json:{snake.line}:{snake.column}: property name 'orderId'")
    assert str(snake).endswith("/properties/properties/orderId [snake-case]")


def test_lint_file_refuses_what_it_cannot_read(tmp_path: Any) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('{"maidian_plan": 1, "name": "x", "version": "1", "business_lines": {}, "events": {}}')
    with pytest.raises(PlanLoadError) as info:
        lint_file(broken)
    assert {p.code for p in info.value.problems} == {"meta-schema"}
    with pytest.raises(PlanLoadError, match="file not found"):
        lint_file(tmp_path / "missing.json")


@pytest.mark.parametrize(
    ("name", "meaning"),
    [
        ("mobile", "a phone number"),
        ("user_mobile_no", "a phone number"),
        ("id_card_number", "an identity card number"),
        ("sfzh", "an identity card number"),
        ("payee_name", "a person's name"),
        ("email_address", "an email address"),
        ("home_address", "a postal address"),
        ("date_of_birth", "a date of birth"),
        ("sms_code", "a secret"),
        ("phone_model", None),
        ("masked_card_no", None),
        ("wallet_address", None),
        ("name", None),
        ("order_no", None),
    ],
)
def test_personal_data_names(name: str, meaning: str | None) -> None:
    assert pii_meaning(name) == meaning


def test_success_words_are_outcomes_not_requests() -> None:
    assert {"filled", "succeeded", "paid", "settled", "credited", "approved"} <= SUCCESS_WORDS
    assert not {"submit", "pay", "confirm", "click", "view", "apply"} & SUCCESS_WORDS


def test_every_rule_is_documented() -> None:
    text = (ROOT / "docs" / "plan-format.md").read_text("utf-8")
    assert [rule for rule in RULES if f"| `{rule}` |" not in text] == []
