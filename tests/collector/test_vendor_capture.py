"""The real vendor SDKs, pointed at a capture server on 127.0.0.1: decode what they sent, check the mapped events.

Each test drives an unmodified `sensorsanalyticssdk` or `segment-analytics-python`
client in a thread (they block) against a real aiohttp server, then runs the
captured requests through the decoders and mappers and the plan's validator.
Deduplication is simulated the way the collector does it, by event id.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import segment.analytics as segment_sdk
import sensorsanalytics.sdk as sa_sdk

from maidian.collector.identity.graph import IdentityGraph, observations_from
from maidian.collector.vendors import segment, sensors
from maidian.collector.vendors.common import Mapped, VendorResponse
from tests.collector.vendor_capture import Captured, CaptureServer
from tests.collector.vendor_helpers import validator, vendor_plan

SensorsIdentity = sa_sdk.SensorsAnalyticsIdentity


async def serve(server: CaptureServer, aiohttp_server: Any) -> str:
    running = await aiohttp_server(server.app(), host="127.0.0.1")
    return f"http://127.0.0.1:{running.port}/"


def sensors_mapped(captured: list[Captured]) -> list[Mapped]:
    mapper = sensors.SensorsMapper(vendor_plan())
    return [mapper.map_request(sensors.decode_request(c.method, c.query, c.headers, c.body)) for c in captured]


def segment_mapped(captured: list[Captured]) -> list[Mapped]:
    mapper = segment.SegmentMapper(vendor_plan())
    out = []
    for c in captured:
        endpoint = segment.endpoint_of(c.path)
        assert endpoint is not None, c.path
        request = segment.decode_request(endpoint, c.headers, c.body)
        assert request.write_key == "wk_broker_app"
        out.append(mapper.map_request(request, now_ms=int(time.time() * 1000)))
    return out


def stored(results: list[Mapped]) -> dict[str, dict[str, Any]]:
    """What the collector would keep: each event id once (the first copy), in arrival order."""
    out: dict[str, dict[str, Any]] = {}
    for result in results:
        for event in result.events:
            out.setdefault(event["event_id"], event)
    return out


def verdicts(events: Any) -> dict[str, list[tuple[str, str]]]:
    return {e["event_id"]: [(v.rule, v.path) for v in validator().validate(e)] for e in events}


# -- Sensors Analytics ---------------------------------------------------------------


async def test_sensors_default_consumer_every_record_type(aiohttp_server: Any) -> None:
    capture = CaptureServer()
    base = await serve(capture, aiohttp_server)

    def app() -> None:
        sa = sa_sdk.SensorsAnalytics(sa_sdk.DefaultConsumer(base + "sa?project=broker"), project_name="broker")
        sa.register_super_properties({"$app_version": "5.2.1"})
        sa.track("dev-7f3a", "$AppStart", {"$resume_from_background": False})
        sa.track(
            "dev-7f3a",
            "SubmitOrder",
            {"StockCode": "600519", "StockName": "贵州茅台", "Side": "buy", "OrderPrice": 1688.5, "OrderQty": 100},
        )
        sa.track_signup("u_10086", "dev-7f3a")
        sa.track("u_10086", "LoginResult", {"LoginMethod": "sms"}, is_login_id=True)
        sa.track(
            "u_10086",
            "SubmitOrder",
            {"StockCode": "6005", "Side": "hold", "OrderPrice": -1, "OrderQty": 150},
            is_login_id=True,
        )
        sa.profile_set("u_10086", {"RiskLevel": "C3", "Nickname": "老王"}, is_login_id=True)
        sa.profile_set_once("u_10086", {"RiskLevel": "C1"}, is_login_id=True)
        sa.profile_increment("u_10086", {"LoginCount": 1}, is_login_id=True)
        sa.profile_append("u_10086", {"tags": ["港股通"]}, is_login_id=True)
        sa.profile_unset("u_10086", ["Nickname"], is_login_id=True)
        sa.bind(
            SensorsIdentity(SensorsIdentity.LOGIN_ID, "u_10086"), SensorsIdentity("$identity_customer_no", "0012345678")
        )
        sa.unbind(SensorsIdentity("$identity_customer_no", "0012345678"))
        sa.item_set("stock", "600519", {"name": "贵州茅台"})
        sa.profile_delete("u_10086", is_login_id=True)
        sa.close()

    await asyncio.to_thread(app)
    assert len(capture.requests) == 14
    assert all(c.path == "/sa" and c.query == "project=broker" for c in capture.requests)
    results = sensors_mapped(capture.requests)
    kept = stored(results)
    assert [(e["type"], e.get("event")) for e in kept.values()] == [
        ("track", "app_launch"),
        ("track", "stock_order_submit"),
        ("bind", None),
        ("track", "account_login"),
        ("track", "stock_order_submit"),
        ("profile_set", None),
        ("profile_set_once", None),
        ("profile_increment", None),
        ("profile_append", None),
        ("profile_unset", None),
        ("bind", None),
        ("profile_delete", None),
    ]
    events = list(kept.values())
    assert events[1]["properties"]["stock_name"] == "贵州茅台"
    assert events[5]["properties"] == {"risk_level": "C3", "nickname": "老王"}
    assert events[8]["properties"] == {"tags": ["港股通"]}
    assert events[10]["identities"] == {"login_id": "u_10086", "customer_no": "0012345678"}
    # the one-identity unbind and the item are kept for quarantine with their reasons
    rejected = [r for m in results for r in m.rejections]
    assert [r.reasons[0].rule for r in rejected] == ["vendor_unsupported", "vendor_unsupported"]
    # every valid event passes the plan; the bad order gets the plan's reasons
    found = verdicts(events)
    assert {k: sorted(v) for k, v in found.items() if v} == {
        events[4]["event_id"]: [
            ("enum", "/properties/side"),
            ("pattern", "/properties/stock_code"),
            ("range", "/properties/price"),
            ("range", "/properties/quantity"),
        ]
    }
    # identities stitch: the device, the login and the customer number are one person
    graph = IdentityGraph()
    graph.observe_many(observations_from(events))
    person = graph.person_of("anonymous_id", "dev-7f3a")
    assert person is not None
    assert graph.person_of("login_id", "u_10086") == person == graph.person_of("customer_no", "0012345678")


async def test_sensors_batch_consumer_sends_everything_once(aiohttp_server: Any) -> None:
    capture = CaptureServer()
    base = await serve(capture, aiohttp_server)

    def app() -> None:
        sa = sa_sdk.SensorsAnalytics(sa_sdk.BatchConsumer(base + "sa?project=broker", max_size=50))
        for n in range(120):
            sa.track(
                f"u_{n % 7}",
                "SubmitOrder",
                {
                    "StockCode": "600519",
                    "StockName": "贵州茅台",
                    "Side": "sell",
                    "OrderPrice": 10.0 + n,
                    "OrderQty": 100,
                },
                is_login_id=True,
            )
        sa.close()

    await asyncio.to_thread(app)
    sizes = [len(sensors.decode_request(c.method, c.query, c.headers, c.body).records) for c in capture.requests]
    assert sizes == [50, 50, 20]
    kept = stored(sensors_mapped(capture.requests))
    assert len(kept) == 120
    assert sorted(e["properties"]["price"] for e in kept.values()) == [10.0 + n for n in range(120)]
    assert not any(verdicts(kept.values()).values())


async def test_sensors_a_retried_batch_is_not_stored_twice(aiohttp_server: Any) -> None:
    capture = CaptureServer(fail_next=[503])
    base = await serve(capture, aiohttp_server)

    def app() -> None:
        sa = sa_sdk.SensorsAnalytics(sa_sdk.BatchConsumer(base + "sa?project=broker", max_size=50))
        for n in range(3):
            sa.track(
                "u_10086",
                "SubmitOrder",
                {"StockCode": "600519", "Side": "buy", "OrderPrice": 9.5, "OrderQty": 100 * (n + 1)},
                is_login_id=True,
            )
        with pytest.raises(sa_sdk.SensorsAnalyticsNetworkException):
            sa.flush()  # the collector answered 503; the SDK keeps its buffer
        sa.flush()  # the application retries: the same records again

    await asyncio.to_thread(app)
    assert len(capture.requests) == 2
    first, second = sensors_mapped(capture.requests)
    assert [e["event_id"] for e in first.events] == [e["event_id"] for e in second.events]
    assert len(stored([first, second])) == 3


@pytest.mark.filterwarnings("ignore:isSet\\(\\) is deprecated:DeprecationWarning")
async def test_sensors_async_batch_consumer(aiohttp_server: Any) -> None:
    capture = CaptureServer()
    base = await serve(capture, aiohttp_server)

    def app() -> None:
        consumer = sa_sdk.AsyncBatchConsumer(base + "sa?project=broker", flush_max_time=0.05, flush_size=10)
        sa = sa_sdk.SensorsAnalytics(consumer)
        for n in range(25):  # distinct records: identical ones in one millisecond would be one event
            sa.track(
                "dev-1", "SubmitOrder", {"StockCode": "600519", "Side": "buy", "OrderPrice": 1.0 + n, "OrderQty": 100}
            )
        sa.close()

    await asyncio.to_thread(app)
    assert len(stored(sensors_mapped(capture.requests))) == 25


def sensors_debug_answer(captured: Captured) -> VendorResponse:
    """The debug answer without the collector: decode, map, validate, answer with the verdict."""
    request = sensors.decode_request(captured.method, captured.query, captured.headers, captured.body)
    mapped = sensors.SensorsMapper(vendor_plan()).map_request(request)
    found = [validator().validate(e) for e in mapped.events]
    return sensors.debug_response(mapped, found, dry_run=request.dry_run, headers=captured.headers)


async def test_sensors_debug_consumer_reads_the_verdict(
    aiohttp_server: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    capture = CaptureServer(answer=sensors_debug_answer)
    base = await serve(capture, aiohttp_server)

    def app() -> None:
        sa = sa_sdk.SensorsAnalytics(sa_sdk.DebugConsumer(base + "sa?project=broker", write_data=False))
        sa.track("u_10086", "LoginResult", {"LoginMethod": "face"}, is_login_id=True)
        with pytest.raises(sa_sdk.SensorsAnalyticsDebugException):
            sa.track("u_10086", "LoginResult", {"LoginMethod": "qr"}, is_login_id=True)

    await asyncio.to_thread(app)
    assert [c.path for c in capture.requests] == ["/debug", "/debug"]
    assert all(c.headers.get("Dry-Run") == "true" for c in capture.requests)
    printed = capsys.readouterr().out
    assert "valid message:" in printed
    assert "ret_code: 400" in printed
    assert "/properties/method: expected one of" in printed


# -- Segment ------------------------------------------------------------------------------


def segment_client(base: str, **options: Any) -> segment_sdk.Client:
    errors: list[Exception] = []
    client = segment_sdk.Client(
        "wk_broker_app",
        host=base + "segment",
        on_error=lambda e, batch: errors.append(e),
        **{"max_retries": 2, **options},
    )
    client.errors = errors  # type: ignore[attr-defined]
    return client


async def test_segment_every_call_in_sync_mode(aiohttp_server: Any) -> None:
    capture = CaptureServer(answer=lambda c: segment.success_response(c.headers))
    base = await serve(capture, aiohttp_server)

    def app() -> None:
        client = segment_client(base, sync_mode=True)
        client.track(
            "u_10086",
            "Order Submitted",
            {"symbol": "600519", "symbolName": "贵州茅台", "side": "buy", "price": 1688.5, "quantity": 100},
            anonymous_id="a-77",
        )
        client.identify("u_10086", {"riskLevel": "C3", "nickname": "老王"}, anonymous_id="a-77")
        client.alias("a-77", "u_10086")
        client.page("u_10086", name="行情", properties={"path": "/quote", "url": "https://m.broker.cn/quote"})
        client.screen("u_10086", name="持仓")
        client.group("u_10086", "org-88", {"name": "华东机构部"})
        client.track("u_10086", "Order Submitted", {"symbol": "6005", "side": "buy", "price": 0, "quantity": 100})

    await asyncio.to_thread(app)
    assert [c.path for c in capture.requests] == ["/segment/v1/batch"] * 7
    kept = stored(segment_mapped(capture.requests))
    events = list(kept.values())
    assert [(e["type"], e.get("event")) for e in events] == [
        ("track", "stock_order_submit"),
        ("profile_set", None),
        ("bind", None),
        ("bind", None),
        ("track", "app_page_view"),
        ("track", "app_page_view"),
        ("track", "account_group_join"),
        ("track", "stock_order_submit"),
    ]
    assert events[0]["properties"]["stock_name"] == "贵州茅台"
    assert events[0]["properties"]["$lib"] == "segment-analytics-python"
    assert events[1]["properties"] == {"risk_level": "C3", "nickname": "老王"}
    assert events[4]["properties"]["$screen_name"] == "行情"
    found = verdicts(events)
    assert {k: sorted(v) for k, v in found.items() if v} == {
        events[-1]["event_id"]: [("pattern", "/properties/stock_code"), ("range", "/properties/price")]
    }
    graph = IdentityGraph()
    graph.observe_many(observations_from(events))
    assert graph.person_of("anonymous_id", "a-77") == graph.person_of("login_id", "u_10086") is not None


@pytest.mark.parametrize("gzip", [False, True])
async def test_segment_batches_from_the_consumer_thread(aiohttp_server: Any, gzip: bool) -> None:
    capture = CaptureServer(answer=lambda c: segment.success_response(c.headers))
    base = await serve(capture, aiohttp_server)

    def app() -> segment_sdk.Client:
        client = segment_client(base, gzip=gzip, upload_size=100, upload_interval=0.05)
        for n in range(150):
            client.track(
                f"u_{n % 5}", "Order Submitted", {"symbol": "600519", "side": "sell", "price": 1.0 + n, "quantity": 100}
            )
        client.flush()
        client.shutdown()
        return client

    client = await asyncio.to_thread(app)
    assert client.errors == []  # type: ignore[attr-defined]
    assert all(("Content-Encoding" in c.headers) == gzip for c in capture.requests)
    assert all(c.body.startswith(b"\x1f\x8b") == gzip for c in capture.requests)  # the decoder gunzips
    assert all(c.headers["Authorization"].startswith("Basic ") for c in capture.requests)
    kept = stored(segment_mapped(capture.requests))
    assert len(kept) == 150
    assert max(len(m.events) for m in segment_mapped(capture.requests)) > 1  # really batched
    assert not any(verdicts(kept.values()).values())


async def test_segment_a_retried_batch_is_not_stored_twice(aiohttp_server: Any) -> None:
    capture = CaptureServer(answer=lambda c: segment.success_response(c.headers), fail_next=[500])
    base = await serve(capture, aiohttp_server)

    def app() -> segment_sdk.Client:
        client = segment_client(base, upload_interval=0.05, max_retries=3)
        for n in range(5):
            client.track(
                "u_10086",
                "Order Submitted",
                {"symbol": "600519", "side": "buy", "price": 9.5, "quantity": 100 * (n + 1)},
            )
        client.flush()
        client.shutdown()
        return client

    client = await asyncio.to_thread(app)
    assert client.errors == []  # type: ignore[attr-defined]
    assert len(capture.requests) >= 2
    assert capture.requests[1].headers.get("X-Retry-Count") == "1"
    results = segment_mapped(capture.requests)
    assert [e["event_id"] for e in results[0].events] == [e["event_id"] for e in results[1].events]
    assert len(stored(results)) == 5
