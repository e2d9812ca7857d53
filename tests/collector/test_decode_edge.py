"""Decoding within limits, and one event, one meaning (issue 14 item 2, issue 13 item 7).

- A map with a repeated key is refused (quarantined, rule `duplicate_key`)
  whatever the encoding: msgspec keeps the last value, another reader may keep
  the first. Checked as a property over generated events, each encoded by a
  small msgpack writer of this module in the shortest form or in wider forms
  (int64 for small integers, str8 for short strings, map16 headers, float32),
  with and without a repeated key in a random map.
- The values of a batch are counted while decoding, so a body that would
  inflate to millions of Python objects is refused with 413; the batch's loss
  report is read only when it is small.

T14 (`test_t14_bombs.py::test_decode_amplification`) measures memory and the
event loop on a real process; this module checks the rules in-process.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import msgspec
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from maidian.collector.errors import PayloadTooLarge
from maidian.collector.pipeline.decode import decode_batch
from maidian.collector.pipeline.scan import map_value_at, scan_msgpack
from maidian.tracking_plan.envelope import DEFAULT_LIMITS
from tests.collector.helpers import headers_for, order, statuses

_enc = msgspec.msgpack.encode


class Writer:
    """msgpack as other encoders write it: `wide` picks the wider forms where msgpack allows a choice."""

    def __init__(self, wide: bool) -> None:
        self.wide = wide

    def value(self, v: Any) -> bytes:
        if isinstance(v, dict):
            return self.map(list(v.items()))
        if isinstance(v, list):
            head = b"\xdc" + struct.pack(">H", len(v)) if self.wide else _array_head(len(v))
            return head + b"".join(map(self.value, v))
        if isinstance(v, bool) or v is None:
            return _enc(v)
        if isinstance(v, int):
            return b"\xd3" + struct.pack(">q", v) if self.wide and -(2**63) <= v < 2**63 else _enc(v)
        if isinstance(v, float):
            if self.wide and abs(v) < 3e38 and struct.unpack(">f", struct.pack(">f", v))[0] == v:
                return b"\xca" + struct.pack(">f", v)
            return _enc(v)
        data = v.encode()
        if self.wide and len(data) < 256:
            return b"\xd9" + bytes([len(data)]) + data
        return _enc(v)

    def map(self, items: list[tuple[str, Any]]) -> bytes:
        head = b"\xde" + struct.pack(">H", len(items)) if self.wide else _map_head(len(items))
        return head + b"".join(self.value(k) + self.value(v) for k, v in items)


def _array_head(n: int) -> bytes:
    return bytes([0x90 | n]) if n < 16 else b"\xdc" + struct.pack(">H", n)


def _map_head(n: int) -> bytes:
    return bytes([0x80 | n]) if n < 16 else b"\xde" + struct.pack(">H", n)


def _with_repeat(writer: Writer, event: dict[str, Any], where: list[str], key: str) -> bytes:
    """`event` encoded with `key` written twice in the map at path `where` (its first value, then a string)."""

    def enc(node: Any, path: list[str]) -> bytes:
        if isinstance(node, dict):
            items = [(k, v) for k, v in node.items()]
            parts = [
                writer.value(k) + (enc(v, path[1:]) if path and k == path[0] else writer.value(v)) for k, v in items
            ]
            if not path:
                parts.append(writer.value(key) + writer.value("repeated"))
                head = b"\xde" + struct.pack(">H", len(items) + 1) if writer.wide else _map_head(len(items) + 1)
            else:
                head = b"\xde" + struct.pack(">H", len(items)) if writer.wide else _map_head(len(items))
            return head + b"".join(parts)
        return writer.value(node)

    return enc(event, where)


def _batch(events: list[bytes]) -> bytes:
    return _map_head(2) + _enc("sent_at") + _enc(1) + _enc("events") + _array_head(len(events)) + b"".join(events)


_names = st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
_values = st.recursive(
    _scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_names, inner, max_size=4), max_leaves=12
)


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    props = draw(st.dictionaries(_names, _values, min_size=1, max_size=6))
    return {
        "type": "track",
        "event": draw(_names),
        "event_id": f"e-{draw(st.integers(min_value=1, max_value=10**9))}",
        "time": draw(st.integers(min_value=0, max_value=2**50)),
        "identities": {"anonymous_id": draw(st.text(min_size=1, max_size=10))},
        "properties": props,
    }


def _maps(node: Any, path: list[str]) -> list[list[str]]:
    """The paths of every map with keys inside `node` (reached through maps only)."""
    out = [path]
    for k, v in node.items():
        if isinstance(v, dict) and v:
            out += _maps(v, [*path, k])
    return out


@settings(max_examples=200, deadline=None)
@given(event=events(), wide=st.booleans(), repeat=st.booleans(), data=st.data())
def test_a_repeated_key_is_refused_in_any_encoding(event: dict[str, Any], wide: bool, repeat: bool, data: Any) -> None:
    writer = Writer(wide)
    good = writer.value({**event, "event_id": "good-1"})
    if repeat:
        where = data.draw(st.sampled_from(_maps(event, [])))
        node: Any = event
        for k in where:
            node = node[k]
        key = data.draw(st.sampled_from(sorted(node)))
        hostile = _with_repeat(writer, event, where, key)
    else:
        hostile = writer.value(event)
    batch = decode_batch(_batch([good, hostile]), "msgpack", DEFAULT_LIMITS)
    problems = batch.problems or {}
    assert 0 not in problems
    if repeat:
        assert problems[1].rule == "duplicate_key"
    else:
        assert 1 not in problems
        assert batch.values is not None
        assert batch.values[1] == event


def test_the_scan_counts_and_finds_repeats() -> None:
    assert scan_msgpack(_enc({"a": [1, 2, {"b": None}]}), 100, 8).values == 8
    assert scan_msgpack(b"\x82\xa1a\x01\xd9\x01a\x02", 100, 8).duplicate_key  # fixstr and str8 of "a"
    assert not scan_msgpack(b"\x82\xa1a\x01\xa1b\x02", 100, 8).duplicate_key
    over = scan_msgpack(_enc([[]] * 1000), 100, 8)
    assert over.over_budget
    data = _enc({"sent_at": 1, "lib": "x", "events": [1, 2]})
    at = map_value_at(data, "events", 100)
    assert at is not None
    assert msgspec.msgpack.decode(data[at:]) == [1, 2]
    assert map_value_at(data, "missing", 100) is None


async def test_a_forged_server_event_by_repeated_key_is_quarantined_and_not_stored(client: Any) -> None:
    """`event` twice, the server-only name first and the client's last: judged as one, read as the other."""
    event = order(1)
    items = list(event.items())
    forged = _map_head(len(items) + 1) + b"".join(
        _enc(k) + _enc(v) for k, v in [("event", "stock_order_filled"), *items]
    )
    raw = _batch([forged, _enc(order(2))])
    resp = await client.post("/v1/batch", data=zstandard.ZstdCompressor().compress(raw), headers=headers_for())
    result = await resp.json()
    assert statuses(result) == ["quarantined", "accepted"]
    assert result["results"][0]["reasons"][0]["rule"] == "duplicate_key"


async def test_a_repeated_key_in_json_is_quarantined(client: Any) -> None:
    good = json.dumps(order(1))
    repeated = json.dumps(order(2)).replace('"side": "buy"', '"side": "buy", "side": "sell"')
    spaced = json.dumps(order(3), indent=2)  # another encoder's layout: no repeat
    urls = json.dumps(order(4, **{"$url": "https://x.example:8443/a?b=c"}))  # colons inside strings
    body = f'{{"sent_at": 1, "events": [{good}, {repeated}, {spaced}, {urls}]}}'.encode()
    resp = await client.post("/v1/batch", data=body, headers=headers_for(fmt="json", encoding="identity"))
    result = await resp.json()
    assert statuses(result) == ["accepted", "quarantined", "accepted", "accepted"]
    assert result["results"][1]["reasons"][0]["rule"] == "duplicate_key"


def test_values_are_counted_while_decoding() -> None:
    limits = DEFAULT_LIMITS
    per_event = limits.max_event_bytes - 100
    arrays = [
        _map_head(1)
        + _enc("properties")
        + _map_head(1)
        + _enc("a")
        + b"\xdd"
        + struct.pack(">I", per_event)
        + b"\x90" * per_event
    ]
    many = _batch(arrays * (2 * limits.max_values // per_event + 2))
    with pytest.raises(PayloadTooLarge):
        decode_batch(many, "msgpack", limits)
    # The same count of values in fewer bytes than max_values is never counted, and is decoded.
    few = _batch([_enc(order(i)) for i in range(1, 11)])
    assert len(decode_batch(few, "msgpack", limits).events) == 10


def test_a_large_loss_report_is_ignored_not_decoded() -> None:
    big = _map_head(3) + _enc("sent_at") + _enc(1) + _enc("events") + _array_head(1) + _enc(order(1))
    big += _enc("dropped") + b"\xdd" + struct.pack(">I", 1_000_000) + b"\x90" * 1_000_000
    batch = decode_batch(big, "msgpack", DEFAULT_LIMITS)
    assert batch.dropped is None
    assert len(batch.events) == 1


def test_json_that_could_hold_too_many_values_is_refused_before_decoding() -> None:
    body = b'{"sent_at": 1, "events": [' + b"[]," * 200_000 + b"[]]}"
    with pytest.raises(PayloadTooLarge):
        decode_batch(body, "json", DEFAULT_LIMITS)
