"""An application process that embeds the SDK, for the battery's process tests.

Run as `python -m tests.reliability.host MODE --url URL ...`; it prints JSON
lines on stdout (`{"ready": ...}` first) so the test knows where it is.

- `workload` (T2): track events `--start`..`--end` of a workload into a disk
  spool at `--rate`, writing one ledger line per event once `track()` has
  returned (`<n> <event id>`, one `write(2)` each, so a SIGKILL leaves every
  finished line); then flush and say so. Killed at random, started again with
  the next `--start`, it resumes the spool.
- `preload` (T13): make the client, track `--start` events, fork `--workers`
  workers that track `--end` events each and exit normally (gunicorn
  `--preload`'s shape); say each one's source id.
- `paced` (T3, T8): track at `--rate` for `--duration` seconds, timing
  every `track()` call and sampling RSS, threads and queues every
  `--sample-s`; then flush within `--flush-timeout` and print the figures.
  Exceptions out of `track()` are counted, never raised.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from typing import Any

from maidian.sdk import BatchLimits, Client, QueueLimits, SpoolConfig, Timeouts
from tests.reliability.constants import KEY

ORDER = {"stock_code": "600519", "side": "buy", "price": 1688.5, "quantity": 100}


def say(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def client_for(args: argparse.Namespace, drops: dict[str, int]) -> Client:
    spool = None
    if args.spool:
        spool = SpoolConfig(
            args.spool,
            max_bytes=args.spool_max_bytes,
            segment_bytes=args.segment_bytes,
            fsync_interval_s=args.fsync_interval_s,
        )

    def on_drop(reason: str, n: int) -> None:
        drops[reason] = drops.get(reason, 0) + n

    return Client(
        args.url,
        write_key=KEY,
        spool=spool,
        queue=QueueLimits(max_events=args.queue_max, overflow=args.overflow),
        batch=BatchLimits(max_events=args.batch_events, linger_s=args.linger_s),
        timeouts=Timeouts(request_s=args.request_timeout),
        on_drop=on_drop,
    )


def workload(args: argparse.Namespace) -> None:
    drops: dict[str, int] = {}
    client = client_for(args, drops)
    ledger = os.open(args.ledger, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    source = client.source_id
    say(ready=source, pid=os.getpid(), resumed=client.stats.queued)
    interval = 1.0 / args.rate
    started = time.monotonic()
    for i, n in enumerate(range(args.start, args.end)):
        due = started + i * interval
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        client.track("stock_order_submit", ORDER)
        os.write(ledger, f"{n} {source}-{i + 1}\n".encode())
    say(tracked_all=True)
    flushed = client.flush(args.flush_timeout)
    stats = client.stats
    say(flushed=flushed, dropped=dict(stats.dropped), drops=drops, acknowledged=stats.acknowledged)
    client.close(5)


def paced(args: argparse.Namespace) -> None:
    drops: dict[str, int] = {}
    client = client_for(args, drops)
    threads_before = threading.active_count()
    rss_before = rss_kib()
    say(ready=client.source_id, pid=os.getpid(), at=time.monotonic(), rss_kib=rss_before, threads=threads_before)
    interval = 1.0 / args.rate
    latencies: list[int] = []
    exceptions = 0
    rss_max = rss_before
    threads_max = threads_before
    fallback_max = queued_max = 0
    started = time.monotonic()
    next_sample = started
    i = 0
    perf = time.perf_counter_ns
    while True:
        now = time.monotonic()
        if now - started >= args.duration:
            break
        if now >= next_sample:
            next_sample += args.sample_s
            rss_max = max(rss_max, rss_kib())
            threads_max = max(threads_max, threading.active_count())
            stats = client.stats
            queued_max = max(queued_max, stats.queued)
            fallback = getattr(client._core._buffer, "_fallback", None)
            if fallback is not None:
                fallback_max = max(fallback_max, fallback.pending())
            say(sample=round(now - started, 2), rss_kib=rss_max, threads=threads_max, queued=stats.queued)
        due = started + i * interval
        if due > now:
            time.sleep(min(due - now, 0.05))
            continue
        t0 = perf()
        try:
            client.track("stock_order_submit", ORDER)
        except Exception:
            exceptions += 1
        latencies.append(perf() - t0)
        i += 1
    tracked_at = time.monotonic()
    flushed = client.flush(args.flush_timeout)
    flushed_at = time.monotonic()
    stats = client.stats
    latencies.sort()
    say(
        done=True,
        tracked=stats.tracked,
        calls=len(latencies),
        exceptions=exceptions,
        p99_us=latencies[int(len(latencies) * 0.99)] / 1000 if latencies else 0,
        max_us=latencies[-1] / 1000 if latencies else 0,
        rss_before_kib=rss_before,
        rss_max_kib=rss_max,
        threads_before=threads_before,
        threads_max=threads_max,
        queued_max=queued_max,
        fallback_max=fallback_max,
        flushed=flushed,
        tracked_at=tracked_at,
        flushed_at=flushed_at,
        acknowledged=stats.acknowledged,
        dropped=dict(stats.dropped),
        drops=drops,
        retries=stats.retries,
        source=client.source_id,
    )
    client.close(5)


def preload(args: argparse.Namespace) -> None:
    """gunicorn --preload's shape: the client is made in the master, then workers are forked and use it."""
    client = client_for(args, {})
    for _ in range(args.start):
        client.track("stock_order_submit", ORDER)
    workers = []
    for w in range(args.workers):
        pid = os.fork()
        if pid == 0:
            for _ in range(args.end):
                client.track("stock_order_submit", ORDER)
            say(worker=w, source=client.source_id, tracked=client.stats.tracked)
            sys.exit(0)  # a normal exit: the exit hook flushes within its budget
        workers.append(pid)
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in workers]
    say(master=client.source_id, tracked=client.stats.tracked, worker_codes=codes)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["workload", "paced", "preload"])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--url", required=True)
    parser.add_argument("--spool")
    parser.add_argument("--spool-max-bytes", type=int, default=64 << 20)
    parser.add_argument("--segment-bytes", type=int, default=4 << 20)
    parser.add_argument("--fsync-interval-s", type=float, default=1.0)
    parser.add_argument("--queue-max", type=int, default=100_000)
    parser.add_argument("--overflow", default="drop_oldest")
    parser.add_argument("--batch-events", type=int, default=500)
    parser.add_argument("--linger-s", type=float, default=1.0)
    parser.add_argument("--request-timeout", type=float, default=10.0)
    parser.add_argument("--ledger")
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--end", type=int, default=0)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--sample-s", type=float, default=0.5)
    parser.add_argument("--flush-timeout", type=float, default=60.0)
    args = parser.parse_args()
    if args.mode == "workload":
        workload(args)
    elif args.mode == "preload":
        preload(args)
    else:
        paced(args)


if __name__ == "__main__":
    main()
