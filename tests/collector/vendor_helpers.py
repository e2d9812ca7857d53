"""Shared pieces of the vendor ingestion tests: the plan with mappings, and request builders."""

from __future__ import annotations

import base64
import gzip
import json
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from maidian.tracking_plan import Plan, Validator, load_plan
from tests.conftest import DATA, ROOT

VENDOR_PLAN = DATA / "vendor.plan.json"
NOW_MS = 1_763_800_000_000


@cache
def vendor_plan() -> Plan:
    return load_plan(VENDOR_PLAN)


@cache
def validator() -> Validator:
    return Validator(vendor_plan())


def sensors_payload(records: Any, *, compress: bool = True) -> str:
    """The base64 text a Sensors SDK puts in `data` / `data_list`."""
    raw = json.dumps(records, ensure_ascii=False, separators=(",", ":")).encode()
    return base64.b64encode(gzip.compress(raw) if compress else raw).decode()


def sensors_form(records: Any, *, field: str = "data_list", compress: bool = True, **extra: str) -> bytes:
    """A form body as the Sensors SDKs post it (`data_list=...&gzip=1`)."""
    fields = {field: sensors_payload(records, compress=compress), "gzip": "1" if compress else "0", **extra}
    return urlencode(fields).encode()


def sensors_track(event: str = "SubmitOrder", **over: Any) -> dict[str, Any]:
    """A track record shaped like the Python SDK's."""
    record: dict[str, Any] = {
        "type": "track",
        "event": event,
        "time": NOW_MS,
        "distinct_id": "u_10086",
        "properties": {
            "$lib": "python",
            "$lib_version": "1.11.0",
            "$is_login_id": True,
            "StockCode": "600519",
            "StockName": "贵州茅台",
            "Side": "buy",
            "OrderPrice": 1688.5,
            "OrderQty": 100,
        },
        "lib": {"$lib": "python", "$lib_version": "1.11.0", "$lib_method": "code"},
        "project": "broker",
    }
    record.update(over)
    return record


def basic(write_key: str) -> str:
    return "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()


def segment_json(body: Any, *, compress: bool = False) -> bytes:
    raw = json.dumps(body, ensure_ascii=False).encode()
    return gzip.compress(raw) if compress else raw


EXAMPLE_PLAN = ROOT / "examples" / "securities_app.plan.json"

# The example plan's names for what a Sensors- or Segment-instrumented broker app sends.
SECURITIES_MAPPINGS: dict[str, Any] = {
    "sensors": {
        "events": {
            "$AppStart": "app_launch",
            "ViewQuote": "stock_quote_view",
            "SubmitOrder": "stock_order_submit",
            "OrderFilled": "stock_order_filled",
            "LoginSubmit": {"event": "user_login_submit", "properties": {"Method": "method"}},
            "$pageview": {"event": "app_page_view", "properties": {"$url_path": "page_id"}},
        },
        "properties": {
            "LaunchType": "launch_type",
            "LaunchSource": "launch_source",
            "IsFirstLaunch": "is_first_launch",
            "RequestId": "request_id",
            "StockCode": "stock_code",
            "StockName": "stock_name",
            "Market": "market",
            "EntrySource": "entry_source",
            "Side": "side",
            "OrderType": "order_type",
            "OrderPrice": "price",
            "OrderQty": "quantity",
            "AccountKind": "account_kind",
            "OrderId": "order_id",
            "FillId": "fill_id",
            "FillPrice": "fill_price",
            "FillQty": "fill_quantity",
            "FillAmount": "fill_amount",
            "FullyFilled": "is_fully_filled",
            "Currency": "currency",
            "RiskLevel": "risk_level",
            "City": "city",
            "LoginCount": "login_count",
            "Tags": "tags",
            "DebugFlag": None,
        },
    },
    "segment": {
        "events": {
            "Order Submitted": "stock_order_submit",
            "Order Filled": "stock_order_filled",
            "Logged In": {"event": "user_login_submit", "properties": {"loginMethod": "method"}},
            "$page": "app_page_view",
            "$screen": "app_page_view",
        },
        "properties": {
            "requestId": "request_id",
            "symbol": "stock_code",
            "symbolName": "stock_name",
            "market": "market",
            "side": "side",
            "orderType": "order_type",
            "price": "price",
            "quantity": "quantity",
            "accountKind": "account_kind",
            "orderId": "order_id",
            "pageId": "page_id",
            "riskLevel": "risk_level",
            "city": "city",
        },
    },
}


def securities_vendor_plan(directory: Path) -> Path:
    """The example plan with `SECURITIES_MAPPINGS` added, written into `directory`."""
    doc = json.loads(EXAMPLE_PLAN.read_text("utf-8"))
    doc["mappings"] = SECURITIES_MAPPINGS
    path = directory / "securities_vendor.plan.json"
    path.write_text(json.dumps(doc, ensure_ascii=False, indent=1), "utf-8")
    return path
