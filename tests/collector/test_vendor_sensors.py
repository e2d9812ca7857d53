"""Sensors Analytics requests: every transport variant decodes, every record type maps, ids deduplicate."""

from __future__ import annotations

import base64
import gzip
import json
from typing import Any
from urllib.parse import quote, urlencode

import pytest

from maidian.collector.vendors import sensors
from maidian.collector.vendors.common import (
    MappedRecord,
    Rejection,
    TooLarge,
    Undecodable,
    UnsupportedMediaType,
    VendorError,
    VendorLimits,
)
from maidian.tracking_plan import Violation, parse_plan
from tests.collector.vendor_helpers import (
    NOW_MS,
    VENDOR_PLAN,
    sensors_form,
    sensors_payload,
    sensors_track,
    validator,
    vendor_plan,
)

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def mapper() -> sensors.SensorsMapper:
    return sensors.SensorsMapper(vendor_plan())


def decode(body: bytes = b"", query: str = "", headers: dict[str, str] | None = None, **kw: Any) -> Any:
    return sensors.decode_request("POST" if body else "GET", query, headers or FORM, body, **kw)


def one(record: dict[str, Any], project: str = "broker") -> MappedRecord | Rejection:
    request = decode(sensors_form([record]), f"project={project}")
    [result] = mapper().map_request(request).records
    return result


def events_of(record: dict[str, Any]) -> list[dict[str, Any]]:
    result = one(record)
    assert isinstance(result, MappedRecord), result
    return list(result.events)


# -- transport -------------------------------------------------------------------


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("field", ["data", "data_list"])
def test_post_form_bodies_decode_with_and_without_gzip(field: str, compress: bool) -> None:
    payload: Any = sensors_track() if field == "data" else [sensors_track(), sensors_track(event="LoginResult")]
    request = decode(sensors_form(payload, field=field, compress=compress, crc="-12345"), "project=broker")
    assert request.field == field
    assert [r.value["event"] for r in request.records] == (
        ["SubmitOrder"] if field == "data" else ["SubmitOrder", "LoginResult"]
    )
    assert request.records[0].value["properties"]["StockName"] == "贵州茅台"


def test_the_gzip_flag_is_a_hint_the_data_itself_decides() -> None:
    # gzip=0 on gzipped data and gzip=1 on plain data both decode.
    plain = urlencode({"data": sensors_payload(sensors_track(), compress=False), "gzip": "1"}).encode()
    zipped = urlencode({"data": sensors_payload(sensors_track(), compress=True), "gzip": "0"}).encode()
    assert decode(plain).records[0].value == decode(zipped).records[0].value


def test_a_get_beacon_carries_the_record_in_the_query_string() -> None:
    # The browser SDK's image beacon: data is base64 of plain JSON, ext carries a crc.
    query = "project=web&data=" + quote(sensors_payload(sensors_track(), compress=False)) + "&ext=crc%3D123"
    request = sensors.decode_request("GET", query, {}, b"")
    assert request.project == "web"
    assert request.records[0].value["event"] == "SubmitOrder"


def test_a_text_plain_beacon_body_is_read_as_a_form() -> None:
    body = ("data=" + quote(sensors_payload(sensors_track(), compress=False))).encode()
    request = decode(body, "project=web", {"Content-Type": "text/plain;charset=UTF-8"})
    assert request.records[0].value["distinct_id"] == "u_10086"


def test_the_browser_batch_sends_data_list_without_a_gzip_field() -> None:
    body = ("data_list=" + quote(sensors_payload([sensors_track(), sensors_track()], compress=False))).encode()
    assert len(decode(body).records) == 2


def test_fields_in_the_body_win_over_the_query_string() -> None:
    body = sensors_form([sensors_track(event="LoginResult")], project="from-body")
    query = "project=from-query&data_list=" + quote(sensors_payload([sensors_track()]))
    request = decode(body, query)
    assert request.project == "from-body"
    assert request.records[0].value["event"] == "LoginResult"


def test_unknown_parameters_and_headers_are_ignored() -> None:
    body = sensors_form([sensors_track()], crc="1", ext="x", _=str(NOW_MS), token="t")
    request = decode(body, "project=broker&foo=bar", {**FORM, "Cookie": "sensorsdata=1", "X-Anything": "y"})
    assert len(request.records) == 1


def test_the_project_comes_from_the_record_then_the_query_then_default() -> None:
    records = [sensors_track(project="mine"), sensors_track(project=None), {**sensors_track(), "project": ""}]
    for record in records[1:]:
        record.pop("project")
    request = decode(sensors_form(records), "project=broker")
    assert [request.project_of(r) for r in request.records] == ["mine", "broker", "broker"]
    assert request.projects == {"mine", "broker"}
    assert decode(sensors_form(records[1:])).projects == {"default"}


def test_base64_variants_the_receivers_tolerate() -> None:
    text = sensors_payload(sensors_track())
    variants = [
        text.replace("+", " "),  # a sender that did not percent-encode '+'
        text.rstrip("="),  # padding dropped
        text.replace("+", "-").replace("/", "_"),  # URL-safe alphabet
        "\n".join(text[i : i + 76] for i in range(0, len(text), 76)),  # MIME line breaks
    ]
    for variant in variants:
        body = ("data=" + quote(variant, safe=" ").replace(" ", "+") + "&gzip=1").encode()
        assert decode(body).records[0].value["event"] == "SubmitOrder", variant[:20]


def test_plain_json_in_the_data_field_is_tolerated() -> None:
    body = urlencode({"data": json.dumps(sensors_track(), ensure_ascii=False)}).encode()
    assert decode(body).records[0].value["properties"]["StockName"] == "贵州茅台"


def test_a_raw_json_or_gzip_body_is_tolerated() -> None:
    raw = json.dumps([sensors_track()], ensure_ascii=False).encode()
    assert decode(raw, headers={"Content-Type": "application/json"}).field == "body"
    assert decode(gzip.compress(raw), headers={}).records[0].value["event"] == "SubmitOrder"


@pytest.mark.parametrize(
    ("body", "error", "words"),
    [
        (b"gzip=1&crc=3", Undecodable, "no data_list or data field"),
        (b"data=%%%%&gzip=1", Undecodable, "data: not base64 (the character '%' is not base64)"),
        (b"data=YWJjZA&gzip=1", Undecodable, "data: expected JSON (an object or an array), the data starts with 0x61"),
        (
            ("data=" + base64.b64encode(gzip.compress(b'{"a": 1}')[:-6]).decode()).encode(),
            Undecodable,
            "data: the gzip stream is truncated",
        ),
        (
            ("data=" + base64.b64encode(b"\x1f\x8b\x08\x00garbage-garbage").decode()).encode(),
            Undecodable,
            "data: not valid gzip",
        ),
        (
            ("data_list=" + base64.b64encode(b'[{"type": "track",]').decode()).encode(),
            Undecodable,
            "data_list: invalid JSON",
        ),
        (
            ("data=" + base64.b64encode(b'{"a": "\xff"}').decode()).encode(),
            Undecodable,
            "data: invalid JSON",
        ),
        (b"data_list=abcd&gzip=9", UnsupportedMediaType, "gzip=9 means the payload is encrypted"),
        (b"data_list=abcd&gzip=13", UnsupportedMediaType, "turn the SDK's encryption off"),
    ],
)
def test_malformed_requests_get_errors_that_name_the_field(body: bytes, error: type[VendorError], words: str) -> None:
    with pytest.raises(error) as info:
        decode(body)
    assert words in str(info.value)
    assert info.value.status in (400, 415)


def test_a_gzip_bomb_stops_at_the_decoded_cap() -> None:
    bomb = gzip.compress(b"[" + b" " * (17 << 20) + b"]", compresslevel=9)  # 17 MiB of JSON in 17 KiB
    body = urlencode({"data_list": base64.b64encode(bomb).decode(), "gzip": "1"}).encode()
    assert len(body) < 200_000
    with pytest.raises(TooLarge, match=r"data_list: decompresses to more than 16777216 bytes") as info:
        decode(body)
    assert info.value.status == 413


def test_size_limits_on_body_query_base64_and_records() -> None:
    limits = VendorLimits(max_body_bytes=1000, max_query_bytes=100, max_base64_chars=500, max_records=2)
    with pytest.raises(TooLarge, match="body: 1001 bytes, over the limit of 1000"):
        decode(b"x" * 1001, limits=limits)
    with pytest.raises(TooLarge, match="query string: 101 bytes"):
        decode(query="a" * 101, limits=limits)
    with pytest.raises(TooLarge, match="data: 600 base64 characters, over the limit of 500"):
        decode(b"data=" + b"A" * 600, limits=limits)
    with pytest.raises(TooLarge, match="data_list: 3 records, over the limit of 2"):
        decode(sensors_form([{}, {}, {}], compress=True), limits=limits)
    with pytest.raises(TooLarge, match="more than 64 form fields"):
        decode(b"&".join(b"f%d=1" % i for i in range(70)))


def test_an_oversized_or_non_object_record_is_rejected_alone() -> None:
    big = sensors_track(properties={"StockName": "茅" * 20_000})
    request = decode(sensors_form([sensors_track(), big, "oops", 7]))
    assert [r.problem for r in request.records] == [
        None,
        f"{request.records[1].size_bytes} bytes, over the limit of 32768",
        "expected an object, got string",
        "expected an object, got integer",
    ]
    mapped = mapper().map_request(request)
    assert isinstance(mapped.records[0], MappedRecord)
    assert [r.reasons[0].rule for r in mapped.rejections] == ["vendor_record"] * 3
    assert "record 2: expected an object" in mapped.rejections[1].reasons[0].message


def test_the_debug_header_marks_a_dry_run() -> None:
    assert decode(sensors_form([sensors_track()]), headers={"dry-run": "TRUE"}).dry_run
    assert not decode(sensors_form([sensors_track()])).dry_run


# -- mapping: record types --------------------------------------------------------------


def test_a_mapped_track_event_passes_the_plan_like_a_native_one() -> None:
    [event] = events_of(sensors_track())
    assert event == {
        "type": "track",
        "event": "stock_order_submit",
        "event_id": event["event_id"],
        "time": NOW_MS,
        "identities": {"login_id": "u_10086"},
        "properties": {
            "$lib": "sensors-python",
            "$lib_version": "1.11.0",
            "stock_code": "600519",
            "stock_name": "贵州茅台",
            "side": "buy",
            "price": 1688.5,
            "quantity": 100,
        },
    }
    assert event["event_id"].startswith("sensors:h:")
    assert validator().validate(event) == []


def test_a_mapped_event_that_breaks_the_plan_gets_the_plans_reasons() -> None:
    record = sensors_track()
    record["properties"].update({"OrderQty": 150, "Side": "short", "Colour": "red"})
    [event] = events_of(record)
    reasons = {(v.rule, v.path) for v in validator().validate(event)}
    assert reasons == {
        ("range", "/properties/quantity"),
        ("enum", "/properties/side"),
        ("additional_property", "/properties/Colour"),
    }


def test_an_unmapped_event_follows_the_plans_unknown_event_policy() -> None:
    [event] = events_of(sensors_track(event="ViewFundDetail", properties={"$is_login_id": True}))
    assert event["event"] == "ViewFundDetail"
    assert [v.rule for v in validator().validate(event)] == ["unknown_event"]


def test_per_event_property_maps_apply_to_that_event_only() -> None:
    [login] = events_of(sensors_track(event="LoginResult", properties={"LoginMethod": "sms"}))
    assert login["event"] == "account_login"
    assert login["properties"] == {"method": "sms", "$lib": "sensors-python", "$lib_version": "1.11.0"}
    assert validator().validate(login) == []
    [other] = events_of(sensors_track(event="SubmitOrder", properties={"LoginMethod": "sms"}))
    assert "LoginMethod" in other["properties"]


def test_sign_up_becomes_a_bind_of_the_anonymous_and_login_ids() -> None:
    record = {
        "type": "track_signup",
        "event": "$SignUp",
        "time": NOW_MS,
        "distinct_id": "u_10086",
        "original_id": "device-7f3a",
        "properties": {"$lib": "python", "$lib_version": "1.11.0", "$os": "Android", "Channel": "store"},
    }
    result = one(record)
    assert isinstance(result, MappedRecord)
    [bind] = result.events
    assert bind["type"] == "bind"
    assert bind["identities"] == {"login_id": "u_10086", "anonymous_id": "device-7f3a"}
    assert bind["properties"] == {"$lib": "sensors-python", "$lib_version": "1.11.0", "$os": "Android"}
    assert result.dropped == ("properties.Channel",)
    assert validator().validate(bind) == []


def test_a_sign_up_the_plan_maps_is_also_tracked() -> None:
    doc = json.loads(VENDOR_PLAN.read_text())
    doc["mappings"]["sensors"]["events"]["$SignUp"] = "account_login"
    m = sensors.SensorsMapper(parse_plan(json.dumps(doc)))
    record = {"type": "track_signup", "event": "$SignUp", "time": NOW_MS, "distinct_id": "u1", "original_id": "d1"}
    [result] = m.map_request(decode(sensors_form([record]))).records
    assert isinstance(result, MappedRecord)
    bind, track = result.events
    assert (bind["type"], track["type"], track["event"]) == ("bind", "track", "account_login")
    assert track["event_id"] == bind["event_id"] + "/track"
    assert track["identities"] == bind["identities"] == {"login_id": "u1", "anonymous_id": "d1"}


def test_id_mapping_3_bind_and_unbind() -> None:
    bind_record = {
        "type": "track_id_bind",
        "event": "$BindID",
        "time": NOW_MS,
        "distinct_id": "u_10086",
        "identities": {"$identity_login_id": "u_10086", "$identity_customer_no": "0012345678"},
        "properties": {"$lib": "python", "$is_login_id": True},
    }
    [bind] = events_of(bind_record)
    assert (bind["type"], bind["identities"]) == ("bind", {"login_id": "u_10086", "customer_no": "0012345678"})
    assert validator().validate(bind) == []

    unbind_two = {**bind_record, "type": "track_id_unbind", "event": "$UnbindID"}
    [unbind] = events_of(unbind_two)
    assert unbind["type"] == "unbind"

    unbind_one = {**unbind_two, "identities": {"$identity_customer_no": "0012345678"}}
    rejected = one(unbind_one)
    assert isinstance(rejected, Rejection)
    [reason] = rejected.reasons
    assert (reason.rule, reason.path) == ("vendor_unsupported", "/identities")
    assert rejected.record == unbind_one


@pytest.mark.parametrize(
    ("kind", "props", "expected"),
    [
        (
            "profile_set",
            {"RiskLevel": "C3", "Nickname": "老王", "$is_login_id": True},
            {"risk_level": "C3", "nickname": "老王"},
        ),
        ("profile_set_once", {"RiskLevel": "C1"}, {"risk_level": "C1"}),
        ("profile_increment", {"LoginCount": 1}, {"login_count": 1}),
        ("profile_append", {"tags": ["港股通", "科创板"]}, {"tags": ["港股通", "科创板"]}),
        ("profile_unset", {"Nickname": True}, {"nickname": True}),
        ("profile_delete", {}, {}),
    ],
)
def test_profile_operations_keep_their_type_and_map_names(
    kind: str, props: dict[str, Any], expected: dict[str, Any]
) -> None:
    record = {"type": kind, "time": NOW_MS, "distinct_id": "u_10086", "properties": {**props, "$is_login_id": True}}
    [event] = events_of(record)
    assert (event["type"], event["properties"], event["identities"]) == (kind, expected, {"login_id": "u_10086"})
    assert "event" not in event
    assert validator().validate(event) == []


def test_profile_records_never_get_presets() -> None:
    record = {
        "type": "profile_set",
        "time": NOW_MS,
        "distinct_id": "d1",
        "lib": {"$lib": "Android", "$app_version": "5.2"},
        "properties": {"$os": "iOS", "RiskLevel": "C2"},
    }
    result = one(record)
    assert isinstance(result, MappedRecord)
    assert result.events[0]["properties"] == {"risk_level": "C2"}
    assert result.dropped == ("properties.$os",)


@pytest.mark.parametrize("kind", ["item_set", "item_delete"])
def test_item_records_are_rejected_as_unsupported_and_kept(kind: str) -> None:
    record = {"type": kind, "time": NOW_MS, "item_type": "stock", "item_id": "600519", "properties": {}}
    rejected = one(record)
    assert isinstance(rejected, Rejection)
    assert rejected.reasons == (
        Violation("vendor_unsupported", "/type", f"Sensors {kind} records describe items, which maidian has not"),
    )
    assert rejected.record == record


@pytest.mark.parametrize(
    ("change", "path", "words"),
    [
        ({"type": None}, "/type", "no type"),
        ({"type": 3}, "/type", "type must be a string"),
        ({"type": "track_everything"}, "/type", "unknown record type (string of length 16)"),
        ({"time": "yesterday"}, "/time", "epoch milliseconds"),
        ({"time": 12345}, "/time", "epoch milliseconds"),
        ({"time": True}, "/time", "epoch milliseconds"),
        ({"event": ""}, "/event", "needs an event name"),
        ({"properties": ["a"]}, "/properties", "must be an object"),
    ],
)
def test_malformed_records_are_rejected_with_a_located_reason(change: dict[str, Any], path: str, words: str) -> None:
    record = {**sensors_track(), **change}
    if change.get("type") is None and "type" in change:
        del record["type"]
    rejected = one(record)
    assert isinstance(rejected, Rejection)
    [reason] = rejected.reasons
    assert (reason.rule, reason.path) == ("vendor_record", path)
    assert words in reason.message


def test_ten_digit_times_are_seconds_and_flush_time_is_sent_at() -> None:
    result = one(sensors_track(time=NOW_MS // 1000, _flush_time=NOW_MS + 5_000))
    assert isinstance(result, MappedRecord)
    assert result.events[0]["time"] == NOW_MS // 1000 * 1000
    assert result.sent_at == NOW_MS + 5_000


# -- mapping: identities -----------------------------------------------------------------


def ids_of(record: dict[str, Any]) -> dict[str, str]:
    return events_of({"type": "track", "event": "$AppStart", "time": NOW_MS, **record})[0]["identities"]


def test_distinct_id_is_a_login_id_only_when_flagged() -> None:
    assert ids_of({"distinct_id": "u1", "properties": {"$is_login_id": True}}) == {"login_id": "u1"}
    assert ids_of({"distinct_id": "u1", "properties": {}}) == {"anonymous_id": "u1"}
    assert ids_of({"distinct_id": 10086, "properties": {}}) == {"anonymous_id": "10086"}


def test_id_mapping_2_fields_give_both_ids() -> None:
    record = {"distinct_id": "u1", "login_id": "u1", "anonymous_id": "cookie-9", "properties": {}}
    assert ids_of(record) == {"login_id": "u1", "anonymous_id": "cookie-9"}


def test_the_identities_map_follows_the_documented_rules() -> None:
    record = {
        "distinct_id": "u1",
        "identities": {
            "$identity_cookie_id": "cookie-9",
            "$identity_anonymous_id": "anon-1",  # wins over the cookie id: earlier in IDENTITY_KEYS
            "$identity_login_id": "u1",
            "$identity_mobile": "a" * 64,  # mapped by the plan onto mobile_hash
            "$identity_customer_no": "0012345678",  # custom: the plan declares customer_no
            "$identity_wechat_openid": "o-xyz",  # custom the plan does not declare: dropped
            "$identity_email": "a@b.c",  # the plan declares no email type: dropped
        },
        "properties": {},
    }
    result = one({"type": "track", "event": "$AppStart", "time": NOW_MS, **record})
    assert isinstance(result, MappedRecord)
    assert result.events[0]["identities"] == {
        "anonymous_id": "anon-1",
        "login_id": "u1",
        "mobile_hash": "a" * 64,
        "customer_no": "0012345678",
    }
    assert set(result.dropped) == {
        "identities.$identity_cookie_id",
        "identities.$identity_wechat_openid",
        "identities.$identity_email",
    }
    assert validator().validate(result.events[0]) == []


def test_a_custom_login_key_in_distinct_id_is_read_as_that_identity() -> None:
    assert ids_of({"distinct_id": "$identity_customer_no+0012345678", "properties": {}}) == {
        "customer_no": "0012345678"
    }


def test_a_raw_mobile_number_in_a_hashed_identity_is_quarantined_not_stored() -> None:
    [event] = events_of(
        {"type": "track", "event": "$AppStart", "time": NOW_MS, "identities": {"$identity_mobile": "13812345678"}}
    )
    assert [(v.rule, v.path) for v in validator().validate(event)] == [("pii", "/identities/mobile_hash")]


def test_a_record_without_identities_gets_the_plans_missing_identity_reason() -> None:
    [event] = events_of({"type": "track", "event": "$AppStart", "time": NOW_MS, "properties": {}})
    assert event["identities"] == {}
    assert [v.rule for v in validator().validate(event)] == ["missing_identity"]


# -- mapping: presets -----------------------------------------------------------------------


def test_sensors_presets_become_maidian_presets_or_are_dropped_and_reported() -> None:
    props = {
        "$lib": "Android",
        "$lib_version": "6.8.0",
        "$model": "Mate 60",
        "$manufacturer": "HUAWEI",
        "$os": "Android",
        "$os_version": "12",
        "$screen_width": 1080,
        "$screen_height": 2400,
        "$app_version": "5.2.1",
        "$network_type": "WIFI",
        "$carrier": "中国移动",
        "$event_duration": 1.25,
        "$utm_source": "wechat",
        "$utm_term": "a",  # the plan declares no utm_term: dropped
        "$is_first_day": False,
        "$device_id": "abc",
        "$wifi": True,
        "$resume_from_background": True,  # mapped explicitly by the plan
        "DebugFlag": "1",  # mapped to null by the plan
    }
    result = one({"type": "track", "event": "$AppStart", "time": NOW_MS, "distinct_id": "d1", "properties": props})
    assert isinstance(result, MappedRecord)
    assert result.events[0]["properties"] == {
        "$lib": "sensors-Android",
        "$lib_version": "6.8.0",
        "$device_model": "Mate 60",
        "$manufacturer": "HUAWEI",
        "$os": "Android",
        "$os_version": "12",
        "$screen_width": 1080,
        "$screen_height": 2400,
        "$app_version": "5.2.1",
        "$network_type": "WIFI",
        "$carrier": "中国移动",
        "$duration_ms": 1250,
        "utm_source": "wechat",
        "resume_from_background": True,
    }
    assert sorted(result.dropped) == [
        "properties.$device_id",
        "properties.$is_first_day",
        "properties.$utm_term",
        "properties.$wifi",
        "properties.DebugFlag",
    ]
    assert validator().validate(result.events[0]) == []


def test_an_explicit_mapping_wins_over_a_builtin_one_for_the_same_target() -> None:
    props = {"$url_path": "/quote/600519", "$url": "https://m.broker.cn/quote"}
    [event] = events_of(
        {"type": "track", "event": "$pageview", "time": NOW_MS, "distinct_id": "d", "properties": props}
    )
    assert event["event"] == "app_page_view"
    assert event["properties"] == {"page_path": "/quote/600519", "$url": "https://m.broker.cn/quote"}


def test_lib_presets_come_from_the_lib_object_when_properties_lack_them() -> None:
    record = {
        "type": "track",
        "event": "$AppStart",
        "time": NOW_MS,
        "distinct_id": "d",
        "lib": {"$lib": "iOS", "$lib_version": "4.5.0", "$app_version": "5.2", "$lib_detail": "x##y"},
        "properties": {},
    }
    [event] = events_of(record)
    assert event["properties"] == {"$lib": "sensors-iOS", "$lib_version": "4.5.0", "$app_version": "5.2"}


# -- event ids and deduplication ---------------------------------------------------------


def ids(body: bytes, query: str = "project=broker") -> list[str]:
    return [e["event_id"] for e in mapper().map_request(decode(body, query)).events]


def test_the_same_record_twice_in_separate_requests_gets_the_same_id() -> None:
    assert ids(sensors_form([sensors_track()])) == ids(sensors_form([sensors_track()], compress=False))


def test_a_resent_request_maps_to_exactly_the_same_ids() -> None:
    body = sensors_form([sensors_track(), sensors_track(), sensors_track(event="LoginResult")])
    first = ids(body)
    assert first == ids(body)
    assert len(set(first)) == 3  # the two identical records in one request stay two events
    assert first[1] == first[0] + ".1"


@pytest.mark.parametrize(
    "change",
    [
        {"time": NOW_MS + 1},
        {"distinct_id": "u_10087"},
        {"event": "LoginResult"},
        {"properties": {"StockCode": "000001"}},
        {"project": "other"},
    ],
)
def test_records_that_differ_in_a_stable_field_get_different_ids(change: dict[str, Any]) -> None:
    assert ids(sensors_form([sensors_track()])) != ids(sensors_form([sensors_track(**change)]))


def test_transport_fields_do_not_change_the_id() -> None:
    assert ids(sensors_form([sensors_track()])) == ids(
        sensors_form([sensors_track(_flush_time=NOW_MS + 99, lib={"$lib": "python", "$lib_detail": "other"})])
    )


def test_a_track_id_gives_an_id_independent_of_the_properties() -> None:
    a = sensors_track(_track_id=123456789)
    b = sensors_track(_track_id=123456789, properties={"StockCode": "000001", "$is_login_id": True})
    c = sensors_track(_track_id=987654321)
    [ia], [ib], [ic] = ids(sensors_form([a])), ids(sensors_form([b])), ids(sensors_form([c]))
    assert ia == ib != ic
    assert ia.startswith("sensors:t:")
    assert len(ia) == len("sensors:t:") + 32
    # the same track id from another user is another event
    assert ids(sensors_form([sensors_track(_track_id=123456789, distinct_id="other")])) != [ia]


# -- answers -----------------------------------------------------------------------------


def test_success_is_an_empty_200_or_a_gif_for_image_beacons() -> None:
    plain = sensors.success_response("POST", "/sa", {})
    assert (plain.status, plain.body, plain.headers) == (200, b"", ())
    gif = sensors.success_response("POST", "/sa.gif", {"Origin": "https://m.broker.cn"})
    assert (gif.status, gif.content_type, gif.body[:6]) == (200, "image/gif", b"GIF89a")
    assert ("Access-Control-Allow-Origin", "https://m.broker.cn") in gif.headers
    assert sensors.success_response("GET", "/sa", {}).content_type == "image/gif"


def test_errors_carry_their_status_and_unauthenticated_becomes_403() -> None:
    from maidian.collector.vendors.common import Unauthenticated

    bad = sensors.error_response(Undecodable("data: not base64"), {})
    assert (bad.status, json.loads(bad.body)) == (400, {"code": "undecodable", "message": "data: not base64"})
    auth = sensors.error_response(Unauthenticated("project 'x' is not served here"), {})
    assert (auth.status, json.loads(auth.body)["code"]) == (403, "forbidden")


def test_the_debug_verdict_lists_each_records_reasons() -> None:
    good = sensors_track()
    bad = sensors_track(properties={"StockCode": "6005", "Side": "buy", "OrderPrice": 1.0, "OrderQty": 100})
    request = decode(sensors_form([good, bad, {"type": "item_set", "time": NOW_MS}]), headers={"Dry-Run": "true"})
    mapped = mapper().map_request(request)
    verdicts = [validator().validate(e) for e in mapped.events]
    answer = sensors.debug_response(mapped, verdicts, dry_run=request.dry_run, headers={})
    assert answer.status == 400
    body = json.loads(answer.body)
    assert (body["valid"], body["stored"]) == (False, False)
    assert [r["valid"] for r in body["records"]] == [True, False, False]
    assert body["records"][1]["reasons"][0]["path"] == "/properties/stock_code"
    assert body["records"][2]["reasons"][0]["rule"] == "vendor_unsupported"
    assert body["message"].startswith("2 of 3 records break the plan; record 1: /properties/stock_code")

    ok = decode(sensors_form([good]))
    mapped_ok = mapper().map_request(ok)
    answer_ok = sensors.debug_response(mapped_ok, [[]], dry_run=False, headers={})
    assert (answer_ok.status, json.loads(answer_ok.body)["stored"]) == (200, True)
    with pytest.raises(ValueError, match="0 verdicts for 1 events"):
        sensors.debug_response(mapped_ok, [], dry_run=False, headers={})


def test_a_request_groups_its_events_by_sent_at_and_counts_dropped_fields() -> None:
    records = [
        sensors_track(_flush_time=NOW_MS + 10, properties={"$is_first_day": True}),
        sensors_track(_flush_time=NOW_MS + 10, event="LoginResult", properties={"$is_first_day": True}),
        {"type": "item_set", "time": NOW_MS},
        sensors_track(_flush_time=NOW_MS + 20),
    ]
    mapped = mapper().map_request(decode(sensors_form(records)))
    runs = mapped.by_sent_at()
    assert [(sent_at, len(events)) for sent_at, events in runs] == [(NOW_MS + 10, 2), (NOW_MS + 20, 1)]
    assert mapped.dropped() == {"properties.$is_first_day": 2}
    assert len(mapped.rejections) == 1
