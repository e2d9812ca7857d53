"""Funnels in the plan: declared ones load with their conditions, broken ones are refused, annotations derive."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from maidian.tracking_plan import PlanLoadError, load_plan, parse_plan
from tests.conftest import MINI_PLAN, ROOT

MINI: dict[str, Any] = json.loads(MINI_PLAN.read_text())


def with_funnel(spec: dict[str, Any]) -> str:
    doc = copy.deepcopy(MINI)
    doc["funnels"] = {"buy": spec}
    return json.dumps(doc)


def test_a_declared_funnel_loads_with_its_conditions_window_and_identity() -> None:
    plan = parse_plan(
        with_funnel(
            {
                "steps": [{"event": "account_login"}, {"event": "stock_order_submit", "where": {"side": ["buy"]}}],
                "window_days": 1.5,
                "identity": "anonymous_id",
                "success": False,
            }
        )
    )
    funnel = plan.funnels["buy"]
    assert [s.event for s in funnel.steps] == ["account_login", "stock_order_submit"]
    assert funnel.steps[1].where == {"side": ["buy"]}
    assert funnel.window_s == 129_600
    assert funnel.identity == "anonymous_id"
    assert funnel.success is False


@pytest.mark.parametrize(
    ("step", "pointer"),
    [
        ({"event": "stock_nope"}, "/funnels/buy/steps/1"),
        ({"event": "stock_order_submit", "where": {"colour": "red"}}, "/funnels/buy/steps/1/where/colour"),
        ({"event": "stock_order_submit", "where": {"side": "short"}}, "/funnels/buy/steps/1/where/side"),
        ({"event": "stock_order_submit", "where": {"price": "cheap"}}, "/funnels/buy/steps/1/where/price"),
    ],
)
def test_a_broken_step_is_refused_with_a_pointer(step: dict[str, Any], pointer: str) -> None:
    with pytest.raises(PlanLoadError) as info:
        parse_plan(with_funnel({"steps": [{"event": "account_login"}, step]}))
    assert [p.pointer for p in info.value.problems] == [pointer]


def test_an_unknown_identity_and_a_one_step_funnel_are_refused() -> None:
    with pytest.raises(PlanLoadError) as info:
        parse_plan(with_funnel({"steps": [{"event": "account_login"}, {"event": "account_login"}], "identity": "x"}))
    assert [p.pointer for p in info.value.problems] == ["/funnels/buy/identity"]
    with pytest.raises(PlanLoadError):
        parse_plan(with_funnel({"steps": [{"event": "account_login"}]}))


def test_annotations_derive_a_funnel_the_plan_does_not_declare() -> None:
    doc = copy.deepcopy(MINI)
    doc["events"]["stock_order_submit"]["x-funnel"] = {"name": "trade", "step": 2}
    doc["events"]["account_login"]["x-funnel"] = {"name": "trade", "step": 1}
    funnel = parse_plan(json.dumps(doc)).funnels["trade"]
    assert [s.event for s in funnel.steps] == ["account_login", "stock_order_submit"]
    assert funnel.window_s == 7 * 86_400


def test_the_example_plan_declares_the_account_opening_funnel_its_annotations_describe() -> None:
    plan = load_plan(ROOT / "examples" / "securities_app.plan.json")
    funnel = plan.funnels["account_open"]
    assert len(funnel.steps) == 12
    annotated = sorted(
        (spec["x-funnel"]["step"], name)
        for name, spec in plan.document["events"].items()
        if spec.get("x-funnel", {}).get("name") == "account_open"
    )
    assert [s.event for s in funnel.steps] == [name for _step, name in annotated]
