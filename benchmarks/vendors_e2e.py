"""Vendor traffic end to end through a real `maidian serve`, beside native traffic in the same run.

    .venv/bin/python benchmarks/vendors_e2e.py            # 3 rounds of 8 s per kind, medians
    .venv/bin/python benchmarks/vendors_e2e.py --quick    # 1 round of 4 s

One collector process (fsync durability with group commit, dedup and identity
indexing on, the vendor test plan with its mappings) takes, in turn, the same
order events as:

- native: msgpack + zstd batches on `POST /v1/batch` (what the maidian SDK sends);
- sensors: `data_list` form bodies on `POST /sa`, gzipped and base64 (what the
  Sensors Android and Python SDKs send), records with `_track_id` and `_flush_time`;
- segment: gzipped JSON batches on `POST /segment/v1/batch` with Basic auth
  (what analytics-python sends).

Every request carries BATCH new events (new ids), so nothing is a duplicate,
from a load process on keep-alive connections on 127.0.0.1 (the load
generator of benchmarks/collector.py). Kinds alternate within each round, so
the machine's other load hits them alike; the table shows medians, the spread
between rounds, the server's CPU per event, and each kind's rate against
native in the same run. The collector's metrics are checked at the end: every
event accepted, none duplicate or quarantined. JSON goes to
benchmarks/results/vendors_e2e.json.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import msgspec
import zstandard

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from collector import _connection, _stop, _wait_port, cpu_seconds  # noqa: E402

PLAN = ROOT / "tests" / "data" / "vendor.plan.json"
NATIVE_KEY = "bench-native-key-0000000001"
APP_KEY = "bench-sensors-app-key-000001"
SEGMENT_KEY = "bench-segment-key-0000000001"
BATCH = 50  # the Sensors SDKs' batch size
CONNS = 32  # requests in flight: each waits for the fsync that covers it
KINDS = ("native", "sensors", "segment")
# Events/s each kind could reach here at most, to size the bodies built up front (about 1.5x the measured rates).
RATE_HINT = {"native": 150_000, "sensors": 50_000, "segment": 50_000}


def _order(n: int) -> dict[str, Any]:
    """The vendor plan's stock_order_submit, with Sensors' property names."""
    return {
        "StockCode": "600519",
        "StockName": "贵州茅台",
        "Side": "buy" if n % 2 else "sell",
        "OrderPrice": 1688.5 + n % 100,
        "OrderQty": 100 * (n % 9 + 1),
    }


def native_body(worker: int, b: int, now: int) -> bytes:
    device = f"{worker:04x}{b:012x}{os.urandom(8).hex()}"
    events = [
        {
            "type": "track",
            "event": "stock_order_submit",
            "event_id": f"{device}-{k + 1}",
            "time": now - 1000 + k,
            "identities": {"anonymous_id": f"dev-{worker}-{b}", "login_id": f"u_{b % 5000}"},
            "properties": {
                "stock_code": "600519",
                "stock_name": "贵州茅台",
                "side": "buy" if k % 2 else "sell",
                "price": 1688.5 + k,
                "quantity": 100 * (k % 9 + 1),
                "$lib": "maidian-python",
                "$lib_version": "0.1.0",
            },
        }
        for k in range(BATCH)
    ]
    batch = {"sent_at": now, "lib": "bench", "lib_version": "0", "events": events}
    return zstandard.ZstdCompressor(level=1).compress(msgspec.msgpack.encode(batch))


def sensors_body(worker: int, b: int, now: int) -> bytes:
    records = [
        {
            "type": "track",
            "event": "SubmitOrder",
            "time": now - 1000 + k,
            "distinct_id": f"u_{b % 5000}",
            "login_id": f"u_{b % 5000}",
            "anonymous_id": f"dev-{worker}-{b}",
            "_track_id": (worker << 40) + b * BATCH + k,
            "_flush_time": now,
            "lib": {"$lib": "Android", "$lib_version": "6.8.0"},
            "properties": {"$is_login_id": True, "$os": "Android", "$model": "Mate 60", **_order(k)},
        }
        for k in range(BATCH)
    ]
    data = base64.b64encode(gzip.compress(json.dumps(records, ensure_ascii=False).encode(), 6)).decode()
    return urlencode({"data_list": data, "gzip": "1", "crc": "0"}).encode()


def segment_body(worker: int, b: int, now: int) -> bytes:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now / 1000))
    messages = [
        {
            "type": "track",
            "event": "Order Submitted",
            "messageId": str(uuid.uuid4()),
            "userId": f"u_{b % 5000}",
            "anonymousId": f"dev-{worker}-{b}",
            "timestamp": f"{stamp}.{k:03d}Z",
            "context": {"library": {"name": "analytics-python", "version": "2.4.0"}},
            "properties": {
                "symbol": "600519",
                "symbolName": "贵州茅台",
                "side": "buy" if k % 2 else "sell",
                "price": 1.5 + k,
                "quantity": 100,
            },
        }
        for k in range(BATCH)
    ]
    return gzip.compress(json.dumps({"batch": messages, "sentAt": f"{stamp}Z"}).encode(), 6)


def request_bytes(kind: str, body: bytes, port: int) -> bytes:
    if kind == "native":
        head = (
            f"POST /v1/batch HTTP/1.1\r\nContent-Type: application/msgpack\r\nContent-Encoding: zstd\r\n"
            f"X-Maidian-Write-Key: {NATIVE_KEY}\r\n"
        )
    elif kind == "sensors":
        head = "POST /sa?project=broker HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
    else:
        auth = base64.b64encode(f"{SEGMENT_KEY}:".encode()).decode()
        head = (
            "POST /segment/v1/batch HTTP/1.1\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
            f"Authorization: Basic {auth}\r\n"
        )
    return f"{head}Host: 127.0.0.1:{port}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


BUILDERS = {"native": native_body, "sensors": sensors_body, "segment": segment_body}


def _load(kind: str, port: int, count: int, worker: int, duration_s: float, results: Any) -> None:
    import asyncio

    now = int(time.time() * 1000)
    requests = [request_bytes(kind, BUILDERS[kind](worker, b, now), port) for b in range(count)]
    lat: list[float] = []
    stats: dict[str, int] = {}

    async def run() -> float:
        start = time.perf_counter()
        deadline = start + duration_s
        await asyncio.gather(
            *(_connection(port, requests, c, CONNS, deadline, lat, stats, False) for c in range(CONNS))
        )
        return time.perf_counter() - start

    elapsed = asyncio.run(run())
    results.put({"latencies": lat, "stats": stats, "elapsed": elapsed, "exhausted": len(lat) >= len(requests)})


def drive(kind: str, port: int, server_pid: int, duration_s: float, worker: int) -> dict[str, Any]:
    """One load process of `kind` for `duration_s`: events/s, latency and the server's CPU per event."""
    ctx = mp.get_context("fork")
    results = ctx.Queue()
    # More bodies than the server can take in the time (`exhausted` says when it took them all).
    count = int(RATE_HINT[kind] * duration_s / BATCH) + CONNS * 4
    proc = ctx.Process(target=_load, args=(kind, port, count, worker, duration_s, results))
    proc.start()
    cpu0 = cpu_seconds(server_pid)
    out = results.get(timeout=duration_s + 600)
    cpu1 = cpu_seconds(server_pid)
    proc.join()
    lat = sorted(out["latencies"])
    ok = out["stats"].get("200", 0)
    events = ok * BATCH
    return {
        "kind": kind,
        "events_per_s": events / out["elapsed"],
        "p50_ms": lat[len(lat) // 2] * 1000 if lat else None,
        "p99_ms": lat[int(len(lat) * 0.99)] * 1000 if lat else None,
        "cpu_us_per_event": (cpu1 - cpu0) / events * 1e6 if events else None,
        "events": events,
        "statuses": out["stats"],
        "exhausted": out["exhausted"],
    }


CONFIG = """
plan = "{plan}"
[storage]
data_dir = "{data}"
[[write_keys]]
name = "native"
sha256 = "{native}"
[[write_keys]]
name = "app"
sha256 = "{app}"
[[write_keys]]
name = "service"
sha256 = "{segment}"
[[vendors.sensors.projects]]
name = "broker"
write_key = "app"
"""


def metric_lines(port: int) -> list[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text: str = resp.read().decode()
    return [line for line in text.splitlines() if line.startswith(("maidian_vendor_events", "maidian_events_total"))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one round of 4 s per kind")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    rounds, seconds = (1, 4.0) if args.quick else (args.rounds, args.seconds)
    from maidian.collector.settings import hash_key

    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in KINDS}
    with tempfile.TemporaryDirectory(prefix="maidian-vendors-e2e-") as tmp:
        config = Path(tmp) / "maidian.toml"
        config.write_text(
            CONFIG.format(
                plan=PLAN,
                data=Path(tmp) / "data",
                native=hash_key(NATIVE_KEY),
                app=hash_key(APP_KEY),
                segment=hash_key(SEGMENT_KEY),
            )
        )
        cmd = [sys.executable, "-m", "maidian.collector.cli", "serve", "--config", str(config), "--port", "0"]
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=ROOT)
        try:
            port = _wait_port(proc)
            worker = 0
            for r in range(rounds):
                for kind in KINDS:
                    worker += 1
                    row = drive(kind, port, proc.pid, seconds, worker)
                    runs[kind].append(row)
                    print(
                        f"round {r + 1} {kind:8} {row['events_per_s']:>9.0f} events/s  "
                        f"p50 {row['p50_ms']:.1f} ms  cpu {row['cpu_us_per_event']:.1f} µs/event  {row['statuses']}",
                        file=sys.stderr,
                    )
            counted = metric_lines(port)
        finally:
            _stop(proc)
            if proc.stderr is not None:
                proc.stderr.close()
    native = [r["events_per_s"] for r in runs["native"]]
    rows = []
    for kind in KINDS:
        rates = [r["events_per_s"] for r in runs[kind]]
        median = statistics.median(rates)
        rows.append(
            {
                "kind": kind,
                "events_per_s": round(median),
                "runs": [round(x) for x in rates],
                "spread": round((max(rates) - min(rates)) / median, 2),
                "x_native": round(statistics.median(a / b for a, b in zip(rates, native, strict=True)), 2),
                "p50_ms": round(statistics.median(r["p50_ms"] for r in runs[kind]), 1),
                "p99_ms": round(statistics.median(r["p99_ms"] for r in runs[kind]), 1),
                "cpu_us_per_event": round(statistics.median(r["cpu_us_per_event"] for r in runs[kind]), 1),
                "exhausted": any(r["exhausted"] for r in runs[kind]),
            }
        )
    result = {"batch": BATCH, "conns": CONNS, "rounds": rounds, "seconds": seconds, "rows": rows, "metrics": counted}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "vendors_e2e.json").write_text(json.dumps(result, indent=1, ensure_ascii=False))
    print(f"{BATCH}-event requests, {CONNS} connections, {rounds} rounds of {seconds:g} s; medians")
    print("| traffic | events/s | runs | spread | x native | p50 ms | p99 ms | server CPU µs/event |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['kind']} | {row['events_per_s']:,} | {', '.join(f'{x:,}' for x in row['runs'])} | "
            f"{row['spread']} | {row['x_native']} | {row['p50_ms']} | {row['p99_ms']} | {row['cpu_us_per_event']} |"
        )
    print("collector metrics at the end:")
    for line in counted:
        print("  " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
