"""The vendor routes on a real collector app: transports, answers, auth, quotas, quarantine, dry runs, metrics."""

from __future__ import annotations

import errno
import io
import ipaddress
import json
import os
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import jsonschema
import pytest
from aiohttp.test_utils import TestClient

from maidian.collector import CollectorError, RequestError, VendorError
from maidian.collector.config import resolve_config
from maidian.collector.errors import ConfigError, Forbidden, NoSuchPerson
from maidian.collector.http.app import COLLECTOR, make_app
from maidian.collector.pipeline.auth import Authenticator, Principal
from maidian.collector.read import export_events, person_events
from maidian.collector.settings import AuthConfig, Config, StorageConfig, VendorSource, WriteKey, hash_key
from maidian.collector.store.frames import read_frames, segment_files
from tests.collector.vendor_helpers import basic, securities_vendor_plan, segment_json, sensors_form, sensors_payload
from tests.conftest import ROOT

APP_KEY = "mk_broker_app_0001"
SEGMENT_KEY = "wk_broker_service_0001"
REVOKED_KEY = "wk_broker_revoked_0001"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def now_ms() -> int:
    return int(time.time() * 1000)


def config(tmp_path: Path, **auth: Any) -> Config:
    keys = (
        WriteKey("broker-app", hash_key(APP_KEY)),
        WriteKey("broker-service", hash_key(SEGMENT_KEY)),
        WriteKey("slow-app", hash_key("mk_slow_app_0001"), rate_events_per_s=2, burst_events=2),
        WriteKey("old-service", hash_key(REVOKED_KEY), revoked=True),
    )
    projects = (
        VendorSource("broker", "broker-app"),
        VendorSource("slow", "slow-app"),
        VendorSource("retired", "old-service"),
    )
    return Config(
        plan=securities_vendor_plan(tmp_path),
        storage=replace(StorageConfig(), data_dir=tmp_path / "data", index_interval_s=0.05),
        auth=AuthConfig(write_keys=keys, **{"sensors_projects": projects, **auth}),
    )


@pytest.fixture
async def client(aiohttp_client: Any, tmp_path: Path) -> TestClient[Any, Any]:
    test_client: TestClient[Any, Any] = await aiohttp_client(make_app(config(tmp_path)))
    return test_client


def data_dir(client: TestClient[Any, Any]) -> Path:
    return Path(client.server.app[COLLECTOR].config.storage.data_dir)


def login_record(login: str, method: str = "sms", **over: Any) -> dict[str, Any]:
    """A Sensors track record as the browser and mobile SDKs send it."""
    record: dict[str, Any] = {
        "type": "track",
        "event": "LoginSubmit",
        "time": now_ms(),
        "distinct_id": login,
        "properties": {"$is_login_id": True, "$lib": "js", "$lib_version": "1.26.0", "Method": method},
        "_track_id": 123456789,
    }
    record.update(over)
    return record


def copies(log: Path) -> Counter[str]:
    return Counter(
        eid for path in segment_files(log) for frame in read_frames(path)[0] for eid in frame.head.get("oid", ())
    )


async def metrics(client: TestClient[Any, Any]) -> str:
    resp = await client.get("/metrics")
    return str(await resp.text())


# -- Sensors transports ------------------------------------------------------------------------


async def test_an_image_beacon_is_stored_and_answered_with_a_gif(client: TestClient[Any, Any]) -> None:
    record = login_record("u_gif")
    query = urlencode({"project": "broker", "data": sensors_payload(record, compress=False), "ext": "crc=1"})
    resp = await client.get(f"/sa.gif?{query}", headers={"Origin": "https://m.broker.cn"})
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "image/gif"
    assert resp.headers["Access-Control-Allow-Origin"] == "https://m.broker.cn"
    assert (await resp.read()).startswith(b"GIF89a")
    [stored] = person_events(data_dir(client), "u_gif")
    assert (stored["event"], stored["properties"]["method"]) == ("user_login_submit", "sms")
    assert stored["event_id"].startswith("sensors:t:")  # the browser's _track_id


async def test_a_beacon_over_aiohttps_default_line_limit_is_read(client: TestClient[Any, Any]) -> None:
    record = login_record("u_long", properties={"$is_login_id": True, "Method": "sms", "$referrer": "x" * 7_000})
    query = urlencode({"project": "broker", "data": sensors_payload(record, compress=False)})
    assert len(query) > 8190
    resp = await client.get(f"/sa?{query}")
    assert resp.status == 200
    [judged] = [r for r in export_events(data_dir(client), quarantined=True) if r.get("quarantined")]
    assert judged["event"]["properties"]["$referrer"] == "x" * 7_000  # read whole; the plan caps it at 2048
    assert judged["reasons"][0]["path"] == "/properties/$referrer"


async def test_without_sensors_projects_the_request_line_limit_stays_aiohttps(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    native: TestClient[Any, Any] = await aiohttp_client(make_app(config(tmp_path, sensors_projects=())))
    resp = await native.get("/healthz?" + "x" * 9000)
    assert resp.status == 400  # the native routes' limit is unchanged
    resp = await native.post("/sa?project=broker", data=sensors_form([login_record("u_1")]), headers=FORM)
    assert resp.status == 403


async def test_a_text_plain_beacon_and_a_form_post_are_stored(client: TestClient[Any, Any]) -> None:
    beacon = "data=" + quote(sensors_payload(login_record("u_beacon"), compress=False))
    resp = await client.post("/sa?project=broker", data=beacon, headers={"Content-Type": "text/plain"})
    assert (resp.status, await resp.read()) == (200, b"")
    resp = await client.post("/sa?project=broker", data=sensors_form([login_record("u_form")]), headers=FORM)
    assert resp.status == 200
    assert len(person_events(data_dir(client), "u_beacon")) == len(person_events(data_dir(client), "u_form")) == 1


async def test_flush_time_corrects_a_device_clock_a_day_behind(client: TestClient[Any, Any]) -> None:
    day_ms = 86_400_000
    behind = now_ms() - day_ms
    record = login_record("u_clock", time=behind - 5_000, _flush_time=behind)
    resp = await client.post("/sa?project=broker", data=sensors_form([record]), headers=FORM)
    assert resp.status == 200
    [stored] = person_events(data_dir(client), "u_clock")
    assert stored["device_time"] == behind - 5_000
    assert abs(stored["time"] - (now_ms() - 5_000)) < 5_000  # placed where it happened, by the collector's clock
    assert stored["flags"] == ["clock_skew"]


async def test_a_cors_preflight_is_answered_on_every_vendor_path(client: TestClient[Any, Any]) -> None:
    for path in ("/sa", "/sa.gif", "/debug", "/segment/v1/t"):
        resp = await client.options(path, headers={"Origin": "https://m.broker.cn"})
        assert resp.status == 204, path
        assert resp.headers["Access-Control-Allow-Origin"] == "https://m.broker.cn"


# -- Sensors answers and refusals --------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "body", "status", "code"),
    [
        ("project=nobody", sensors_form([login_record("u_x")]), 403, "forbidden"),
        ("project=retired", sensors_form([login_record("u_x")]), 403, "forbidden"),  # its key was revoked
        ("project=broker", b"data_list=AAAA&gzip=9", 415, "unsupported_media_type"),
        ("project=broker", b"data_list=%%%", 400, "undecodable"),
        ("project=broker", b"hello=world", 400, "undecodable"),
    ],
)
async def test_sensors_refusals_are_json_and_never_401(
    client: TestClient[Any, Any], query: str, body: bytes, status: int, code: str
) -> None:
    resp = await client.post(f"/sa?{query}", data=body, headers=FORM)
    assert resp.status == status
    assert (await resp.json())["code"] == code


async def test_a_record_naming_an_unserved_project_refuses_the_request(client: TestClient[Any, Any]) -> None:
    records = [login_record("u_mix1"), login_record("u_mix2", project="nobody")]
    resp = await client.post("/sa?project=broker", data=sensors_form(records), headers=FORM)
    assert resp.status == 403
    records = [login_record("u_mix1"), login_record("u_mix2", project="slow")]  # another write key
    resp = await client.post("/sa?project=broker", data=sensors_form(records), headers=FORM)
    assert (resp.status, (await resp.json())["code"]) == (400, "undecodable")
    assert not any(copies(data_dir(client) / "raw").values())


async def test_a_project_over_its_quota_gets_503_with_retry_after(client: TestClient[Any, Any]) -> None:
    records = [login_record(f"u_q{n}", _track_id=n) for n in range(2)]
    resp = await client.post("/sa?project=slow", data=sensors_form(records), headers=FORM)
    assert resp.status == 200
    resp = await client.post("/sa?project=slow", data=sensors_form([login_record("u_q9")]), headers=FORM)
    assert resp.status == 503  # Sensors' Android SDK keeps and retries on 5xx, and deletes on 429
    assert int(resp.headers["Retry-After"]) >= 1
    assert (await resp.json())["code"] == "rate_limited"


async def test_records_no_event_comes_of_are_quarantined_once_with_reasons(client: TestClient[Any, Any]) -> None:
    records: list[Any] = [
        login_record("u_rej"),
        [1, 2],  # not an object
        {"type": "track", "event": "LoginSubmit", "distinct_id": "u_rej"},  # no time
        {"type": "item_set", "time": now_ms(), "item_type": "stock", "item_id": "600519"},
        login_record("u_rej", properties={"Method": "sms", "Note": "长" * 12_000}, _track_id=5),  # over 32 KiB
    ]
    body = sensors_form(records)
    for _ in range(2):  # the second request is a retry: nothing is stored twice
        resp = await client.post("/sa?project=broker", data=body, headers=FORM)
        assert resp.status == 200
    quarantined = [r for r in export_events(data_dir(client), quarantined=True) if r.get("quarantined")]
    rules = sorted(r["reasons"][0]["rule"] for r in quarantined)
    assert rules == ["vendor_record", "vendor_record", "vendor_record", "vendor_unsupported"]
    not_object = next(r for r in quarantined if "record_json" in r["event"])
    assert not_object["event"]["vendor"] == "sensors"
    assert json.loads(not_object["event"]["record_json"]) == [1, 2]
    assert all(n == 1 for n in copies(data_dir(client) / "quarantine").values())
    assert len(copies(data_dir(client) / "quarantine")) == 4
    assert [e["event"] for e in person_events(data_dir(client), "u_rej")] == ["user_login_submit"]
    text = await metrics(client)
    assert 'maidian_vendor_events_total{vendor="sensors",outcome="quarantined"} 8' in text
    assert 'maidian_vendor_events_total{vendor="sensors",outcome="duplicate"} 1' in text


async def test_dry_run_judges_and_stores_nothing_debug_stores_and_judges(client: TestClient[Any, Any]) -> None:
    good, bad = login_record("u_dbg"), login_record("u_dbg", "pigeon", _track_id=2)
    resp = await client.post("/sa?project=broker", data=sensors_form([good, bad]), headers={**FORM, "Dry-Run": "true"})
    assert resp.status == 400
    verdict = await resp.json()
    assert (verdict["valid"], verdict["stored"]) == (False, False)
    assert [r["valid"] for r in verdict["records"]] == [True, False]
    assert verdict["records"][1]["reasons"][0]["path"] == "/properties/method"
    assert not copies(data_dir(client) / "raw")
    assert not copies(data_dir(client) / "quarantine")

    resp = await client.post("/debug?project=broker", data=sensors_form([good]), headers=FORM)
    assert (resp.status, (await resp.json())["stored"]) == (200, True)
    assert [e["properties"]["method"] for e in person_events(data_dir(client), "u_dbg")] == ["sms"]


# -- Segment -----------------------------------------------------------------------------------


def track(user: str, **over: Any) -> dict[str, Any]:
    msg: dict[str, Any] = {
        "type": "track",
        "event": "Logged In",
        "userId": user,
        "messageId": f"m-{user}",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "properties": {"loginMethod": "password"},
    }
    msg.update(over)
    return msg


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, "unauthenticated"),
        ({"Authorization": "Bearer abc"}, 401, "unauthenticated"),
        ({"Authorization": basic("wk_unknown")}, 401, "unauthenticated"),
        ({"Authorization": basic(REVOKED_KEY)}, 403, "forbidden"),
    ],
)
async def test_segment_refusals_have_its_error_shape(
    client: TestClient[Any, Any], headers: dict[str, str], status: int, code: str
) -> None:
    body = segment_json({"batch": [track("u_refused")]})
    resp = await client.post("/segment/v1/batch", data=body, headers={"Content-Type": "application/json", **headers})
    assert resp.status == status
    answer = await resp.json()
    assert (answer["success"], answer["code"]) == (False, code)


async def test_analytics_js_single_messages_with_the_key_in_the_body(client: TestClient[Any, Any]) -> None:
    body = segment_json({**track("u_js"), "writeKey": SEGMENT_KEY})
    resp = await client.post("/segment/v1/t", data=body, headers={"Content-Type": "text/plain"})
    assert (resp.status, await resp.json()) == (200, {"success": True})
    [stored] = person_events(data_dir(client), "u_js")
    assert (stored["event"], stored["source"]) == ("user_login_submit", "broker-service")


async def test_an_integer_beyond_64_bits_is_quarantined_as_sent(client: TestClient[Any, Any]) -> None:
    """JSON allows it, msgpack and the raw log do not: the record is quarantined, named and kept exactly."""
    wide = track("u_wide", messageId="m-wide", properties={"loginMethod": "password", "attempts": [10**30]})
    body = segment_json({"batch": [wide, track("u_narrow")], "writeKey": SEGMENT_KEY})
    resp = await client.post("/segment/v1/batch", data=body, headers={"Content-Type": "text/plain"})
    assert (resp.status, await resp.json()) == (200, {"success": True})
    [stored] = person_events(data_dir(client), "u_narrow")
    assert stored["event"] == "user_login_submit"
    with pytest.raises(NoSuchPerson):
        person_events(data_dir(client), "u_wide")
    [record] = [r for r in export_events(data_dir(client), quarantined=True) if r.get("quarantined")]
    assert [(r["rule"], r["path"]) for r in record["reasons"]] == [("limit", "/properties/attempts/0")]
    assert "64-bit" in record["reasons"][0]["message"]
    assert record["event"]["properties"]["attempts"] == [10**30]


async def test_a_gzip_batch_over_the_body_cap_is_413_before_decoding(client: TestClient[Any, Any]) -> None:
    headers = {"Authorization": basic(SEGMENT_KEY), "Content-Encoding": "gzip", "Content-Type": "application/json"}
    body = io.BytesIO(b"\x1f\x8b" + b"\0" * (1 << 20))
    resp = await client.post("/segment/v1/batch", data=body, headers=headers)
    assert resp.status == 413
    assert (await resp.json())["code"] == "too_large"


async def test_metrics_name_the_vendor_paths_and_count_dropped_fields(client: TestClient[Any, Any]) -> None:
    msg = track("u_m", context={"library": {"name": "analytics-python", "version": "2.4.0"}, "ip": "10.0.0.1"})
    headers = {"Authorization": basic(SEGMENT_KEY), "Content-Type": "application/json"}
    resp = await client.post("/segment/v1/batch", data=segment_json({"batch": [msg]}), headers=headers)
    assert resp.status == 200
    text = await metrics(client)
    assert 'maidian_requests_total{path="/segment/v1/batch",status="200"} 1' in text
    assert 'maidian_vendor_requests_total{vendor="segment",status="200"} 1' in text
    assert 'maidian_vendor_events_total{vendor="segment",outcome="accepted"} 1' in text
    assert 'maidian_vendor_dropped_fields_total{vendor="segment",field="context.ip"} 1' in text
    assert 'maidian_events_total{outcome="accepted"} 1' in text  # the native pipeline counted it too


# -- configuration and errors ------------------------------------------------------------------


def test_vendor_errors_belong_to_the_collectors_error_tree() -> None:
    assert issubclass(VendorError, RequestError)
    assert issubclass(VendorError, CollectorError)


def test_vendor_bindings_are_read_from_the_configuration(tmp_path: Path) -> None:
    toml = tmp_path / "maidian.toml"
    toml.write_text(
        f'plan = "{securities_vendor_plan(tmp_path)}"\n'
        f'[[write_keys]]\nname = "app"\nsha256 = "{hash_key(APP_KEY)}"\n'
        f'[[write_keys]]\nname = "orders"\nsha256 = "{hash_key("mk_orders_0001")}"\n'
        '[[vendors.sensors.projects]]\nname = "broker"\nwrite_key = "app"\n'
        '[[vendors.sensors.projects]]\nname = "orders"\nwrite_key = "orders"\ntrusted = true\n'
        'allow_from = ["10.20.0.0/16", "::1"]\n'
        '[[vendors.segment.sources]]\nwrite_key = "orders"\nallow_from = ["10.20.0.0/16"]\n'
    )
    auth = resolve_config(file=toml, env={}).auth
    assert [(p.name, p.write_key, p.trusted) for p in auth.sensors_projects] == [
        ("broker", "app", False),
        ("orders", "orders", True),
    ]
    assert [str(n) for n in auth.sensors_projects[1].allow_from] == ["10.20.0.0/16", "::1/128"]
    assert [(s.name, s.trusted) for s in auth.segment_sources] == [("orders", False)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[vendors.sensors.projects]]\nname = "b"\nwrite_key = "nobody"\n', "must name one of the"),
        ('[[vendors.sensors.projects]]\nname = "b"\nwrite_key = "app"\ntrusted = true\n', "allow_from"),
        ('[[vendors.sensors.projects]]\nname = "b"\nwrite_key = "app"\nallow_from = ["10.0.0.300"]\n', "allow_from"),
        (
            '[[vendors.sensors.projects]]\nname = "b"\nwrite_key = "app"\ntoken = "x"\n',
            r":8: vendors\.sensors\.projects\[0\]\.token: unknown setting",
        ),
        (
            '[[vendors.sensors.projects]]\nwrite_key = "app"\n[[vendors.sensors.projects]]\nwrite_key = "app"\n',
            "listed twice",
        ),
        ('[[vendors.mixpanel.projects]]\nname = "b"\n', r":5: vendors\.mixpanel: unknown setting"),
        ("[vendors.segment]\nenabled = true\n", r":6: vendors\.segment\.enabled: unknown setting"),
    ],
)
def test_vendor_configuration_errors_name_the_setting(tmp_path: Path, text: str, message: str) -> None:
    toml = tmp_path / "maidian.toml"
    toml.write_text(f'plan = "x.json"\n[[write_keys]]\nname = "app"\nsha256 = "{hash_key(APP_KEY)}"\n{text}')
    with pytest.raises(ConfigError, match=message):
        resolve_config(file=toml, env={})


def test_bindings_reload_with_the_keys_and_check_the_peer_address() -> None:
    key = WriteKey("orders", hash_key("mk_orders_0001"))
    auth = Authenticator(AuthConfig(write_keys=(key,)))
    with pytest.raises(Forbidden):
        auth.sensors_project("orders", "10.20.0.5")
    source = VendorSource("orders", "orders", trusted=True, allow_from=(ipaddress.ip_network("10.20.0.0/16"),))
    auth.reload(AuthConfig(write_keys=(key,), sensors_projects=(source,), segment_sources=(source,)))
    assert auth.sensors_project("orders", "10.20.0.5").trusted
    assert auth.sensors_project("orders", "::ffff:10.20.3.4").trusted  # IPv4 behind an IPv6 socket
    assert auth.segment_key("mk_orders_0001", "10.20.0.5") == Principal("orders", "segment", trusted=True, key=key)
    for peer in ("10.21.0.5", None, "not-an-address"):
        with pytest.raises(Forbidden, match="allow_from"):
            auth.sensors_project("orders", peer)
        with pytest.raises(Forbidden, match="allow_from"):
            auth.segment_key("mk_orders_0001", peer)


async def test_vendor_answers_match_the_openapi_schemas(client: TestClient[Any, Any]) -> None:
    doc = json.loads((ROOT / "docs" / "openapi.json").read_text())

    def check(value: Any, name: str) -> None:
        schema = {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}
        jsonschema.validate(value, schema, cls=jsonschema.Draft202012Validator)

    resp = await client.post("/sa?project=nobody", data=sensors_form([login_record("u_o")]), headers=FORM)
    check(await resp.json(), "SensorsError")
    body = sensors_form([login_record("u_o"), login_record("u_o", "pigeon", _track_id=3)])
    resp = await client.post("/debug?project=broker", data=body, headers={**FORM, "Dry-Run": "true"})
    check(await resp.json(), "SensorsVerdict")
    resp = await client.post("/segment/v1/batch", data=b"{}", headers={"Authorization": "Bearer x"})
    check(await resp.json(), "SegmentError")


async def test_a_failed_write_is_answered_retry_later_and_the_retry_stores_once(
    client: TestClient[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from maidian.collector.store import log as storage

    def full(fd: int, data: Any) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    sensors_body = sensors_form([login_record("u_disk")])
    segment_body = segment_json({"batch": [track("u_disk2")]})
    segment_headers = {"Authorization": basic(SEGMENT_KEY), "Content-Type": "application/json"}
    with monkeypatch.context() as patch:
        patch.setattr(storage.os, "write", full)
        resp = await client.post("/sa?project=broker", data=sensors_body, headers=FORM)
        assert (resp.status, (await resp.json())["code"]) == (503, "unavailable")  # Sensors SDKs retry 5xx
        assert int(resp.headers["Retry-After"]) >= 1
        resp = await client.post("/segment/v1/batch", data=segment_body, headers=segment_headers)
        assert (resp.status, (await resp.json())["success"]) == (503, False)
    assert not copies(data_dir(client) / "raw")
    for _ in range(2):  # the SDKs' retries once the disk has room again
        assert (await client.post("/sa?project=broker", data=sensors_body, headers=FORM)).status == 200
        assert (await client.post("/segment/v1/batch", data=segment_body, headers=segment_headers)).status == 200
    assert sorted(copies(data_dir(client) / "raw").values()) == [1, 1]
