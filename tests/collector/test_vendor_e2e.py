"""The real vendor SDKs against a real `maidian serve` on 127.0.0.1, checked with `maidian events` and `export`.

One collector process serves the module: the example plan with vendor name
mappings, and a TOML configuration binding Sensors projects and Segment write
keys (docs/migration.md). Each test drives an unmodified `sensorsanalyticssdk`
or `segment-analytics-python` client in a thread (they block), with its own
people, then reads what was stored through the `maidian` command, as an
operator would: every event once, identities stitched (browsing before the
sign-up belongs to the person), CJK text intact, violations quarantined with
their reasons, a request delivered twice stored once.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import segment.analytics as segment_sdk
import segment.analytics.request as segment_request
import sensorsanalytics.sdk as sa_sdk

from maidian.collector.cli import main
from maidian.collector.settings import hash_key
from maidian.collector.store.frames import read_frames, segment_files
from tests.collector.vendor_helpers import securities_vendor_plan
from tests.conftest import ROOT

SensorsIdentity = sa_sdk.SensorsAnalyticsIdentity
BROKER_KEY = "mk_broker_app_0001"  # the app's maidian write key, which its Sensors project is bound to
ORDERS_KEY = "mk_orders_backend_0001"  # a backend's key; its Sensors project and Segment key are trusted
SEGMENT_KEY = "wk_broker_service_0001"  # a Segment write key
LIMITED_KEY = "wk_limited_service_0001"  # a Segment write key with a small quota


@dataclass
class Collector:
    """`maidian serve` as a subprocess, with its data directory and plan; stderr drained into `log`."""

    proc: subprocess.Popen[str]
    data: Path
    plan: Path
    url: str = ""
    log: list[str] = field(default_factory=list)

    def cli(self, capsys: pytest.CaptureFixture[str], *argv: str) -> list[dict[str, Any]]:
        """Run `maidian ARGV --data DATA` and parse its JSON lines."""
        capsys.readouterr()
        code = main([*argv, "--data", str(self.data)])
        out = capsys.readouterr().out
        assert code == 0, out
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def events(self, capsys: pytest.CaptureFixture[str], person: str) -> list[dict[str, Any]]:
        return self.cli(capsys, "events", "--person", person, "--plan", str(self.plan))

    def export(self, capsys: pytest.CaptureFixture[str], *, quarantined: bool = False) -> list[dict[str, Any]]:
        return self.cli(capsys, "export", *(["--quarantined"] if quarantined else []))

    def quarantine(self, capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
        return self.cli(capsys, "quarantine", "list", "--format", "json")

    def quarantined(self, capsys: pytest.CaptureFixture[str], *values: str) -> list[dict[str, Any]]:
        """The quarantined records (from `export --quarantined`) that mention any of `values`."""
        return [
            q
            for q in self.export(capsys, quarantined=True)
            if q.get("quarantined") and any(v in json.dumps(q, ensure_ascii=False) for v in values)
        ]

    def rules(self, capsys: pytest.CaptureFixture[str], *values: str) -> list[list[str]]:
        """The sorted rules of each quarantined record that mentions any of `values`, sorted."""
        return sorted(sorted({r["rule"] for r in q["reasons"]}) for q in self.quarantined(capsys, *values))


CONFIG = """
plan = "{plan}"

[storage]
data_dir = "{data}"
index_interval_s = 0.05

[[write_keys]]
name = "broker-app"
sha256 = "{broker}"

[[write_keys]]
name = "orders-backend"
sha256 = "{orders}"

[[write_keys]]
name = "broker-service"
sha256 = "{segment}"

[[write_keys]]
name = "limited-service"
sha256 = "{limited}"
rate_events_per_s = 40
burst_events = 40

[[vendors.sensors.projects]]
name = "broker"
write_key = "broker-app"

[[vendors.sensors.projects]]
name = "orders"
write_key = "orders-backend"
trusted = true
allow_from = ["127.0.0.1/32", "::1"]

[[vendors.sensors.projects]]
name = "branch"
write_key = "broker-app"
allow_from = ["10.0.0.0/8"]

[[vendors.segment.sources]]
write_key = "orders-backend"
trusted = true
allow_from = ["127.0.0.0/8"]
"""


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collector]:
    root = tmp_path_factory.mktemp("vendor-e2e")
    plan = securities_vendor_plan(root)
    config = root / "maidian.toml"
    config.write_text(
        CONFIG.format(
            plan=plan,
            data=root / "data",
            broker=hash_key(BROKER_KEY),
            orders=hash_key(ORDERS_KEY),
            segment=hash_key(SEGMENT_KEY),
            limited=hash_key(LIMITED_KEY),
        )
    )
    cmd = [sys.executable, "-m", "maidian.collector.cli", "serve", "--config", str(config), "--port", "0"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    server = Collector(proc, root / "data", plan)
    listening = threading.Event()

    def drain() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            server.log.append(line)
            m = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
            if m:
                server.url = m.group(1)
                listening.set()
        listening.set()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        assert listening.wait(60), "".join(server.log)
        assert server.url, "the server exited:\n" + "".join(server.log)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        reader.join(10)
        assert proc.stderr is not None
        proc.stderr.close()
        assert code == 0, "".join(server.log)
    assert not [line for line in server.log if "bug:" in line or "Traceback" in line], "".join(server.log)


def person(prefix: str) -> str:
    """A login id no other test uses (the collector is shared by the module)."""
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def order(n: int, **over: Any) -> dict[str, Any]:
    """A Sensors SubmitOrder's properties, valid for the plan."""
    props: dict[str, Any] = {
        "RequestId": str(uuid.UUID(int=n)),
        "StockCode": "600519",
        "StockName": "贵州茅台",
        "Market": "SH",
        "Side": "buy",
        "OrderType": "limit",
        "OrderPrice": 1688.5,
        "OrderQty": 100 * (n % 9 + 1),
        "AccountKind": "cash",
    }
    props.update(over)
    return props


def names(events: list[dict[str, Any]]) -> list[str]:
    return [e.get("event") or e["type"] for e in events]


def copies(log: Path) -> Counter[str]:
    """How many times each vendor (opaque) event id is in a log's frames: readers deduplicate, this does not."""
    return Counter(
        eid for path in segment_files(log) for frame in read_frames(path)[0] for eid in frame.head.get("oid", ())
    )


# -- Sensors Analytics ------------------------------------------------------------------


def test_sensors_journey_from_browsing_to_orders(collector: Collector, capsys: pytest.CaptureFixture[str]) -> None:
    device, login, customer = f"dev-{uuid.uuid4().hex[:12]}", person("u"), f"{uuid.uuid4().int % 10**10:010d}"
    sa = sa_sdk.SensorsAnalytics(sa_sdk.DefaultConsumer(f"{collector.url}/sa?project=broker"), project_name="broker")
    sa.register_super_properties({"$app_version": "8.12.0"})
    sa.track(device, "$AppStart", {"LaunchType": "cold", "LaunchSource": "icon", "IsFirstLaunch": True})
    sa.track(
        device, "ViewQuote", {"StockCode": "600519", "StockName": "贵州茅台", "Market": "SH", "EntrySource": "search"}
    )
    sa.track_signup(login, device)
    sa.track(login, "LoginSubmit", {"Method": "sms"}, is_login_id=True)
    sa.track(login, "SubmitOrder", order(1), is_login_id=True)
    sa.track(login, "SubmitOrder", order(2, StockCode="6005", Side="hold"), is_login_id=True)  # two violations
    sa.track(login, "ShareClick", {"Channel": "wechat"}, is_login_id=True)  # not in the plan's mappings
    sa.track(login, "OrderFilled", {"OrderId": "A1B2C3D4"}, is_login_id=True)  # server-only, from an app
    sa.profile_set(login, {"City": "上海市", "RiskLevel": "C3"}, is_login_id=True)
    sa.profile_increment(login, {"LoginCount": 1}, is_login_id=True)
    sa.profile_append(login, {"Tags": ["定投达人"]}, is_login_id=True)
    sa.bind(SensorsIdentity(SensorsIdentity.LOGIN_ID, login), SensorsIdentity("$identity_customer_no", customer))
    sa.unbind(SensorsIdentity("$identity_customer_no", customer))  # one identity: maidian cannot
    sa.item_set("stock", "600519", {"name": "贵州茅台"})  # items: maidian has none
    sa.close()

    journey = collector.events(capsys, device)  # the anonymous id finds the whole person
    assert names(journey) == [
        "app_launch",
        "stock_quote_view",
        "bind",
        "user_login_submit",
        "stock_order_submit",
        "profile_set",
        "profile_increment",
        "profile_append",
        "bind",
    ]
    assert journey == collector.events(capsys, login) == collector.events(capsys, customer)
    assert journey[1]["identities"] == {"anonymous_id": device}  # before the sign-up, and still the person's
    assert journey[1]["properties"]["stock_name"] == "贵州茅台"
    assert journey[5]["properties"] == {"city": "上海市", "risk_level": "C3"}
    assert journey[7]["properties"] == {"tags": ["定投达人"]}
    assert journey[4]["properties"]["$lib"] == "sensors-python"
    assert journey[4]["properties"]["$app_version"] == "8.12.0"
    assert all(e["source"] == "broker-app" for e in journey)
    assert all(e["flags"] == ["no_sent_at"] for e in journey)  # the Python SDK sends no flush time
    in_log = copies(collector.data / "raw")
    assert [in_log[e["event_id"]] for e in journey] == [1] * len(journey)  # once in the log, not only in readers

    mine = collector.quarantined(capsys, login, customer)
    assert collector.rules(capsys, login, customer) == [
        ["enum", "pattern"],
        ["required", "trigger"],
        ["unknown_event"],
        ["vendor_unsupported"],
    ]
    unbind = next(q for q in mine if q["reasons"][0]["rule"] == "vendor_unsupported")
    assert unbind["event"]["vendor"] == "sensors"
    assert unbind["event"]["record"]["type"] == "track_id_unbind"
    listed = {(q["event"], tuple(q["rules"])) for q in collector.quarantine(capsys)}
    assert ("item_set", ("vendor_unsupported",)) in listed
    assert ("ShareClick", ("unknown_event",)) in listed
    assert ("stock_order_filled", ("required", "trigger")) in listed


def test_sensors_batches_once_even_when_a_request_arrives_twice(
    collector: Collector, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    login = person("b")
    real = sa_sdk.urllib2.urlopen
    sent: list[int] = []

    def twice(request: Any, *args: Any, **kwargs: Any) -> Any:
        """The network delivers the first batch twice, as a retry after a lost answer would."""
        if not sent:
            real(request, *args, **kwargs)
        sent.append(1)
        return real(request, *args, **kwargs)

    monkeypatch.setattr(sa_sdk.urllib2, "urlopen", twice)
    sa = sa_sdk.SensorsAnalytics(sa_sdk.BatchConsumer(f"{collector.url}/sa?project=broker", max_size=50))
    for n in range(120):
        sa.track(login, "SubmitOrder", order(n, OrderPrice=10.0 + n), is_login_id=True)
    sa.close()
    assert len(sent) == 3  # 50 + 50 + 20, the first one delivered twice

    stored = collector.events(capsys, login)
    assert len(stored) == 120
    assert sorted(e["properties"]["price"] for e in stored) == [10.0 + n for n in range(120)]
    exported = [e for e in collector.export(capsys) if e["identities"].get("login_id") == login]
    assert len(exported) == 120
    in_log = copies(collector.data / "raw")
    assert [in_log[e["event_id"]] for e in exported] == [1] * 120  # stored once, not hidden by the readers


def test_sensors_debug_consumer_judges_without_storing(
    collector: Collector, capsys: pytest.CaptureFixture[str]
) -> None:
    login = person("d")
    sa = sa_sdk.SensorsAnalytics(sa_sdk.DebugConsumer(f"{collector.url}/sa?project=broker", write_data=False))
    sa.track(login, "LoginSubmit", {"Method": "sms"}, is_login_id=True)
    with pytest.raises(sa_sdk.SensorsAnalyticsDebugException):
        sa.track(login, "LoginSubmit", {"Method": "carrier_pigeon"}, is_login_id=True)
    printed = capsys.readouterr().out
    assert "valid message:" in printed
    assert "ret_code: 400" in printed
    assert "/properties/method: expected one of" in printed
    assert json.loads(printed.split("ret_content: ", 1)[1].splitlines()[0])["stored"] is False

    writing = sa_sdk.SensorsAnalytics(sa_sdk.DebugConsumer(f"{collector.url}/sa?project=broker", write_data=True))
    writing.track(login, "LoginSubmit", {"Method": "face_id"}, is_login_id=True)
    stored = collector.events(capsys, login)
    assert [e["properties"]["method"] for e in stored] == ["face_id"]  # the dry runs stored nothing


def test_sensors_trusted_backend_and_refused_projects(collector: Collector, capsys: pytest.CaptureFixture[str]) -> None:
    login = person("t")
    fill = {
        "OrderId": "A1B2C3D4",
        "FillId": "F00012",
        "StockCode": "600519",
        "StockName": "贵州茅台",
        "Market": "SH",
        "Side": "buy",
        "FillPrice": 1688.5,
        "FillQty": 100,
        "FillAmount": 168850.0,
        "FullyFilled": True,
        "Currency": "CNY",
    }
    backend = sa_sdk.SensorsAnalytics(sa_sdk.DefaultConsumer(f"{collector.url}/sa?project=orders"))
    backend.track(login, "OrderFilled", fill, is_login_id=True)  # trusted: a listed address
    app = sa_sdk.SensorsAnalytics(sa_sdk.DefaultConsumer(f"{collector.url}/sa?project=broker"))
    app.track(login, "OrderFilled", {**fill, "FillId": "F00013"}, is_login_id=True)  # forged from an app
    for project in ("branch", "nobody"):  # an address not listed; a project not served
        other = sa_sdk.SensorsAnalytics(sa_sdk.DefaultConsumer(f"{collector.url}/sa?project={project}"))
        with pytest.raises(sa_sdk.SensorsAnalyticsNetworkException, match="403"):
            other.track(login, "LoginSubmit", {"Method": "sms"}, is_login_id=True)

    stored = collector.events(capsys, login)
    assert [(e["event"], e["properties"]["fill_id"], e["source"]) for e in stored] == [
        ("stock_order_filled", "F00012", "orders-backend")
    ]
    assert collector.rules(capsys, login) == [["trigger"]]


# -- Segment --------------------------------------------------------------------------------


def segment_client(collector: Collector, key: str = SEGMENT_KEY, **options: Any) -> segment_sdk.Client:
    errors: list[Exception] = []
    client = segment_sdk.Client(
        key, host=f"{collector.url}/segment", on_error=lambda e, batch: errors.append(e), **options
    )
    client.errors = errors  # type: ignore[attr-defined]
    return client


def test_segment_journey_and_a_gzip_batch(collector: Collector, capsys: pytest.CaptureFixture[str]) -> None:
    anon, login = f"a-{uuid.uuid4().hex[:12]}", person("s")
    client = segment_client(collector, sync_mode=True)
    client.page(anonymous_id=anon, name="行情", properties={"pageId": "stock_detail", "url": "https://m.broker.cn/q"})
    client.track(None, "Logged In", {"loginMethod": "sms"}, anonymous_id=anon)
    client.alias(anon, login)
    client.identify(login, {"city": "上海市", "riskLevel": "C4"}, anonymous_id=anon)
    client.screen(login, name="持仓", properties={"pageId": "position"})
    client.track(
        login,
        "Order Submitted",
        {
            "requestId": str(uuid.UUID(int=7)),
            "symbol": "00700",
            "market": "HK",
            "side": "sell",
            "orderType": "limit",
            "price": 320.2,
            "quantity": 100,
            "accountKind": "cash",
            "symbolName": "腾讯控股",
        },
    )
    client.track(login, "Order Submitted", {"symbol": "700", "side": "short"})  # violations
    client.track(login, "Order Filled", {"orderId": "A1B2C3D4"})  # server-only, from an untrusted key

    batched = segment_client(collector, gzip=True, upload_size=100, upload_interval=0.05)
    for n in range(150):
        batched.track(
            login,
            "Order Submitted",
            {
                "requestId": str(uuid.UUID(int=1000 + n)),
                "symbol": "600519",
                "market": "SH",
                "side": "buy",
                "orderType": "limit",
                "price": 1.0 + n,
                "quantity": 100,
                "accountKind": "margin",
            },
        )
    batched.flush()
    batched.shutdown()
    assert client.errors == []
    assert batched.errors == []

    journey = collector.events(capsys, anon)
    assert names(journey[:7]) == [
        "app_page_view",
        "user_login_submit",
        "bind",
        "profile_set",
        "bind",
        "app_page_view",
        "stock_order_submit",
    ]
    assert len(journey) == 7 + 150
    assert journey == collector.events(capsys, login)
    assert journey[0]["identities"] == {"anonymous_id": anon}
    assert journey[0]["properties"]["$screen_name"] == "行情"
    assert journey[3]["properties"] == {"city": "上海市", "risk_level": "C4"}
    assert journey[6]["properties"]["stock_name"] == "腾讯控股"
    assert journey[6]["properties"]["$lib"] == "segment-analytics-python"
    assert all(e["source"] == "broker-service" for e in journey)
    assert all(e["event_id"].startswith("segment:m:") for e in journey)
    assert not any("no_sent_at" in e.get("flags", ()) for e in journey)  # sentAt was the batch's sent_at
    assert sorted(e["properties"]["price"] for e in journey[7:]) == [1.0 + n for n in range(150)]
    in_log = copies(collector.data / "raw")
    assert [in_log[e["event_id"]] for e in journey] == [1] * len(journey)  # once in the log, not only in readers
    assert collector.rules(capsys, login) == [
        ["enum", "pattern", "required"],
        ["required", "trigger"],
    ]


def test_segment_429_is_waited_out_and_a_duplicate_delivery_stored_once(
    collector: Collector, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    login = person("r")
    real = segment_request._session.post
    statuses: list[int] = []
    doubled: list[bool] = []

    def post(url: str, **kwargs: Any) -> Any:
        if not doubled:  # the first batch arrives twice, as after a lost answer
            doubled.append(True)
            statuses.append(real(url, **kwargs).status_code)
        response = real(url, **kwargs)
        statuses.append(response.status_code)
        return response

    monkeypatch.setattr(segment_request._session, "post", post)
    client = segment_client(collector, LIMITED_KEY, upload_size=40, upload_interval=0.05)
    started = time.monotonic()
    for n in range(80):
        client.track(login, "Logged In", {"loginMethod": "password"}, message_id=f"{login}-{n}")
    client.flush()
    client.shutdown()
    waited = time.monotonic() - started
    assert client.errors == []  # type: ignore[attr-defined]
    # The first batch was stored, its second copy found the quota (40 events/s) spent: 429 with Retry-After.
    assert statuses[:2] == [200, 429]
    assert statuses[-1] == 200
    assert waited >= 1.0  # the library waited Retry-After (1 s) before sending again

    ids = [f"segment:m:{login}-{n}" for n in range(80)]
    stored = collector.events(capsys, login)
    assert sorted(e["event_id"] for e in stored) == sorted(ids)
    in_log = copies(collector.data / "raw")
    assert [in_log[i] for i in ids] == [1] * 80  # the resent first batch was answered duplicate, not stored


def test_segment_unknown_key_is_refused_and_nothing_stored(
    collector: Collector, capsys: pytest.CaptureFixture[str]
) -> None:
    login = person("k")
    client = segment_client(collector, "wk_not_configured", sync_mode=True)
    with pytest.raises(segment_request.APIError) as refused:
        client.track(login, "Logged In", {"loginMethod": "sms"})
    assert refused.value.status == 401
    assert "unknown write key" in refused.value.message
    capsys.readouterr()
    assert main(["events", "--data", str(collector.data), "--person", login]) == 1  # no stored event carries it
