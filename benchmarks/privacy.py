"""What the privacy operations cost: delete one person, and retention, against reading the logs and a rebuild.

    .venv/bin/python benchmarks/privacy.py            # 200,000 events of 1,000 people, 3 runs
    .venv/bin/python benchmarks/privacy.py --quick    # 20,000 events, 1 run (a smoke test)

The store: frames of 100 order events (the people interleaved, so one person
has an event in every tenth frame), written with the collector's own frame
builder, and the catalog and identity graph caught up. Each run works on a
fresh copy of it.

Measured:
- delete: `delete_person` of one person (their events in 10% of the frames);
- retention: `retain` of the older half (half the frames emptied, straddling
  segments rewritten, the catalog's identity index compared in full);
- floor, read: reading every segment and decoding every frame head (the
  least any operation that looks at every frame costs);
- alternative, rebuild: `rebuild` (delete the catalog and the identity graph
  and rebuild them from the logs), which the segment rewrite avoids.
Ratios are taken within each run (the same machine load), then the median.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from maidian.collector.identity.types import IdentityPolicy
from maidian.collector.pipeline.ingest import build_accepted_frame
from maidian.collector.privacy.operations import delete_person, retain
from maidian.collector.read import rebuild
from maidian.collector.store.catalog import Catalog
from maidian.collector.store.feed import IdentityFeed
from maidian.collector.store.frames import read_frames, segment_files
from maidian.collector.store.ids import id_ranges
from maidian.collector.store.log import DataDir, LogWriter

T0_MS = 1_760_000_000_000
PER_FRAME = 100
FRAME_GAP_MS = 60_000


def build(root: Path, events: int, people: int) -> None:
    data = DataDir(root).create()
    writer = LogWriter(data.raw, "w0", segment_max_bytes=16 << 20)
    writer.open()
    seqs: dict[int, int] = {}
    for f in range(events // PER_FRAME):
        stored: list[tuple[dict[str, Any], Any, int, list[str] | None]] = []
        for k in range(PER_FRAME):
            p = (f * PER_FRAME + k) % people
            seqs[p] = seqs.get(p, 0) + 1
            event: dict[str, Any] = {
                "type": "track",
                "event": "stock_order_submit",
                "event_id": f"{p:032x}-{seqs[p]}",
                "time": T0_MS + f * FRAME_GAP_MS + k,
                "identities": {"anonymous_id": f"anon-{p}", "login_id": f"user-{p}"},
                "properties": {"stock_code": "600519", "side": "buy", "price": 12.5, "quantity": 100 + k},
            }
            stored.append((event, msgspec.Raw(msgspec.msgpack.encode(event)), event["time"], None))
        ranges, opaque = id_ranges([e["event_id"] for e, _r, _t, _f in stored])
        head = {"rid": str(f), "at": T0_MS + f * FRAME_GAP_MS, "src": "bench", "kind": "write_key", "trusted": False}
        writer.append_sync(build_accepted_frame(head, stored, ranges, opaque))
    writer.close_sync()
    catalog = Catalog(data)
    feed = IdentityFeed(data, IdentityPolicy())
    catalog.catch_up(feed)
    catalog.close()
    feed.close()


def read_heads(root: Path) -> int:
    return sum(len(read_frames(p)[0]) for p in segment_files(DataDir(root).raw))


def timed(base: Path, work: Path, op: Callable[[Path], object]) -> float:
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(base, work)
    started = time.perf_counter()
    op(work)
    took = time.perf_counter() - started
    shutil.rmtree(work)
    return took


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--people", type=int, default=1_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="20,000 events, one run")
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.runs = 20_000, 1
    half_ms = T0_MS + (args.events // PER_FRAME // 2) * FRAME_GAP_MS + 86_400_000
    ops: dict[str, Callable[[Path], object]] = {
        "delete_s": lambda d: delete_person(d, "user-7"),
        "retention_s": lambda d: retain(d, 1, now_ms=half_ms),
        "floor_read_s": read_heads,
        "rebuild_s": rebuild,
    }
    runs: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="maidian-bench-privacy-") as tmp:
        base = Path(tmp) / "base"
        build(base, args.events, args.people)
        size_mb = sum(p.stat().st_size for p in segment_files(DataDir(base).raw)) / 1e6
        for i in range(args.runs):
            runs.append({name: timed(base, Path(tmp) / f"run{i}", op) for name, op in ops.items()})
    summary: dict[str, Any] = {"config": vars(args), "raw_mb": size_mb, "runs": runs, "python": sys.version.split()[0]}
    print(f"store: {args.events:,} events of {args.people:,} people, {size_mb:.1f} MB of raw log")
    print(f"{'operation':40} {'median':>9} {'spread (min-max)':>20}")
    labels = {
        "delete_s": "delete one person",
        "retention_s": "retention, older half",
        "floor_read_s": "floor: read every frame head",
        "rebuild_s": "alternative: rebuild derived state",
    }
    for name, label in labels.items():
        values = [r[name] for r in runs]
        summary[name] = statistics.median(values)
        print(f"{label:40} {summary[name]:8.2f}s {min(values):9.2f}-{max(values):.2f} s")
    summary["ratios"] = {}
    for name, (num, den) in {
        "delete_vs_read_floor": ("delete_s", "floor_read_s"),
        "retention_vs_read_floor": ("retention_s", "floor_read_s"),
        "delete_vs_rebuild": ("delete_s", "rebuild_s"),
    }.items():
        per_run = [r[num] / r[den] for r in runs]
        summary["ratios"][name] = statistics.median(per_run)
        print(f"{name:40} {summary['ratios'][name]:8.2f}x (runs: {', '.join(f'{x:.2f}' for x in per_run)})")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
