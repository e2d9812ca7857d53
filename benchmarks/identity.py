"""What the identity graph costs: observe_many throughput, lookup latency, replay cost.

    .venv/bin/python benchmarks/identity.py            # the default sizes, 3 runs
    .venv/bin/python benchmarks/identity.py --quick    # smaller, 1 run (a smoke test)

Scenarios (file-backed graph in a temporary directory, WAL, batches of 500):
- known: every event repeats identities already linked, at a later time (a
  warm collector's steady state);
- mostly known: 98% known, 2% first events of new devices;
- cold known: the known traffic right after a restart (empty cache);
- all new: every event brings a new anonymous id and a new login id.

Floors measured in the same run, for the ratios: a bare dict lookup per event
(the least a per-event check can cost in Python), one executemany INSERT per
event into a table with a unique text index (the least a durable new identity
can cost), and a plain in-memory union-find without rules or persistence.

Lookups: person_of, identities_of and find at 10,000 bindings, p50 and p99.
Replays: one late event into a cluster of N links (a login with N devices, an
anonymous id with N refused logins).
Each scenario runs `--runs` times; the table shows the median and the spread.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from maidian.collector.identity.graph import IdentityGraph
from maidian.collector.identity.types import IdentityPolicy, Observation

BATCH = 500


def device_events(devices: int, base_time: int, tag: str) -> list[Observation]:
    """Each device: an anonymous event, then a logged-in one."""
    out = []
    for d in range(devices):
        anon = f"{d:08x}-5f2e-4c1a-9b7d-{d:012x}"
        out.append(Observation(f"{tag}a{d}", base_time + d, "track", {"anonymous_id": anon}))
        out.append(
            Observation(f"{tag}l{d}", base_time + d + 1, "track", {"anonymous_id": anon, "login_id": f"user{d:09d}"})
        )
    return out


def repeat_known(devices: int, n: int, base_time: int, seed: int) -> list[Observation]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        d = rng.randrange(devices)
        anon = f"{d:08x}-5f2e-4c1a-9b7d-{d:012x}"
        ids = {"anonymous_id": anon, "login_id": f"user{d:09d}"} if i % 3 else {"anonymous_id": anon}
        out.append(Observation(f"k{seed}-{i}", base_time + i, "track", ids))
    return out


def mostly_known(devices: int, n: int, base_time: int, seed: int) -> list[Observation]:
    known = repeat_known(devices, n, base_time, seed)
    fresh = device_events(n // 100, base_time, f"m{seed}-")  # 2% of n: two events per new device
    out = known[: n - len(fresh)] + fresh
    random.Random(seed).shuffle(out)
    return out


def all_new(n: int, base_time: int, tag: str) -> list[Observation]:
    return [
        Observation(
            f"{tag}{i}",
            base_time + i,
            "track",
            {"anonymous_id": f"{tag}-{i:08x}-4c1a-9b7d", "login_id": f"{tag}-user{i:09d}"},
        )
        for i in range(n)
    ]


def throughput(feed: Callable[[list[Observation]], object], events: list[Observation]) -> float:
    start = time.perf_counter()
    for i in range(0, len(events), BATCH):
        feed(events[i : i + BATCH])
    return len(events) / (time.perf_counter() - start)


def floor_dict(events: list[Observation]) -> float:
    table: dict[object, tuple[int, str]] = {tuple(e.identities.items()): (0, "") for e in events}
    start = time.perf_counter()
    hits = 0
    for e in events:
        if table.get(tuple(e.identities.items())) is not None:
            hits += 1
    assert hits == len(events)
    return len(events) / (time.perf_counter() - start)


def floor_sqlite(events: list[Observation], path: Path) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE ident (id INTEGER PRIMARY KEY, type TEXT, value TEXT, UNIQUE (value, type))")
    start = time.perf_counter()
    for i in range(0, len(events), BATCH):
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO ident (type, value) VALUES ('login_id', ?)",
            [(e.identities["login_id"],) for e in events[i : i + BATCH]],
        )
        conn.execute("COMMIT")
    rate = len(events) / (time.perf_counter() - start)
    conn.close()
    return rate


def floor_union_find(events: list[Observation]) -> float:
    parent: dict[tuple[str, str], tuple[str, str]] = {}

    def find(x: tuple[str, str]) -> tuple[str, str]:
        parent.setdefault(x, x)
        while parent[x] != x:
            x = parent[x]
        return x

    start = time.perf_counter()
    for e in events:
        items = list(e.identities.items())
        root = find(items[0])
        for item in items[1:]:
            parent[find(item)] = root
    return len(events) / (time.perf_counter() - start)


def percentiles(samples_ns: list[int]) -> dict[str, float]:
    ordered = sorted(samples_ns)
    return {
        "p50_us": ordered[len(ordered) // 2] / 1000,
        "p99_us": ordered[int(len(ordered) * 0.99)] / 1000,
        "max_us": ordered[-1] / 1000,
    }


def lookups(graph: IdentityGraph, bindings: int, samples: int, seed: int) -> dict[str, dict[str, float]]:
    rng = random.Random(seed)
    picks = [rng.randrange(bindings) for _ in range(samples)]
    out = {}
    timings: list[int] = []
    for d in picks:
        t0 = time.perf_counter_ns()
        person = graph.person_of("login_id", f"user{d:09d}")
        timings.append(time.perf_counter_ns() - t0)
        assert person is not None
    out["person_of"] = percentiles(timings)
    persons = [graph.person_of("login_id", f"user{d:09d}") or "" for d in picks]
    timings = []
    for p in persons:
        t0 = time.perf_counter_ns()
        graph.identities_of(p)
        timings.append(time.perf_counter_ns() - t0)
    out["identities_of"] = percentiles(timings)
    timings = []
    for d in picks:
        t0 = time.perf_counter_ns()
        graph.find(f"{d:08x}-5f2e-4c1a-9b7d-{d:012x}")
        timings.append(time.perf_counter_ns() - t0)
    out["find"] = percentiles(timings)
    return out


def replay_cost(size: int, shape: str, path: Path) -> float:
    """Seconds for one late event into a cluster of `size` links."""
    if shape == "login":
        events = [
            Observation(f"r{i}", 1000 + i, "track", {"anonymous_id": f"dev-{i}", "login_id": "shared"})
            for i in range(size)
        ]
        late = Observation("late", 1, "track", {"anonymous_id": "dev-late", "login_id": "shared"})
    else:
        events = [
            Observation(f"r{i}", 1000 + i, "track", {"anonymous_id": "shared", "login_id": f"u-{i}"})
            for i in range(size)
        ]
        late = Observation("late", 1, "track", {"anonymous_id": "shared", "login_id": "u-late"})
    with IdentityGraph(path, IdentityPolicy(max_devices_per_login=max(500, size // 2))) as graph:
        for i in range(0, len(events), BATCH):
            graph.observe_many(events[i : i + BATCH])
        start = time.perf_counter()
        graph.observe_many([late])
        return time.perf_counter() - start


def run_once(args: argparse.Namespace, workdir: Path, run: int) -> dict[str, Any]:
    result: dict[str, Any] = {}
    path = workdir / f"run{run}.sqlite"
    warm = device_events(args.devices, 1_000_000, f"w{run}-")
    graph = IdentityGraph(path, IdentityPolicy(), cache_links=4 * args.devices)
    for i in range(0, len(warm), BATCH):
        graph.observe_many(warm[i : i + BATCH])
    known = repeat_known(args.devices, args.events, 10_000_000, seed=run)
    result["known_eps"] = throughput(graph.observe_many, known)
    result["mostly_known_eps"] = throughput(
        graph.observe_many, mostly_known(args.devices, args.events, 20_000_000, run)
    )
    result["floor_dict_eps"] = floor_dict(known)
    graph.close()
    cold = IdentityGraph(path, IdentityPolicy(), cache_links=4 * args.devices)
    result["cold_known_eps"] = throughput(
        cold.observe_many, repeat_known(args.devices, args.events, 30_000_000, run + 7)
    )
    result["lookup"] = lookups(cold, args.devices, args.samples, seed=run)
    cold.close()
    fresh = all_new(args.new_events, 1_000, f"n{run}")
    with IdentityGraph(workdir / f"new{run}.sqlite") as graph:
        result["all_new_eps"] = throughput(graph.observe_many, fresh)
    result["floor_sqlite_insert_eps"] = floor_sqlite(fresh, workdir / f"floor{run}.sqlite")
    result["floor_union_find_eps"] = floor_union_find(fresh)
    result["replay_s"] = {
        f"{shape}_{size}": replay_cost(size, shape, workdir / f"replay{run}-{shape}{size}.sqlite")
        for shape in ("login", "anonymous")
        for size in args.replay_sizes
    }
    return result


def median_and_spread(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=10_000, help="devices (and logins) already in the graph")
    parser.add_argument("--events", type=int, default=200_000, help="events per known-traffic scenario")
    parser.add_argument("--new-events", type=int, default=50_000, help="events in the all-new scenario")
    parser.add_argument("--samples", type=int, default=5_000, help="lookups per kind")
    parser.add_argument("--replay-sizes", type=int, nargs="+", default=[1_000, 10_000])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small sizes, one run")
    args = parser.parse_args(argv)
    if args.quick:
        args.devices, args.events, args.new_events, args.samples, args.runs = 2_000, 20_000, 5_000, 1_000, 1
        args.replay_sizes = [500]
    with tempfile.TemporaryDirectory(prefix="maidian-bench-identity-") as tmp:
        runs = [run_once(args, Path(tmp), i) for i in range(args.runs)]

    rows = []
    summary: dict[str, Any] = {"runs": runs, "config": vars(args), "python": sys.version.split()[0]}
    for name, label in [
        ("known_eps", "observe_many, known identities"),
        ("mostly_known_eps", "observe_many, 98% known / 2% new devices"),
        ("cold_known_eps", "observe_many, known, just after restart"),
        ("floor_dict_eps", "floor: one dict lookup per event"),
        ("all_new_eps", "observe_many, all new identities"),
        ("floor_sqlite_insert_eps", "floor: one indexed SQLite insert per event"),
        ("floor_union_find_eps", "floor: in-memory union-find, no rules"),
    ]:
        med, low, high = median_and_spread([r[name] for r in runs])
        summary[name] = med
        rows.append((label, f"{med:,.0f} ev/s", f"{1e6 / med:.2f} µs/ev", f"{low:,.0f}-{high:,.0f}"))
    print(f"{'scenario':45} {'median':>14} {'per event':>12} {'spread (min-max)':>22}")
    for label, rate, per, spread in rows:
        print(f"{label:45} {rate:>14} {per:>12} {spread:>22}")
    # Ratios within each run (the floors share the run's machine load), then the median.
    pairs = {
        "known_vs_dict_floor": ("floor_dict_eps", "known_eps"),
        "mostly_known_vs_dict_floor": ("floor_dict_eps", "mostly_known_eps"),
        "all_new_vs_sqlite_insert_floor": ("floor_sqlite_insert_eps", "all_new_eps"),
    }
    summary["ratios"] = {}
    print()
    for name, (floor, measured) in pairs.items():
        per_run = [r[floor] / r[measured] for r in runs]
        med, low, high = median_and_spread(per_run)
        summary["ratios"][name] = {"median": med, "min": low, "max": high}
        print(f"{name:34} {med:6.1f}x  (runs: {', '.join(f'{x:.1f}' for x in per_run)})")
    print(f"\nlookups at {args.devices:,} bindings (median of runs):")
    summary["lookup"] = {}
    for kind in ("person_of", "identities_of", "find"):
        p50 = statistics.median(r["lookup"][kind]["p50_us"] for r in runs)
        p99 = statistics.median(r["lookup"][kind]["p99_us"] for r in runs)
        worst = max(r["lookup"][kind]["max_us"] for r in runs)
        summary["lookup"][kind] = {"p50_us": p50, "p99_us": p99, "max_us": worst}
        print(f"  {kind:15} p50 {p50:8.1f} µs   p99 {p99:8.1f} µs   max {worst:9.1f} µs")
    print("\none late event replaying its cluster (median of runs):")
    summary["replay_s"] = {}
    for key in runs[0]["replay_s"]:
        med = statistics.median(r["replay_s"][key] for r in runs)
        summary["replay_s"][key] = med
        shape, size = key.split("_")
        who = "a login with" if shape == "login" else "an anonymous id with"
        noun = "devices" if shape == "login" else "refused logins"
        print(f"  {who} {int(size):,} {noun:15} {med * 1000:8.1f} ms  ({med / int(size) * 1e6:.1f} µs per link)")
    print("\n" + json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
