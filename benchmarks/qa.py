"""What the QA tools cost: the live view's hook on the ingest pipeline, and coverage over a data directory.

    .venv/bin/python benchmarks/qa.py            # 3 runs per row, medians
    .venv/bin/python benchmarks/qa.py --quick    # 1 smaller run per row

Rows:
- The pipeline in-process (decompress, decode, judge, dedupe, append with
  `write` durability; 500-event batches from SDK-like devices, the one-event
  generated plan of benchmarks/collector.py): with no live page (the hook is
  None, as on every collector nobody watches), and with a page connected that
  never reads (the hub decodes, encodes, counts and queues every event, and the
  page's queue drops). The hook's own check is timed alone, per request.
- Coverage of a data directory: `coverage_of_data` (one streaming pass,
  properties decoded only as far as their names), against the floor of
  reading and fully decoding every frame (nothing counted), and against
  `export_events` (every event as a record, what a script over an export would
  start from). Peak Python memory (tracemalloc) of coverage against holding
  every event in a list.

Prints a Markdown table and writes JSON to benchmarks/results/qa.json.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import tempfile
import time
import timeit
import tracemalloc
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from plangen import generate_plan  # noqa: E402

from collector import make_bodies  # noqa: E402

BATCH = 500


def _collector(plan_path: Path, data: Path) -> Any:
    from maidian.collector.service import Collector
    from maidian.collector.settings import Config, StorageConfig

    collector = Collector(Config(plan=plan_path, storage=StorageConfig(data_dir=data, durability="write")))
    collector.open()
    return collector


def ingest_rate(plan_path: Path, bodies: list[bytes], data: Path, *, page: bool) -> dict[str, float]:
    """Events per second and CPU µs per event through `Ingest.ingest`, with or without a stalled page."""
    from maidian.collector.pipeline.auth import Principal
    from maidian.collector.pipeline.decode import decode_batch, decompress
    from maidian.collector.qa.live import LiveFilter, LiveHub
    from maidian.tracking_plan.envelope import DEFAULT_LIMITS

    collector = _collector(plan_path, data)
    principal = Principal("bench", "key", trusted=False)

    async def run() -> tuple[int, float, float]:
        await collector.start()
        ingest = collector.ingest
        if page:
            hub = LiveHub(collector.plan)
            hub.attach(ingest)
            hub.subscribe(LiveFilter(), lambda: None)  # never takes: its queue fills and drops
            assert ingest.observer is not None
        gc.collect()
        start, cpu = time.perf_counter(), time.process_time()
        done = 0
        for body in bodies:
            batch = decode_batch(decompress(body, "zstd", DEFAULT_LIMITS.max_decoded_bytes), "msgpack", DEFAULT_LIMITS)
            done += (await ingest.ingest(batch, principal, "r")).accepted
        elapsed, cpu_s = time.perf_counter() - start, time.process_time() - cpu
        await collector.close()
        return done, elapsed, cpu_s

    done, elapsed, cpu_s = asyncio.run(run())
    return {"events_per_s": done / elapsed, "cpu_us_per_event": cpu_s / done * 1e6}


def hook_check_ns() -> float:
    """The hook's check when nobody watches: one attribute load and an identity test per request."""

    class Pipeline:
        observer = None

    p = Pipeline()
    n = 2_000_000
    t = min(timeit.repeat("p.observer is not None", globals={"p": p}, number=n, repeat=5))
    base = min(timeit.repeat("p", globals={"p": p}, number=n, repeat=5))
    return (t - base) / n * 1e9


def fill(plan_path: Path, bodies: list[bytes], data: Path) -> int:
    from maidian.collector.pipeline.auth import Principal
    from maidian.collector.pipeline.decode import decode_batch, decompress
    from maidian.tracking_plan.envelope import DEFAULT_LIMITS

    collector = _collector(plan_path, data)

    async def run() -> int:
        await collector.start()
        done = 0
        for body in bodies:
            batch = decode_batch(decompress(body, "zstd", DEFAULT_LIMITS.max_decoded_bytes), "msgpack", DEFAULT_LIMITS)
            done += (await collector.ingest.ingest(batch, Principal("b", "key", trusted=False), "r")).accepted
        await collector.close()
        return done

    return asyncio.run(run())


def coverage_rates(plan_path: Path, data: Path, events: int) -> dict[str, float]:
    from maidian.collector.qa.coverage import coverage_of_data
    from maidian.collector.read import export_events
    from maidian.collector.store.frames import decode_body, read_frames, segment_files
    from maidian.tracking_plan import load_plan

    plan = load_plan(plan_path)
    out: dict[str, float] = {}
    start = time.perf_counter()
    report = coverage_of_data(data, plan)
    out["coverage_events_per_s"] = events / (time.perf_counter() - start)
    assert report.accepted == events, (report.accepted, events)
    start = time.perf_counter()
    n = 0
    for path in segment_files(data / "raw"):
        frames, _ = read_frames(path)
        for frame in frames:
            n += len(decode_body(frame).events)
    out["floor_events_per_s"] = n / (time.perf_counter() - start)
    start = time.perf_counter()
    n = sum(1 for _ in export_events(data))
    out["export_events_per_s"] = n / (time.perf_counter() - start)
    tracemalloc.start()
    coverage_of_data(data, plan)
    out["coverage_peak_mib"] = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    tracemalloc.start()
    held = list(export_events(data))
    out["all_events_in_a_list_mib"] = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    del held
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one smaller run per row")
    args = parser.parse_args()
    runs = 1 if args.quick else 3
    n_batches = 60 if args.quick else 200
    rows: dict[str, list[dict[str, float]]] = {"no page": [], "a stalled page": [], "coverage": []}
    with tempfile.TemporaryDirectory(prefix="maidian-bench-qa-") as tmp:
        root = Path(tmp)
        doc, samples = generate_plan(1)
        plan_path = root / "plan.json"
        plan_path.write_text(json.dumps(doc))
        for run in range(runs):
            bodies = make_bodies(samples, BATCH, n_batches, 10 + run)
            # Alternate the order so that drift in the machine's load does not favour one row.
            order = [False, True] if run % 2 == 0 else [True, False]
            for page in order:
                got = ingest_rate(plan_path, bodies, root / f"ingest-{run}-{page}", page=page)
                rows["a stalled page" if page else "no page"].append(got)
            data = root / f"cov-{run}"
            events = fill(plan_path, make_bodies(samples, BATCH, n_batches * 2, 50 + run), data)
            rows["coverage"].append({"events": events, **coverage_rates(plan_path, data, events)})
    check_ns = hook_check_ns()
    med = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in rows.items()}
    spread = {name: {k: (min(r[k] for r in rs), max(r[k] for r in rs)) for k in rs[0]} for name, rs in rows.items()}
    none, page, cov = med["no page"], med["a stalled page"], med["coverage"]
    print(f"Runs: {runs}; medians (min-max over runs). {BATCH}-event batches, one-event plan.\n")
    print("| pipeline, in-process | events/s | CPU µs per event | against no page |")
    print("|---|---|---|---|")
    for name, row in (("no live page (hook is None)", none), ("a live page that never reads", page)):
        key = "no page" if row is none else "a stalled page"
        lo, hi = spread[key]["events_per_s"]
        print(
            f"| {name} | {row['events_per_s']:,.0f} ({lo:,.0f}-{hi:,.0f}) | {row['cpu_us_per_event']:.2f} | "
            f"{row['cpu_us_per_event'] / none['cpu_us_per_event']:.2f}x CPU |"
        )
    per_event = check_ns / BATCH
    print(
        f"\nThe hook's check alone: {check_ns:.1f} ns per request, {per_event:.3f} ns per event at {BATCH} events "
        f"({per_event / (none['cpu_us_per_event'] * 1000) * 100:.4f}% of the pipeline's CPU per event).\n"
    )
    print("| coverage of a data directory | events/s | against the floor |")
    print("|---|---|---|")
    floor = cov["floor_events_per_s"]
    for name, key in (
        ("coverage_of_data (counts, reasons, presence)", "coverage_events_per_s"),
        ("floor: read and fully decode every frame", "floor_events_per_s"),
        ("export_events (every event as a record)", "export_events_per_s"),
    ):
        lo, hi = spread["coverage"][key]
        print(f"| {name} | {cov[key]:,.0f} ({lo:,.0f}-{hi:,.0f}) | {cov[key] / floor:.2f}x |")
    print(
        f"\n{cov['events']:,.0f} events; peak Python memory: coverage {cov['coverage_peak_mib']:.1f} MiB, "
        f"every event held in a list {cov['all_events_in_a_list_mib']:.1f} MiB."
    )
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    result = {"runs": runs, "batch": BATCH, "medians": med, "spread": spread, "hook_check_ns": check_ns}
    (out / "qa.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
