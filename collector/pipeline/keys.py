"""One event, one meaning: finding a map that repeats a key, in msgpack and JSON, before it is judged."""

from __future__ import annotations

import json
from typing import Any, Final

import msgspec

from maidian.collector.pipeline.scan import ScanError, scan_msgpack
from maidian.tracking_plan import Violation
from maidian.tracking_plan.envelope import Limits

# Values the fallback scans of one batch may walk (`_repeated_keys`): about 50 ms of Python. An SDK batch
# of 500 events in another encoder's msgpack is about 15,000.
_FALLBACK_SCAN_VALUES: Final = 65_536
_msgpack_encoder = msgspec.msgpack.Encoder()


def _repeated_keys(
    values: list[Any], events: list[msgspec.Raw], fmt: str, limits: Limits, problems: dict[int, Violation]
) -> None:
    """Mark the events holding a map with a repeated key, so what is stored decodes to exactly what was judged.

    msgpack: when the batch's values re-encode to its exact bytes (what
    msgspec, and so the SDK, sends), no map can have lost a key: one C call
    for the batch. Otherwise each event that re-encodes differently (another
    encoder, float32, a repeated key) is scanned (`scan.scan_msgpack`), within
    a budget per batch. JSON: an event whose text holds as many colons as its
    decoded maps hold keys has no repeated key; otherwise Python's JSON
    parser lists each object's pairs.
    """
    if fmt == "msgpack" and not problems:
        try:
            if _msgpack_encoder.encode(values) == _msgpack_encoder.encode(events):
                return
        except (TypeError, ValueError, OverflowError):
            pass
    budget = _FALLBACK_SCAN_VALUES
    for index, (value, raw) in enumerate(zip(values, events, strict=True)):
        if value is None or index in problems:
            continue
        if fmt == "msgpack":
            try:
                if memoryview(raw) == _msgpack_encoder.encode(value):
                    continue
            except (TypeError, ValueError, OverflowError):
                pass
            if budget <= 0:
                problems[index] = _unchecked_keys()
                continue
            try:
                scan = scan_msgpack(bytes(raw), budget, limits.max_depth + 3)
            except ScanError:
                continue  # msgspec decoded it; what the scan cannot read is no repeated key
            budget -= scan.values
            if scan.duplicate_key:
                problems[index] = _duplicate_key()
            elif scan.over_budget:
                problems[index] = _unchecked_keys()
        else:
            text = bytes(raw)
            if text.count(b":") == _count_keys(value):
                continue
            if budget <= 0:
                problems[index] = _unchecked_keys()
                continue
            budget -= len(text) // 8
            if _json_has_repeated_key(text):
                problems[index] = _duplicate_key()


def _count_keys(node: Any) -> int:
    """The keys of every map inside a decoded value."""
    t = type(node)
    n = 0
    if t is dict:
        n = len(node)
        items: Any = node.values()
    elif t is list:
        items = node
    else:
        return 0
    for v in items:
        tv = type(v)
        if tv is dict or tv is list:
            n += _count_keys(v)
    return n


def _json_has_repeated_key(text: bytes) -> bool:
    found = False

    def pairs(items: list[tuple[str, Any]]) -> None:
        nonlocal found
        if not found and len({k for k, _v in items}) != len(items):
            found = True

    try:
        json.loads(text, object_pairs_hook=pairs)
    except (ValueError, RecursionError):
        return False  # msgspec decoded it; what Python's parser refuses is no repeated key
    return found


def _duplicate_key() -> Violation:
    return Violation("duplicate_key", "", "a map in the event holds one key twice; readers would disagree on its value")


def _unchecked_keys() -> Violation:
    return Violation(
        "limit",
        "",
        "the event is not in the shortest msgpack form and the batch's budget for checking such events "
        "for repeated keys is spent; send fewer such events per batch",
        _FALLBACK_SCAN_VALUES,
    )
