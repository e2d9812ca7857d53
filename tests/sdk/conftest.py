"""Fixtures for the SDK tests: a running sink, the mini plan, and one handle over both shells."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from maidian.sdk import AsyncClient, Client
from maidian.tracking_plan import load_plan
from maidian.tracking_plan.model import Plan
from tests.conftest import MINI_PLAN
from tests.sdk.sink import Sink

ORDER = {
    "stock_code": "600519",
    "stock_name": "贵州茅台",
    "side": "buy",
    "price": 1688.5,
    "quantity": 100,
    "amount": 168850.0,
    "market": "SH",
    "order_type": "limit",
    "account_type": "cash",
    "is_margin": False,
}


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink() as running:
        yield running


@pytest.fixture(scope="session")
def mini_plan() -> Plan:
    return load_plan(MINI_PLAN)


class Shell:
    """One API over `Client` and `AsyncClient`, so a parity test is written once.

    Recording calls are the same plain methods on both; `flush` and `close` are
    awaited here (the thread client's run in a worker thread).
    """

    def __init__(self, kind: str, url: str, **kwargs: Any) -> None:
        self.kind = kind
        kwargs.setdefault("write_key", "wk_test")
        self.client: Client | AsyncClient = (Client if kind == "thread" else AsyncClient)(url, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    async def flush(self, timeout_s: float = 10.0) -> bool:
        if isinstance(self.client, AsyncClient):
            return await self.client.flush(timeout_s)
        return await asyncio.to_thread(self.client.flush, timeout_s)

    async def close(self, timeout_s: float = 10.0) -> bool:
        if isinstance(self.client, AsyncClient):
            return await self.client.aclose(timeout_s)
        return await asyncio.to_thread(self.client.close, timeout_s)


@pytest.fixture(params=["thread", "asyncio"])
def shell_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)
