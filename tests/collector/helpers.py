"""Building real batches (msgpack + zstd, as the SDK sends them) and posting them to a collector."""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgspec
import zstandard

from maidian.collector.settings import AuthConfig, Config, ServerSource, StorageConfig, WriteKey, hash_key
from maidian.tracking_plan import signing
from tests.conftest import MINI_PLAN

KEY = "mk_test_current_0001"
OLD_KEY = "mk_test_previous_0001"
REVOKED_KEY = "mk_test_revoked_0001"
LIMITED_KEY = "mk_test_limited_0001"
SOURCE = "orders-service"
SECRET = b"orders-service-secret-0123456789"
DEVICE = "0193a5b2c3d4e5f60718293a4b5c6d7e"


def make_config(data_dir: Path, **storage: Any) -> Config:
    """A configuration for tests: the mini plan, a few keys, one server source, a fast indexer."""
    keys = (
        WriteKey("current", hash_key(KEY)),
        WriteKey("previous", hash_key(OLD_KEY)),
        WriteKey("revoked", hash_key(REVOKED_KEY), revoked=True),
        WriteKey("limited", hash_key(LIMITED_KEY), rate_events_per_s=10, burst_events=10),
    )
    return Config(
        plan=MINI_PLAN,
        storage=replace(StorageConfig(), data_dir=data_dir, index_interval_s=0.05, **storage),
        auth=AuthConfig(write_keys=keys, sources=(ServerSource(SOURCE, SECRET),)),
    )


def now_ms() -> int:
    return int(time.time() * 1000)


def order(
    seq: int, *, device: str = DEVICE, t: int | None = None, anon: str = "dev-1", login: str | None = None, **props: Any
) -> dict[str, Any]:
    properties = {"stock_code": "600519", "side": "buy", "price": 1688.5, "quantity": 200, "$lib": "maidian-python"}
    properties.update(props)
    identities = {"anonymous_id": anon}
    if login is not None:
        identities["login_id"] = login
    return {
        "type": "track",
        "event": "stock_order_submit",
        "event_id": f"{device}-{seq}",
        "time": now_ms() if t is None else t,
        "identities": identities,
        "properties": {k: v for k, v in properties.items() if v is not None},
    }


def login_event(seq: int, *, anon: str, login: str, device: str = DEVICE, t: int | None = None) -> dict[str, Any]:
    return {
        "type": "track",
        "event": "account_login",
        "event_id": f"{device}-{seq}",
        "time": now_ms() if t is None else t,
        "identities": {"anonymous_id": anon, "login_id": login},
        "properties": {"method": "sms"},
    }


def filled(event_id: str, *, login: str = "u-1") -> dict[str, Any]:
    return {
        "type": "track",
        "event": "stock_order_filled",
        "event_id": event_id,
        "time": now_ms(),
        "identities": {"login_id": login},
        "properties": {"stock_code": "600519", "filled_quantity": 100},
    }


def body_of(
    events: Iterable[Any], *, sent_at: int | None = None, fmt: str = "msgpack", encoding: str = "zstd"
) -> bytes:
    batch = {
        "sent_at": now_ms() if sent_at is None else sent_at,
        "lib": "maidian-test",
        "lib_version": "0",
        "events": list(events),
    }
    data = msgspec.msgpack.encode(batch) if fmt == "msgpack" else json.dumps(batch).encode()
    return compress(data, encoding)


def compress(data: bytes, encoding: str) -> bytes:
    if encoding == "zstd":
        return zstandard.ZstdCompressor(level=1).compress(data)
    if encoding == "gzip":
        return gzip.compress(data)
    return data


def headers_for(*, key: str | None = KEY, fmt: str = "msgpack", encoding: str = "zstd") -> dict[str, str]:
    h = {"Content-Type": "application/msgpack" if fmt == "msgpack" else "application/json"}
    if encoding != "identity":
        h["Content-Encoding"] = encoding
    if key is not None:
        h["X-Maidian-Write-Key"] = key
    return h


def signed_headers(
    body: bytes,
    *,
    path: str = "/v1/batch",
    secret: bytes = SECRET,
    source: str = SOURCE,
    timestamp: int | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    ts = int(time.time()) if timestamp is None else timestamp
    nonce = nonce or signing.make_nonce()
    return {
        "Content-Type": "application/msgpack",
        "Content-Encoding": "zstd",
        "X-Maidian-Source": source,
        "X-Maidian-Timestamp": str(ts),
        "X-Maidian-Nonce": nonce,
        "X-Maidian-Signature": signing.sign(secret, timestamp=ts, nonce=nonce, method="POST", path=path, body=body),
    }


def statuses(result: dict[str, Any]) -> list[str]:
    return [r["status"] for r in result["results"]]
