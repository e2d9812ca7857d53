"""The support view over HTTP (a real collector app on 127.0.0.1): sessions, roles, CSRF, search, timeline, audit."""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from aiohttp.test_utils import TestClient

from maidian.collector.config import resolve_config
from maidian.collector.errors import ConfigError
from maidian.collector.http.app import COLLECTOR
from maidian.collector.http.support_routes import SUPPORT_ROUTES
from maidian.collector.settings import SupportConfig
from maidian.collector.support.access import Access, LockedOut, hash_password, verify_password
from maidian.tracking_plan.pii import hash_value
from tests.collector import support_data as sd
from tests.collector.helpers import now_ms

OPEN_ROUTES = {"/support", "/support/assets/{name}", "/support/api/login"}
Client = TestClient[Any, Any]


@pytest.fixture
async def support(aiohttp_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Client:
    monkeypatch.setenv(sd.PII_ENV, sd.PII_KEY.decode())
    client: Client = await aiohttp_client(sd.make_support_app(sd.support_config(tmp_path / "data", page_events=10)))
    body, headers = sd.signed_batch(sd.customer_events(now_ms()))
    response = await client.post("/v1/batch", data=body, headers=headers)
    result = await response.json()
    assert response.status == 200
    assert [r["status"] for r in result["results"]].count("quarantined") == 2
    return client


async def login(client: Client, name: str, password: str) -> str:
    response = await client.post("/support/api/login", json={"name": name, "password": password})
    assert response.status == 200, await response.text()
    csrf: str = (await response.json())["csrf"]
    return csrf


async def search(client: Client, csrf: str, value: str, kind: str = "", reason: str = "ticket 20261207-001") -> Any:
    response = await client.post(
        "/support/api/search", json={"value": value, "type": kind, "reason": reason}, headers={"X-CSRF-Token": csrf}
    )
    return response.status, await response.json()


async def timeline(client: Client, csrf: str, **body: Any) -> dict[str, Any]:
    response = await client.post("/support/api/timeline", json=body, headers={"X-CSRF-Token": csrf})
    assert response.status == 200, await response.text()
    page: dict[str, Any] = await response.json()
    return page


async def all_events(client: Client, csrf: str, **body: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = await timeline(client, csrf, cursor=cursor, **body)
        out += page["events"]
        cursor = page["cursor"]
        if cursor is None:
            return out


def audit_path(client: Client) -> Path:
    app = client.server.app
    assert app is not None
    return Path(app[COLLECTOR].data.root) / "audit" / "support.jsonl"


def audit_lines(client: Client) -> list[dict[str, Any]]:
    return [json.loads(line) for line in audit_path(client).read_text("utf-8").splitlines()]


# -- who may use it ---------------------------------------------------------------------


async def test_no_page_data_or_api_answers_without_a_session(support: Client) -> None:
    guarded = [(m, p) for m, p in SUPPORT_ROUTES if p not in OPEN_ROUTES]
    assert len(guarded) == 7
    for method, path in guarded:
        response = await support.request(method, path, json={})
        assert response.status == 401, (method, path)
    page = await support.get("/support")
    assert page.status == 200
    assert "Content-Security-Policy" in page.headers
    shell = await page.text()
    assert not any(v in shell for v in (sd.A_LOGIN, sd.A_CUSTOMER, sd.A_FUND, sd.A_ANON, sd.MOBILE))  # no data in it


async def test_an_agent_cannot_read_the_audit_log_or_export(support: Client) -> None:
    csrf = await login(support, sd.AGENT, sd.AGENT_PASSWORD)
    assert (await search(support, csrf, sd.A_LOGIN))[0] == 200
    assert (await support.get("/support/api/audit")).status == 403
    export = await support.post("/support/api/export", json={}, headers={"X-CSRF-Token": csrf})
    assert export.status == 403
    assert [r["action"] for r in audit_lines(support)] == ["lookup"]


async def test_state_changing_requests_need_the_sessions_csrf_token(support: Client) -> None:
    csrf = await login(support, sd.AGENT, sd.AGENT_PASSWORD)
    body = {"value": sd.A_LOGIN, "type": "", "reason": "ticket 1"}
    assert (await support.post("/support/api/search", json=body)).status == 403
    assert (await support.post("/support/api/search", json=body, headers={"X-CSRF-Token": "x" + csrf})).status == 403
    form = await support.post("/support/api/search", data=body, headers={"X-CSRF-Token": csrf})
    assert form.status == 415
    foreign = {"X-CSRF-Token": csrf, "Origin": "https://evil.example"}
    assert (await support.post("/support/api/search", json=body, headers=foreign)).status == 403
    assert (await support.post("/support/api/search", json=body, headers={"X-CSRF-Token": csrf})).status == 200
    assert (await support.post("/support/api/logout", json={}, headers={"X-CSRF-Token": csrf})).status == 200
    assert (await support.get("/support/api/me")).status == 401


async def test_failed_logins_lock_the_account_and_the_address(support: Client) -> None:
    for _ in range(sd.MAX_FAILURES):
        bad = await support.post("/support/api/login", json={"name": sd.AGENT, "password": "guess"})
        assert bad.status == 401
    locked = await support.post("/support/api/login", json={"name": sd.AGENT, "password": sd.AGENT_PASSWORD})
    assert locked.status == 429
    assert int(locked.headers["Retry-After"]) > 0
    # The address is locked too: the officer's right password from this address is refused as well.
    other = await support.post("/support/api/login", json={"name": sd.OFFICER, "password": sd.OFFICER_PASSWORD})
    assert other.status == 429


async def test_the_session_cookie_is_httponly_strict_and_secure_when_asked(aiohttp_client: Any, tmp_path: Path) -> None:
    for secure in (False, True):
        client: Client = await aiohttp_client(
            sd.make_support_app(sd.support_config(tmp_path / str(secure), secure_cookie=secure))
        )
        response = await client.post("/support/api/login", json={"name": sd.AGENT, "password": sd.AGENT_PASSWORD})
        cookie = response.headers["Set-Cookie"]
        assert "HttpOnly" in cookie
        assert "SameSite=Strict" in cookie
        assert "Path=/support" in cookie
        assert ("Secure" in cookie) is secure


async def test_sso_header_is_believed_only_from_a_listed_proxy(
    aiohttp_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ipaddress

    trusted = sd.support_config(
        tmp_path / "a", sso_header="X-Remote-User", sso_proxies=(ipaddress.ip_network("127.0.0.0/8"),)
    )
    client: Client = await aiohttp_client(sd.make_support_app(trusted))
    me = await client.get("/support/api/me", headers={"X-Remote-User": sd.OFFICER})
    assert me.status == 200
    assert (await me.json())["role"] == "officer"
    assert (await client.get("/support/api/me", headers={"X-Remote-User": "nobody"})).status == 401
    elsewhere = sd.support_config(
        tmp_path / "b", sso_header="X-Remote-User", sso_proxies=(ipaddress.ip_network("10.9.8.7/32"),)
    )
    other: Client = await aiohttp_client(sd.make_support_app(elsewhere))
    assert (await other.get("/support/api/me", headers={"X-Remote-User": sd.OFFICER})).status == 401


# -- finding a person -------------------------------------------------------------------


async def test_search_by_any_declared_identity_finds_the_same_person(support: Client) -> None:
    csrf = await login(support, sd.AGENT, sd.AGENT_PASSWORD)
    status, found = await search(support, csrf, sd.A_CUSTOMER, "customer_no")
    assert status == 200
    types = {i["identity_type"] for i in found["identities"]}
    assert {"login_id", "customer_no", "fund_account", "anonymous_id", "mobile_hash"} <= types
    assert all(i["first_seen_ms"] > 0 and i["first_seen_local"] for i in found["identities"])
    tries = [
        (sd.A_LOGIN, ""),
        (sd.A_LOGIN, "login_id"),
        (sd.A_FUND, "fund_account"),
        (sd.A_ANON, "anonymous_id"),
        (sd.MOBILE, ""),  # typed in clear: hashed with the configured key, then looked up
        (sd.MOBILE, "mobile_hash"),
        (hash_value(sd.MOBILE, sd.PII_KEY), "mobile_hash"),
    ]
    for value, kind in tries:
        status, again = await search(support, csrf, value, kind)
        assert (status, again["person"], again["matched_type"]) == (200, found["person"], kind or again["matched_type"])
    status, missing = await search(support, csrf, sd.A_LOGIN, "customer_no")
    assert (status, missing["error"]["code"]) == (404, "not_found")


async def test_a_search_needs_a_reason_and_is_audited_without_the_value(
    support: Client, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    from maidian.collector.cli import main

    caplog.set_level(logging.DEBUG)
    csrf = await login(support, sd.AGENT, sd.AGENT_PASSWORD)
    status, body = await search(support, csrf, sd.MOBILE, reason="")
    assert status == 400
    assert body["error"]["code"] == "reason_required"
    status, found = await search(support, csrf, sd.MOBILE, reason="来电 0571-1234 入金失败")
    assert status == 200
    await timeline(support, csrf)
    records = audit_lines(support)
    assert [(r["actor"], r["role"], r["action"], r["person"]) for r in records] == [
        (sd.AGENT, "agent", "lookup", found["person"]),
        (sd.AGENT, "agent", "view", found["person"]),
    ]
    assert all(r["reason"] == "来电 0571-1234 入金失败" and r["at_ms"] > 0 for r in records)
    capsys.readouterr()
    assert main(["privacy", "audit", "--data", str(audit_path(support).parent.parent), "--support"]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["action"] for r in listed] == ["lookup", "view"]  # oldest first, as `maidian privacy audit` prints
    audit_bytes = audit_path(support).read_bytes()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for secret in (sd.MOBILE, hash_value(sd.MOBILE, sd.PII_KEY)):
        assert secret.encode() not in audit_bytes
        assert secret not in logged


# -- the timeline -----------------------------------------------------------------------


async def test_a_shared_pad_shows_only_the_persons_own_events(support: Client) -> None:
    csrf = await login(support, sd.AGENT, sd.AGENT_PASSWORD)
    await search(support, csrf, sd.A_LOGIN)
    a_ids = {e["event_id"] for e in await all_events(support, csrf)}
    assert {"0193padbranch057101-1", "0193padbranch057101-2"} <= a_ids  # before and after A's login on the pad
    assert "0193padbranch057101-3" not in a_ids  # B's login on the same pad
    assert "019ab09a90d87c1e0a9b44d2f3e58a61-1" in a_ids  # A's own pre-login app launch
    await search(support, csrf, sd.B_LOGIN)
    b_ids = {e["event_id"] for e in await all_events(support, csrf)}
    assert "0193padbranch057101-3" in b_ids
    assert not b_ids & a_ids


async def test_pages_cover_every_event_once_newest_first(support: Client) -> None:
    csrf = await login(support, sd.AGENT, sd.AGENT_PASSWORD)
    await search(support, csrf, sd.A_CUSTOMER, "customer_no")
    first = await timeline(support, csrf)
    assert len(first["events"]) == 10
    assert first["cursor"]
    events = await all_events(support, csrf)
    keys = [(e["time"], e["event_id"]) for e in events]
    assert keys == sorted(keys, reverse=True)
    assert len(set(keys)) == len(keys) == 26  # 23 examples of A (profiles included), 2 on the pad, none twice
    assert {e["line"] for e in events} >= {"account", "bank", "user", "app"}
    at = datetime.fromtimestamp(events[0]["time"] / 1000, ZoneInfo("Asia/Shanghai"))  # the bank's time zone
    assert events[0]["day"] == at.strftime("%Y-%m-%d")
    assert events[0]["clock"].startswith(at.strftime("%H:%M:%S."))


async def test_filters_by_line_event_and_time(support: Client) -> None:
    csrf = await login(support, sd.AGENT, sd.AGENT_PASSWORD)
    await search(support, csrf, sd.A_LOGIN)
    bank = await all_events(support, csrf, lines=["bank"])
    assert bank
    assert all(e["line"] == "bank" for e in bank)
    one = await all_events(support, csrf, events=["account_activated"])
    assert [e["event"] for e in one] == ["account_activated"]
    everything = await all_events(support, csrf)
    middle = everything[len(everything) // 2]
    zone_text = middle["day"] + "T" + middle["clock"][:8]
    later = await all_events(support, csrf, since=zone_text)
    assert later
    assert all(e["time"] >= middle["time"] - 1000 for e in later)
    assert len(later) < len(everything)


async def test_quarantined_events_of_the_person_come_with_reasons_and_plan_notes(support: Client) -> None:
    csrf = await login(support, sd.AGENT, sd.AGENT_PASSWORD)
    await search(support, csrf, sd.A_LOGIN)
    page = await timeline(support, csrf)
    [bad] = page["quarantined"]
    assert bad["event"] == "bank_deposit_submit"
    assert bad["properties"]["currency"] == "XYZ"
    assert bad["reasons"]
    notes = page["notes"]["bank_deposit_submit"]
    assert notes["description"]
    assert notes["properties"]["amount"]
    await search(support, csrf, sd.B_LOGIN)
    [b_bad] = (await timeline(support, csrf))["quarantined"]  # B's refused deposit on A's pad is B's alone
    assert b_bad["event_id"] == "0193padbranch057101-4"


async def test_an_officer_exports_the_timeline_and_reads_the_audit(support: Client) -> None:
    csrf = await login(support, sd.OFFICER, sd.OFFICER_PASSWORD)
    await search(support, csrf, sd.A_LOGIN)
    response = await support.post("/support/api/export", json={}, headers={"X-CSRF-Token": csrf})
    assert response.status == 200
    lines = [json.loads(line) for line in (await response.text()).splitlines()]
    assert len(lines) == 26
    assert "0193padbranch057101-3" not in {e["event_id"] for e in lines}
    audit = await (await support.get("/support/api/audit")).json()
    assert [r["action"] for r in audit["records"]] == ["export", "lookup"]


# -- the pieces -------------------------------------------------------------------------


def test_passwords_are_checked_against_scrypt_hashes() -> None:
    stored = hash_password("s3cret-pass-word", n=2**14)
    assert stored.startswith("scrypt$16384$8$1$")
    assert verify_password("s3cret-pass-word", stored)
    assert not verify_password("s3cret-pass-wore", stored)
    assert not verify_password("x", stored.replace("$16384$", "$1024$"))  # too cheap: refused
    assert not verify_password("x", "scrypt$oops")


def test_sessions_expire_when_idle_and_after_their_maximum() -> None:
    now = [1000.0]
    settings = SupportConfig(enabled=True, accounts=sd.accounts(), idle_timeout_s=60, session_max_s=300)
    access = Access(settings, clock=lambda: now[0])
    session = access.login(sd.AGENT, sd.AGENT_PASSWORD, "10.1.1.1")
    assert session is not None
    for _ in range(4):
        now[0] += 59
        assert access.session(session.sid) is session
    now[0] += 70
    assert access.session(session.sid) is None
    fresh = access.login(sd.AGENT, sd.AGENT_PASSWORD, "10.1.1.1")
    assert fresh is not None
    for _ in range(5):
        now[0] += 59
        access.session(fresh.sid)
    now[0] += 10
    assert access.session(fresh.sid) is None  # past session_max_s although never idle for long


def test_lockout_ends_after_its_time() -> None:
    now = [0.0]
    settings = SupportConfig(enabled=True, accounts=sd.accounts(), max_failures=2, lockout_s=100)
    access = Access(settings, clock=lambda: now[0])
    assert access.login(sd.AGENT, "wrong", "10.0.0.1") is None
    assert access.login(sd.AGENT, "wrong", "10.0.0.2") is None
    with pytest.raises(LockedOut):
        access.login(sd.AGENT, sd.AGENT_PASSWORD, "10.0.0.3")  # the account, from any address
    now[0] += 101
    assert access.login(sd.AGENT, sd.AGENT_PASSWORD, "10.0.0.3") is not None


def test_the_configuration_file_takes_accounts_and_refuses_secrets(tmp_path: Path) -> None:
    path = tmp_path / "maidian.toml"
    path.write_text(sd.config_toml(tmp_path / "data"), "utf-8")
    config = resolve_config(file=path, env={})
    assert config.support.enabled
    assert [a.role for a in config.support.accounts] == ["agent", "agent", "officer"]
    path.write_text(
        sd.config_toml(tmp_path / "data") + '[[support.accounts]]\nname = "x"\nrole = "agent"\npassword = "p"\n'
    )
    with pytest.raises(ConfigError, match="hash"):
        resolve_config(file=path, env={})


def test_add_user_appends_an_account_the_collector_accepts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import io

    from maidian.collector.cli import main

    path = tmp_path / "maidian.toml"
    path.write_text(sd.config_toml(tmp_path / "data"), "utf-8")
    monkeypatch.setattr("sys.stdin", io.StringIO("a-long-enough-password\n"))
    assert main(["support", "add-user", "chen.jie", "--role", "officer", "--config", str(path)]) == 0
    assert main(["support", "add-user", "robot", "--role", "agent", "--token", "--config", str(path)]) == 0
    token = capsys.readouterr().err.split("token (shown once, give it to robot): ")[1].strip()
    config = resolve_config(file=path, env={})
    access = Access(config.support)
    assert access.login("chen.jie", "a-long-enough-password", "10.0.0.1") is not None
    assert access.login("robot", token, "10.0.0.1") is not None
    assert "a-long-enough-password" not in path.read_text("utf-8")
    assert token not in path.read_text("utf-8")
