"""Signed server sources (docs/reliability.md, T17): tampering, wrong path, old timestamps and replays are refused."""

from __future__ import annotations

import ast
import time
from pathlib import Path
from typing import Any

import pytest

from maidian.collector.errors import RateLimited
from maidian.collector.pipeline.auth import NonceCache, RateLimiter
from maidian.collector.settings import WriteKey
from tests.collector.helpers import body_of, filled, headers_for, order, signed_headers, statuses
from tests.conftest import ROOT


async def test_a_signed_request_is_accepted(client: Any) -> None:
    body = body_of([filled("fill-1")])
    resp = await client.post("/v1/batch", data=body, headers=signed_headers(body))
    assert statuses(await resp.json()) == ["accepted"]


async def test_bad_signatures_are_401(client: Any) -> None:
    body = body_of([filled("fill-1")])
    cases = {
        "tampered body": (body_of([filled("fill-2")]), signed_headers(body)),
        "wrong path": (body, signed_headers(body, path="/v1/debug")),
        "timestamp 301 s old": (body, signed_headers(body, timestamp=int(time.time()) - 301)),
        "timestamp 301 s ahead": (body, signed_headers(body, timestamp=int(time.time()) + 301)),
        "wrong secret": (body, signed_headers(body, secret=b"another-secret-0123456789")),
        "unknown source": (body, signed_headers(body, source="nobody")),
    }
    for name, (data, headers) in cases.items():
        resp = await client.post("/v1/batch", data=data, headers=headers)
        assert resp.status == 401, name
        assert (await resp.json())["error"]["code"] == "unauthenticated"
    missing = signed_headers(body)
    del missing["X-Maidian-Nonce"]
    assert (await client.post("/v1/batch", data=body, headers=missing)).status == 401


async def test_a_replayed_nonce_is_refused(client: Any) -> None:
    body = body_of([filled("fill-1")])
    headers = signed_headers(body, nonce="4f1c2b9e0a7d4c3b8e6f000000000001")
    assert (await client.post("/v1/batch", data=body, headers=headers)).status == 200
    again = await client.post("/v1/batch", data=body, headers=headers)
    assert again.status == 401
    assert "replay" in (await again.json())["error"]["message"]


def test_nonces_are_forgotten_after_the_window() -> None:
    cache = NonceCache(window_s=300)
    assert cache.add("a", 1000.0)
    assert not cache.add("a", 1100.0)
    cache.expire(1000.0 + 601)
    assert cache.add("a", 1601.0)


def test_a_full_nonce_cache_refuses_rather_than_forgets() -> None:
    cache = NonceCache(window_s=300, max_size=2)
    assert cache.add("a", 0.0)
    assert cache.add("b", 0.0)
    assert not cache.add("c", 1.0)


def test_token_bucket_refills() -> None:
    key = WriteKey("k", "0" * 64, rate_events_per_s=100, burst_events=100)
    limiter = RateLimiter()
    limiter.take(key, 100, 0.0)
    with pytest.raises(RateLimited) as info:
        limiter.take(key, 50, 0.1)
    assert info.value.retry_after_s is not None
    assert info.value.retry_after_s >= 1
    limiter.take(key, 50, 0.6)


def test_secrets_are_compared_in_constant_time_only() -> None:
    """Static check: no `==`/`!=` on anything named like a key, secret, digest or signature."""
    suspicious = ("key", "secret", "digest", "signature", "stored", "presented", "mac")
    for path in [ROOT / "collector" / "pipeline" / "auth.py", ROOT / "tracking_plan" / "signing.py"]:
        tree = ast.parse(Path(path).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare) and any(isinstance(op, (ast.Eq, ast.NotEq)) for op in node.ops):
                names = [n.id for n in ast.walk(node) if isinstance(n, ast.Name)]
                names += [n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)]
                assert not any(s in name.lower() for name in names for s in suspicious), (path, ast.unparse(node))
        assert "compare_digest" in Path(path).read_text()


async def test_stray_signing_headers_next_to_a_write_key_are_refused(client: Any) -> None:
    """Found by schemathesis (docs/reliability.md, T20): a lone timestamp or nonce was ignored, the key accepted."""
    body = body_of([order(1)])
    for header, value in (("X-Maidian-Timestamp", "not-a-time"), ("X-Maidian-Nonce", "n" * 200)):
        resp = await client.post("/v1/batch", data=body, headers={**headers_for(), header: value})
        assert resp.status == 401, header
        assert "a signed request needs" in (await resp.json())["error"]["message"]
    assert (await client.post("/v1/batch", data=body, headers=headers_for())).status == 200
