"""Debian's Chromium driven by playwright, for the browser tests (tests/collector/test_live_browser.py, tests/web).

playwright's own browser downloads are never used: `CHROMIUM` is Debian's
(`apt-get install chromium`; .ci/run installs it). Without it, or without the
playwright package (the `dev` extra), the tests marked `BROWSER_MARKS` skip
and say why.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

CHROMIUM = Path("/usr/bin/chromium")
# Screenshots and console logs the browser tests keep (not committed).
ARTIFACTS = ROOT / "test-artifacts"
# What a page gets to load, or an element to appear, before a browser test gives up.
TIMEOUT_MS = 15_000
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
BROWSER_MARKS: list[Any] = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="browser tests need Debian's chromium at /usr/bin/chromium: apt-get install chromium",
    ),
    pytest.mark.skipif(
        importlib.util.find_spec("playwright") is None,
        reason="browser tests need the playwright package: pip install -e '.[dev]'",
    ),
]
