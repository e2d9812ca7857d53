"""Headless Debian Chromium for the page tests: where it is, how it starts, where screenshots go.

Needs Debian's `chromium` (`apt-get install chromium`; .ci/run installs it)
and the `playwright` package (the `dev` extra), which drives it; playwright's
own browser downloads are never used. Without them the tests marked with
`BROWSER_MARKS` skip and say why. The `browser` fixture is in conftest.py.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.conftest import ROOT

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"
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
TIMEOUT_MS = 15_000

BROWSER_MARKS = [
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
