"""Identity and trust, as a branch and an attacker with the public app key would act (issue 13, scenarios 1-3, 6).

Each test runs a real collector app on 127.0.0.1 over a real data directory,
sends what tellers, apps, an attacker and the signed back office send, stops
the collector, and then reads and deletes as a support agent or a
data-protection officer would (`events --person`, `privacy export`,
`privacy delete --suppress`), starting the collector again where the test
needs its next answers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from maidian.collector.privacy.operations import delete_person, export_person
from maidian.collector.read import export_events, person_events
from maidian.collector.store.catalog import Catalog
from maidian.collector.store.log import DataDir
from maidian.tracking_plan import load_plan
from maidian.tracking_plan.pii import hash_value, mask_value
from tests.collector.conftest import ClientFactory
from tests.collector.helpers import body_of, headers_for, now_ms, signed_headers, statuses
from tests.collector.test_privacy import hits, maidian
from tests.conftest import MINI_PLAN

DAY_MS = 86_400_000


class Device:
    """An app install: its SDK-form event ids count up."""

    def __init__(self, digit: str) -> None:
        self.source = digit * 32
        self.seq = 0

    def next_id(self) -> str:
        self.seq += 1
        return f"{self.source}-{self.seq}"


def track(event_id: str, name: str, identities: dict[str, str], t: int | None = None, **props: Any) -> dict[str, Any]:
    if name == "stock_order_submit":
        props = {"stock_code": "600519", "side": "buy", "price": 12.5, "quantity": 100, **props}
    elif name == "account_login":
        props = {"method": "sms", **props}
    elif name == "stock_order_filled":
        props = {"stock_code": "600519", "filled_quantity": 100, **props}
    return {
        "type": "track",
        "event": name,
        "event_id": event_id,
        "time": now_ms() if t is None else t,
        "identities": identities,
        "properties": props,
    }


async def send(client: TestClient[Any, Any], events: list[dict[str, Any]], *, signed: bool = False) -> list[str]:
    body = body_of(events)
    resp = await client.post("/v1/batch", data=body, headers=signed_headers(body) if signed else headers_for())
    assert resp.status == 200, await resp.text()
    return statuses(await resp.json())


def ids_of(records: list[dict[str, Any]]) -> set[str]:
    return {r["event_id"] for r in records}


@pytest.fixture
def signed_plan(tmp_path: Path) -> Path:
    """The mini plan with customer numbers that only signed sources may introduce."""
    doc = json.loads(MINI_PLAN.read_text())
    doc["identities"]["customer_no"]["introduced_by"] = "signed"
    path = tmp_path / "signed.plan.json"
    path.write_text(json.dumps(doc))
    return path


async def test_a_shared_pad_keeps_each_tellers_events_theirs(start: ClientFactory, data_dir: Path) -> None:
    """Scenario 1: tellers T1, T2, T3 on one branch pad; T1's export and deletion touch only T1's events."""
    client = await start()
    pad = Device("a")
    mine: dict[str, set[str]] = {"t1": set(), "t2": set(), "t3": set()}
    for teller in ("t1", "t2", "t3"):
        ids = {"anonymous_id": "branch-pad-7", "login_id": f"teller-{teller}"}
        batch = [track(pad.next_id(), "account_login", ids)] + [
            track(pad.next_id(), "stock_order_submit", ids) for _ in range(3)
        ]
        assert await send(client, batch) == ["accepted"] * 4
        mine[teller] |= ids_of(batch)
    await client.close()

    assert ids_of(person_events(data_dir, "teller-t1")) == mine["t1"]
    assert ids_of(person_events(data_dir, "teller-t2")) == mine["t2"]
    assert ids_of(export_person(data_dir, "teller-t1", quarantined=True)) == mine["t1"]
    cleared = delete_person(data_dir, "teller-t1", suppress=True)
    assert cleared.raw_events == 4
    stored = ids_of(list(export_events(data_dir)))
    assert stored == mine["t2"] | mine["t3"]

    client = await start()
    later = track(pad.next_id(), "stock_order_submit", {"anonymous_id": "branch-pad-7", "login_id": "teller-t2"})
    returning = track(pad.next_id(), "stock_order_submit", {"anonymous_id": "branch-pad-7", "login_id": "teller-t1"})
    assert await send(client, [later, returning]) == ["accepted", "accepted"]
    await client.close()
    assert ids_of(person_events(data_dir, "teller-t2")) == mine["t2"] | {later["event_id"]}
    assert returning["event_id"] not in ids_of(list(export_events(data_dir)))  # T1 asked to be forgotten


async def test_an_app_key_cannot_take_a_customer_number(
    start: ClientFactory, data_dir: Path, signed_plan: Path
) -> None:
    """Scenario 2: a backdated app `bind` of the attacker's login to the victim's customer number."""
    client = await start(signed_plan)
    victim_no = "8800000001"
    activated = track("gw-activate-1", "stock_order_filled", {"customer_no": victim_no})
    assert await send(client, [activated], signed=True) == ["accepted"]
    attacker = Device("b")
    bind = {
        "type": "bind",
        "event_id": attacker.next_id(),
        "time": now_ms() - 2 * DAY_MS,
        "identities": {"login_id": "mallory", "customer_no": victim_no},
        "properties": {},
    }
    own = track(attacker.next_id(), "stock_order_submit", {"anonymous_id": "mallory-phone", "login_id": "mallory"})
    assert await send(client, [bind, own]) == ["accepted", "accepted"]
    fills = [track(f"gw-fill-{n}", "stock_order_filled", {"customer_no": victim_no}) for n in range(3)]
    assert await send(client, fills, signed=True) == ["accepted"] * 3
    await client.close()

    plan = load_plan(signed_plan)
    victims = ids_of([activated, *fills])
    assert ids_of(person_events(data_dir, victim_no, "customer_no", plan=plan)) == victims
    assert ids_of(export_person(data_dir, "mallory", plan=plan)) == {bind["event_id"], own["event_id"]}
    catalog = Catalog(DataDir(data_dir))
    try:
        assert ("signed_only", "customer_no") in {(r[1], r[2]) for r in catalog.refusals()}
    finally:
        catalog.close()
    delete_person(data_dir, "mallory", suppress=True, plan=plan)
    assert victims <= ids_of(list(export_events(data_dir)))

    client = await start(signed_plan)
    later = track("gw-fill-later", "stock_order_filled", {"customer_no": victim_no})
    assert await send(client, [later], signed=True) == ["accepted"]
    await client.close()
    assert later["event_id"] in ids_of(list(export_events(data_dir)))


async def test_backdated_links_neither_move_a_device_nor_lock_out_a_new_one(
    start: ClientFactory, data_dir: Path
) -> None:
    """Scenario 3: an attacker's backdated claim on the victim's phone, and 500 fake devices on the victim's login."""
    client = await start()
    phone = Device("c")
    before_login = [track(phone.next_id(), "stock_order_submit", {"anonymous_id": "victim-phone"}) for _ in range(2)]
    login = track(phone.next_id(), "account_login", {"anonymous_id": "victim-phone", "login_id": "victor"})
    assert await send(client, [*before_login, login]) == ["accepted"] * 3
    attacker = Device("d")
    theft = track(
        attacker.next_id(), "account_login", {"anonymous_id": "victim-phone", "login_id": "mallory"}, now_ms() - DAY_MS
    )
    fakes = [
        track(
            attacker.next_id(), "account_login", {"anonymous_id": f"fake-{n}", "login_id": "victor"}, now_ms() - DAY_MS
        )
        for n in range(500)
    ]
    assert await send(client, [theft, *fakes]) == ["accepted"] * 501
    # The bank's login service signs what it saw: victor logged in on a new phone.
    confirmed = track("auth-login-1", "account_login", {"anonymous_id": "victor-new-phone", "login_id": "victor"})
    assert await send(client, [confirmed], signed=True) == ["accepted"]
    new_phone = Device("e")
    on_new = track(new_phone.next_id(), "stock_order_submit", {"anonymous_id": "victor-new-phone"})
    assert await send(client, [on_new]) == ["accepted"]
    await client.close()

    victors = ids_of(person_events(data_dir, "victor"))
    assert ids_of([*before_login, login, confirmed, on_new]) <= victors
    assert ids_of(person_events(data_dir, "mallory")) == {theft["event_id"]}
    assert ids_of(person_events(data_dir, "victim-phone", "anonymous_id")) == victors


async def test_deletion_reaches_records_of_unknown_types_and_stray_spaces(start: ClientFactory, data_dir: Path) -> None:
    """Scenario 6: quarantined records naming the person under an undeclared type, or with a stray space."""
    client = await start()
    phone = Device("f")
    ids = {"anonymous_id": "zoe-phone", "login_id": "13800138000"}
    kept = [track(phone.next_id(), "stock_order_submit", ids) for _ in range(2)]
    odd_type = track(phone.next_id(), "stock_order_submit", {"anonymous_id": "x-1", "mobile": "13800138000"})
    spaced = track(phone.next_id(), "stock_order_submit", {"anonymous_id": "x-2", "login_id": " 13800138000 "})
    spaced["properties"]["side"] = "hold"  # quarantined: not in the plan's enum
    assert await send(client, [*kept, odd_type, spaced]) == ["accepted", "accepted", "quarantined", "quarantined"]
    await client.close()

    delete_person(data_dir, "13800138000", suppress=True)
    assert hits(data_dir, ["13800138000", "zoe-phone"]) == {}  # every file, segments decompressed
    assert list(export_events(data_dir, quarantined=True)) == []


async def test_an_officer_reads_by_raw_mobile_number_in_sequence_order_and_is_audited(
    start: ClientFactory, data_dir: Path
) -> None:
    """Item 9 and the audit: a raw mobile number for a hashed identity type; same-millisecond order; the log."""
    key = "bank-pii-key-0123456789"
    mobile = "13912345678"
    hashed = hash_value(mobile, key.encode())
    client = await start(MINI_PLAN)
    phone = Device("9")
    t = now_ms()
    ids = {"anonymous_id": "ivy-phone", "login_id": "ivy", "mobile_hash": hashed}
    same_ms = [track(phone.next_id(), "stock_order_submit", ids, t) for _ in range(11)]
    assert await send(client, same_ms) == ["accepted"] * 11
    await client.close()

    env = {**os.environ, "MAIDIAN_PII_KEY": key}
    command = ["events", "--data", str(data_dir), "--person", mobile, "--type", "mobile_hash"]
    command += ["--plan", str(MINI_PLAN), "--reason", "TICKET-7 call from the customer"]
    read = subprocess.run(
        [sys.executable, "-m", "maidian.collector.cli", *command],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert read.returncode == 0, read.stderr
    assert [json.loads(line)["event_id"] for line in read.stdout.splitlines()] == [e["event_id"] for e in same_ms]
    exported = maidian("privacy", "export", "--data", str(data_dir), "--person", "ivy", "--reason", "PIPL-45 copy")
    assert exported.returncode == 0, exported.stderr
    listed = maidian("privacy", "audit", "--data", str(data_dir))
    assert listed.returncode == 0, listed.stderr
    records = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["action"], r["reason"]) for r in records] == [
        ("read", "TICKET-7 call from the customer"),
        ("export", "PIPL-45 copy"),
    ]
    assert records[0]["person"] == records[1]["person"]
    assert records[0]["person"].startswith("p_")
    audit_file = (data_dir / "audit" / "privacy.jsonl").read_bytes()
    assert mobile.encode() not in audit_file
    assert hashed.encode() not in audit_file


async def test_an_app_key_cannot_write_what_only_the_bank_may(start: ClientFactory, tmp_path: Path) -> None:
    """Scenario 7 (profile half): suitability fields and `$server` from the public app key are quarantined."""
    doc = json.loads(MINI_PLAN.read_text())
    doc["user_properties"]["properties"]["investor_type"] = {
        "type": "string",
        "enum": ["retail", "professional"],
        "x-trigger": "server",
    }
    plan = tmp_path / "suitability.plan.json"
    plan.write_text(json.dumps(doc))
    client = await start(plan)
    app = Device("7")
    upgrade = {
        "type": "profile_set",
        "event_id": app.next_id(),
        "time": now_ms(),
        "identities": {"login_id": "victim-login"},
        "properties": {"investor_type": "professional"},
    }
    forged = track(app.next_id(), "stock_order_submit", {"anonymous_id": "app-1"}, **{"$server": True})
    honest = track(app.next_id(), "stock_order_submit", {"anonymous_id": "app-1"})
    assert await send(client, [upgrade, forged, honest]) == ["quarantined", "quarantined", "accepted"]
    from_bank = dict(upgrade, event_id="kyc-1")
    assert await send(client, [from_bank], signed=True) == ["accepted"]


async def test_clear_pii_is_never_at_rest_in_the_quarantine(start: ClientFactory, data_dir: Path) -> None:
    """Scenario 5: values the plan tags hash or mask, sent in clear, are quarantined in their tagged form."""
    client = await start(MINI_PLAN)
    app = Device("6")
    mobile, name, other = "13712345678", "王小明", "15811112222"
    clear = track(app.next_id(), "stock_order_submit", {"anonymous_id": "old-app", "mobile_hash": mobile})
    unplanned = track(app.next_id(), "stock_order_submit", {"anonymous_id": "old-app"}, remark=f"call {other}")
    profile = {
        "type": "profile_set",
        "event_id": app.next_id(),
        "time": now_ms(),
        "identities": {"login_id": "old-app-user"},
        "properties": {"real_name": name, "risk_level": "C9"},
    }
    assert await send(client, [clear, profile, unplanned]) == ["quarantined"] * 3
    await client.close()

    assert hits(data_dir, [mobile, name, other]) == {}  # every file, segments decompressed
    records = list(export_events(data_dir, quarantined=True, accepted=False))
    shown = json.dumps(records, ensure_ascii=False)
    assert mobile not in shown
    assert name not in shown
    assert {r["event"]["event_id"] for r in records} == {e["event_id"] for e in (clear, profile, unplanned)}
    assert records[2]["event"]["properties"]["remark"].startswith("call 158")
    assert records[1]["event"]["properties"]["real_name"] == mask_value(name)
    assert "enum" in {r["rule"] for r in records[1]["reasons"]}
