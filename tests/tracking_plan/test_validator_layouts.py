"""The compiled layouts agree: presets folded in or shared, bounds as written or as integers.

Small plans fold the preset schemas into every event's schema; large ones keep
one shared presets schema (`validator.FOLD_PRESETS_MAX_EVENTS`). Whole-number
float bounds are compiled as integers (`integral_bounds`). Every layout must
give the same verdict and the same violations for every event as the plain
one (shared presets, bounds as written), and agree with the reference
`jsonschema` on the joined schema.
"""

from __future__ import annotations

import collections
import enum
import json
import math
import sys
from typing import Any

import jsonschema
import jsonschema_rs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maidian.tracking_plan import Validator, load_plan, parse_plan
from maidian.tracking_plan import validator as validator_module
from maidian.tracking_plan.envelope import PRESET_SCHEMAS
from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
from plangen import generate_plan

EXAMPLE = load_plan(ROOT / "examples" / "securities_app.plan.json")
FOLDED = Validator(EXAMPLE)


def _plain(plan: Any, *, fold: bool = False, integral: bool = False) -> Validator:
    """A validator compiled with the presets shared unless `fold`, bounds as written unless `integral`."""
    patch = pytest.MonkeyPatch()
    if not fold:
        patch.setattr(validator_module, "FOLD_PRESETS_MAX_EVENTS", 0)
    if not integral:
        patch.setattr(validator_module, "integral_bounds", lambda schema: schema)
    try:
        return Validator(plan)
    finally:
        patch.undo()


SEPARATE = _plain(EXAMPLE, integral=True)
PLAIN = _plain(EXAMPLE)
GENERATED_DOC, GENERATED_SAMPLES = generate_plan(600, seed=5)
GENERATED_PLAN = parse_plan(json.dumps(GENERATED_DOC))
GENERATED = Validator(GENERATED_PLAN)
GENERATED_PLAIN = _plain(GENERATED_PLAN)

# Values for presets: valid ones for the built-in schemas and the plan's redeclarations, and wrong ones.
PRESET_VALUES = st.one_of(
    st.sampled_from(["8.12.0", "8.12", "wifi", "6g", "", "x" * 257, "x" * 2049, "code", "api"]),
    st.integers(-2000, 100_000_000),
    st.sampled_from([True, False, None, 1.5, [], {}]),
)


@st.composite
def preset_heavy_events(draw: st.DrawFn) -> dict[str, Any]:
    name = draw(st.sampled_from(sorted(EXAMPLE.events)))
    names = st.sampled_from(sorted(PRESET_SCHEMAS))
    presets = draw(st.dictionaries(names, PRESET_VALUES, max_size=4))
    props: dict[str, Any] = {**draw(st.sampled_from([{}, {"stock_code": "600519"}])), **presets}
    event: dict[str, Any] = {
        "type": "track",
        "event": draw(st.sampled_from([name, "stock_unplanned_thing"])),
        "event_id": "0193a5b2c3d4e5f60718293a4b5c6d7e-1",
        "time": 1_763_800_000_000,
        "identities": {"anonymous_id": "d"},
        "properties": draw(st.sampled_from([props, props, props, "not an object"])),
    }
    return event


def test_the_layouts_are_the_ones_under_test() -> None:
    assert FOLDED._folded
    assert not SEPARATE._folded
    assert not PLAIN._folded
    assert len(EXAMPLE.events) <= validator_module.FOLD_PRESETS_MAX_EVENTS
    assert not GENERATED._folded  # more events than the folding limit: shared presets, integral bounds


# Numbers around the generated plan's bounds (amounts: 0 to 1e12; counts: 0 to 1,000,000).
EDGES = st.one_of(
    st.sampled_from([0, -1, 10**12, 10**12 + 1, 10**6, 10**6 + 1, 2**53, 2**64, -(2**64), 0.0, -0.0]),
    st.sampled_from([1e12, math.nextafter(1e12, math.inf), math.nextafter(0.0, -math.inf), 1e300, -1e300]),
    st.floats(-2e12, 2e12, allow_nan=False),
    st.integers(-(2**70), 2**70),
)


@st.composite
def generated_events(draw: st.DrawFn) -> dict[str, Any]:
    name = draw(st.sampled_from(sorted(GENERATED_SAMPLES)))
    props = dict(GENERATED_SAMPLES[name])
    for key in list(props):
        if key.startswith(("amount_", "count_")) and draw(st.booleans()):
            props[key] = draw(EDGES)
    return _track(name, props)


def _track(name: str, props: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "track",
        "event": name,
        "event_id": "0193a5b2c3d4e5f60718293a4b5c6d7e-1",
        "time": 1_763_800_000_000,
        "identities": {"anonymous_id": "d"},
        "properties": props,
    }


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(generated_events())
def test_integral_bounds_give_the_same_verdicts_and_messages(event: dict[str, Any]) -> None:
    verdict = GENERATED.is_valid(event)
    assert verdict == GENERATED_PLAIN.is_valid(event)
    assert GENERATED.validate(event) == GENERATED_PLAIN.validate(event)
    schema = GENERATED.schema_for("track", event["event"])
    assert schema is not None
    assert verdict == jsonschema.Draft202012Validator(schema).is_valid(event)


def test_messages_quote_bounds_as_the_plan_writes_them() -> None:
    name, props = next((n, p) for n, p in GENERATED_SAMPLES.items() if any(k.startswith("amount_") for k in p))
    key = next(k for k in props if k.startswith("amount_"))
    (violation,) = GENERATED.validate(_track(name, {**props, key: 2e12}))
    assert violation.message == "must be <= 1000000000000.0"
    assert violation.expected == {"maximum": 1e12}


def test_integral_bounds_changes_only_bounds_and_copies_on_write() -> None:
    schema = {
        "type": "object",
        "properties": {
            "maximum": {"type": "number", "maximum": 1e12, "minimum": 0.5},
            "n": {"const": 2.0, "enum": [1.0], "exclusiveMinimum": -3.0, "exclusiveMaximum": 2.0**60},
        },
        "allOf": [{"minimum": 0.0}],
    }
    out = validator_module.integral_bounds(schema)
    assert out["properties"]["maximum"] == {"type": "number", "maximum": 10**12, "minimum": 0.5}
    assert type(out["properties"]["maximum"]["maximum"]) is int
    n = out["properties"]["n"]
    assert type(n["const"]) is float
    assert type(n["enum"][0]) is float
    assert type(n["exclusiveMinimum"]) is int
    assert type(n["exclusiveMaximum"]) is float  # past 2**53: left as written
    assert type(out["allOf"][0]["minimum"]) is int
    assert type(schema["properties"]["maximum"]["maximum"]) is float  # the input is unchanged
    unchanged = {"type": "object", "properties": {"a": {"maximum": 5}}}
    assert validator_module.integral_bounds(unchanged) is unchanged


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(preset_heavy_events())
def test_folded_and_separate_layouts_give_the_same_verdicts_and_violations(event: dict[str, Any]) -> None:
    verdict = FOLDED.is_valid(event)
    assert verdict == SEPARATE.is_valid(event) == PLAIN.is_valid(event)
    assert FOLDED.validate(event) == SEPARATE.validate(event) == PLAIN.validate(event)
    schema = FOLDED.schema_for("track", event["event"])
    if schema is not None:
        checker = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
        assert verdict == checker.is_valid(event)


def test_a_redeclared_preset_must_satisfy_both_schemas() -> None:
    """`$app_version` is narrowed by the plan (a pattern) and still bound by the built-in 256 characters."""
    with (ROOT / "examples" / "events.jsonl").open(encoding="utf-8") as f:
        base = next(e for e in map(json.loads, f) if e["event"] == "app_launch")
    good = dict(base, properties={**base["properties"], "$app_version": "8.12.0"})
    too_long = dict(base, properties={**base["properties"], "$app_version": "8.12.0." + "1" * 300})
    off_pattern = dict(base, properties={**base["properties"], "$app_version": "eight"})
    for v in (FOLDED, SEPARATE):
        assert v.validate(good) == [], v.validate(good)
        assert not v.is_valid(too_long)
        assert not v.is_valid(off_pattern)
    assert FOLDED.validate(too_long) == SEPARATE.validate(too_long)
    assert {x.rule for x in FOLDED.validate(off_pattern)} == {"pattern"}


def test_folding_leaves_the_envelope_schema_unchanged() -> None:
    track, _, _ = validator_module.build_schemas(EXAMPLE)
    envelope = next(iter(track.values()))
    before = repr(envelope)
    folded = validator_module.with_presets(envelope)
    assert repr(envelope) == before
    listed = folded["properties"]["properties"]["properties"]
    assert listed["$lib"] == PRESET_SCHEMAS["$lib"]
    assert listed["$app_version"]["allOf"][1] == PRESET_SCHEMAS["$app_version"]


def test_patterns_the_linear_engine_refuses_still_work() -> None:
    """Look-around needs the default regex engine: such a schema is compiled with it, the others are not."""
    doc, samples = generate_plan(1, seed=9)
    (name,) = samples
    props = doc["events"][name]["properties"]["properties"]
    props["ref_code"] = {"type": "string", "pattern": "^(?!000)[0-9]{3}$"}
    validator = Validator(parse_plan(json.dumps(doc)))
    good = _track(name, {**samples[name], "ref_code": "123"})
    bad = _track(name, {**samples[name], "ref_code": "000"})
    assert validator.is_valid(good)
    assert not validator.is_valid(bad)
    assert [v.rule for v in validator.validate(bad)] == ["pattern"]


# -- the property table (large plans) against the whole compiled schema ---------------------------------------------


class _Code(enum.StrEnum):
    LIB = "$lib"
    STOCK = "stock_code"


class _Sub(str):
    """A `str` subclass that is not an enum: jsonschema-rs raises on it as a key or a value."""


def _whole_schema_verdict(validator: Validator, event: dict[str, Any]) -> bool:
    """The verdict of the event's whole schema (envelope with presets joined), compiled on its own."""
    schema = validator.schema_for("track", event.get("event"))
    if schema is None:
        return False
    try:
        return bool(jsonschema_rs.validator_for(schema, validate_formats=True).is_valid(event))
    except ValueError:
        return False


def _open_plan() -> Any:
    """The example plan with unplanned properties allowed (so `propertyNames` decides) and a wider name rule."""
    doc = json.loads((ROOT / "examples" / "securities_app.plan.json").read_text(encoding="utf-8"))
    doc["settings"]["additional_properties"] = True
    return parse_plan(json.dumps(doc))


OPEN_PLAN = _open_plan()
OPEN_TABLE = _plain(OPEN_PLAN, integral=True)
OPEN_FOLDED = Validator(OPEN_PLAN)
EXAMPLE_EVENTS = [json.loads(line) for line in (ROOT / "examples" / "events.jsonl").read_text("utf-8").splitlines()]
EXAMPLE_TRACK = [e for e in EXAMPLE_EVENTS if e["type"] == "track"]

ODD_KEYS = st.sampled_from(
    ["$lib", "$unknown", "stock_code", "utm_source", "bad name", "x" * 300, "", "ok_extra", "UPPER", "$app_version"]
)
ODD_VALUES = st.one_of(
    st.sampled_from(
        [None, True, 0, -1, 1.5, math.nan, math.inf, "", "600519", "\ud800", "x" * 3000, [], {}, [1, "a"], {"a": 1}]
    ),
    st.sampled_from([{1, 2}, b"bytes", _Sub("600519"), _Code.STOCK, (1, 2), {"k": {3}}]),
    st.integers(-(2**70), 2**70),
    st.text(max_size=8),
)


@st.composite
def odd_events(draw: st.DrawFn) -> dict[str, Any]:
    """A valid example event, then some of: properties removed, replaced, added, keys of odd types."""
    event = json.loads(json.dumps(draw(st.sampled_from(EXAMPLE_TRACK))))
    props: dict[Any, Any] = event["properties"]
    for key in draw(st.lists(st.sampled_from(sorted(props)), max_size=3, unique=True)):
        if draw(st.booleans()):
            del props[key]
        else:
            props[key] = draw(ODD_VALUES)
    for _ in range(draw(st.integers(0, 2))):
        props[draw(ODD_KEYS)] = draw(ODD_VALUES)
    odd_key = draw(st.sampled_from([None, _Sub("ok_extra"), _Code.LIB, _Code.STOCK, 7, ("t",)]))
    if odd_key is not None:
        props[odd_key] = draw(st.sampled_from(["600519", "maidian-android", 1]))
    wrapper = draw(st.sampled_from([dict, collections.OrderedDict]))
    event["properties"] = wrapper(props)
    return event


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(odd_events(), st.booleans())
def test_the_property_table_agrees_with_the_whole_schema(event: dict[str, Any], open_plan: bool) -> None:
    validator = OPEN_TABLE if open_plan else SEPARATE
    assert validator._table is not None
    assert event["event"] in validator._table.rows
    verdict = validator.is_valid(event)
    violations = validator.validate(event)
    assert (violations == []) == verdict
    if any(_has_lone_surrogate(v) for v in (*event["properties"].keys(), *event["properties"].values())):
        # jsonschema-rs passes a lone surrogate where it only counts a string's length, as in
        # a property checked inside the whole schema; the table checks each value on its own,
        # where it raises. Never more lenient than the whole schema, and the reason is named.
        whole = _whole_schema_verdict(validator, event)
        assert whole or not verdict
        if whole and not verdict:
            assert any("lone surrogate" in v.message for v in violations)
        return
    assert verdict == _whole_schema_verdict(validator, event)
    folded = OPEN_FOLDED if open_plan else FOLDED
    assert violations == folded.validate(event)


def _has_lone_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, dict):
        return any(map(_has_lone_surrogate, (*value.keys(), *value.values())))
    if isinstance(value, (list, tuple, set)):
        return any(map(_has_lone_surrogate, value))
    return False


def test_the_property_table_holds_one_check_per_distinct_schema() -> None:
    table = GENERATED._table
    assert table is not None
    assert len(table.rows) == 600
    assert not table.untabled
    distinct = {id(check) for checks, _, _ in table.rows.values() for check in checks.values()}
    # Six kinds of generated property, the presets, the common properties: shared, not one per event.
    assert len(distinct) < 40
    for name, props in list(GENERATED_SAMPLES.items())[:50]:
        assert GENERATED.is_valid(_track(name, props))
        assert not GENERATED.is_valid(_track(name, {**props, "unplanned_prop": 1}))
