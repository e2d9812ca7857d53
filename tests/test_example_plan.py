"""The example plan (examples/securities_app.plan.json) and its example events.

The example plan is the default plan of the quickstart, the QA tools and the SDK
and collector tests, so these tests hold it to what it promises: its size and
business lines, the 12-step opening funnel, server-side success events, the
identity and PII design, the naming rules the plan linter enforces, and that
the example events are valid (and the invalid ones invalid for the intended
reason). The last tests generate events from every event's own schema and check
that the compiled validators, in both stages, agree with the reference
`jsonschema` package on them.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime, timedelta, timezone
from functools import cache
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maidian.collector.cli import main
from maidian.tracking_plan import Validator, load_plan
from maidian.tracking_plan.envelope import EVENT_NAME_RE, PRESET_SCHEMAS, PROPERTY_NAME_RE
from maidian.tracking_plan.pii import PII_TAGS, apply_pii, hash_value
from tests.conftest import ROOT

EXAMPLES = ROOT / "examples"
PLAN_PATH = EXAMPLES / "securities_app.plan.json"
EVENTS_PATH = EXAMPLES / "events.jsonl"
INVALID_PATH = EXAMPLES / "events_invalid.jsonl"

PLAN = load_plan(PLAN_PATH)
DOC = PLAN.document
WIRE = Validator(PLAN)
SOURCE = Validator(PLAN, stage="source")

# The key the example events were hashed with (maidian.tracking_plan.pii.hash_value).
EXAMPLE_PII_KEY = b"maidian-example-key"

# Names that end like these report a completed movement of money, positions or
# account state; only a signed server source may send them.
SUCCESS_SUFFIX = re.compile(
    r"_(succeeded|success|filled|completed|confirmed|credited|approved|activated|settled|paid|executed|redeemed)$"
)
# Property names that carry personal data and so must carry a PII tag.
SENSITIVE_NAME = re.compile(
    r"(^|_)(mobile|phone|id_card|idcard|id_number|id_no|bank_card|card_no|real_name|full_name|email|address|passport)(_|$)"
)


def read_jsonl(path: Any) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


EVENTS = read_jsonl(EVENTS_PATH)
INVALID = read_jsonl(INVALID_PATH)


def object_schemas() -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every top-level property set of the plan: events, common and user properties (refs resolved)."""
    for name, spec in PLAN.events.items():
        yield f"events/{name}", spec.schema
    yield "common_properties", PLAN.common_properties
    yield "user_properties", PLAN.user_properties


def walk(schema: Mapping[str, Any], where: str) -> Iterator[tuple[str, str, Mapping[str, Any], Mapping[str, Any]]]:
    """(where, property name, its schema, the object schema holding it), nested objects and array items included."""
    for name, sub in schema.get("properties", {}).items():
        yield where, name, sub, schema
        yield from walk(sub, f"{where}/{name}")
        items = sub.get("items")
        if isinstance(items, Mapping):
            yield from walk(items, f"{where}/{name}/*")


def all_properties() -> list[tuple[str, str, Mapping[str, Any], Mapping[str, Any]]]:
    return [p for where, schema in object_schemas() for p in walk(schema, where)]


# -- size and coverage ------------------------------------------------------------


def test_the_plan_is_large_enough_and_spread_over_business_lines() -> None:
    per_line: dict[str, int] = defaultdict(int)
    for spec in PLAN.events.values():
        per_line[spec.business_line] += 1
    assert len(PLAN.events) >= 120
    assert len(per_line) >= 7
    assert set(per_line) == set(PLAN.business_lines), "every business line has events"
    assert min(per_line.values()) >= 4
    assert PLAN.version == "1.0.0"
    assert PLAN.name
    assert PLAN.description


@pytest.mark.parametrize(
    "name",
    [
        "user_register_submit",
        "user_login_submit",
        "user_login_succeeded",
        "bank_card_bind_submit",
        "bank_deposit_submit",
        "bank_deposit_succeeded",
        "bank_deposit_failed",
        "bank_withdrawal_submit",
        "bank_withdrawal_succeeded",
        "bank_withdrawal_failed",
        "stock_quote_view",
        "stock_order_submit",
        "stock_order_cancel_submit",
        "stock_order_filled",
        "stock_order_rejected",
        "forex_order_submit",
        "forex_order_filled",
        "copy_follow_submit",
        "copy_order_filled",
        "p2p_invest_submit",
        "p2p_repayment_credited",
        "p2p_coupon_claim_click",
        "p2p_coupon_redeemed",
        "fund_subscribe_submit",
        "fund_redeem_submit",
        "fund_sip_plan_submit",
        "news_article_view",
        "community_post_submit",
        "community_comment_submit",
        "community_like_click",
        "community_share_click",
        "push_received",
        "push_opened",
        "marketing_banner_click",
        "marketing_campaign_landing_view",
        "marketing_coupon_issued",
    ],
)
def test_the_business_flows_of_a_broker_are_planned(name: str) -> None:
    assert name in PLAN.events


# -- the account-opening funnel ---------------------------------------------------


def funnel_steps() -> list[tuple[int, str]]:
    steps = [
        (spec["x-funnel"]["step"], name)
        for name, spec in DOC["events"].items()
        if spec.get("x-funnel", {}).get("name") == "account_open"
    ]
    return sorted(steps)


def test_the_opening_funnel_has_twelve_steps_declared_in_order() -> None:
    steps = funnel_steps()
    assert [n for n, _ in steps] == list(range(1, 13))
    declared = [name for name in DOC["events"] if name in {e for _, e in steps}]
    assert declared == [e for _, e in steps], "the plan lists the steps in funnel order"
    for number, name in steps:
        spec = PLAN.events[name]
        assert spec.business_line == "account"
        assert spec.properties["open_step"]["const"] == number
        assert {"open_step", "application_id"} <= set(spec.required)
    assert steps[0][1] == "account_open_start"
    assert [PLAN.events[e].trigger for _, e in steps[-2:]] == ["server", "server"]
    assert steps[-1][1] == "account_activated"


def test_the_example_applicant_walks_the_funnel_in_order() -> None:
    applicant = [e for e in EVENTS if e["type"] == "track" and "open_step" in e["properties"]]
    assert len({e["properties"]["application_id"] for e in applicant}) == 1
    applicant.sort(key=lambda e: e["time"])
    assert [e["properties"]["open_step"] for e in applicant] == list(range(1, 13))
    assert [e["event"] for e in applicant] == [name for _, name in funnel_steps()]


# -- triggers, names and the rules the plan linter enforces --------------------------


def test_success_events_come_from_the_server() -> None:
    success = [name for name in PLAN.events if SUCCESS_SUFFIX.search(name)]
    assert len(success) >= 25
    assert [n for n in success if PLAN.events[n].trigger != "server"] == []
    assert PLAN.events["stock_order_filled"].trigger == "server"
    client_attempts = [n for n in PLAN.events if n.endswith(("_submit", "_click", "_view"))]
    assert [n for n in client_attempts if PLAN.events[n].trigger != "client"] == []


def test_every_event_is_documented() -> None:
    for name, spec in DOC["events"].items():
        for key in ("description", "owner", "trigger", "fires_when"):
            assert isinstance(spec.get(key), str), f"{name} has no {key}"
            assert len(spec[key]) >= 10 or key in ("trigger", "owner"), f"{name}: {key} is too short"
        assert len(name) <= 100
        assert EVENT_NAME_RE.match(name), name


def normalized(name: str) -> str:
    return name.replace("_", "").lower()


def test_names_are_snake_case_and_never_clash() -> None:
    for group in ("business_lines", "identities", "$defs"):
        for key in DOC[group]:
            assert PROPERTY_NAME_RE.match(key), f"{group}/{key}"
    events = [normalized(n) for n in PLAN.events]
    assert len(events) == len(set(events))
    names: dict[str, set[str]] = defaultdict(set)
    for where, name, _, _ in all_properties():
        if name.startswith("$"):
            assert where == "common_properties", f"{where}/{name}: $ names only for presets in common properties"
            assert name in PRESET_SCHEMAS, name
            continue
        assert PROPERTY_NAME_RE.match(name), f"{where}/{name}"
        assert len(name) <= 100, f"{where}/{name}"
        names[normalized(name)].add(name)
    assert {k: v for k, v in names.items() if len(v) > 1} == {}


def signature(schema: Mapping[str, Any]) -> Any:
    kind = schema.get("type")
    if kind == "array":
        return ("array", signature(schema.get("items", {})))
    return kind if isinstance(kind, str) else tuple(kind or ())


def test_a_property_name_has_one_type_everywhere() -> None:
    seen: dict[str, set[Any]] = defaultdict(set)
    for _, name, schema, _ in all_properties():
        seen[name].add(signature(schema))
    assert {n: s for n, s in seen.items() if len(s) > 1} == {}
    assert seen["amount"] == {"number"}
    assert all(None not in s and () not in s for s in seen.values()), "every property states its type"


def test_required_names_are_defined_and_enums_are_not_empty() -> None:
    def objects(schema: Mapping[str, Any], where: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
        yield where, schema
        for name, sub in schema.get("properties", {}).items():
            yield from objects(sub, f"{where}/{name}")
            if isinstance(sub.get("items"), Mapping):
                yield from objects(sub["items"], f"{where}/{name}/*")

    for top, schema in object_schemas():
        for where, obj in objects(schema, top):
            missing = set(obj.get("required", ())) - set(obj.get("properties", {}))
            assert not missing, f"{where} requires undefined {missing}"
            if "enum" in obj:
                assert obj["enum"], f"{where} has an empty enum"
                assert len(set(map(json.dumps, obj["enum"]))) == len(obj["enum"]), f"{where} repeats an enum value"


def test_pii_tags_are_well_placed_and_sensitive_names_are_tagged() -> None:
    tagged = 0
    for where, name, schema, parent in all_properties():
        tag = schema.get("x-pii")
        if tag is None:
            assert not SENSITIVE_NAME.search(name), f"{where}/{name} carries personal data but has no x-pii tag"
            continue
        tagged += 1
        assert tag in PII_TAGS
        if tag in ("hash", "mask"):
            assert schema.get("type") == "string", f"{where}/{name}: {tag} only on strings"
        if tag == "drop":
            assert name not in parent.get("required", ()), f"{where}/{name}: a dropped property cannot be required"
    assert tagged >= 15
    assert PLAN.events["account_open_id_ocr_completed"].properties["id_card_no"]["x-pii"] == "drop"
    assert PLAN.events["bank_deposit_submit"].properties["bank_card_no"]["x-pii"] == "mask"
    assert PLAN.events["user_register_submit"].properties["mobile"]["x-pii"] == "hash"
    assert PLAN.user_properties["properties"]["real_name"]["x-pii"] == "mask"


# -- identities, common and user properties -----------------------------------------


def test_identity_types_and_their_priorities() -> None:
    ids = PLAN.identities
    assert {"anonymous_id", "login_id", "customer_no", "fund_account", "mobile_hash"} <= set(ids)
    assert ids["mobile_hash"].pii == "hash"
    assert ids["customer_no"].pattern == "^[0-9]{10}$"
    assert all(t.unique for n, t in ids.items() if n != "anonymous_id")
    assert min(ids, key=lambda n: ids[n].priority) == "customer_no", "support staff see the customer number first"
    assert max(ids, key=lambda n: ids[n].priority) == "anonymous_id"
    assert len({t.priority for t in ids.values()}) == len(ids), "no two identity types tie"


def test_login_id_can_never_be_a_raw_mobile_number() -> None:
    event = {
        "type": "track",
        "event": "app_launch",
        "event_id": "e-1",
        "time": 1_763_900_000_000,
        "identities": {"login_id": "13912345678"},
        "properties": {"launch_type": "cold", "launch_source": "icon", "is_first_launch": False},
    }
    assert [v.rule for v in WIRE.validate(event)] == ["invalid_identity"]
    event["identities"] = {"login_id": "U2025112300871"}
    assert WIRE.validate(event) == []


def test_common_properties_hold_presets_and_utm() -> None:
    common = PLAN.common_properties["properties"]
    assert {"utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content"} <= set(common)
    presets = {n for n in common if n.startswith("$")}
    assert "$app_version" in presets
    assert presets <= set(PRESET_SCHEMAS)
    assert "pattern" in common["$app_version"]
    assert not PLAN.common_properties.get("required"), "server-side events carry no app version or utm"


def test_user_properties_describe_a_broker_customer() -> None:
    users = PLAN.user_properties["properties"]
    assert users["risk_level"]["enum"] == ["C1", "C2", "C3", "C4", "C5"]
    assert {"investor_type", "account_status", "asset_tier", "city", "registration_channel"} <= set(users)
    assert users["tags"]["type"] == "array"
    assert {n for n, s in users.items() if s.get("type") == "integer"} >= {"trade_count", "login_count"}


# -- the example events ----------------------------------------------------------------


def test_the_command_line_accepts_the_example_events(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "validate", str(PLAN_PATH), str(EVENTS_PATH), "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == f"{len(EVENTS)} events: {len(EVENTS)} valid, 0 invalid"


@pytest.mark.parametrize("event", EVENTS, ids=[f"{i + 1}-{e.get('event', e['type'])}" for i, e in enumerate(EVENTS)])
def test_every_example_event_is_valid_on_the_wire(event: dict[str, Any]) -> None:
    assert WIRE.validate(event) == []


def test_the_examples_cover_sessions_server_fills_and_profiles() -> None:
    assert 20 <= len(EVENTS) <= 40
    assert len({e["event_id"] for e in EVENTS}) == len(EVENTS)
    server = [e for e in EVENTS if e["type"] == "track" and PLAN.events[e["event"]].trigger == "server"]
    assert "stock_order_filled" in {e["event"] for e in server}
    assert all(e["properties"].get("$server") is True for e in server)
    assert {"profile_set", "profile_set_once", "profile_increment"} <= {e["type"] for e in EVENTS}
    assert any(list(e["identities"]) == ["anonymous_id"] for e in EVENTS), "an anonymous visitor"
    assert any("贵州茅台" in json.dumps(e, ensure_ascii=False) for e in EVENTS)


def test_the_hashed_mobile_joins_the_identity() -> None:
    expected = hash_value("13912345678", EXAMPLE_PII_KEY)
    submitted = next(e for e in EVENTS if e.get("event") == "user_register_submit")
    registered = next(e for e in EVENTS if e.get("event") == "user_register_completed")
    assert submitted["properties"]["mobile"] == expected
    assert registered["identities"]["mobile_hash"] == expected


# One row per line of events_invalid.jsonl: the violation each is meant to show.
INVALID_EXPECTED = [
    ("unknown_event", "/event"),
    ("enum", "/properties/side"),
    ("pattern", "/properties/stock_code"),
    ("required", "/properties/currency"),
    ("type", "/properties/amount"),
    ("pii", "/properties/mobile"),
    ("pii", "/properties/id_card_no"),
    ("pii", "/properties/real_name"),
    ("unknown_identity", "/identities/imei"),
    ("invalid_identity", "/identities/customer_no"),
    ("additional_property", "/properties/stockCode"),
    ("range", "/properties/quantity"),
]


def test_the_invalid_examples_are_one_per_rule_row() -> None:
    assert 8 <= len(INVALID) <= 12
    assert len(INVALID) == len(INVALID_EXPECTED)


@pytest.mark.parametrize(
    ("event", "expected"), list(zip(INVALID, INVALID_EXPECTED, strict=True)), ids=[e["event_id"] for e in INVALID]
)
def test_every_invalid_example_breaks_exactly_the_intended_rule(
    event: dict[str, Any], expected: tuple[str, str]
) -> None:
    assert [(v.rule, v.path) for v in WIRE.validate(event)] == [expected]
    assert not WIRE.is_valid(event)


# -- compiling: generated events agree with the reference validator ------------------------

CST = timezone(timedelta(hours=8))
TEXT = st.characters(blacklist_categories=("Cs",), blacklist_characters="\n")
EMAILS = st.sampled_from(["wangxm@example.com", "li.hua+ipo@broker.example", "a@b.cn"])


def values(schema: Mapping[str, Any]) -> st.SearchStrategy[Any]:
    """Values that satisfy one property schema of the plan (its source-stage form)."""
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema["type"]
    if kind == "string":
        return strings(schema)
    if kind in ("integer", "number"):
        return numbers(schema, kind)
    if kind == "boolean":
        return st.booleans()
    if kind == "array":
        return st.lists(
            values(schema["items"]),
            min_size=schema.get("minItems", 0),
            max_size=min(schema.get("maxItems", 3), 3),
            unique_by=json.dumps if schema.get("uniqueItems") else None,
        )
    raise AssertionError(f"no strategy for {schema}")


def strings(schema: Mapping[str, Any]) -> st.SearchStrategy[str]:
    fmt = schema.get("format")
    if fmt == "date":
        return st.dates(date(2000, 1, 1), date(2099, 12, 31)).map(date.isoformat)
    if fmt == "date-time":
        moments = st.datetimes(datetime(2000, 1, 1), datetime(2099, 1, 1), timezones=st.just(CST))
        return moments.map(lambda d: d.isoformat(timespec="seconds"))
    if fmt == "uuid":
        return st.uuids().map(str)
    if fmt == "email":
        return EMAILS
    low, high = schema.get("minLength", 0), schema.get("maxLength", 24)
    if "pattern" in schema:
        regex = st.from_regex(schema["pattern"].replace("$", r"\Z"))
        return regex.filter(lambda s: low <= len(s) <= high)
    return st.text(TEXT, min_size=max(low, 0), max_size=min(high, 24))


def numbers(schema: Mapping[str, Any], kind: str) -> st.SearchStrategy[Any]:
    low = schema.get("minimum", -1e12)
    high = schema.get("maximum", 1e12)
    exclusive = "exclusiveMinimum" in schema and schema["exclusiveMinimum"] >= low
    if exclusive:
        low = schema["exclusiveMinimum"]
    step = schema.get("multipleOf")
    if kind == "integer" or step is not None:
        unit = step or 1
        first = math.floor(low / unit) + 1 if exclusive else math.ceil(low / unit)
        return st.integers(first, math.floor(high / unit)).map(lambda k: int(k * unit))
    return st.floats(low, high, exclude_min=exclusive, allow_nan=False, allow_infinity=False)


@st.composite
def source_events(draw: st.DrawFn, name: str) -> dict[str, Any]:
    """A track event of type `name` with every required and some optional properties, before PII tags apply."""
    spec = PLAN.events[name]
    required = set(spec.required)
    props = draw(
        st.fixed_dictionaries(
            {k: values(s) for k, s in spec.properties.items() if k in required},
            optional={k: values(s) for k, s in spec.properties.items() if k not in required},
        )
    )
    return {
        "type": "track",
        "event": name,
        "event_id": "0193a5b2c3d4e5f60718293a4b5c6d7e-1",
        "time": int(datetime(2025, 11, 24, tzinfo=UTC).timestamp() * 1000),
        "identities": {"anonymous_id": "5c0f7a2e-93d1-4b8e-a6f4-1e2d3c4b5a69"},
        "properties": props,
    }


@cache
def reference(stage: str, name: str) -> jsonschema.protocols.Validator:
    validator = WIRE if stage == "wire" else SOURCE
    schema = validator.schema_for("track", name)
    assert schema is not None
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def test_every_event_compiles_in_both_stages() -> None:
    for name in PLAN.events:
        for validator in (WIRE, SOURCE):
            assert validator.schema_for("track", name) is not None
    assert WIRE.schema_for("track", "stock_order_teleport") is None


def leaks(tag: str, value: Any) -> bool:
    """Whether an untransformed value would be personal data on the wire (not already in its transformed form)."""
    if tag == "hash":
        return not (isinstance(value, str) and re.fullmatch("[0-9a-f]{64}", value))
    if tag == "mask":
        return not (isinstance(value, str) and (value == "" or "*" in value))
    return True


# Every event type, a few generated events each: about 1,500 events in all.
@pytest.mark.parametrize("name", sorted(PLAN.events))
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(data=st.data())
def test_generated_events_pass_both_stages_and_agree_with_the_reference(name: str, data: st.DataObject) -> None:
    event = data.draw(source_events(name))
    assert SOURCE.validate(event) == []
    assert reference("source", name).is_valid(event)
    wire = {**event, "properties": apply_pii(event["properties"], PLAN.pii_paths(name), EXAMPLE_PII_KEY)}
    assert WIRE.validate(wire) == []
    assert reference("wire", name).is_valid(wire)
    if any(
        leaks(tag, event["properties"][path[0]])
        for path, tag in PLAN.pii_paths(name).items()
        if path[0] in event["properties"]
    ):
        assert not WIRE.is_valid(event), "untransformed personal data must not pass the wire stage"
        assert not reference("wire", name).is_valid(event)
    for missing in PLAN.events[name].required:
        partial = {**wire, "properties": {k: v for k, v in wire["properties"].items() if k != missing}}
        assert [(v.rule, v.path) for v in WIRE.validate(partial)] == [("required", f"/properties/{missing}")]
        assert not reference("wire", name).is_valid(partial)
