"""The compiled layouts agree: presets folded in or shared, bounds as written or as integers.

Small plans fold the preset schemas into every event's schema; large ones keep
one shared presets schema (`validator.FOLD_PRESETS_MAX_EVENTS`). Whole-number
float bounds are compiled as integers (`integral_bounds`). Every layout must
give the same verdict and the same violations for every event as the plain
one (shared presets, bounds as written), and agree with the reference
`jsonschema` on the joined schema.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any

import jsonschema
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
