"""Vendor files, generated: Sensors LoggingConsumer files (JSON lines, rotated daily) and Segment archives."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from maidian.collector.settings import hash_key
from tests.collector.vendor_helpers import securities_vendor_plan

ORDERS_KEY = "mk_orders_backend_import"
SEGMENT_KEY = "wk_web_app_import"

CONFIG = """
plan = "{plan}"

[storage]
data_dir = "{data}"
durability = "{durability}"

[[write_keys]]
name = "orders-backend"
sha256 = "{orders}"

[[write_keys]]
name = "web-app"
sha256 = "{segment}"

[[vendors.sensors.projects]]
name = "orders"
write_key = "orders-backend"
trusted = true
allow_from = ["127.0.0.1/32"]
"""


def import_config(root: Path, *, durability: str = "fsync") -> Path:
    """A collector configuration serving the Sensors project `orders`, with the securities plan's mappings."""
    plan = securities_vendor_plan(root)
    path = root / "maidian.toml"
    text = CONFIG.format(
        plan=plan,
        data=root / "data",
        durability=durability,
        orders=hash_key(ORDERS_KEY),
        segment=hash_key(SEGMENT_KEY),
    )
    path.write_text(text, "utf-8")
    return path


def record(n: int, time_ms: int) -> dict[str, Any]:
    """The n-th SubmitOrder as the Python SDK's LoggingConsumer writes it (no `_track_id`)."""
    login = f"u{n % 5000:05d}"
    return {
        "type": "track",
        "event": "SubmitOrder",
        "time": time_ms,
        "distinct_id": login,
        "properties": {
            "$lib": "python",
            "$lib_version": "1.11.0",
            "$is_login_id": True,
            "RequestId": str(uuid.UUID(int=n)),
            "StockCode": "600519",
            "StockName": "贵州茅台",
            "Market": "SH",
            "Side": "buy" if n % 2 else "sell",
            "OrderType": "limit",
            "OrderPrice": 1688.5,
            "OrderQty": 100 * (n % 9 + 1),
            "AccountKind": "cash",
        },
        "lib": {"$lib": "python", "$lib_version": "1.11.0", "$lib_method": "code", "$lib_detail": "##import##x.py##1"},
        "project": "orders",
    }


def write_rotated(directory: Path, count: int, *, days: int, start_ms: int, prefix: str = "service.log") -> list[Path]:
    """`count` records over `days` daily files `PREFIX.YYYY-MM-DD`, a minute apart in time order."""
    directory.mkdir(parents=True, exist_ok=True)
    per_day = -(-count // days)
    files: list[Path] = []
    encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
    for day in range(days):
        path = directory / f"{prefix}.2026-11-{day + 1:02d}"
        with path.open("w", encoding="utf-8") as out:
            for n in range(day * per_day, min(count, (day + 1) * per_day)):
                out.write(encoder.encode(record(n, start_ms + n * 10)) + "\n")
        files.append(path)
    return files


def segment_message(n: int, timestamp: str) -> dict[str, Any]:
    """The n-th `Order Submitted` as Segment archives a track call."""
    return {
        "type": "track",
        "event": "Order Submitted",
        "messageId": f"ajs-next-{uuid.UUID(int=n)}",
        "anonymousId": f"anon-{n % 100}",
        "userId": f"u{n % 100:03d}",
        "timestamp": timestamp,
        "sentAt": timestamp,
        "properties": {
            "requestId": str(uuid.UUID(int=n)),
            "symbol": "600519",
            "symbolName": "贵州茅台",
            "market": "SH",
            "side": "buy",
            "orderType": "limit",
            "price": 1688.5,
            "quantity": 100,
            "accountKind": "cash",
        },
        "context": {"library": {"name": "analytics.js", "version": "next-1.84.3"}},
    }
