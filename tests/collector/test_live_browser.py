"""The live page in headless Chromium: a real `maidian qa` collector, events sent with the SDK, the page checked.

Needs Debian's Chromium and playwright (tests/browser.py); without
them these tests skip and say why. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from maidian.sdk import Client
from tests.browser import ARTIFACTS, BROWSER_MARKS, TIMEOUT_MS
from tests.collector.qa_process import QaSession, start_qa
from tests.conftest import MINI_PLAN

ORDER = {"stock_code": "600519", "side": "buy", "price": 1688.5, "quantity": 200}

pytestmark = BROWSER_MARKS


@pytest.fixture(scope="module")
def qa() -> Iterator[QaSession]:
    session = start_qa("--tag", "build-7")
    yield session
    session.stop()


def send(qa: QaSession, *calls: tuple[str, dict[str, Any]], tag: str = "build-7", login: str | None = None) -> None:
    """The build under test: the SDK with the plan (warn mode: invalid events still go out), tagged."""
    client = Client(qa.endpoint, write_key=qa.write_key, plan=str(MINI_PLAN), pii_key=b"app-pii-key")
    client.register_super_properties({"$test_tag": tag})
    if login is not None:
        client.login(login)
    for name, props in calls:
        client.track(name, props)
    assert client.flush(10)
    client.close(5)


def rows(page: Any) -> list[dict[str, str]]:
    out: list[dict[str, str]] = page.eval_on_selector_all(
        "#rows tr.ev",
        """trs => trs.map(tr => ({verdict: tr.dataset.verdict, event: tr.dataset.event,
                                   identity: tr.querySelector('.identity').textContent,
                                   tag: tr.querySelector('.tag').textContent,
                                   reasons: tr.querySelector('.reasons').textContent}))""",
    )
    return out


def wait_rows(page: Any, n: int) -> list[dict[str, str]]:
    # Locator assertions poll from playwright's own isolated world: the page's CSP forbids eval in its own.
    from playwright.sync_api import expect

    expect(page.locator("#rows tr.ev")).to_have_count(n, timeout=TIMEOUT_MS)
    return rows(page)


def listed(page: Any, expected: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The (event, verdict) rows once they equal `expected`, or what they are at the deadline."""
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while True:
        got = [(r["event"], r["verdict"]) for r in rows(page)]
        if got == expected or time.monotonic() > deadline:
            return got
        page.wait_for_timeout(50)


def set_filter(page: Any, selector: str, value: str) -> None:
    if selector in ("#f-line", "#f-verdict"):
        page.select_option(selector, value)
    else:
        page.fill(selector, value)


def test_the_live_page_shows_verdicts_reasons_filters_and_coverage(qa: QaSession, browser: Any) -> None:
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(qa.live_url)
    page.wait_for_selector("#status[data-state='live']", timeout=TIMEOUT_MS)
    assert page.inner_text("#plan") == "Mini broker 1.0.0"

    # A valid order with a CJK value (a masked name), an invalid one, and one from another tester's device.
    send(
        qa,
        ("stock_order_submit", {**ORDER, "mobile": "张三丰"}),
        ("stock_order_submit", {**ORDER, "side": "hold"}),
        login="用户_李四",
    )
    send(qa, ("account_login", {"method": "face"}), tag="build-8")
    shown = wait_rows(page, 4)  # newest first: the login, the bad order, the good order, the bind
    assert [(r["event"], r["verdict"]) for r in shown] == [
        ("account_login", "accepted"),
        ("stock_order_submit", "quarantined"),
        ("stock_order_submit", "accepted"),
        ("bind", "accepted"),
    ]
    assert shown[1]["reasons"].startswith("enum /properties/side: expected one of")
    assert shown[2]["identity"] == "用户_李四"
    assert shown[2]["tag"] == "build-7"
    assert shown[0]["tag"] == "build-8"

    # The full payload of the good order, as it arrived: the SDK masked the name before sending.
    page.click("#rows tr.ev:nth-child(3)")
    payload = page.inner_text("#d-payload")
    assert '"mobile": "张**"' in payload
    assert '"login_id": "用户_李四"' in payload
    assert "none: the event keeps the plan" in page.inner_text("#d-reasons")
    page.click("#rows tr.ev:nth-child(2)")
    assert "/properties/side" in page.inner_text("#d-reasons")
    page.screenshot(path=str(ARTIFACTS / "live-events.png"))

    # Filters: each narrows the list (the collector replays the recent events through it).
    everything = [(r["event"], r["verdict"]) for r in shown]
    for selector, value, expected in (
        ("#f-verdict", "quarantined", [("stock_order_submit", "quarantined")]),
        ("#f-verdict", "", everything),
        ("#f-tag", "build-8", [("account_login", "accepted")]),
        ("#f-tag", "", everything),
        ("#f-line", "account", [("account_login", "accepted")]),
        ("#f-line", "", everything),
        ("#f-identity", "用户_李四", everything[1:]),
        ("#f-event", "order_sub", everything[1:3]),
        ("#f-identity", "", everything[1:3]),
        ("#f-event", "", everything),
    ):
        set_filter(page, selector, value)
        assert listed(page, expected) == expected, (selector, value)

    # Pause holds new events back; resume shows them; clear empties the list.
    page.click("#pause")
    send(qa, ("stock_order_submit", ORDER))
    expect(page.locator("#paused-note")).to_contain_text("Paused: 1 new events waiting", timeout=TIMEOUT_MS)
    assert len(rows(page)) == 4
    page.click("#pause")
    wait_rows(page, 5)
    page.click("#clear")
    wait_rows(page, 0)
    send(qa, ("account_login", {"method": "sms"}), tag="build-8")
    assert [r["event"] for r in wait_rows(page, 1)] == ["account_login"]

    # Coverage of the session for the tag, and it follows new events.
    page.fill("#f-tag", "build-7")
    page.click("#tab-coverage")
    page.wait_for_selector(".md-coverage", timeout=TIMEOUT_MS)
    expect(page.locator(".md-card b").first).to_have_text("1 / 3", timeout=TIMEOUT_MS)  # build-7 sent orders only
    assert "Never seen (1)" in page.inner_text(".md-coverage")
    send(qa, ("stock_order_filled", {"stock_code": "600519", "filled_quantity": 1}))  # an app may not
    expect(page.locator(".md-card b").first).to_have_text("2 / 3", timeout=TIMEOUT_MS)
    assert "trigger" in page.inner_text(".md-coverage")
    page.screenshot(path=str(ARTIFACTS / "live-coverage.png"), full_page=True)
    assert errors == []
    page.close()
