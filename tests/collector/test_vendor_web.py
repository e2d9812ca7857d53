"""What browsers need from the vendor routes, and what the collector derives: on a real collector app.

analytics.js's settings and metrics routes, CORS on every answer (errors and
unknown paths included), the first-visit presets counted rather than
quarantined, and `$ip` and the User-Agent's presets derived per sender, with
trusted proxies for `X-Forwarded-For`.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from hypothesis import given
from hypothesis import strategies as st

from maidian.collector.http.app import COLLECTOR, make_app
from maidian.collector.read import export_events
from maidian.collector.settings import AuthConfig, Config, StorageConfig, VendorSource, WriteKey, hash_key
from maidian.collector.vendors.derive import client_ip, user_agent_properties
from tests.collector.vendor_helpers import securities_vendor_plan, sensors_form, sensors_track

APP_KEY = "mk_broker_web_0001"
SEGMENT_KEY = "wk_broker_web_0001"
ORIGIN = {"Origin": "https://m.broker.example"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
CHROME_ANDROID = (
    "Mozilla/5.0 (Linux; Android 14; V2309A Build/UP1A.231005.007; wv) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Version/4.0 Chrome/116.0.0.0 Mobile Safari/537.36"
)
IPHONE_WECHAT = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Mobile/15E148 MicroMessenger/8.0.50(0x1800322d) NetType/WIFI Language/zh_CN"
)
PROXIES = (ipaddress.ip_network("10.1.0.0/16"), ipaddress.ip_network("127.0.0.1/32"))


def config(tmp_path: Path, **auth: Any) -> Config:
    keys = (WriteKey("broker-web", hash_key(APP_KEY)), WriteKey("broker-segment", hash_key(SEGMENT_KEY)))
    projects = (VendorSource("broker", "broker-web"), VendorSource("private", "broker-web", derive=()))
    return Config(
        plan=securities_vendor_plan(tmp_path),
        storage=replace(StorageConfig(), data_dir=tmp_path / "data", index_interval_s=0.05),
        auth=AuthConfig(write_keys=keys, **{"sensors_projects": projects, **auth}),
    )


@pytest.fixture
async def client(aiohttp_client: Any, tmp_path: Path) -> TestClient[Any, Any]:
    test_client: TestClient[Any, Any] = await aiohttp_client(make_app(config(tmp_path)))
    return test_client


def stored(client: TestClient[Any, Any], *, quarantined: bool = False) -> list[dict[str, Any]]:
    data = Path(client.server.app[COLLECTOR].config.storage.data_dir)
    return list(export_events(data, quarantined=quarantined))


def quote_view(distinct_id: str = "u_10086", market: str = "SH", **over: Any) -> dict[str, Any]:
    """A valid ViewQuote (the plan's stock_quote_view) as a Sensors SDK sends it, timed now."""
    props = {"$lib": "js", "$is_login_id": True, "StockCode": "600519", "Market": market, "EntrySource": "search"}
    return sensors_track("ViewQuote", time=int(time.time() * 1000), distinct_id=distinct_id, properties=props, **over)


def cors_of(headers: Any) -> str | None:
    value: str | None = headers.get("Access-Control-Allow-Origin")
    return value


# -- analytics.js ----------------------------------------------------------------------------------


async def test_settings_name_the_collector_as_the_only_destination(client: TestClient[Any, Any]) -> None:
    resp = await client.get(f"/segment/v1/projects/{SEGMENT_KEY}/settings", headers=ORIGIN)
    assert resp.status == 200
    assert cors_of(resp.headers) == ORIGIN["Origin"]
    settings = await resp.json()
    segmentio = settings["integrations"]["Segment.io"]
    assert segmentio["apiHost"] == f"{client.host}:{client.port}/segment/v1"
    assert segmentio["protocol"] == "http"
    assert set(settings["integrations"]) == {"Segment.io"}
    assert settings["metrics"]["sampleRate"] == 0


async def test_settings_behind_a_trusted_proxy_name_the_public_host(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await aiohttp_client(make_app(config(tmp_path, trusted_proxies=PROXIES)))
    headers = {**ORIGIN, "X-Forwarded-Proto": "https", "X-Forwarded-Host": "collector.broker.example"}
    settings = await (await client.get(f"/segment/v1/projects/{SEGMENT_KEY}/settings", headers=headers)).json()
    assert settings["integrations"]["Segment.io"]["apiHost"] == "collector.broker.example/segment/v1"
    assert settings["integrations"]["Segment.io"]["protocol"] == "https"


async def test_settings_for_an_unknown_key_are_refused_with_cors(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/segment/v1/projects/wk_nobody/settings", headers=ORIGIN)
    assert resp.status == 401
    assert cors_of(resp.headers) == ORIGIN["Origin"]
    assert (await resp.json())["success"] is False


async def test_metrics_are_taken_and_unknown_paths_answered_with_cors(client: TestClient[Any, Any]) -> None:
    series = b'{"series":[{"type":"Counter","metric":"analytics_js.invoke","value":1,"tags":{}}]}'
    resp = await client.post("/segment/v1/m", data=series, headers={**ORIGIN, "Content-Type": "text/plain"})
    assert resp.status == 200
    assert cors_of(resp.headers) == ORIGIN["Origin"]
    for method, path, status in (
        ("POST", "/segment/v1/nope", 404),
        ("GET", "/segment/v2/t", 404),
        ("PUT", "/segment/", 404),
        ("GET", "/segment/v1/batch", 405),
        ("PUT", "/sa", 405),
    ):
        resp = await client.request(method, path, headers=ORIGIN)
        assert resp.status == status, path
        assert cors_of(resp.headers) == ORIGIN["Origin"]
    assert (await client.get("/v1/nope", headers=ORIGIN)).headers.get("Access-Control-Allow-Origin") is None
    preflight = await client.options("/segment/v1/m", headers={**ORIGIN, "Access-Control-Request-Method": "POST"})
    assert preflight.status == 204
    assert stored(client) == []


async def test_sensors_errors_carry_cors(client: TestClient[Any, Any]) -> None:
    body = sensors_form([quote_view(project="elsewhere")])
    resp = await client.post("/sa", data=body, headers={**FORM, **ORIGIN})
    assert resp.status == 403
    assert cors_of(resp.headers) == ORIGIN["Origin"]
    resp = await client.post("/sa", data=b"data_list=%%%", headers={**FORM, **ORIGIN})
    assert resp.status == 400
    assert cors_of(resp.headers) == ORIGIN["Origin"]


# -- Sensors' web SDK ----------------------------------------------------------------------------------


def first_visit(login: str) -> dict[str, Any]:
    return {
        "type": "profile_set_once",
        "time": int(time.time() * 1000),
        "distinct_id": login,
        "properties": {
            "$first_visit_time": "2026-12-07 10:00:00.000",
            "$first_referrer": "",
            "$first_referrer_host": "",
            "$first_browser_language": "zh-cn",
            "$first_traffic_source_type": "直接流量",
            "$is_first_day": True,
        },
        "project": "broker",
    }


async def test_the_first_visit_presets_are_counted_not_quarantined(client: TestClient[Any, Any]) -> None:
    resp = await client.post("/sa", data=sensors_form([first_visit("u_first")]), headers=FORM)
    assert resp.status == 200
    assert stored(client, quarantined=True) == []
    metrics = await (await client.get("/metrics")).text()
    assert 'maidian_vendor_dropped_fields_total{vendor="sensors",field="properties.$first_visit_time"} 1' in metrics


async def test_the_debug_answer_to_a_browser_is_the_web_sdk_form(client: TestClient[Any, Any]) -> None:
    good = sensors_form([quote_view()], field="data")
    bad = sensors_form([quote_view(market="MARS")], field="data")
    headers = {**FORM, **ORIGIN, "Dry-Run": "false"}  # the web SDK's default: debug_mode_upload false
    ok = await client.post("/debug", data=good, headers=headers)
    assert (ok.status, await ok.json()) == (200, {})
    failed = await client.post("/debug", data=bad, headers=headers)
    assert failed.status == 200
    assert (await failed.json())["valid"] is False
    python_sdk = await client.post("/debug", data=bad, headers={**FORM, "Dry-Run": "true"})
    assert python_sdk.status == 400  # the Python DebugConsumer still gets its verdict
    assert stored(client, quarantined=True) == []  # all three only checked
    upload = await client.post("/debug", data=good, headers={**FORM, **ORIGIN, "Dry-Run": "true"})
    assert (upload.status, await upload.json()) == (200, {})
    assert len(stored(client)) == 1  # debug_mode_upload: true also stores


# -- what the collector derives ------------------------------------------------------------------------


async def test_ip_and_user_agent_presets_are_derived_per_project(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await aiohttp_client(make_app(config(tmp_path, trusted_proxies=PROXIES)))
    headers = {**FORM, "User-Agent": CHROME_ANDROID, "X-Forwarded-For": "203.0.113.9, 10.1.2.3"}
    record = quote_view("u_derived")
    assert (await client.post("/sa", data=sensors_form([record]), headers=headers)).status == 200
    private = quote_view("u_private", project="private")
    assert (await client.post("/sa", data=sensors_form([private]), headers=headers)).status == 200
    by_login = {e["identities"]["login_id"]: e["properties"] for e in stored(client)}
    derived = by_login["u_derived"]
    assert derived["$ip"] == "203.0.113.9"  # the proxies' hops are skipped
    assert (derived["$os"], derived["$os_version"]) == ("Android", "14")
    assert (derived["$runtime"], derived["$runtime_version"]) == ("Chrome Mobile WebView", "116.0")
    assert derived["$device_model"] == "V2309A"
    assert not {"$ip", "$os", "$runtime"} & set(by_login["u_private"])  # derive = [] for that project


def test_user_agents_give_the_presets_analysts_expect() -> None:
    iphone = dict(user_agent_properties(IPHONE_WECHAT))
    assert (iphone["$os"], iphone["$os_version"]) == ("iOS", "18.1")
    assert iphone["$runtime"] == "WeChat Browser"
    assert (iphone["$device_model"], iphone["$manufacturer"]) == ("iPhone", "Apple")
    assert user_agent_properties("python-requests/2.32.3") == user_agent_properties("python-requests/2.32.3")
    assert user_agent_properties("") == ()
    assert user_agent_properties("x" * 5000) == ()
    assert user_agent_properties("Mozilla/5.0 (\udcff\udcfe)") == ()  # header bytes that were not UTF-8


@given(
    hops=st.lists(st.ip_addresses(v=4).map(str), max_size=5),
    peer=st.sampled_from(["10.1.0.7", "127.0.0.1", "198.51.100.4"]),
)
def test_client_ip_never_believes_a_header_from_an_untrusted_peer(hops: list[str], peer: str) -> None:
    header = {"X-Forwarded-For": ", ".join(hops)}
    found = client_ip(peer, header, PROXIES)
    assert found is not None
    if not any(ipaddress.ip_address(peer) in net for net in PROXIES):
        assert found == peer
    else:
        assert found == peer or found in hops
        untrusted = [h for h in hops if not any(ipaddress.ip_address(h) in net for net in PROXIES)]
        if untrusted:
            assert found == untrusted[-1] or found in hops[hops.index(untrusted[-1]) :]
    assert client_ip(peer, header, ()) == peer


async def test_an_oversized_beacon_is_413_counted_and_logged_without_a_traceback(
    client: TestClient[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    resp = await client.get("/sa.gif?project=broker&data=" + "A" * 300_000, headers=ORIGIN)
    assert resp.status == 413
    assert cors_of(resp.headers) == ORIGIN["Origin"]
    metrics = await (await client.get("/metrics")).text()
    assert 'maidian_vendor_requests_total{vendor="sensors",status="413"} 1' in metrics
    beyond = await client.get("/sa.gif?data=" + "A" * (3 << 20))  # longer than any browser sends
    assert beyond.status == 400
    assert [r for r in caplog.records if r.levelno >= 40 or r.exc_info] == []
