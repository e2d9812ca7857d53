"""Segment's HTTP tracking API: every endpoint decodes, every call maps, Basic auth and context are read."""

from __future__ import annotations

import json
from typing import Any

import pytest

from maidian.collector.vendors import segment
from maidian.collector.vendors.common import (
    MappedRecord,
    Rejection,
    TooLarge,
    Unauthenticated,
    Undecodable,
    UnsupportedMediaType,
    VendorError,
    VendorLimits,
)
from maidian.tracking_plan import Validator, parse_plan
from tests.collector.vendor_helpers import NOW_MS, VENDOR_PLAN, basic, segment_json, validator, vendor_plan

KEY = "wk_9f2c"
AUTH = {"Authorization": basic(KEY), "Content-Type": "application/json"}
ISO = "2025-11-22T08:26:40.000Z"  # NOW_MS


def message(**over: Any) -> dict[str, Any]:
    msg: dict[str, Any] = {
        "type": "track",
        "event": "Order Submitted",
        "messageId": "3b1f0c4e-8a61-4d55-9d2b-6a0f7e2f1a10",
        "userId": "u_10086",
        "anonymousId": "a-77",
        "timestamp": ISO,
        "properties": {"symbol": "600519", "symbolName": "贵州茅台", "side": "buy", "price": 1688.5, "quantity": 100},
        "context": {"library": {"name": "analytics-python", "version": "2.4.0"}},
        "integrations": {},
    }
    msg.update(over)
    return msg


def batch_body(*messages: dict[str, Any], **top: Any) -> bytes:
    return segment_json({"batch": list(messages), "sentAt": ISO, "writeKey": KEY, **top})


def decode(endpoint: str = "batch", body: bytes | None = None, headers: dict[str, str] | None = None, **kw: Any) -> Any:
    return segment.decode_request(endpoint, AUTH if headers is None else headers, body or batch_body(message()), **kw)


def mapped(request: Any, plan_mapper: segment.SegmentMapper | None = None) -> Any:
    return (plan_mapper or segment.SegmentMapper(vendor_plan())).map_request(request, now_ms=NOW_MS + 60_000)


def events(*messages: dict[str, Any]) -> list[dict[str, Any]]:
    result = mapped(decode(body=batch_body(*messages)))
    assert not result.rejections, result.rejections
    return result.events


def only(msg: dict[str, Any]) -> MappedRecord | Rejection:
    [record] = mapped(decode(body=batch_body(msg))).records
    return record


# -- endpoints and transport ---------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "endpoint"),
    [
        ("/segment/v1/batch", "batch"),
        ("/segment/v1/b", "batch"),
        ("/segment/v1/import/", "batch"),
        ("/segment/v1/track", "track"),
        ("/segment/v1/t", "track"),
        ("/segment/v1/identify", "identify"),
        ("/segment/v1/i", "identify"),
        ("/segment/v1/alias", "alias"),
        ("/segment/v1/a", "alias"),
        ("/segment/v1/page", "page"),
        ("/segment/v1/p", "page"),
        ("/segment/v1/screen", "screen"),
        ("/segment/v1/s", "screen"),
        ("/segment/v1/group", "group"),
        ("/segment/v1/g", "group"),
        ("/segment/v1/unknown", None),
    ],
)
def test_every_endpoint_path_is_recognised(path: str, endpoint: str | None) -> None:
    assert segment.endpoint_of(path) == endpoint


def test_a_batch_decodes_with_its_sent_at_and_context() -> None:
    body = batch_body(message(), message(type="identify", traits={"riskLevel": "C3"}), context={"locale": "zh-CN"})
    request = decode(body=body)
    assert (request.endpoint, request.write_key, request.sent_at) == ("batch", KEY, NOW_MS)
    assert [r.value["type"] for r in request.records] == ["track", "identify"]
    assert request.context == {"locale": "zh-CN"}


def test_a_gzipped_batch_decodes() -> None:
    body = segment_json({"batch": [message()], "sentAt": ISO}, compress=True)
    request = decode(body=body, headers={**AUTH, "Content-Encoding": "gzip"})
    assert request.records[0].value["properties"]["symbolName"] == "贵州茅台"


@pytest.mark.parametrize(
    ("endpoint", "msg"),
    [
        ("track", message()),
        ("identify", message(type="identify", traits={"riskLevel": "C2"})),
        ("alias", message(type="alias", previousId="a-77")),
        ("page", message(type="page", name="行情")),
        ("screen", message(type="screen", name="行情")),
        ("group", message(type="group", groupId="org-1")),
    ],
)
def test_single_message_endpoints_take_the_type_from_the_path(endpoint: str, msg: dict[str, Any]) -> None:
    msg = {k: v for k, v in msg.items() if k != "type"}
    request = decode(endpoint, segment_json(msg))
    assert request.endpoint == endpoint
    [record] = mapped(request).records
    assert isinstance(record, MappedRecord)
    assert record.events


def test_the_write_key_comes_from_basic_auth_then_the_body() -> None:
    assert decode(headers={"Authorization": basic("other")}).write_key == "other"
    assert decode(headers={}).write_key == KEY  # the batch's writeKey
    single = segment_json({**message(), "writeKey": "from-message"})
    assert decode("track", single, headers={"Content-Type": "text/plain"}).write_key == "from-message"


@pytest.mark.parametrize(
    ("headers", "body", "words"),
    [
        ({}, segment_json({"batch": [message()]}), "no write key"),
        ({"Authorization": "Basic !!!"}, None, "not base64 of 'writeKey:'"),
        ({"Authorization": "Bearer eyJhbGci"}, None, "OAuth bearer tokens are not supported"),
    ],
)
def test_missing_or_unusable_credentials_are_unauthenticated(
    headers: dict[str, str], body: bytes | None, words: str
) -> None:
    with pytest.raises(Unauthenticated, match=words) as info:
        decode(body=body, headers=headers)
    assert info.value.status == 401
    assert KEY not in str(info.value)


@pytest.mark.parametrize(
    ("endpoint", "body", "headers", "error", "words"),
    [
        ("batch", b"[1, 2]", AUTH, Undecodable, "body: expected a JSON object"),
        ("batch", b"batch=1", AUTH, Undecodable, "expected JSON"),
        ("batch", b'{"batch": {"a": 1}}', AUTH, Undecodable, "Expected `array`, got `object` - at `$.batch`"),
        ("batch", b'{"batch": [1, }', AUTH, Undecodable, "body: invalid JSON"),
        ("batch", b"{}", {**AUTH, "Content-Encoding": "br"}, UnsupportedMediaType, "Content-Encoding 'br'"),
        ("track", b"[]", AUTH, Undecodable, "expected a JSON object"),
    ],
)
def test_malformed_bodies_get_errors_that_name_what_was_wrong(
    endpoint: str, body: bytes, headers: dict[str, str], error: type[VendorError], words: str
) -> None:
    with pytest.raises(error) as info:
        segment.decode_request(endpoint, headers, body)
    assert words in str(info.value)


def test_limits_apply_to_body_and_messages() -> None:
    with pytest.raises(TooLarge, match="body: 2001 bytes"):
        decode(body=b" " * 2001, limits=VendorLimits(max_body_bytes=2000))
    with pytest.raises(TooLarge, match="batch: 3 records, over the limit of 2"):
        decode(body=batch_body(message(), message(), message()), limits=VendorLimits(max_records=2))
    big = message(properties={"note": "长" * 12_000})
    request = decode(body=batch_body(message(), big))
    assert request.records[1].problem is not None
    assert [type(r).__name__ for r in mapped(request).records] == ["MappedRecord", "Rejection"]


def test_an_unknown_endpoint_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown Segment endpoint 'x'"):
        segment.decode_request("x", AUTH, b"{}")


# -- mapping ---------------------------------------------------------------------------


def test_a_mapped_track_passes_the_plan_like_a_native_event() -> None:
    [event] = events(message())
    assert event == {
        "type": "track",
        "event": "stock_order_submit",
        "event_id": "segment:m:3b1f0c4e-8a61-4d55-9d2b-6a0f7e2f1a10",
        "time": NOW_MS,
        "identities": {"login_id": "u_10086", "anonymous_id": "a-77"},
        "properties": {
            "stock_code": "600519",
            "stock_name": "贵州茅台",
            "side": "buy",
            "price": 1688.5,
            "quantity": 100,
            "$lib": "segment-analytics-python",
            "$lib_version": "2.4.0",
        },
    }
    assert validator().validate(event) == []


def test_violations_get_the_plans_reasons_and_unmapped_events_its_policy() -> None:
    [bad] = events(message(properties={"symbol": "6005", "side": "buy", "price": 0, "quantity": 100}))
    assert {(v.rule, v.path) for v in validator().validate(bad)} == {
        ("pattern", "/properties/stock_code"),
        ("range", "/properties/price"),
    }
    [unmapped] = events(message(event="Fund Viewed", properties={}))
    assert unmapped["event"] == "Fund Viewed"
    assert [v.rule for v in validator().validate(unmapped)] == ["unknown_event"]


def test_per_event_maps_and_the_plans_identity_map() -> None:
    doc = json.loads(VENDOR_PLAN.read_text())
    doc["mappings"]["segment"]["identities"] = {"userId": "customer_no"}
    m = segment.SegmentMapper(parse_plan(json.dumps(doc)))
    msg = message(event="Logged In", userId="0012345678", properties={"loginMethod": "face"})
    [event] = mapped(decode(body=batch_body(msg)), m).events
    assert event["event"] == "account_login"
    assert event["identities"] == {"customer_no": "0012345678", "anonymous_id": "a-77"}
    assert event["properties"]["method"] == "face"
    assert Validator(parse_plan(json.dumps(doc))).validate(event) == []


def test_identify_becomes_a_profile_set_and_a_bind() -> None:
    msg = message(type="identify", traits={"riskLevel": "C3", "nickname": "老王", "loginCount": 3})
    profile, bind = events(msg)
    assert profile["type"] == "profile_set"
    assert profile["properties"] == {"risk_level": "C3", "nickname": "老王", "login_count": 3}
    assert (bind["type"], bind["identities"]) == ("bind", {"anonymous_id": "a-77", "login_id": "u_10086"})
    assert bind["event_id"] == profile["event_id"] + "/bind"
    assert [validator().validate(e) for e in (profile, bind)] == [[], []]


def test_identify_with_one_id_is_a_profile_set_and_without_traits_a_bind_or_nothing() -> None:
    [profile] = events(message(type="identify", anonymousId=None, traits={"riskLevel": "C1"}))
    assert (profile["type"], profile["identities"]) == ("profile_set", {"login_id": "u_10086"})
    [bind] = events(message(type="identify", traits={}))
    assert bind["type"] == "bind"
    assert bind["event_id"].startswith("segment:m:")
    empty = only(message(type="identify", anonymousId=None, traits={}))
    assert isinstance(empty, MappedRecord)
    assert (empty.events, empty.dropped) == ((), ("identify.empty",))


def test_alias_binds_the_previous_id_to_the_user_id() -> None:
    [bind] = events(message(type="alias", previousId="a-old", anonymousId="a-77", userId="u_10086"))
    assert bind["type"] == "bind"
    assert bind["identities"] == {"login_id": "u_10086", "anonymous_id": "a-old"}
    assert bind["properties"] == {"$lib": "segment-analytics-python", "$lib_version": "2.4.0"}
    assert validator().validate(bind) == []


def test_page_and_screen_are_the_vendor_events_page_and_screen() -> None:
    page = message(
        type="page",
        name="行情",
        category="quotes",
        properties={"url": "https://m.broker.cn/q", "path": "/q", "title": "行情中心", "referrer": "https://x.cn"},
    )
    [event] = events(page)
    assert event["event"] == "app_page_view"
    assert event["properties"] == {
        "$screen_name": "行情",
        "category": "quotes",
        "$url": "https://m.broker.cn/q",
        "page_path": "/q",
        "$title": "行情中心",
        "$referrer": "https://x.cn",
        "$lib": "segment-analytics-python",
        "$lib_version": "2.4.0",
    }
    assert [(v.rule, v.path) for v in validator().validate(event)] == [("additional_property", "/properties/category")]
    [screen] = events(message(type="screen", name="持仓", properties={}))
    assert (screen["event"], screen["properties"]["$screen_name"]) == ("app_page_view", "持仓")


def test_group_is_the_vendor_event_group_with_its_id_and_traits() -> None:
    [event] = events(message(type="group", groupId="org-88", traits={"name": "华东机构部"}))
    assert event["event"] == "account_group_join"
    assert event["properties"]["group_id"] == "org-88"
    assert event["properties"]["group_name"] == "华东机构部"
    assert validator().validate(event) == []


def test_context_becomes_presets_and_utm_properties() -> None:
    context = {
        "library": {"name": "analytics-kotlin", "version": "1.15.0"},
        "app": {"name": "鑫股宝", "version": "5.2.1", "build": "521"},
        "device": {"model": "Mate 60", "manufacturer": "HUAWEI", "id": "dev-1"},
        "os": {"name": "Android", "version": "12"},
        "screen": {"width": 1080, "height": 2400, "density": 3},
        "network": {"carrier": "中国移动", "wifi": True, "cellular": False},
        "campaign": {"source": "wechat", "medium": "social", "name": "双十一", "term": "港股"},
        "ip": "10.0.0.1",
        "locale": "zh-CN",
        "userAgent": "x",
    }
    result = only(message(event="$AppStart", properties={}, context=context))
    assert isinstance(result, MappedRecord)
    assert result.events[0]["properties"] == {
        "$lib": "segment-analytics-kotlin",
        "$lib_version": "1.15.0",
        "$app_name": "鑫股宝",
        "$app_version": "5.2.1",
        "$device_model": "Mate 60",
        "$manufacturer": "HUAWEI",
        "$os": "Android",
        "$os_version": "12",
        "$screen_width": 1080,
        "$screen_height": 2400,
        "$carrier": "中国移动",
        "$network_type": "wifi",
        "utm_source": "wechat",
        "utm_medium": "social",
        "utm_campaign": "双十一",
    }
    assert sorted(result.dropped) == [
        "context.app.build",
        "context.campaign.term",
        "context.device.id",
        "context.ip",
        "context.locale",
        "context.network.cellular",
        "context.screen.density",
        "context.userAgent",
    ]


def test_batch_context_is_extended_by_each_messages_own() -> None:
    body = batch_body(message(context={"app": {"version": "5.3"}}), context={"app": {"name": "鑫股宝"}})
    [event] = mapped(decode(body=body)).events
    assert event["properties"]["$app_version"] == "5.3"
    assert "$app_name" not in event["properties"]  # a message's group replaces the batch's


def test_a_property_the_plan_maps_onto_a_preset_wins_over_context() -> None:
    doc = json.loads(VENDOR_PLAN.read_text())
    doc["mappings"]["segment"]["properties"]["appVersion"] = "$app_version"
    m = segment.SegmentMapper(parse_plan(json.dumps(doc)))
    msg = message(properties={"appVersion": "from-props", "$os": "x"}, context={"app": {"version": "ctx"}})
    [record] = mapped(decode(body=batch_body(msg)), m).records
    assert isinstance(record, MappedRecord)
    assert record.events[0]["properties"]["$app_version"] == "from-props"
    assert record.dropped == ("properties.$os",)  # `$` names are maidian's: only mapped ones get through


# -- time -------------------------------------------------------------------------------


def test_time_comes_from_timestamp_then_original_timestamp_and_sent_at_from_the_batch() -> None:
    first = only(message(timestamp="2025-11-22T16:26:40.250+08:00"))
    assert isinstance(first, MappedRecord)
    assert (first.events[0]["time"], first.sent_at) == (NOW_MS + 250, NOW_MS)
    browser = only(message(timestamp=None, originalTimestamp="2025-11-22T08:26:39.000Z", sentAt=ISO))
    assert isinstance(browser, MappedRecord)
    assert (browser.events[0]["time"], browser.sent_at) == (NOW_MS - 1000, NOW_MS)
    naive = only(message(timestamp="2025-11-22T08:26:40"))
    assert isinstance(naive, MappedRecord)
    assert naive.events[0]["time"] == NOW_MS


def test_a_message_without_any_time_is_dated_by_its_sending_and_noted() -> None:
    result = only(message(timestamp=None))
    assert isinstance(result, MappedRecord)
    assert result.events[0]["time"] == NOW_MS  # the batch's sentAt
    assert "time.missing" in result.dropped
    alone = mapped(decode("track", segment_json(message(timestamp=None))))
    assert alone.events[0]["time"] == NOW_MS + 60_000  # nothing at all: the receiving time


def test_an_unreadable_timestamp_rejects_the_message() -> None:
    rejected = only(message(timestamp="22/11/2025"))
    assert isinstance(rejected, Rejection)
    [reason] = rejected.reasons
    assert (reason.rule, reason.path) == ("vendor_record", "/timestamp")


@pytest.mark.parametrize(
    ("msg", "path"),
    [
        (message(type="delete"), "/type"),
        (message(type=None), "/type"),
        (message(event=""), "/event"),
        (message(properties=[1]), "/properties"),
        (message(type="identify", traits="x"), "/traits"),
        (message(type="group", traits=[1]), "/traits"),
        (message(type="page", properties="x"), "/properties"),
    ],
)
def test_malformed_messages_are_rejected_with_a_located_reason(msg: dict[str, Any], path: str) -> None:
    rejected = only(msg)
    assert isinstance(rejected, Rejection)
    assert [(v.rule, v.path) for v in rejected.reasons] == [("vendor_record", path)]
    assert rejected.record == msg


# -- ids -----------------------------------------------------------------------------------


def test_message_ids_are_the_dedup_key_and_survive_a_resend() -> None:
    body = batch_body(message(), message(messageId="m-2"))
    first = [e["event_id"] for e in mapped(decode(body=body)).events]
    assert first == ["segment:m:3b1f0c4e-8a61-4d55-9d2b-6a0f7e2f1a10", "segment:m:m-2"]
    assert first == [e["event_id"] for e in mapped(decode(body=body)).events]


def test_long_and_missing_message_ids() -> None:
    [long_id] = events(message(messageId="x" * 300))
    assert long_id["event_id"].startswith("segment:m:")
    assert len(long_id["event_id"]) <= 128
    no_id = message()
    del no_id["messageId"]
    a, b = events(no_id, no_id)
    assert a["event_id"].startswith("segment:c:")
    assert b["event_id"] == a["event_id"] + ".1"
    assert [e["event_id"] for e in events(no_id, no_id)] == [a["event_id"], b["event_id"]]


# -- answers -------------------------------------------------------------------------------


def test_success_and_error_answers_have_segments_shape() -> None:
    ok = segment.success_response({"Origin": "https://m.broker.cn"})
    assert (ok.status, json.loads(ok.body)) == (200, {"success": True})
    assert ("Access-Control-Allow-Origin", "https://m.broker.cn") in ok.headers
    err = segment.error_response(Unauthenticated("no write key"), {})
    assert (err.status, json.loads(err.body)) == (
        401,
        {"success": False, "code": "unauthenticated", "message": "no write key"},
    )
