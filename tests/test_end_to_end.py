"""The SDK against a real collector: a `maidian serve` process on 127.0.0.1 with the example plan.

Each test uses identities of its own, so one collector serves the module.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from maidian.collector.cli import main as maidian
from maidian.sdk import AsyncClient, Client, InvalidEvent
from tests.conftest import ROOT

PLAN = ROOT / "examples" / "securities_app.plan.json"
WRITE_KEY = "wk_end_to_end_test_key"
SOURCE, SECRET = "orders-service", b"orders-service-secret-0001"
SDK_PRESETS = {"$lib", "$lib_version", "$server", "$os", "$os_version", "$runtime", "$runtime_version"}


def sample_properties() -> dict[str, dict[str, Any]]:
    """Valid properties per event name, from the example sessions (presets the SDK sets left out)."""
    out = {}
    for line in (ROOT / "examples" / "events.jsonl").read_text(encoding="utf-8").splitlines():
        e = json.loads(line)
        if e["type"] == "track":
            out[e["event"]] = {k: v for k, v in e["properties"].items() if k not in SDK_PRESETS}
    return out


PROPS = sample_properties()


@dataclass(frozen=True)
class Collector:
    endpoint: str
    data: Path


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collector]:
    tmp = tmp_path_factory.mktemp("e2e")
    config = tmp / "collector.toml"
    config.write_text(f'[[sources]]\nname = "{SOURCE}"\nsecret = "{SECRET.decode()}"\n', encoding="utf-8")
    data = tmp / "data"
    cmd = [sys.executable, "-m", "maidian.collector.cli", "serve", "--config", str(config), "--plan", str(PLAN)]
    cmd += ["--data", str(data), "--port", "0", "--write-key", WRITE_KEY]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # "maidian: listening on http://127.0.0.1:PORT ..."
    assert "listening on " in line, line
    endpoint = line.split("listening on ", 1)[1].split()[0]
    try:
        yield Collector(endpoint, data)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> list[dict[str, Any]]:
    capsys.readouterr()
    assert maidian(list(args)) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]


def journey(collector: Collector, capsys: pytest.CaptureFixture[str], person: str) -> list[dict[str, Any]]:
    return cli(capsys, "events", "--data", str(collector.data), "--person", person)


def unique(tag: str) -> str:
    return f"{tag}{os.getpid()}{time.monotonic_ns() % 10**9}"


def a_session(client: Client | AsyncClient, backend: Client, login_id: str, customer_no: str) -> list[str]:
    """Anonymous browsing, a login, an order from the app and its fill from the backend; the names, in order.

    The events are a second apart, as a person's are: ties in time have no order.
    """
    t0 = int(time.time() * 1000) - 10_000
    client.track("app_launch", PROPS["app_launch"], time=t0)
    client.track("stock_quote_view", PROPS["stock_quote_view"], time=t0 + 1_000)
    client.login(login_id)
    client.track("stock_order_submit", PROPS["stock_order_submit"], time=t0 + 2_000)
    ids = {"login_id": login_id, "customer_no": customer_no}
    backend.track("stock_order_filled", PROPS["stock_order_filled"], time=t0 + 3_000, identities=ids)
    return ["app_launch", "stock_quote_view", "stock_order_submit", "stock_order_filled"]


def test_a_session_from_the_thread_client_reads_back_by_any_identity(
    collector: Collector, capsys: pytest.CaptureFixture[str]
) -> None:
    login_id, customer_no = unique("U"), str(3_100_000_000 + os.getpid() % 10**6)
    app = Client(collector.endpoint, write_key=WRITE_KEY, plan=PLAN, pii_key=b"k", app_version="8.12.0")
    backend = Client(collector.endpoint, source=SOURCE, secret=SECRET)
    names = a_session(app, backend, login_id, customer_no)
    assert app.flush(10)
    assert backend.flush(10)
    assert (app.stats.acknowledged, app.stats.quarantined, app.stats.violations) == (
        4,
        0,
        0,
    )  # three tracks and the login's bind
    assert (backend.stats.acknowledged, backend.stats.quarantined) == (1, 0)
    for person in (login_id, customer_no, app.identities["anonymous_id"]):
        seen = [e.get("event") for e in journey(collector, capsys, person) if e["type"] == "track"]
        assert seen == names, person  # pre-login browsing included, in time order, by any identity
    app.close(5)
    backend.close(5)


async def test_a_session_from_the_asyncio_client(collector: Collector, capsys: pytest.CaptureFixture[str]) -> None:
    login_id, customer_no = unique("A"), str(3_200_000_000 + os.getpid() % 10**6)
    backend = Client(collector.endpoint, source=SOURCE, secret=SECRET)
    async with AsyncClient(collector.endpoint, write_key=WRITE_KEY, plan=PLAN, pii_key=b"k") as app:
        names = a_session(app, backend, login_id, customer_no)
        assert await app.flush(10)
        assert app.stats.acknowledged == 4
    assert await asyncio.to_thread(backend.flush, 10)
    backend.close(5)
    events = await asyncio.to_thread(journey, collector, capsys, login_id)
    assert [e.get("event") for e in events if e["type"] == "track"] == names


def test_plan_violations_are_quarantined_with_reasons_and_reported_to_the_app(
    collector: Collector, capsys: pytest.CaptureFixture[str]
) -> None:
    reported: list[tuple[str, list[Any]]] = []
    app = Client(
        collector.endpoint,
        write_key=WRITE_KEY,
        plan=PLAN,
        pii_key=b"k",
        on_quarantine=lambda event_id, name, reasons: reported.append((name, reasons)),
    )
    bad = {**PROPS["stock_order_submit"], "side": "hold"}
    app.track("stock_order_submit", bad)
    app.track("stock_order_filled", PROPS["stock_order_filled"])  # a server-only event from an app key
    assert app.flush(10)
    assert app.stats.quarantined == 2
    assert app.stats.violations == 2  # the enum, and a server-only event from an app key (the SDK knows it is an app)
    rules = {name: {r["rule"] if isinstance(r, dict) else r.rule for r in reasons} for name, reasons in reported}
    assert rules == {"stock_order_submit": {"enum"}, "stock_order_filled": {"trigger"}}
    listed = cli(capsys, "quarantine", "list", "--data", str(collector.data), "--format", "json")
    assert any(q.get("event") == "stock_order_filled" and "trigger" in json.dumps(q) for q in listed)
    app.close(5)


def test_strict_mode_raises_at_the_call_site_and_sends_nothing(collector: Collector) -> None:
    app = Client(collector.endpoint, write_key=WRITE_KEY, plan=PLAN, pii_key=b"k", mode="strict")
    with pytest.raises(InvalidEvent) as info:
        app.track("stock_order_submit", {**PROPS["stock_order_submit"], "side": "hold"})
    assert [(v.rule, v.path) for v in info.value.violations] == [("enum", "/properties/side")]
    assert app.flush(5)
    assert app.stats.sent == 0
    app.close(5)


def test_pii_is_transformed_before_it_leaves_and_never_stored_in_clear(
    collector: Collector, capsys: pytest.CaptureFixture[str]
) -> None:
    canary_email, canary_address = "canary.e2e.7731@example.com", "上海市浦东新区金桥路 7731 号"
    props = dict(PROPS["account_open_personal_info_submit"])
    props.update(email=canary_email, address=canary_address)
    app = Client(collector.endpoint, write_key=WRITE_KEY, plan=PLAN, pii_key=b"k")
    login_id = unique("P")
    app.login(login_id)
    app.track("account_open_personal_info_submit", props)
    assert app.flush(10)
    assert app.stats.acknowledged == 2
    app.close(5)
    [stored] = [
        e for e in journey(collector, capsys, login_id) if e.get("event") == "account_open_personal_info_submit"
    ]
    assert "address" not in stored["properties"]  # tagged drop: never sent
    assert stored["properties"]["email"] != canary_email
    assert "*" in stored["properties"]["email"]  # tagged mask
    for path in collector.data.rglob("*"):
        if path.is_file():
            raw = path.read_bytes()
            assert canary_email.encode() not in raw, path
            assert canary_address.encode() not in raw, path


def test_export_holds_every_acknowledged_event_once(collector: Collector, capsys: pytest.CaptureFixture[str]) -> None:
    app = Client(collector.endpoint, write_key=WRITE_KEY)
    for _ in range(300):
        app.track("app_launch", PROPS["app_launch"])
    assert app.flush(10)
    assert app.stats.acknowledged == 300
    source = app.identities["anonymous_id"]
    app.close(5)
    exported = cli(capsys, "export", "--data", str(collector.data), "--format", "jsonl")
    ids = [e["event_id"] for e in exported]
    assert len(ids) == len(set(ids))
    mine = [e for e in exported if e["identities"].get("anonymous_id") == source]
    assert len(mine) == 300
