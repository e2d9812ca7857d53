"""Hypothesis: the compiled validator and the reference `jsonschema` package agree on every verdict."""

from __future__ import annotations

import json
import sys
from typing import Any

import jsonschema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maidian.tracking_plan import Validator, load_plan, parse_plan
from tests.conftest import MINI_PLAN, ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
from plangen import generate_plan

MINI = Validator(load_plan(MINI_PLAN))
GENERATED_DOC, GENERATED_SAMPLES = generate_plan(40, seed=3)
GENERATED = Validator(parse_plan(json.dumps(GENERATED_DOC)))

# ECMA-262 and Rust regexes let `$` match only at the very end; Python's `re`,
# which the reference uses, also matches before a final newline. Newlines and
# lone surrogates are left out of generated text so that difference stays out.
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n"), max_size=12)
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**53), 2**53), st.floats(allow_nan=False, allow_infinity=False), TEXT
)
JSONISH = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3), max_leaves=6
)


def valid_value(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values that satisfy a property schema (as far as this subset goes)."""
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "string":
        if "pattern" in schema:
            return st.from_regex(schema["pattern"].replace("$", r"\Z"), alphabet="0123456789abc")
        return st.text(
            st.characters(blacklist_categories=("Cs",), blacklist_characters="\n"),
            max_size=min(schema.get("maxLength", 12), 12),
        )
    if kind == "integer":
        low = schema.get("minimum", -(10**6))
        step = schema.get("multipleOf", 1)
        return st.integers(max(low, -(10**6)) // step + 1, min(schema.get("maximum", 10**6), 10**6) // step).map(
            lambda k: k * step
        )
    if kind == "number":
        low = max(schema.get("minimum", -1e6), schema.get("exclusiveMinimum", -1e6) + 0.5)
        return st.floats(low, min(schema.get("maximum", 1e6), 1e6), allow_nan=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "array":
        return st.lists(TEXT, max_size=3)
    return JSONISH


def value_for(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values that satisfy the schema nineteen times in twenty, anything at all otherwise."""
    return st.integers(0, 19).flatmap(lambda k: JSONISH if k == 0 else valid_value(schema))


MUTATIONS = [
    lambda e, d: e.update(event_id=d(st.sampled_from(["", "x" * 129, 7]))),
    lambda e, d: e.update(time=d(st.sampled_from([-1, 1.5, "now", 2**70]))),
    lambda e, d: e.update(type=d(st.sampled_from(["profile_set", "bind", "nope", None]))),
    lambda e, d: e.update(
        identities=d(st.sampled_from([{}, {"login_id": ""}, {"anonymous_id": "d", "qq": "1"}, {"customer_no": "123"}]))
    ),
    lambda e, d: e.pop(d(st.sampled_from(sorted(e)))),
    lambda e, d: e.setdefault("properties", {}).update(
        {d(st.sampled_from(["$lib", "$os", "utm_source", "Extra", "$x", "extra_one"])): d(SCALARS)}
    ),
    lambda e, d: e["properties"].pop(d(st.sampled_from(sorted(e["properties"])))) if e.get("properties") else None,
    lambda e, d: e.update(event="stock_unplanned_event"),
]


@st.composite
def events(draw: st.DrawFn, validator: Validator) -> dict[str, Any]:
    """A valid event for a random planned event type, with zero to two mutations."""
    plan = validator.plan
    spec = plan.events[draw(st.sampled_from(sorted(plan.events)))]
    props = {
        name: draw(value_for(schema))
        for name, schema in spec.properties.items()
        if name in spec.required or draw(st.booleans())
    }
    event: dict[str, Any] = {
        "type": "track",
        "event": spec.name,
        "event_id": "0193a5b2c3d4e5f60718293a4b5c6d7e-1",
        "time": 1_763_800_000_000,
        "identities": draw(
            st.sampled_from(
                [{"anonymous_id": "d"}, {"login_id": "u", "anonymous_id": "d"}, {"customer_no": "0012345678"}]
            )
        ),
        "properties": props,
    }
    for _ in range(draw(st.sampled_from([0, 0, 1, 2]))):
        mutate = draw(st.sampled_from(MUTATIONS))
        mutate(event, draw)
    return event


VERDICTS: dict[str, set[bool]] = {"mini": set(), "generated": set()}


def reference_verdict(validator: Validator, event: dict[str, Any]) -> bool:
    schema = (
        validator.schema_for(event.get("type", ""), event.get("event")) if isinstance(event.get("type"), str) else None
    )
    if schema is None:
        return False
    checker = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    return bool(checker.is_valid(event))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fast_and_reference_validators_agree_on_the_mini_plan(data: st.DataObject) -> None:
    event = data.draw(events(MINI))
    verdict = MINI.is_valid(event)
    VERDICTS["mini"].add(verdict)
    assert verdict == reference_verdict(MINI, event), event
    assert verdict == (MINI.validate(event) == [])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fast_and_reference_validators_agree_on_a_generated_plan(data: st.DataObject) -> None:
    event = data.draw(events(GENERATED))
    verdict = GENERATED.is_valid(event)
    VERDICTS["generated"].add(verdict)
    assert verdict == reference_verdict(GENERATED, event), event
    assert verdict == (GENERATED.validate(event) == [])


def test_both_verdicts_were_exercised() -> None:
    """The agreement tests above would be hollow if every generated event were invalid (or valid)."""
    assert VERDICTS["mini"] == {True, False}
    assert VERDICTS["generated"] == {True, False}


def test_generated_sample_events_are_valid() -> None:
    for name, props in GENERATED_SAMPLES.items():
        event = {
            "type": "track",
            "event": name,
            "event_id": "e-1",
            "time": 1,
            "identities": {"anonymous_id": "d"},
            "properties": props,
        }
        assert GENERATED.validate(event) == [], name
        assert reference_verdict(GENERATED, event)


@settings(max_examples=300, deadline=None)
@given(JSONISH)
def test_validate_never_raises_on_any_json(value: Any) -> None:
    assert MINI.validate(value) != [] or MINI.is_valid(value)
