"""maidian's SDK side by side with its peers, in one run, against one loopback sink.

    .venv/bin/pip install -c constraints.txt -e '.[dev,bench]'
    .venv/bin/python benchmarks/sdk_peers.py            # table, then JSON
    .venv/bin/python benchmarks/sdk_peers.py --runs 5 --only maidian,posthog

Every SDK gets the same 10-property order event (`stock_order_submit`: stock
code, 贵州茅台, side, price, quantity, amount, market, order type, account type,
margin flag) and the same sink: an aiohttp server in its own process (so its
CPU is not charged to the client) that answers each peer's format the way its
collector would and counts request body bytes as they came on the wire.
maidian's batches are decoded there, so its answers list one result per event.

Each SDK runs in a fresh process per run, measuring:

- `track()` isolated: the mean cost of 20,000 calls (best of five passes) while nothing sends (the
  client points at a path that never answers, with batch thresholds it never
  reaches; Mixpanel, which sends in the caller, gets a consumer that only keeps
  the message);
- `track()` under load: the mean cost of 20,000 calls while its sender ships
  100-event batches (Mixpanel: 50, its maximum) to the sink;
- client CPU per delivered event: the whole process's CPU time (all threads)
  from the first call until flush() returned, over 20,000 events;
- request bytes per event: body bytes received by the sink / events, with each
  peer's compression switched on where it has one; once for 20,000 copies of
  the order (the best case: batches of identical events compress to almost
  nothing), once for 20,000 varied, realistic orders (`varied_orders`: 2,000
  stocks, prices, lots, amounts, order and account types, each event with its
  own id and time), and for maidian also in 500-event batches and as one-event
  requests (`one_event_request_bytes`, 200 requests);
- memory per buffered event: tracemalloc's traced bytes after 100,000 calls
  while sending is blocked, over 100,000.

Floors are measured in the same run: an envelope dict with an id put on a
`queue.Queue` (what most peers do per call), msgspec msgpack + zstd per event,
the wire cost of the event id scheme, zstd level 1 against 3, and the import
time of `maidian.sdk`. Ratios are against the best peer for each column.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import time
import tracemalloc
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ORDER: dict[str, Any] = {
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
EVENT = "stock_order_submit"
USER = "u_10086"
N_TRACK = 20_000
N_MEMORY = 100_000
N_VARIED = 20_000
N_SINGLE = 200  # one-event requests
BATCH = 100
SDKS = ["maidian", "sensors", "posthog", "segment", "mixpanel", "amplitude", "snowplow"]
HERE = Path(__file__).resolve()

# -- the sink (its own process) ------------------------------------------------------


def serve() -> None:
    import asyncio

    import msgspec
    import zstandard
    from aiohttp import web

    counters = {"bytes": 0, "requests": 0, "events": 0}
    results_cache: dict[int, bytes] = {}

    def maidian_answer(n: int) -> bytes:
        if n not in results_cache:
            results_cache[n] = msgspec.json.encode(
                {"accepted": n, "duplicate": 0, "quarantined": 0, "results": [{"status": "accepted"}] * n}
            )
        return results_cache[n]

    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(3600)
        return web.Response()

    async def stats(request: web.Request) -> web.Response:
        out = web.json_response(dict(counters))
        if request.query.get("reset"):
            for k in counters:
                counters[k] = 0
        return out

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        counters["bytes"] += len(body)
        counters["requests"] += 1
        path = request.path
        if path.startswith("/maidian/"):
            plain = zstandard.ZstdDecompressor().decompress(body)
            n = len(msgspec.msgpack.decode(plain)["events"])
            counters["events"] += n
            return web.Response(body=maidian_answer(n), content_type="application/json")
        if path.endswith("/track"):  # Mixpanel, verbose=1
            return web.json_response({"status": 1, "error": None})
        if path.startswith("/posthog/"):
            return web.json_response({"status": 1})
        if path.startswith("/segment/"):
            return web.json_response({"success": True})
        if path.startswith("/amplitude/"):
            return web.json_response({"code": 200, "events_ingested": 0})
        return web.Response(text="ok")

    async def main() -> None:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_get("/stats", stats)
        app.router.add_route("*", "/blackhole/{tail:.*}", hang)
        app.router.add_route("POST", "/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None, auto_decompress=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        print(port, flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def sink_stats(base: str, reset: bool = False) -> dict[str, int]:
    with urllib.request.urlopen(f"{base}/stats{'?reset=1' if reset else ''}", timeout=30) as r:
        out: dict[str, int] = json.loads(r.read())
        return out


# -- the SDKs ------------------------------------------------------------------------------

Track = Callable[..., None]
Flush = Callable[[], None]


def make(name: str, base: str, *, idle: bool, batch: int = BATCH) -> tuple[Track, Flush]:
    """A client of `name` pointed at the sink (or, idle, at a path that never answers).

    `track(p=ORDER)` tracks the order event, or the properties `p`; `batch` sizes maidian's batches.
    """
    root = f"{base}/blackhole" if idle else base
    never = 10**7
    if name == "maidian":
        from maidian.sdk import BatchLimits, Client, QueueLimits

        client = Client(
            f"{root}/maidian",
            write_key="wk_bench",
            batch=BatchLimits(max_events=never, linger_s=3600) if idle else BatchLimits(max_events=batch),
            queue=QueueLimits(max_events=N_MEMORY * 2),
        )
        client.login(USER)
        return (lambda p=ORDER: client.track(EVENT, p)), (lambda: _check(client.flush(120)))
    if name == "sensors":
        import sensorsanalytics

        consumer = sensorsanalytics.AsyncBatchConsumer(
            f"{root}/sensors/sa?project=default",
            flush_max_time=3600 if idle else 1,
            flush_size=never if idle else BATCH,
            max_batch_size=BATCH,
            max_size=N_MEMORY * 2,
        )
        sa = sensorsanalytics.SensorsAnalytics(consumer)
        return (lambda p=ORDER: sa.track(USER, EVENT, p, is_login_id=True)), consumer.close
    if name == "posthog":
        from posthog import Posthog

        ph = Posthog(
            "phc_bench",
            host=f"{root}/posthog",
            flush_at=never if idle else BATCH,
            flush_interval=3600 if idle else 0.5,
            gzip=True,
            max_queue_size=N_MEMORY * 2,
            disable_geoip=True,
            enable_local_evaluation=False,
        )
        return (lambda p=ORDER: ph.capture(EVENT, distinct_id=USER, properties=p)), ph.flush
    if name == "segment":
        from segment.analytics import Client as SegmentClient

        seg = SegmentClient(
            "wk_bench",
            host=f"{root}/segment",
            upload_size=BATCH,
            upload_interval=3600 if idle else 0.5,
            gzip=True,
            max_queue_size=N_MEMORY * 2,
        )
        return (lambda p=ORDER: seg.track(user_id=USER, event=EVENT, properties=p)), seg.flush
    if name == "mixpanel":
        import mixpanel

        if idle:

            class KeepConsumer:
                """Keeps each message: what track() costs when nothing is sent."""

                def __init__(self) -> None:
                    self.kept: list[Any] = []

                def send(self, endpoint: str, message: str, *args: Any, **kwargs: Any) -> None:
                    self.kept.append(message)

            mp = mixpanel.Mixpanel("token", consumer=KeepConsumer())
            return (lambda p=ORDER: mp.track(USER, EVENT, p)), (lambda: None)
        buffered = mixpanel.BufferedConsumer(max_size=50, events_url=f"{root}/mixpanel/track")
        mp = mixpanel.Mixpanel("token", consumer=buffered)
        return (lambda p=ORDER: mp.track(USER, EVENT, p)), buffered.flush
    if name == "amplitude":
        from amplitude import Amplitude, BaseEvent, Config

        amp = Amplitude(
            "key_bench",
            configuration=Config(
                server_url=f"{root}/amplitude/2/httpapi",
                flush_queue_size=never if idle else BATCH,
                flush_interval_millis=3_600_000 if idle else 500,
            ),
        )

        def amp_flush() -> None:
            for future in amp.flush() or []:
                future.result(120)
            amp.shutdown()

        return (
            lambda p=ORDER: amp.track(BaseEvent(event_type=EVENT, user_id=USER, event_properties=p)),
            amp_flush,
        )
    if name == "snowplow":
        from snowplow_tracker import AsyncEmitter, SelfDescribingJson, Tracker

        emitter = AsyncEmitter(
            root.split("://", 1)[1] + "/snowplow",
            protocol="http",
            method="post",
            batch_size=never if idle else BATCH,
            buffer_capacity=N_MEMORY * 2,
        )
        tracker = Tracker("bench", emitters=emitter, app_id="bench")
        schema = "iglu:com.example/stock_order_submit/jsonschema/1-0-0"
        return (
            lambda p=ORDER: tracker.track_self_describing_event(SelfDescribingJson(schema, p)),
            emitter.sync_flush,
        )
    raise ValueError(name)


def _check(ok: bool) -> None:
    if not ok:
        raise RuntimeError("flush did not finish")


def _timed(track: Track, n: int) -> float:
    gc.collect()
    start = time.perf_counter()
    for _ in range(n):
        track()
    return (time.perf_counter() - start) / n * 1e6


def worker(name: str, base: str) -> dict[str, float]:
    import logging

    logging.disable(logging.CRITICAL)
    out: dict[str, float] = {}
    track, _ = make(name, base, idle=True)
    _timed(track, 1000)  # warm up
    # The best of five passes, as timeit does: on a shared machine the minimum is the cost, the rest is noise.
    out["track_isolated_us"] = min(_timed(track, N_TRACK) for _ in range(5))
    del track
    gc.collect()

    track, _ = make(name, base, idle=True)
    track()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for _ in range(N_MEMORY):
        track()
    gc.collect()
    out["memory_per_event_b"] = (tracemalloc.get_traced_memory()[0] - before) / N_MEMORY
    tracemalloc.stop()
    del track
    gc.collect()

    sink_stats(base, reset=True)
    track, flush = make(name, base, idle=False)
    cpu0 = time.process_time()
    out["track_under_load_us"] = _timed(track, N_TRACK)
    flush()
    out["cpu_per_event_us"] = (time.process_time() - cpu0) / N_TRACK * 1e6
    seen = sink_stats(base)
    out["bytes_per_event"] = seen["bytes"] / N_TRACK
    out["requests"] = seen["requests"]
    if name == "maidian":
        out["delivered"] = seen["events"]
    del track, flush
    gc.collect()

    orders = varied_orders(N_VARIED)
    out["varied_bytes_per_event"] = _wire_bytes(name, base, orders, BATCH)
    if name == "maidian":
        out["varied_500_bytes_per_event"] = _wire_bytes(name, base, orders, 500)
        out["one_event_request_bytes"] = _wire_bytes(name, base, orders[:N_SINGLE], 1, flush_each=True)
    return out


def _wire_bytes(name: str, base: str, orders: list[dict[str, Any]], batch: int, *, flush_each: bool = False) -> float:
    """Request body bytes per event for these events, sent in batches of `batch` (or one request each)."""
    sink_stats(base, reset=True)
    track, flush = make(name, base, idle=False, batch=batch)
    for order in orders:
        track(order)
        if flush_each:
            flush()
    flush()
    return sink_stats(base)["bytes"] / len(orders)


# Stock codes by exchange prefix, and names for them: what a securities app's orders carry.
_MARKETS = (("600", "SH"), ("601", "SH"), ("603", "SH"), ("688", "SH"), ("000", "SZ"), ("002", "SZ"), ("300", "SZ"))
_NAMES = (
    "贵州茅台", "中国平安", "招商银行", "宁德时代", "比亚迪", "五粮液", "隆基绿能", "中信证券", "东方财富",
    "恒瑞医药", "海天味业", "美的集团", "格力电器", "伊利股份", "工商银行", "中国石油", "长江电力", "紫金矿业",
    "迈瑞医疗", "药明康德",
)  # fmt: skip


def varied_orders(n: int, seed: int = 7) -> list[dict[str, Any]]:
    """`n` order events with realistic, varied values (the same list for every SDK in a run).

    Codes from 2,000 stocks on both exchanges, prices from 2 to 2,000 yuan with
    cents, quantities in board lots, amounts that follow, a tenth of orders on
    margin; each SDK also gives every event its own id and timestamp.
    """
    rng = random.Random(seed)
    stocks = []
    for _ in range(2000):
        prefix, market = rng.choice(_MARKETS)
        code = f"{prefix}{rng.randrange(1000):03d}"
        stocks.append((code, rng.choice(_NAMES), market, round(rng.uniform(2, 2000), 2)))
    out = []
    for _ in range(n):
        code, stock_name, market, ref = rng.choice(stocks)
        price = round(ref * rng.uniform(0.97, 1.03), 2)
        quantity = 100 * rng.choice((1, 2, 3, 5, 10, 20, 50, 100, rng.randint(1, 300)))
        margin = rng.random() < 0.1
        out.append(
            {
                "stock_code": code,
                "stock_name": stock_name,
                "side": rng.choice(("buy", "sell")),
                "price": price,
                "quantity": quantity,
                "amount": round(price * quantity, 2),
                "market": market,
                "order_type": "limit" if rng.random() < 0.85 else "market",
                "account_type": "margin" if margin else "cash",
                "is_margin": margin,
            }
        )
    return out


# -- floors and maidian-only measurements ---------------------------------------------------


def floors() -> dict[str, float]:
    import queue
    import random

    import msgspec
    import zstandard

    from maidian.tracking_plan.envelope import make_event_id, make_source_id

    out: dict[str, float] = {}
    n = 50_000
    source = make_source_id()
    ids = {"anonymous_id": uuid.uuid4().hex, "login_id": USER}
    passes = []
    for _ in range(5):
        q: queue.Queue[Any] = queue.Queue()
        gc.collect()
        start = time.perf_counter()
        for i in range(n):
            q.put_nowait(
                {
                    "type": "track",
                    "event": EVENT,
                    "event_id": make_event_id(source, i + 1),
                    "time": time.time_ns() // 1_000_000,
                    "identities": ids,
                    "properties": ORDER,
                }
            )
        passes.append((time.perf_counter() - start) / n * 1e6)
    out["floor_envelope_id_queue_put_us"] = min(passes)

    encode = msgspec.msgpack.Encoder().encode

    def event(event_id: str) -> dict[str, Any]:
        return {
            "type": "track",
            "event": EVENT,
            "event_id": event_id,
            "time": 1763800000000 + random.randrange(100000),
            "identities": ids,
            "properties": ORDER,
        }

    seq_events = [encode(event(make_event_id(source, i + 1))) for i in range(n)]
    uuid_events = [encode(event(str(uuid.uuid4()))) for _ in range(n)]
    for level in (1, 3):
        compressor = zstandard.ZstdCompressor(level=level)
        start = time.perf_counter()
        size = 0
        for k in range(0, n, BATCH):
            size += len(compressor.compress(b"".join(seq_events[k : k + BATCH])))
        out[f"zstd{level}_compress_us_per_event"] = (time.perf_counter() - start) / n * 1e6
        out[f"zstd{level}_bytes_per_event"] = size / n
        if level == 1:
            size_uuid = sum(len(compressor.compress(b"".join(uuid_events[k : k + BATCH]))) for k in range(0, n, BATCH))
            out["id_source_seq_bytes_per_event"] = size / n
            out["id_uuid4_bytes_per_event"] = size_uuid / n
    start = time.perf_counter()
    for _ in range(n):
        encode(event("x"))
    out["floor_msgpack_encode_us"] = (time.perf_counter() - start) / n * 1e6
    out["floor_msgpack_zstd_us"] = out["floor_msgpack_encode_us"] + out["zstd1_compress_us_per_event"]
    return out


def import_time_ms(repeats: int = 9) -> dict[str, float]:
    """Wall time of the imports inside a fresh interpreter (its own start-up excluded); min and median."""
    probes = {
        "import_maidian_sdk_ms": "import maidian.sdk",
        "import_client_ms": "from maidian.sdk import Client",
        "import_client_and_construct_ms": "from maidian.sdk import Client; Client('http://127.0.0.1:9', write_key='k')",
    }
    out: dict[str, float] = {}
    # As installed: with bytecode caches (pip writes them; this environment may switch them off).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    for key, code in probes.items():
        timed = f"import time; t = time.perf_counter(); {code}; print((time.perf_counter() - t) * 1000)"
        subprocess.run([sys.executable, "-c", timed], capture_output=True, env=env, check=True)  # write the caches
        samples = [
            float(
                subprocess.run(
                    [sys.executable, "-c", timed], capture_output=True, text=True, env=env, check=True
                ).stdout
            )
            for _ in range(repeats)
        ]
        out[f"{key}_min"] = min(samples)
        out[f"{key}_median"] = statistics.median(samples)
    return out


# -- orchestration ----------------------------------------------------------------------------

COLUMNS = [
    ("track_isolated_us", "track() µs isolated"),
    ("track_under_load_us", "track() µs under load"),
    ("cpu_per_event_us", "CPU µs / delivered event"),
    ("bytes_per_event", "bytes / event"),
    ("varied_bytes_per_event", "bytes / event, varied"),
    ("memory_per_event_b", "memory B / buffered event"),
]
TARGETS = {
    "track_isolated_us": 5,
    "track_under_load_us": 10,
    "cpu_per_event_us": 15,
    "bytes_per_event": 15,
    "varied_bytes_per_event": 40,
    "memory_per_event_b": 400,
}


def run_worker(name: str, base: str) -> dict[str, float] | None:
    proc = subprocess.run(
        [sys.executable, str(HERE), "--worker", name, "--base", base],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        print(f"  {name}: failed ({proc.returncode}): {proc.stderr.strip()[-400:]}", file=sys.stderr)
        return None
    result: dict[str, float] = json.loads(lines[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", default=",".join(SDKS))
    parser.add_argument("--worker")
    parser.add_argument("--base")
    parser.add_argument("--serve", action="store_true")
    args = parser.parse_args()
    if args.serve:
        serve()
        return
    if args.worker:
        result = worker(args.worker, args.base)
        print(json.dumps(result), flush=True)
        os._exit(0)  # skip every SDK's exit hook: the sink may still be answering nothing
    names = args.only.split(",")
    sink = subprocess.Popen([sys.executable, str(HERE), "--serve"], stdout=subprocess.PIPE, text=True)
    try:
        assert sink.stdout is not None
        base = f"http://127.0.0.1:{sink.stdout.readline().strip()}"
        samples: dict[str, list[dict[str, float]]] = {n: [] for n in names}
        for run in range(args.runs):
            for name in names:
                print(f"run {run + 1}/{args.runs}: {name}", file=sys.stderr, flush=True)
                time.sleep(2.0)  # let the sink finish whatever the previous SDK left it
                result = run_worker(name, base)
                if result is not None:
                    samples[name].append(result)
        extra = {**floors(), **import_time_ms()}
    finally:
        sink.kill()
        sink.wait()
    report(samples, extra)


def report(samples: dict[str, list[dict[str, float]]], extra: dict[str, float]) -> None:
    medians: dict[str, dict[str, float]] = {}
    spread: dict[str, dict[str, tuple[float, float]]] = {}
    for name, runs in samples.items():
        if not runs:
            continue
        medians[name] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        spread[name] = {k: (min(r[k] for r in runs), max(r[k] for r in runs)) for k in runs[0]}
    peers = [n for n in medians if n != "maidian"]
    best = {key: min(medians[p][key] for p in peers) for key, _ in COLUMNS} if peers else {}
    head = "| SDK | " + " | ".join(title for _, title in COLUMNS) + " |"
    print(head)
    print("|" + "---|" * (len(COLUMNS) + 1))
    for name, values in medians.items():
        cells = []
        for key, _ in COLUMNS:
            cell = f"{values[key]:,.1f}"
            if name == "maidian" and best:
                cell += f" ({values[key] / best[key]:.2f}x best peer)"
            cells.append(cell)
        print(f"| {name} | " + " | ".join(cells) + " |")
    if "maidian" in medians:
        print()
        print("maidian against its targets:")
        for key, title in COLUMNS:
            value = medians["maidian"][key]
            verdict = "met" if value <= TARGETS[key] else "MISSED"
            lo, hi = spread["maidian"][key]
            print(f"  {title}: {value:,.2f} (runs {lo:,.2f}-{hi:,.2f}; target <= {TARGETS[key]}) {verdict}")
    print()
    for key, value in extra.items():
        print(f"{key}: {value:.2f}")
    print()
    print(json.dumps({"medians": medians, "spread": spread, "best_peer": best, "floors": extra}, indent=1))


if __name__ == "__main__":
    main()
