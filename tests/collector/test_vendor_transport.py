"""Shared vendor machinery: tolerant base64, capped gunzip, record splitting, name mapping, no stray exceptions."""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maidian.collector.pipeline.decode import decoded_batch
from maidian.collector.vendors import segment, sensors
from maidian.collector.vendors.common import (
    MappedRecord,
    TooLarge,
    Undecodable,
    VendorError,
    VendorLimits,
    VendorRecord,
    content_id,
    decode_base64,
    inflate,
    json_body,
    preflight_response,
    split_records,
)
from maidian.collector.vendors.names import NameMapper, Translation
from tests.collector.vendor_helpers import NOW_MS, basic, vendor_plan

SMALL = VendorLimits(max_decoded_bytes=4096)


# -- base64 and gzip ----------------------------------------------------------------------


@given(st.binary(max_size=300), st.sampled_from(["standard", "urlsafe", "unpadded", "spaces", "wrapped"]))
def test_base64_decodes_every_variant_senders_produce(data: bytes, variant: str) -> None:
    text = base64.b64encode(data).decode()
    if variant == "urlsafe":
        text = base64.urlsafe_b64encode(data).decode()
    elif variant == "unpadded":
        text = text.rstrip("=")
    elif variant == "spaces":
        text = text.replace("+", " ")
    elif variant == "wrapped":
        text = "\r\n".join(text[i : i + 76] for i in range(0, len(text), 76))
    assert decode_base64(text, where="data") == data


def test_concatenated_gzip_members_are_joined_and_trailing_bytes_ignored() -> None:
    data = gzip.compress(b'[{"a": 1},') + gzip.compress(b'{"b": 2}]') + b"\x00\x00"
    assert inflate(data, where="data") == b'[{"a": 1},{"b": 2}]'


@settings(max_examples=60)
@given(st.integers(0, 20_000), st.integers(1, 9))
def test_inflate_never_returns_more_than_the_cap(size: int, level: int) -> None:
    data = gzip.compress(b"x" * size, compresslevel=level)
    if size <= SMALL.max_decoded_bytes:
        assert inflate(data, where="data", limits=SMALL) == b"x" * size
    else:
        with pytest.raises(TooLarge, match="decompresses to more than 4096 bytes"):
            inflate(data, where="data", limits=SMALL)


def test_plain_json_over_the_decoded_cap_is_too_large() -> None:
    with pytest.raises(TooLarge, match="body: 5000 bytes, over the limit of 4096"):
        json_body(b"[" + b" " * 4998 + b"]", where="body", limits=SMALL)


def test_a_byte_order_mark_before_json_is_tolerated() -> None:
    assert json_body(b'\xef\xbb\xbf {"a": 1}', where="body") == b'{"a": 1}'


def test_records_are_split_measured_and_decoded_one_by_one() -> None:
    text = json.dumps([{"a": "贵州茅台"}, [1], {"b": 2}], ensure_ascii=False).encode()
    records = split_records(text, where="data_list")
    assert [(r.index, r.value, r.problem) for r in records] == [
        (0, {"a": "贵州茅台"}, None),
        (1, None, "expected an object, got array"),
        (2, {"b": 2}, None),
    ]
    assert records[0].size_bytes == len('{"a": "贵州茅台"}'.encode())


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (b'[{"a": NaN}]', "invalid JSON"),
        (b'{"a": 1} trailing', "invalid JSON"),
        (b"[" * 2000 + b"]" * 2000, "nested too deeply"),
        (b'["\xc3"]', "not UTF-8"),
    ],
)
def test_malformed_json_is_undecodable_with_a_reason(text: bytes, words: str) -> None:
    with pytest.raises(Undecodable, match=words):
        split_records(text, where="data_list")


# -- ids ---------------------------------------------------------------------------------


@given(st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=5))
def test_content_ids_ignore_key_order_and_fit_the_envelope(parts: dict[str, Any]) -> None:
    reordered = dict(reversed(list(parts.items())))
    assert content_id("x:", parts) == content_id("x:", reordered)
    assert len(content_id("sensors:h:", parts)) == len("sensors:h:") + 32


# -- the name mapper ----------------------------------------------------------------------


def names() -> NameMapper:
    return NameMapper.for_plan(vendor_plan(), "sensors")


def test_explicit_then_builtin_then_the_name_itself() -> None:
    dropped: list[str] = []
    builtin = {"$model": Translation("$device_model"), "$utm_term": Translation("utm_term")}
    out = names().properties(
        {"StockCode": "600519", "$model": "P60", "$utm_term": "x", "$other": 1, "plain": 2, "DebugFlag": 1},
        vendor_event="SubmitOrder",
        event="stock_order_submit",
        builtin=builtin,
        dropped=dropped,
    )
    assert out == {"stock_code": "600519", "$device_model": "P60", "plain": 2}
    assert dropped == ["properties.$utm_term", "properties.$other", "properties.DebugFlag"]


def test_presets_only_keeps_maidian_presets() -> None:
    dropped: list[str] = []
    out = names().properties(
        {"$model": "P60", "StockCode": "1"},
        vendor_event=None,
        event=None,
        builtin={"$model": Translation("$device_model")},
        presets_only=True,
        dropped=dropped,
    )
    assert (out, dropped) == ({"$device_model": "P60"}, ["properties.StockCode"])


def test_two_vendor_names_for_one_target_keep_the_stronger_mapping() -> None:
    dropped: list[str] = []
    out = names().properties(
        {"stock_code": "as-is", "StockCode": "explicit"},
        vendor_event=None,
        event="stock_order_submit",
        builtin={},
        dropped=dropped,
    )
    assert (out, dropped) == ({"stock_code": "explicit"}, ["properties.stock_code"])


def test_identity_values_must_be_non_empty_strings_or_integers() -> None:
    dropped: list[str] = []
    builtin = {"$identity_login_id": ("login_id",), "$identity_anonymous_id": ("anonymous_id",)}
    pairs: list[tuple[str, object]] = [
        ("$identity_login_id", ""),
        ("$identity_login_id", {"a": 1}),
        ("$identity_anonymous_id", None),
        ("$identity_anonymous_id", 42),
    ]
    assert names().identities(pairs, builtin, dropped) == {"anonymous_id": "42"}
    assert dropped == ["identities.$identity_login_id", "identities.$identity_login_id"]


def test_a_cors_preflight_is_answered() -> None:
    answer = preflight_response({"Origin": "https://m.broker.cn", "Access-Control-Request-Headers": "content-type"})
    assert answer.status == 204
    assert dict(answer.headers)["Access-Control-Allow-Headers"] == "content-type"
    assert dict(answer.headers)["Access-Control-Allow-Origin"] == "https://m.broker.cn"


# -- nothing escapes but VendorError ----------------------------------------------------------

# What the decoders can hand the mappers: msgspec's JSON decoder refuses integers outside 64 bits.
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12,
)
FIELDS = st.sampled_from(
    [
        "type",
        "event",
        "time",
        "distinct_id",
        "properties",
        "identities",
        "login_id",
        "anonymous_id",
        "original_id",
        "_track_id",
        "_flush_time",
        "lib",
        "project",
        "userId",
        "anonymousId",
        "previousId",
        "messageId",
        "timestamp",
        "traits",
        "context",
        "groupId",
        "name",
    ]
)
SENSORS_TYPES = [
    "track",
    "track_signup",
    "track_id_bind",
    "track_id_unbind",
    "profile_set",
    "profile_delete",
    "item_set",
]
TYPES = st.sampled_from([*SENSORS_TYPES, "identify", "alias", "page", "screen", "group"])
RECORDS = st.fixed_dictionaries({"type": TYPES}, optional={"time": st.just(NOW_MS)}).flatmap(
    lambda base: st.dictionaries(FIELDS, JSON, max_size=6).map(lambda extra: {**extra, **base})
)


SENSORS = sensors.SensorsMapper(vendor_plan())
SEGMENT = segment.SegmentMapper(vendor_plan())


@settings(max_examples=300)
@given(RECORDS)
def test_mapping_any_record_gives_events_or_a_rejection_never_an_exception(record: dict[str, Any]) -> None:
    rec = VendorRecord(0, record, 10)
    result = SENSORS.map_record(rec)
    other = SEGMENT.map_record(rec, segment.SegmentRequest("batch", "k", (rec,)), now_ms=NOW_MS)
    for r in (result, other):
        if isinstance(r, MappedRecord):
            assert all(set(e) <= {"type", "event", "event_id", "time", "identities", "properties"} for e in r.events)
            assert all(len(e["event_id"]) <= 128 for e in r.events)
            json.dumps(list(r.events))  # JSON values only
            decoded_batch(list(r.events), sent_at=r.sent_at)  # the pipeline can encode them
        else:
            assert r.reasons
            assert r.event_id is not None  # so a resent request quarantines it once
            msgspec.msgpack.encode(r.quarantined("sensors"))  # and the quarantine log can keep it


@settings(max_examples=200)
@given(st.binary(max_size=200), st.text(max_size=60), st.sampled_from(["", "1", "0", "9"]))
def test_decoders_raise_only_vendor_errors_on_any_input(body: bytes, query: str, flag: str) -> None:
    for attempt in (
        lambda: sensors.decode_request("POST", query, {}, body),
        lambda: sensors.decode_request(
            "POST", query, {}, b"data_list=" + base64.b64encode(body) + b"&gzip=" + flag.encode()
        ),
        lambda: sensors.decode_request("GET", "data=" + base64.b64encode(gzip.compress(body)).decode(), {}, b""),
        lambda: segment.decode_request("batch", {"Authorization": basic("k")}, body),
        lambda: segment.decode_request("track", {"Authorization": query}, body),
    ):
        with contextlib.suppress(VendorError):
            attempt()


def test_the_name_memo_never_mixes_up_built_in_tables() -> None:
    mapper = names()
    for target in ("$device_model", "$os", "$app_name"):  # fresh dicts: ids may be reused once freed
        out = mapper.properties(
            {"$model": "P60"}, vendor_event=None, event=None, builtin={"$model": Translation(target)}, dropped=[]
        )
        assert out == {target: "P60"}
