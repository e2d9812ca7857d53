"""The lake's HTML report of the example data set, in headless Chromium: offline, charts drawn, CJK legible.

The data set is `benchmarks/lake.py`'s generator at 8,000 events (persons
shaped like the example plan: UTM channels, logins, the 12-step opening
funnel, deposits, pushes). The page must load nothing but itself; the
screenshot is kept in test-artifacts/lake-report.png.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from maidian.collector.cli import main
from tests.browser import ARTIFACTS, BROWSER_MARKS, CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS
from tests.conftest import ROOT

pytestmark = BROWSER_MARKS


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("lake_benchmark", ROOT / "benchmarks" / "lake.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_example_report_draws_offline_with_cjk_text(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    data = tmp_path / "data"
    _generator().generate(data, 8_000)
    plan = str(ROOT / "examples" / "securities_app.plan.json")
    assert main(["lake", "build", "--data", str(data), "--plan", plan]) == 0
    page_path = tmp_path / "report.html"
    assert main(["report", "html", "--data", str(data), "--plan", plan, "--out", str(page_path)]) == 0

    requested: list[str] = []
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.route("**/*", lambda route: (requested.append(route.request.url), route.continue_()))
            page.goto(page_path.as_uri(), timeout=TIMEOUT_MS)
            assert requested == [page_path.as_uri()]
            funnels = page.locator('section[data-kind="funnel"]')
            assert funnels.count() == 2
            bars = funnels.first.locator("svg rect")
            assert bars.count() == 12
            widths = [float(bars.nth(i).get_attribute("width") or 0) for i in range(12)]
            assert widths[0] == max(widths)
            assert widths[-1] < widths[0]
            heat = page.locator('section[data-kind="retention"] svg rect')
            assert heat.count() >= 7 * 6
            title = page.locator("h1")
            assert "示例证券" in title.inner_text()
            # CJK drawn with a CJK font: each ideograph takes about an em, not a narrow fallback box.
            box = page.locator("h1").bounding_box()
            cjk_width = page.evaluate(
                "() => { const s = document.createElement('span'); s.textContent = '示例证券';"
                " s.style.fontSize = '20px'; document.body.appendChild(s); const w = s.getBoundingClientRect().width;"
                " s.remove(); return w; }"
            )
            assert box is not None
            assert box["width"] > 0
            assert cjk_width >= 4 * 20 * 0.9
            page.screenshot(path=str(ARTIFACTS / "lake-report.png"), full_page=True)
        finally:
            browser.close()
