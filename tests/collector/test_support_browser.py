"""The support view in headless Chromium against a real `maidian serve`: what an agent and an officer do.

Needs Debian's Chromium and playwright (tests/browser.py).
Screenshots (1366x768, Chinese and English) go to test-artifacts/. The tests
run in file order on one server: the lock-out test, which locks this
machine's address out, comes last.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from maidian.tracking_plan.pii import hash_value
from tests.browser import ARTIFACTS, BROWSER_MARKS, TIMEOUT_MS
from tests.collector import support_data as sd
from tests.collector.helpers import now_ms

pytestmark = BROWSER_MARKS

VIEWPORT = {"width": 1366, "height": 768}
SECRETS = (sd.MOBILE, hash_value(sd.MOBILE, sd.PII_KEY))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sd.SupportServer]:
    running = sd.SupportServer(tmp_path_factory.mktemp("support"))
    try:
        result = running.post(sd.customer_events(now_ms()))
        assert [r["status"] for r in result["results"]].count("quarantined") == 2
        yield running
    finally:
        assert running.stop() == 0
    log = running.log.read_text("utf-8", "replace")
    for secret in SECRETS:
        assert secret not in log  # a mobile number, clear or hashed, never reaches the log


class Desk:
    """One member of staff's browser: a page of its own, every URL it asked for, every script error."""

    def __init__(self, browser: Any, server: sd.SupportServer) -> None:
        self.context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
        self.page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.urls: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", lambda r: self.urls.append(r.url))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.server = server
        self.page.goto(server.url + "/support")

    def login(self, name: str, password: str) -> None:
        page = self.page
        page.wait_for_selector("#login-pane:not([hidden])")
        page.fill("#login-name", name)
        page.fill("#login-password", password)
        page.click("#login button[type=submit]")

    def search(self, value: str, kind: str = "", reason: str = "来电 95521-0001 入金失败") -> None:
        page = self.page
        page.select_option("#search-type", kind)
        page.fill("#search-value", value)
        page.fill("#search-reason", reason)
        with page.expect_response(lambda r: r.url.endswith("/support/api/timeline")):
            page.click("#search button[type=submit]")
        page.wait_for_selector("#person-pane:not([hidden])")

    def event_ids(self) -> list[str]:
        ids: list[str] = self.page.eval_on_selector_all("#timeline details.ev", "ds => ds.map(d => d.dataset.id)")
        return ids

    def close(self) -> None:
        assert self.errors == []
        for url in self.urls:
            assert not any(secret in url for secret in SECRETS), url
        self.context.close()


def test_an_agent_finds_a_customer_by_any_identity_and_reads_their_timeline(
    server: sd.SupportServer, browser: Any
) -> None:
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(exist_ok=True)
    desk = Desk(browser, server)
    page = desk.page
    desk.login(sd.AGENT, sd.AGENT_PASSWORD)
    page.wait_for_selector("#app:not([hidden])")
    assert page.inner_text("h1") == "客户行为序列"
    expect(page.locator("#export")).to_be_hidden()  # an agent may not export
    expect(page.locator("#tab-audit")).to_be_hidden()

    persons = set()
    for value, kind in (
        (sd.A_LOGIN, "login_id"),
        (sd.A_CUSTOMER, "customer_no"),
        (sd.A_FUND, "fund_account"),
        (sd.A_ANON, "anonymous_id"),
        (sd.MOBILE, "mobile_hash"),
        (sd.MOBILE, ""),
    ):
        desk.search(value, kind)
        persons.add(page.inner_text("#person-id"))
        assert page.input_value("#search-value") == ""  # the typed value does not stay on screen
    assert len(persons) == 1

    # A shared branch pad: A's events before and after A's login on it, never B's later login there.
    ids = desk.event_ids()
    while page.is_visible("#more"):
        with page.expect_response(lambda r: r.url.endswith("/support/api/timeline")):
            page.click("#more")
        ids = desk.event_ids()
    assert {"0193padbranch057101-1", "0193padbranch057101-2"} <= set(ids)
    assert "0193padbranch057101-3" not in ids
    assert len(ids) == 26
    expect(page.locator("#end")).to_be_visible()
    assert page.inner_text("#q-count") == "1"

    # Expand an event: its properties with the plan's words beside them.
    activated = page.locator("#timeline details.ev[data-event='account_activated']")
    activated.locator("summary").click()
    table = activated.locator("table.props")
    expect(table).to_be_visible()
    text = table.inner_text()
    assert "identities.customer_no" in text
    assert sd.A_CUSTOMER in text
    assert "中国结算" in activated.locator("summary").inner_text()  # the plan's description of the event
    page.screenshot(path=str(ARTIFACTS / "support-timeline-zh.png"))

    # The customer retries the deposit while the agent watches.
    expect(page.locator("#live-dot.on")).to_be_visible()
    server.post([sd.live_deposit(1, now_ms())])
    fresh = page.locator("#timeline details.ev.fresh")
    expect(fresh).to_have_count(1)
    assert fresh.get_attribute("data-id") == "019ab3bf2d50d90b17e3c5a4f6082b7e-101"
    assert desk.event_ids()[0] == "019ab3bf2d50d90b17e3c5a4f6082b7e-101"

    page.click("#lang")
    assert page.inner_text("h1") == "Customer behaviour sequence"
    page.screenshot(path=str(ARTIFACTS / "support-timeline-en.png"))

    # An agent's session is refused the audit log and the export, whatever the page shows.
    assert page.request.get(server.url + "/support/api/audit").status == 403
    desk.close()


def test_an_officer_exports_and_reads_the_audit_log(server: sd.SupportServer, browser: Any) -> None:
    from playwright.sync_api import expect

    desk = Desk(browser, server)
    page = desk.page
    desk.login(sd.OFFICER, sd.OFFICER_PASSWORD)
    page.wait_for_selector("#app:not([hidden])")
    desk.search(sd.A_CUSTOMER, "customer_no", reason="工单 SR-20261207-0042 合规调阅")
    with page.expect_download() as download:
        page.click("#export")
    lines = Path(download.value.path()).read_text("utf-8").splitlines()
    assert len(lines) == 27  # the 26 events and the live deposit
    expect(page.locator("#export-status")).to_contain_text("27")

    page.click("#tab-audit")
    rows = page.locator("#audit tbody tr")
    expect(rows.first).to_contain_text("导出")
    actions = page.eval_on_selector_all("#audit td[data-action]", "tds => tds.map(td => td.dataset.action)")
    assert actions[:3] == ["export", "view", "lookup"]
    assert actions.count("lookup") == 7  # the agent's six searches and this one
    text = page.inner_text("#audit")
    assert "工单 SR-20261207-0042 合规调阅" in text
    assert "来电 95521-0001 入金失败" in text  # the agent's lookups, with the reason the agent typed
    assert sd.AGENT in text
    for secret in (*SECRETS, sd.A_LOGIN, sd.A_CUSTOMER):
        assert secret not in text  # the audit names the pseudonymous person id, never an identity
    page.screenshot(path=str(ARTIFACTS / "support-audit-zh.png"))
    page.reload()  # the audit page has an address of its own
    expect(page.locator("#audit-pane")).to_be_visible()
    expect(page.locator("#audit tbody tr").first).to_contain_text("导出")
    desk.close()


def test_failed_logins_lock_the_account_out(server: sd.SupportServer, browser: Any) -> None:
    from playwright.sync_api import expect

    desk = Desk(browser, server)
    page = desk.page
    for _ in range(sd.MAX_FAILURES):
        with page.expect_response(lambda r: r.url.endswith("/support/api/login")):
            desk.login(sd.AGENT2, "not-the-password")
        expect(page.locator("#login-error")).to_have_text("账号或密码错误")
    with page.expect_response(lambda r: r.url.endswith("/support/api/login")) as answer:
        desk.login(sd.AGENT2, sd.AGENT2_PASSWORD)
    assert answer.value.status == 429
    expect(page.locator("#login-error")).to_contain_text("锁定")
    expect(page.locator("#app")).to_be_hidden()
    page.screenshot(path=str(ARTIFACTS / "support-locked-zh.png"))
    desk.close()
