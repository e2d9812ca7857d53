"""Fixtures: a real collector app on 127.0.0.1 over a real data directory."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from maidian.collector.http.app import make_app
from tests.collector.helpers import make_config

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def start(aiohttp_client: Any, data_dir: Path) -> ClientFactory:
    """Start a collector app (optionally with storage overrides); returns its test client."""

    async def go(plan: Path | None = None, **storage: Any) -> TestClient[Any, Any]:
        config = make_config(data_dir, **storage)
        if plan is not None:
            config = replace(config, plan=plan)
        client: TestClient[Any, Any] = await aiohttp_client(make_app(config))
        return client

    return go


@pytest.fixture
async def client(start: ClientFactory) -> TestClient[Any, Any]:
    return await start()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Debian Chromium, driven by playwright (tests/browser.py); one per test module."""
    from playwright.sync_api import sync_playwright

    from tests.browser import CHROMIUM, CHROMIUM_ARGS

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
