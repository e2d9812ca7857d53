"""The support view's timeline of one heavy person: first page time and memory, against reading everything.

    .venv/bin/python benchmarks/support.py            # a 100,000-event person among 100,000 others' events, 5 runs
    .venv/bin/python benchmarks/support.py --quick    # 10,000 events, 2 runs (a smoke test)

The store: frames of `--per-frame` events (an app's batch), the person's
frames interleaved with those of `--others` people, written with the
collector's own frame builder; the catalog and identity graph caught up. The
person's first 1,000 events carry only their anonymous id (before login).

Measured, per run, with `Timeline.page` as the support view calls it (200 events a page):
- first page, new view: the first page an agent sees after a search (the
  view learns the person's frame heads, then decodes only the newest frames);
- first page, new view, CPU: the same, in this process's CPU time (on a
  shared machine the wall time includes waiting for a core);
- first page, open view: the same page again (a filter change, a refresh);
- page 50: following the cursor 49 times, then timing the 50th;
- filtered first page: one business line that is 1% of the person's events;
- whole list: `person_events` (every event of the person, decoded and sorted);
- memory: tracemalloc's peak during a first page on a new view and during
  page 50 (separate calls, untimed); flat means the two are alike and far
  below the whole list's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import msgspec

from maidian.collector.identity.types import IdentityPolicy
from maidian.collector.read import person_events
from maidian.collector.store.catalog import Catalog
from maidian.collector.store.feed import IdentityFeed
from maidian.collector.store.frames import segment_files
from maidian.collector.store.heads import build_accepted_frame
from maidian.collector.store.ids import id_ranges
from maidian.collector.store.log import DataDir, LogWriter
from maidian.collector.support.timeline import Found, PersonFrames, Timeline, TimelineFilter, find_person
from maidian.tracking_plan import load_plan

ROOT = Path(__file__).resolve().parent.parent
PLAN = ROOT / "examples" / "securities_app.plan.json"
T0_MS = 1_760_000_000_000
PAGE = 200
NAMES = ("stock_quote_view", "stock_order_submit", "market_index_view", "news_article_view")


def build(root: Path, events: int, others: int, per_frame: int) -> None:
    data = DataDir(root).create()
    writer = LogWriter(data.raw, "w0", segment_max_bytes=64 << 20)
    writer.open()
    seq = {"me": 0}
    t = T0_MS
    frames = events // per_frame
    for f in range(frames * 2):
        mine = f % 2 == 0
        stored: list[tuple[dict[str, Any], Any, int, list[str] | None]] = []
        for _k in range(per_frame):
            who = "me" if mine else f"p{(f * per_frame + _k) % others}"
            seq[who] = seq.get(who, 0) + 1
            n = seq[who]
            t += 37
            ids = {"anonymous_id": f"anon-{who}"}
            if not (mine and n <= 1000):
                ids["login_id"] = f"U{who}"
            name = "bank_deposit_submit" if mine and n % 100 == 0 else NAMES[n % len(NAMES)]
            event: dict[str, Any] = {
                "type": "track",
                "event": name,
                "event_id": f"{who}-{n}",
                "time": t,
                "identities": ids,
                "properties": {"stock_code": "600519", "stock_name": "贵州茅台", "market": "SH", "last_price": 1452.8},
            }
            stored.append((event, msgspec.Raw(msgspec.msgpack.encode(event)), t, None))
        ranges, opaque = id_ranges([e["event_id"] for e, _r, _t, _f in stored])
        head = {"rid": str(f), "at": t, "src": "bench", "kind": "write_key", "trusted": False}
        writer.append_sync(build_accepted_frame(head, stored, ranges, opaque))
    writer.close_sync()
    catalog = Catalog(data)
    feed = IdentityFeed(data, IdentityPolicy())
    catalog.catch_up(feed)
    catalog.close()
    feed.close()


def timed(fn: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


def cpu_ms(fn: Any) -> float:
    """This process's CPU time for `fn`: what a page costs whatever else the machine's cores are doing."""
    started = time.process_time()
    fn()
    return (time.process_time() - started) * 1000


def peak_bytes(fn: Any) -> int:
    """tracemalloc's peak while `fn` runs (a separate call: tracing slows the code it watches)."""
    tracemalloc.start()
    fn()
    _now, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def run_once(root: Path, timeline: Timeline, plan: Any) -> dict[str, float]:
    data = DataDir(root)
    catalog = Catalog(data)
    feed = IdentityFeed(data, IdentityPolicy())
    try:
        graph = feed.graph
        found = find_person(graph, plan, "Ume", "login_id")
        assert isinstance(found, Found)
        memory = PersonFrames()
        everything = TimelineFilter()

        def page(cursor: str | None = None, flt: TimelineFilter = everything, mem: PersonFrames = memory) -> Any:
            return timeline.page(catalog, graph, found, mem, flt=flt, cursor=cursor, limit=PAGE)

        first_s, first = timed(page)
        assert len(first.events) == PAGE
        again_s, _again = timed(page)
        cursor = first.cursor
        for _ in range(48):
            cursor = page(cursor).cursor
        deep_s, deep = timed(lambda: page(cursor))
        assert len(deep.events) == PAGE
        assert deep.events[0]["time"] < first.events[-1]["time"]
        bank_s, bank = timed(lambda: page(None, TimelineFilter(lines=frozenset({"bank"}))))
        first_cpu = cpu_ms(lambda: page(None, everything, PersonFrames()))
        first_peak = peak_bytes(lambda: page(None, everything, PersonFrames()))
        deep_peak = peak_bytes(lambda: page(cursor))
        assert bank.events
        assert all(e["line"] == "bank" for e in bank.events)
    finally:
        catalog.close()
        feed.close()
    whole_s, whole = timed(lambda: person_events(root, "Ume", "login_id"))
    whole_peak = peak_bytes(lambda: person_events(root, "Ume", "login_id"))
    return {
        "first_page_new_view_ms": first_s * 1000,
        "first_page_new_view_cpu_ms": first_cpu,
        "first_page_open_view_ms": again_s * 1000,
        "page_50_ms": deep_s * 1000,
        "filtered_first_page_ms": bank_s * 1000,
        "whole_list_ms": whole_s * 1000,
        "whole_list_events": len(whole),
        "first_page_frames_decoded": first.scanned_frames,
        "first_page_peak_mb": first_peak / 1e6,
        "page_50_peak_mb": deep_peak / 1e6,
        "whole_list_peak_mb": whole_peak / 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000, help="the person's events")
    parser.add_argument("--others", type=int, default=1_000, help="other people, with as many events in all")
    parser.add_argument("--per-frame", type=int, default=20, help="events per request (frame)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="10,000 events, 2 runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.runs = 10_000, 2
    plan = load_plan(PLAN)
    runs = []
    with tempfile.TemporaryDirectory(prefix="maidian-bench-support-") as tmp:
        root = Path(tmp) / "data"
        build(root, args.events, args.others, args.per_frame)
        size_mb = sum(p.stat().st_size for p in segment_files(DataDir(root).raw)) / 1e6
        timeline = Timeline(root, plan, "Asia/Shanghai")
        for _ in range(args.runs):
            runs.append(run_once(root, timeline, plan))
    summary: dict[str, Any] = {"config": vars(args), "raw_mb": size_mb, "runs": runs, "python": sys.version.split()[0]}
    print(
        f"store: a person with {args.events:,} events among {args.events:,} events of {args.others:,} others, "
        f"{args.per_frame} events a frame, {size_mb:.1f} MB of raw log; pages of {PAGE}"
    )
    print(f"{'measure':32} {'median':>10} {'min-max':>20}")
    for name in runs[0]:
        values = [r[name] for r in runs]
        summary[name] = statistics.median(values)
        print(f"{name:32} {summary[name]:10.1f} {min(values):9.1f}-{max(values):.1f}")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
