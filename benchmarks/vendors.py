"""What drop-in vendor ingestion costs per record, against decoding the same events in maidian's own JSON batch.

Each row decodes (and maps) one request of BATCH order records as the vendor's
SDK sends it: Sensors as a gzipped, base64, form-encoded `data_list` (what its
Python and Android SDKs post), Segment as a JSON batch (analytics-python). The
floor is msgspec decoding maidian's own JSON batch of the mapped events, and
the plan's validator on those events is shown for scale: it runs on native
traffic too. Per-record microseconds are the median of ROUNDS timed runs, each
the best of several loops; run it more than once on a shared machine.

    .venv/bin/python benchmarks/vendors.py [--json]
"""

from __future__ import annotations

import base64
import gzip
import json
import statistics
import sys
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlencode

import msgspec

from maidian.collector.vendors import segment, sensors
from maidian.tracking_plan import Validator, load_plan

ROOT = Path(__file__).resolve().parent.parent
PLAN = load_plan(ROOT / "tests" / "data" / "vendor.plan.json")
BATCH = 50  # the Sensors SDKs' batch size
ROUNDS = 7
NOW_MS = 1_763_800_000_000


def sensors_body() -> bytes:
    records = [
        {
            "type": "track",
            "event": "SubmitOrder",
            "time": NOW_MS + n,
            "distinct_id": f"u_{n % 9}",
            "_track_id": 100_000 + n,
            "_flush_time": NOW_MS + 1000,
            "lib": {"$lib": "Android", "$lib_version": "6.8.0"},
            "properties": {
                "$is_login_id": True,
                "$os": "Android",
                "$model": "Mate 60",
                "$app_version": "5.2.1",
                "$is_first_day": False,
                "StockCode": "600519",
                "StockName": "贵州茅台",
                "Side": "buy",
                "OrderPrice": 1688.5 + n,
                "OrderQty": 100,
            },
        }
        for n in range(BATCH)
    ]
    data = base64.b64encode(gzip.compress(json.dumps(records, ensure_ascii=False).encode())).decode()
    return urlencode({"data_list": data, "gzip": "1"}).encode()


def segment_body() -> bytes:
    messages = [
        {
            "type": "track",
            "event": "Order Submitted",
            "messageId": f"3b1f0c4e-8a61-4d55-9d2b-{n:012d}",
            "userId": f"u_{n % 9}",
            "timestamp": "2025-11-22T08:26:40.000Z",
            "context": {"library": {"name": "analytics-python", "version": "2.4.0"}},
            "properties": {
                "symbol": "600519",
                "symbolName": "贵州茅台",
                "side": "buy",
                "price": 1.5 + n,
                "quantity": 100,
            },
        }
        for n in range(BATCH)
    ]
    return json.dumps({"batch": messages, "sentAt": "2025-11-22T08:26:41.000Z"}, ensure_ascii=False).encode()


def per_record_us(fn: Callable[[], object]) -> float:
    loops = 20
    best = min(timeit.repeat(fn, number=loops, repeat=3))
    return best / loops / BATCH * 1e6


def main() -> None:
    sa_body, sg_body = sensors_body(), segment_body()
    headers = {"Authorization": "Basic " + base64.b64encode(b"wk:").decode()}
    sa_map, sg_map = sensors.SensorsMapper(PLAN), segment.SegmentMapper(PLAN)
    validator = Validator(PLAN)
    mapped = sa_map.map_request(sensors.decode_request("POST", "project=p", {}, sa_body)).events
    native = msgspec.json.encode({"sent_at": NOW_MS, "lib": "maidian-python", "events": mapped})
    assert all(validator.is_valid(e) for e in mapped)

    cases: dict[str, Callable[[], object]] = {
        "floor: maidian JSON batch, decode": lambda: msgspec.json.decode(native),
        "plan validator on the mapped events": lambda: [validator.is_valid(e) for e in mapped],
        "sensors: decode (form, base64, gunzip, JSON)": lambda: sensors.decode_request("POST", "", {}, sa_body),
        "sensors: decode + map": lambda: sa_map.map_request(sensors.decode_request("POST", "", {}, sa_body)),
        "segment: decode (JSON, Basic auth)": lambda: segment.decode_request("batch", headers, sg_body),
        "segment: decode + map": lambda: sg_map.map_request(
            segment.decode_request("batch", headers, sg_body), now_ms=NOW_MS
        ),
    }
    runs: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(ROUNDS):
        for name, fn in cases.items():
            runs[name].append(per_record_us(fn))
    floor = statistics.median(runs["floor: maidian JSON batch, decode"])
    rows = []
    for name, values in runs.items():
        median = statistics.median(values)
        spread = (max(values) - min(values)) / median
        rows.append(
            {
                "case": name,
                "us_per_record": round(median, 2),
                "x_floor": round(median / floor, 1),
                "spread": round(spread, 2),
            }
        )
    if "--json" in sys.argv:
        print(json.dumps({"batch": BATCH, "rounds": ROUNDS, "time": time.time(), "rows": rows}, ensure_ascii=False))
        return
    print(f"{BATCH}-record requests, median of {ROUNDS} rounds (spread = (max - min) / median)")
    print(f"{'case':46} {'µs/record':>10} {'x floor':>8} {'spread':>7}")
    for row in rows:
        print(f"{row['case']:46} {row['us_per_record']:>10.2f} {row['x_floor']:>8.1f} {row['spread']:>7.2f}")


if __name__ == "__main__":
    main()
