"""The vendors' web SDKs from npm in Debian's Chromium, cross-origin, against a real `maidian serve`.

A page on one 127.0.0.1 origin (tests/web/pages) loads the pinned
`sa-sdk-javascript` or `@segment/analytics-next` and is pointed at the
collector on another port by configuration only (docs/migration.md). Each
test browses anonymously, logs in, tracks with CJK text, and reads what was
stored with the `maidian` command: every event once, the anonymous events
stitched to the login, nothing quarantined, and no console error. Console
logs and screenshots go to test-artifacts/web/.

Needs Debian's `chromium` and `npm` (.ci/run installs chromium; scripts/web-sdks
the SDKs, which the fixture runs when they are missing).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser import BROWSER_MARKS, CHROMIUM, CHROMIUM_ARGS
from tests.web.harness import (
    ARTIFACTS,
    SEGMENT_KEY,
    Collector,
    PageServer,
    collector_process,
    sdks,
)

pytestmark = BROWSER_MARKS

DEADLINE_S = 20.0
# The watch: a page left open this long logs nothing (analytics.js sends its metrics every 30 s).
QUIET_WATCH_MS = 40_000

ORDER_SA = {
    "RequestId": "00000000-0000-4000-8000-000000000001",
    "StockCode": "600519",
    "StockName": "贵州茅台",
    "Market": "SH",
    "Side": "buy",
    "OrderType": "limit",
    "OrderPrice": 1688.5,
    "OrderQty": 100,
    "AccountKind": "cash",
}
ORDER_SEGMENT = {
    "requestId": "00000000-0000-4000-8000-000000000002",
    "symbol": "600519",
    "symbolName": "贵州茅台",
    "market": "SH",
    "side": "buy",
    "orderType": "limit",
    "price": 1688.5,
    "quantity": 100,
    "accountKind": "cash",
}


@pytest.fixture(scope="module")
def pages() -> Iterator[PageServer]:
    server = PageServer(sdks())
    yield server
    server.close()


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collector]:
    with collector_process(tmp_path_factory.mktemp("web")) as server:
        yield server
    assert server.errors() == []


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class Watched:
    """A fresh browser context (a new visitor) and its page, with the console and failed requests recorded."""

    def __init__(self, browser: Any, name: str) -> None:
        self.name = name
        self.context = browser.new_context(viewport={"width": 1000, "height": 700})
        self.page = self.context.new_page()
        self.console: list[str] = []
        self.errors: list[str] = []
        self.responses: list[tuple[int, str]] = []
        self.requests: list[str] = []
        self.dialogs: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        # Failed requests are logged with the artifacts; the browser reports a real failure as a console error too.
        self.page.on("requestfailed", lambda r: self.console.append(f"requestfailed: {r.url[:80]} {r.failure}"))
        self.page.on("response", lambda r: self.responses.append((r.status, r.url)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("dialog", self._dialog)

    def _console(self, message: Any) -> None:
        line = f"{message.type}: {message.text}"
        self.console.append(line)
        if message.type == "error":
            self.errors.append(line)

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.accept()

    def close(self) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        try:
            self.page.screenshot(path=str(ARTIFACTS / f"{self.name}.png"))
        finally:
            lines = [*self.console, *self.errors, *(f"{s} {u}" for s, u in self.responses)]
            (ARTIFACTS / f"{self.name}.log").write_text("\n".join(lines) + "\n", "utf-8")
            self.context.close()


@pytest.fixture
def watch(browser: Any, request: pytest.FixtureRequest) -> Iterator[Callable[[str], Watched]]:
    opened: list[Watched] = []

    def open_page(suffix: str = "") -> Watched:
        name = request.node.name.replace("[", "-").replace("]", "") + suffix
        w = Watched(browser, name)
        opened.append(w)
        return w

    yield open_page
    for w in opened:
        w.close()


def wait_for(read: Callable[[], list[dict[str, Any]]], count: int, page: Any) -> list[dict[str, Any]]:
    """`read()` once it holds `count` items (or what it holds at the deadline), letting the page run meanwhile."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        got = read()
        if len(got) >= count or time.monotonic() > deadline:
            return got
        page.wait_for_timeout(100)


def names(events: list[dict[str, Any]]) -> list[str]:
    return [e.get("event") or e["type"] for e in events]


def of_person(stored: list[dict[str, Any]], anonymous_id: str) -> list[dict[str, Any]]:
    """Stored rows (quarantined included) whose identities name the visitor's anonymous id."""
    out = []
    for row in stored:
        event = row.get("event") if row.get("quarantined") else row
        if isinstance(event, dict) and event.get("identities", {}).get("anonymous_id") == anonymous_id:
            out.append(row)
    return out


# -- Sensors ----------------------------------------------------------------------------------


def sensors_url(pages: PageServer, collector: Collector, send_type: str, *, batch: bool, debug: bool = False) -> str:
    query = f"collector={collector.url}&send_type={send_type}&batch={int(batch)}&debug={int(debug)}"
    return f"{pages.origin}/sensors.html?{query}"


def sensors_session(page: Any, login: str) -> str:
    """Browse (the page view is the SDK's own), log in, order; the anonymous id the SDK minted."""
    anonymous: str = page.evaluate("() => sensors.quick('getAnonymousID')")
    page.evaluate(
        """([login, order]) => {
            sensors.track('ViewQuote', {StockCode: '600519', StockName: '贵州茅台', Market: 'SH',
                                        EntrySource: 'search'});
            sensors.login(login);
            sensors.track('SubmitOrder', order);
        }""",
        [login, ORDER_SA],
    )
    return anonymous


SENSORS_JOURNEY = ["app_page_view", "stock_quote_view", "bind", "stock_order_submit"]


@pytest.mark.parametrize(("send_type", "batch"), [("ajax", False), ("beacon", False), ("image", False), ("ajax", True)])
def test_sensors_web_sdk_delivers_every_event_once(
    pages: PageServer, collector: Collector, watch: Callable[[str], Watched], send_type: str, batch: bool
) -> None:
    w = watch("")
    w.page.goto(sensors_url(pages, collector, send_type, batch=batch))
    login = f"u_{uuid.uuid4().hex[:12]}"
    anonymous = sensors_session(w.page, login)

    journey = wait_for(lambda: collector.events(login), len(SENSORS_JOURNEY), w.page)
    assert names(journey) == SENSORS_JOURNEY
    assert len({e["event_id"] for e in journey}) == len(journey)
    assert journey[1]["identities"] == {"anonymous_id": anonymous}  # before the login, and the person's
    assert journey[1]["properties"]["stock_name"] == "贵州茅台"
    assert journey[0]["properties"]["$title"] == "行情 · 贵州茅台"
    assert journey[3]["properties"]["$lib"] == "sensors-js"
    derived = journey[3]["properties"]  # from the connection and the User-Agent
    assert (derived["$ip"], derived["$os"], derived["$runtime"]) == ("127.0.0.1", "Linux", "HeadlessChrome")
    # The first visit's profile_set_once carries only `$first_*` presets the plan does not map: counted, not kept.
    assert [r for r in of_person(collector.stored(), anonymous) if r.get("quarantined")] == []
    assert collector.events(anonymous) == journey
    assert w.errors == []


def test_sensors_debug_mode_alerts_success_and_the_reasons(
    pages: PageServer, collector: Collector, watch: Callable[[str], Watched]
) -> None:
    w = watch("")
    w.page.goto(sensors_url(pages, collector, "ajax", batch=False, debug=True))
    w.page.evaluate("() => sensors.track('ViewQuote', {StockCode: '600519', Market: 'SH', EntrySource: 'search'})")
    w.page.evaluate("() => sensors.track('ViewQuote', {StockCode: '600519', Market: 'MARS', EntrySource: 'search'})")
    deadline = time.monotonic() + DEADLINE_S
    while len(w.dialogs) < 4 and time.monotonic() < deadline:  # the page view, the first-visit profile, two quotes
        w.page.wait_for_timeout(100)
    ok = [d for d in w.dialogs if d.startswith("debug数据发送成功")]
    failed = [d for d in w.dialogs if d.startswith("debug失败")]
    assert (len(ok), len(failed)) == (3, 1), w.dialogs
    assert [d for d in ok if '"ViewQuote"' in d and '"SH"' in d]
    anonymous = w.page.evaluate("() => sensors.quick('getAnonymousID')")
    assert of_person(collector.stored(), anonymous) == []  # debug_mode_upload false: checked, not stored
    assert "/properties/market" in failed[0]
    assert w.errors == []


# -- Segment ----------------------------------------------------------------------------------


def segment_url(
    pages: PageServer, collector: Collector, *, batch: bool, inline: bool = False, metrics_ms: int = 0
) -> str:
    query = f"collector={collector.url}&write_key={SEGMENT_KEY}&batch={int(batch)}&inline={int(inline)}"
    if metrics_ms:
        query += f"&metrics_ms={metrics_ms}"
    return f"{pages.origin}/segment.html?{query}"


def segment_session(page: Any, login: str) -> str:
    """The page view (the page's own), an order while anonymous, identify, a login event; the anonymous id."""
    page.evaluate("() => window.analyticsReady")
    anonymous: str = page.evaluate("() => analytics.user().anonymousId()")
    page.evaluate(
        """async ([login, order]) => {
            await analytics.track('Order Submitted', order);
            await analytics.identify(login, {riskLevel: 'C3', city: '上海市'});
            await analytics.track('Logged In', {loginMethod: 'sms'});
        }""",
        [login, ORDER_SEGMENT],
    )
    return anonymous


SEGMENT_JOURNEY = ["app_page_view", "stock_order_submit", "profile_set", "bind", "user_login_submit"]


@pytest.mark.parametrize("batch", [False, True], ids=["standard", "batched"])
def test_analytics_next_delivers_every_event_once(
    pages: PageServer, collector: Collector, watch: Callable[[str], Watched], batch: bool
) -> None:
    w = watch("")
    before = collector.requests_by_path()
    w.page.goto(segment_url(pages, collector, batch=batch))
    login = f"u_{uuid.uuid4().hex[:12]}"
    anonymous = segment_session(w.page, login)

    journey = wait_for(lambda: collector.events(login), len(SEGMENT_JOURNEY), w.page)
    assert names(journey) == SEGMENT_JOURNEY
    assert len({e["event_id"] for e in journey}) == len(journey)
    assert journey[1]["identities"] == {"anonymous_id": anonymous}
    assert journey[1]["properties"]["stock_name"] == "贵州茅台"
    assert journey[2]["properties"] == {"risk_level": "C3", "city": "上海市"}
    assert all(e["source"] == "broker-web-segment" for e in journey)
    assert journey[1]["properties"]["$ip"] == "127.0.0.1"
    assert [r for r in of_person(collector.stored(), anonymous) if r.get("quarantined")] == []
    assert any("/segment/v1/projects/" in url for url in w.requests)  # its settings came from the collector
    after = collector.requests_by_path()
    sent = {
        path.rsplit("/", 1)[1] for path in after if path.startswith("/segment/") and after[path] > before.get(path, 0)
    }
    assert sent == ({"b"} if batch else {"p", "t", "i"})
    assert w.errors == []


def test_pages_left_open_log_no_console_errors(
    pages: PageServer, collector: Collector, watch: Callable[[str], Watched]
) -> None:
    """Both SDKs' pages open together for the watch; analytics.js with inline settings and its metrics on."""
    sa, seg = watch("-sensors"), watch("-segment")
    sa.page.goto(sensors_url(pages, collector, "ajax", batch=True))
    seg.page.goto(segment_url(pages, collector, batch=False, inline=True, metrics_ms=10_000))
    sensors_session(sa.page, f"u_{uuid.uuid4().hex[:12]}")
    segment_session(seg.page, f"u_{uuid.uuid4().hex[:12]}")
    started = time.monotonic()
    seg.page.wait_for_timeout(QUIET_WATCH_MS)  # the watch itself: both pages run meanwhile
    assert time.monotonic() - started >= QUIET_WATCH_MS / 1000
    assert sa.errors == []
    assert seg.errors == []
    metrics = [s for s, url in seg.responses if url.endswith("/segment/v1/m")]
    assert metrics
    assert set(metrics) == {200}


# -- the collector down, then up ------------------------------------------------------------------


@pytest.fixture
def restartable(tmp_path: Path) -> Iterator[Collector]:
    with collector_process(tmp_path) as server:
        yield server
    assert server.errors() == []


def test_nothing_is_lost_while_the_collector_is_down(
    pages: PageServer, restartable: Collector, watch: Callable[[str], Watched]
) -> None:
    """Sensors' batch sender and analytics.js keep what they could not send and deliver it after a crash."""
    sa, seg = watch("-sensors"), watch("-segment")
    sa.page.goto(sensors_url(pages, restartable, "ajax", batch=True))
    seg.page.goto(segment_url(pages, restartable, batch=False))
    sa_login, seg_login = f"u_{uuid.uuid4().hex[:12]}", f"u_{uuid.uuid4().hex[:12]}"
    seg.page.evaluate("() => window.analyticsReady")
    assert len(wait_for(lambda: restartable.cli("export"), 2, sa.page)) == 2  # both page views are in

    restartable.stop(kill=True)
    sensors_session(sa.page, sa_login)
    segment_session(seg.page, seg_login)
    sa.page.wait_for_timeout(1000)  # the SDKs try, fail, and keep the events
    restartable.start()

    assert names(wait_for(lambda: restartable.events(sa_login), 4, sa.page)) == SENSORS_JOURNEY
    assert names(wait_for(lambda: restartable.events(seg_login), 5, seg.page)) == SEGMENT_JOURNEY
    stored = restartable.cli("export")
    assert len(stored) == len({e["event_id"] for e in stored}) == len(SENSORS_JOURNEY) + len(SEGMENT_JOURNEY)
    refused = [e for e in sa.errors + seg.errors if "ERR_CONNECTION_REFUSED" not in e]
    assert refused == []
    (ARTIFACTS / "stored-after-restart.json").write_text(json.dumps(stored, ensure_ascii=False, indent=1), "utf-8")
