"""The two compiled layouts (presets folded into each event's schema, or one shared presets schema) agree.

Small plans fold the preset schemas into every event's schema; large ones keep
one shared presets schema (`validator.FOLD_PRESETS_MAX_EVENTS`). Both must give
the same verdict and the same violations for every event, and agree with the
reference `jsonschema` on the joined schema.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from maidian.tracking_plan import Validator, load_plan
from maidian.tracking_plan import validator as validator_module
from maidian.tracking_plan.envelope import PRESET_SCHEMAS

from tests.conftest import ROOT

EXAMPLE = load_plan(ROOT / "examples" / "securities_app.plan.json")
FOLDED = Validator(EXAMPLE)


def _separate() -> Validator:
    patch = pytest.MonkeyPatch()
    patch.setattr(validator_module, "FOLD_PRESETS_MAX_EVENTS", 0)
    try:
        return Validator(EXAMPLE)
    finally:
        patch.undo()


SEPARATE = _separate()

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
    assert len(EXAMPLE.events) <= validator_module.FOLD_PRESETS_MAX_EVENTS


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(preset_heavy_events())
def test_folded_and_separate_layouts_give_the_same_verdicts_and_violations(event: dict[str, Any]) -> None:
    verdict = FOLDED.is_valid(event)
    assert verdict == SEPARATE.is_valid(event)
    assert FOLDED.validate(event) == SEPARATE.validate(event)
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
