"""The loader reports every problem with its file, line, column and JSON pointer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from maidian.tracking_plan import PlanLoadError, load_plan, parse_plan
from maidian.tracking_plan.errors import PlanProblem
from tests.conftest import MINI_PLAN


def mini() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(MINI_PLAN.read_text())
    return doc


def problems_of(doc_or_text: dict[str, Any] | str) -> tuple[PlanProblem, ...]:
    text = doc_or_text if isinstance(doc_or_text, str) else json.dumps(doc_or_text, indent=2)
    with pytest.raises(PlanLoadError) as info:
        parse_plan(text, "plan.json")
    return info.value.problems


def test_the_mini_plan_loads_with_refs_resolved() -> None:
    plan = load_plan(MINI_PLAN)
    assert plan.version == "1.0.0"
    submit = plan.events["stock_order_submit"]
    assert submit.business_line == "stock"
    assert submit.properties["stock_code"]["pattern"] == "^[0-9]{6}$"
    assert "$ref" not in json.dumps(submit.schema)
    assert plan.identities["login_id"].unique
    assert plan.identities["customer_no"].pattern == "^[0-9]{10}$"
    assert plan.events["stock_order_filled"].trigger == "server"
    assert plan.pii_paths("stock_order_submit") == {("mobile",): "mask", ("id_card",): "drop"}
    assert plan.identity_pii() == {"mobile_hash": "hash"}


def test_bad_json_reports_line_and_column() -> None:
    [p] = problems_of('{\n  "maidian_plan": 1,\n  "name": "x",,\n}')
    assert (p.line, p.column, p.code) == (3, 15, "json")
    assert "invalid JSON" in p.message
    assert str(p).startswith("plan.json:3:15: invalid JSON")


def test_duplicate_keys_are_reported_where_they_are() -> None:
    text = MINI_PLAN.read_text().replace('"account_login": {', '"account_login": {"owner": "a",', 1)
    [p] = problems_of(text)
    assert p.code == "duplicate-key"
    assert p.pointer == "/events/account_login/owner"
    assert p.line == text[: text.index('"owner": "a"')].count("\n") + 1


def test_meta_schema_violations_name_the_pointer_and_what_was_expected() -> None:
    doc = mini()
    doc["maidian_plan"] = 2
    doc["version"] = "1.0"
    doc["events"]["stock_order_submit"]["trigger"] = "backend"
    doc["events"]["stock_order_submit"]["properties"]["properties"]["side"]["maxlen"] = 3
    doc["events"]["account_login"]["properties"]["properties"]["method"]["type"] = "str"
    found = {p.pointer: p for p in problems_of(doc)}
    assert found["/maidian_plan"].message == "expected 1"
    assert "does not match" in found["/version"].message
    assert found["/events/stock_order_submit/trigger"].message == 'expected one of "client", "server"'
    assert found["/events/stock_order_submit/properties/properties/side"].message == "unknown key 'maxlen'"
    assert "JSON Schema type" in found["/events/account_login/properties/properties/method/type"].message
    assert all(p.line is not None and p.code == "meta-schema" for p in found.values())


def test_missing_required_keys() -> None:
    [p] = problems_of({"maidian_plan": 1, "name": "x", "version": "1.0.0", "business_lines": {"a": {}}})
    assert p.message == "missing required key 'events'"


@pytest.mark.parametrize(
    ("change", "code", "pointer"),
    [
        (lambda d: d["events"].update({"fund_buy": {"description": "x"}}), "unknown-prefix", "/events/fund_buy"),
        (
            lambda d: d["events"]["account_login"].update({"business_line": "stock"}),
            "business-line-mismatch",
            "/events/account_login/business_line",
        ),
        (
            lambda d: d["events"]["account_login"]["properties"]["properties"].update({"x": {"pattern": "(["}}),
            "bad-regex",
            "/events/account_login/properties/properties/x/pattern",
        ),
        (
            lambda d: d["events"]["account_login"]["properties"]["properties"].update({"x": {"$ref": "#/$defs/nope"}}),
            "bad-ref",
            "/events/account_login/properties/properties/x/$ref",
        ),
        (
            lambda d: d["$defs"].update({"loop": {"type": "object", "properties": {"a": {"$ref": "#/$defs/loop"}}}}),
            "bad-ref",
            "/$defs/loop/properties/a/$ref",
        ),
        (
            lambda d: d["user_properties"]["properties"]["real_name"].update({"x-pii": "encrypt"}),
            "pii-tag",
            "/user_properties/properties/real_name/x-pii",
        ),
        (
            lambda d: d["identities"]["customer_no"].update({"pattern": "[0-9"}),
            "bad-regex",
            "/identities/customer_no/pattern",
        ),
        (
            lambda d: d["identities"]["customer_no"].update({"x-pii": "drop"}),
            "pii-tag",
            "/identities/customer_no/x-pii",
        ),
    ],
)
def test_semantic_problems(change: Any, code: str, pointer: str) -> None:
    doc = mini()
    change(doc)
    found = problems_of(doc)
    assert [(p.code, p.pointer) for p in found] == [(code, pointer)]
    assert found[0].line is not None


def test_every_problem_is_reported_not_only_the_first() -> None:
    doc = mini()
    doc["events"]["fund_buy"] = {}
    doc["events"]["p2p_invest"] = {}
    doc["events"]["account_login"]["properties"]["properties"]["x"] = {"pattern": "(["}
    codes = sorted(p.code for p in problems_of(doc))
    assert codes == ["bad-regex", "unknown-prefix", "unknown-prefix"]


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(PlanLoadError, match="file not found"):
        load_plan(tmp_path / "missing.json")
    latin = tmp_path / "latin1.json"
    latin.write_bytes('{"name": "Société"}'.encode("latin-1"))
    with pytest.raises(PlanLoadError, match=r"not UTF-8 text \(byte 14\)"):
        load_plan(latin)
    with pytest.raises(PlanLoadError, match="must be a JSON object"):
        parse_plan("[1, 2]")


def test_longest_prefix_wins() -> None:
    doc = mini()
    doc["business_lines"]["stock_margin"] = {"description": "margin trading"}
    doc["events"]["stock_margin_buy"] = {"description": "x"}
    plan = parse_plan(json.dumps(doc))
    assert plan.events["stock_margin_buy"].business_line == "stock_margin"
    assert plan.events["stock_order_submit"].business_line == "stock"
    assert plan.business_line_of("stock_margin_buy") == "stock_margin"
    assert plan.business_line_of("nothing_here") is None


def test_ref_siblings_override_the_definition() -> None:
    doc = mini()
    props = doc["events"]["account_login"]["properties"]["properties"]
    props["code"] = {"$ref": "#/$defs/stock_code", "description": "own words", "x-pii": "hash"}
    plan = parse_plan(json.dumps(doc))
    code = plan.events["account_login"].properties["code"]
    assert code == {"type": "string", "pattern": "^[0-9]{6}$", "description": "own words", "x-pii": "hash"}
