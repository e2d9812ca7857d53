"""Limits enforced while decoding (`Batch.json_checked`) give exactly the verdicts of the Python walk.

`decode_batch` decodes a batch's values into a type that admits only JSON
values nested within `max_depth`; events of such a batch skip the walk over
their properties unless their encoded size leaves room for a long string or
too many properties. These properties compare that path with the full walk
(`check_limits`) on hostile batches, with small limits so every limit is hit.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maidian.collector.pipeline.decode import decode_batch
from maidian.collector.pipeline.judge import Judge
from maidian.collector.pipeline.limits import check_decoded_limits, check_limits
from maidian.tracking_plan import Validator, load_plan
from maidian.tracking_plan.envelope import Limits
from tests.conftest import MINI_PLAN

LIMITS = Limits(max_properties=4, max_depth=2, max_string_bytes=24, max_event_bytes=400)
KEYS = st.sampled_from(["a", "b", "c", "d", "e", "f", "stock_code", "$lib"])
TEXT = st.text(max_size=30)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    TEXT,
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.one_of(KEYS, st.integers(0, 3)), inner, max_size=3),
    max_leaves=8,
)


@st.composite
def events(draw: st.DrawFn) -> Any:
    props = draw(st.dictionaries(KEYS, VALUES, max_size=7))
    event: dict[str, Any] = {
        "type": "track",
        "event": draw(st.sampled_from(["stock_order_submit", "app_start"])),
        "event_id": f"0193a5b2c3d4e5f60718293a4b5c6d7e-{draw(st.integers(1, 9))}",
        "time": 1_763_800_000_000,
        "identities": {"anonymous_id": "d"},
        "properties": props,
    }
    if draw(st.integers(0, 9)) == 0:
        event["extra"] = draw(VALUES)
    if draw(st.integers(0, 19)) == 0:
        return draw(VALUES)  # not an event at all
    return event


def _plain(value: Any) -> Any:
    """Values with NaN made comparable (NaN != NaN)."""
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _untyped(raw: msgspec.Raw) -> Any:
    return msgspec.msgpack.decode(raw)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(events(), min_size=1, max_size=5))
def test_checked_decoding_agrees_with_the_walk(batch_events: list[Any]) -> None:
    body = msgspec.msgpack.encode({"sent_at": 1, "events": batch_events})
    batch = decode_batch(body, "msgpack", LIMITS)
    assert batch.values is not None
    walked = [check_limits(_untyped(raw), LIMITS, len(raw)) for raw in batch.events]
    if batch.json_checked:
        for value, raw, expected in zip(batch.values, batch.events, walked, strict=True):
            assert _plain(value) == _plain(_untyped(raw))
            assert check_decoded_limits(value, LIMITS, len(raw)) == expected
    else:
        # Only an event that is not an object, a value JSON cannot hold, an integer past int64
        # (the checked type stops there), a non-string key or nesting past the limit sends a
        # batch the long way.
        assert any(not (isinstance(v, dict) and _json_within(v, LIMITS.max_depth + 2)) for v in batch.values)


def _json_within(value: Any, containers: int) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, int):
        return -(2**63) <= value < 2**63
    if isinstance(value, list):
        return containers > 0 and all(_json_within(v, containers - 1) for v in value)
    if isinstance(value, dict):
        return containers > 0 and all(isinstance(k, str) and _json_within(v, containers - 1) for k, v in value.items())
    return True


JUDGE = Judge(
    load_plan(MINI_PLAN),
    Validator(load_plan(MINI_PLAN), limits=LIMITS),
    LIMITS,
    window_s=8 * 86400,
    future_tolerance_s=3600,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(events(), min_size=1, max_size=5))
def test_the_judge_gives_the_same_verdicts_either_way(batch_events: list[Any]) -> None:
    body = msgspec.msgpack.encode({"sent_at": 1_763_800_000_000, "events": batch_events})
    batch = decode_batch(body, "msgpack", LIMITS)
    walked = dataclasses.replace(batch, json_checked=False)
    if batch.json_checked:
        walked = dataclasses.replace(walked, values=[_untyped(raw) for raw in batch.events])
    fast = JUDGE.judge(batch, trusted=False, received_ms=1_763_800_000_500)
    slow = JUDGE.judge(walked, trusted=False, received_ms=1_763_800_000_500)
    assert [(i, r, t, f) for i, _e, r, t, f in fast.valid] == [(i, r, t, f) for i, _e, r, t, f in slow.valid]
    assert [(i, r, t, v) for i, _e, r, t, v in fast.invalid] == [(i, r, t, v) for i, _e, r, t, v in slow.invalid]


def test_a_bad_value_anywhere_in_the_batch_sends_it_the_long_way() -> None:
    good = {"type": "track", "properties": {"a": 1.5, "b": [[1]]}}
    for bad in ({"a": math.nan}, {"a": math.inf}, {"a": [[[1]]]}, {"a": {1: "x"}}, {"a": b"bytes"}):
        body = msgspec.msgpack.encode({"events": [good, {"type": "track", "properties": bad}]})
        batch = decode_batch(body, "msgpack", LIMITS)
        assert not batch.json_checked, bad
        assert batch.values is not None
        assert batch.values[1] == _untyped(batch.events[1]) or bad["a"] != bad["a"], bad  # NaN != NaN
    body = msgspec.msgpack.encode({"events": [good, good]})
    assert decode_batch(body, "msgpack", LIMITS).json_checked


def test_json_batches_are_checked_too() -> None:
    body = msgspec.json.encode({"events": [{"type": "track", "properties": {"a": [[1.5]], "b": "x" * 30}}]})
    batch = decode_batch(body, "json", LIMITS)
    assert batch.json_checked
    assert batch.values is not None
    found = check_decoded_limits(batch.values[0], LIMITS, len(batch.events[0]))
    assert found is not None
    assert found.path == "/properties/b"
    deep = msgspec.json.encode({"events": [{"type": "track", "properties": {"a": [[[1]]]}}]})
    assert not decode_batch(deep, "json", LIMITS).json_checked
