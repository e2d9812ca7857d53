"""Validation throughput on one core, beside the floor and peers measured in the same run.

    python benchmarks/validation.py            # table, and JSON under benchmarks/results/
    python benchmarks/validation.py --json     # JSON on standard output
    python benchmarks/validation.py --quick    # fewer events and runs, for a smoke test

Two plans from benchmarks/plangen.py: 3,000 events (a bank-sized plan; events
spread uniformly over its event types) and one event. For each:

- `maidian is_valid`, `maidian validate`: `Validator` on valid wire events.
- `floor`: the bare compiled validator: each event's compiled envelope schema
  and the shared presets schema (jsonschema-rs) called directly from a loop
  over pre-selected (validator, event) pairs: no maidian code at all. The
  target is maidian within 1.3x of this.
- `own checks, bare`: the compiled checks of the layout the validator really
  uses, picked in advance and called from a bare loop. Small plans: each
  event's envelope schema with the presets folded in. Large plans (the
  property table, tracking_plan/validator.py): the shared envelope schema on
  the event, then the table's check for each property on its value. What is
  left between it and `maidian is_valid` is maidian's own dispatch.
- `own schema only`: jsonschema-rs on each event's own property schema and its
  properties only, what any validator must at least do (no envelope, no
  identities, no presets).
- `jsonschema`: the plain `jsonschema` package (Draft 2020-12) on the same
  combined schemas, on a sample, for scale.

Also the plan's load time (read, parse, meta-validate, build), the compile time
(`Validator(plan)`), and the lint time (`lint_file`). Each figure is the median of
several runs, interleaved so that noise from other work on the machine spreads
over all of them; the spread (min-max) is reported beside it.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema_rs
from plangen import events_for, generate_plan

from maidian.tracking_plan import Validator, load_plan
from maidian.tracking_plan.lint import lint_file
from maidian.tracking_plan.validator import PRESETS_SCHEMA, build_schemas, reference_schema

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_LOAD_COMPILE_S = 1.0  # issue #2: a 3,000-event plan loads and compiles in under a second
TARGET_FLOOR_RATIO = 1.3  # issue #2: validation within 1.3x of the bare compiled schemas


def per_event_us(loop: Callable[[], object], n: int) -> float:
    """Time per event of the loop's second pass: the first warms the caches the other loops evicted."""
    gc.disable()
    try:
        loop()
        t0 = time.perf_counter()
        loop()
        return (time.perf_counter() - t0) / n * 1e6
    finally:
        gc.enable()


def seconds(action: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    action()
    return time.perf_counter() - t0


def summary(samples: list[float]) -> dict[str, float]:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples)}


def bench_plan(n_events: int, n_valid: int, runs: int, jsonschema_sample: int, workdir: Path) -> dict[str, Any]:
    doc, samples = generate_plan(n_events)
    path = workdir / f"plan{n_events}.json"
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False), "utf-8")
    events = events_for(samples, n_valid)

    load_s, compile_s, lint_s = [], [], []
    plan = load_plan(path)
    validator = Validator(plan)
    for _ in range(runs):
        load_s.append(seconds(lambda: load_plan(path)))
        compile_s.append(seconds(lambda: Validator(plan)))
        lint_s.append(seconds(lambda: lint_file(path)))
    gc.collect()

    # The floor: one compiled schema per event, called with no maidian code in between.
    track, _, _ = build_schemas(plan)
    compiled = {name: jsonschema_rs.validator_for(s, validate_formats=True) for name, s in track.items()}
    presets = jsonschema_rs.validator_for(PRESETS_SCHEMA, validate_formats=True)
    pairs = [(compiled[e["event"]].is_valid, e, e["properties"]) for e in events]
    presets_ok = presets.is_valid
    # The validator's own compiled checks, picked in advance, called from a bare loop.
    table = validator._table
    if table is None:
        folded = [(validator._track[e["event"]].is_valid, e) for e in events]
        bare: Callable[[], object] = lambda: [v(e) for v, e in folded]  # noqa: E731
    else:
        envelope = table.envelope
        checks = [
            (e, [(table.rows[e["event"]][0].get(k) or table.presets[k], v) for k, v in e["properties"].items()])
            for e in events
        ]
        bare = lambda: [envelope(e) and all(c(v) for c, v in cv) for e, cv in checks]  # noqa: E731
    # What any validator must at least do: each event's own property schema on its properties.
    own = {name: jsonschema_rs.validator_for(spec.schema).is_valid for name, spec in plan.events.items()}
    own_pairs = [(own[e["event"]], e["properties"]) for e in events]

    assert all(validator.is_valid(e) for e in events), "plangen made an invalid event"
    assert all(v(e) and presets_ok(p) for v, e, p in pairs)
    assert all(v(p) for v, p in own_pairs)

    is_valid, validate = validator.is_valid, validator.validate
    loops: dict[str, Callable[[], object]] = {
        "maidian is_valid": lambda: [is_valid(e) for e in events],
        "maidian validate": lambda: [validate(e) for e in events],
        "floor": lambda: [v(e) and presets_ok(p) for v, e, p in pairs],
        "own checks, bare": bare,
        "own schema only": lambda: [v(p) for v, p in own_pairs],
    }
    timings: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(runs):
        for name, loop in loops.items():
            timings[name].append(per_event_us(loop, len(events)))

    out: dict[str, Any] = {
        "events_in_plan": n_events,
        "events_validated": len(events),
        "runs": runs,
        "load_s": summary(load_s),
        "compile_s": summary(compile_s),
        "lint_s": summary(lint_s),
        "per_event_us": {name: summary(t) for name, t in timings.items()},
    }
    try:
        import jsonschema
    except ImportError:  # a dev dependency; the other figures stand without it
        out["per_event_us"]["jsonschema"] = None
    else:
        sample = events[:jsonschema_sample]
        reference = {
            name: jsonschema.Draft202012Validator(reference_schema(track[name]))
            for name in {e["event"] for e in sample}
        }
        ref_pairs = [(reference[e["event"]].is_valid, e) for e in sample]
        assert all(v(e) for v, e in ref_pairs)
        ref = [per_event_us(lambda: [v(e) for v, e in ref_pairs], len(sample)) for _ in range(max(3, runs // 2))]
        out["per_event_us"]["jsonschema"] = summary(ref)
        out["jsonschema_sample"] = len(sample)

    floor = out["per_event_us"]["floor"]["median"]
    out["ratios_to_floor"] = {
        name: round(t["median"] / floor, 3) for name, t in out["per_event_us"].items() if t is not None
    }
    return out


def table(results: dict[str, Any]) -> str:
    lines = []
    for key, r in results["plans"].items():
        lines.append(
            f"\n{key}: {r['events_in_plan']} events in the plan, {r['events_validated']} valid events, "
            f"median of {r['runs']} runs (min-max)"
        )
        lines.append(f"  {'':20} {'us/event':>10} {'min-max':>15} {'vs floor':>9}")
        for name, t in r["per_event_us"].items():
            if t is None:
                lines.append(f"  {name:20} {'not installed':>10}")
                continue
            spread = f"{t['min']:.2f}-{t['max']:.2f}"
            lines.append(f"  {name:20} {t['median']:10.2f} {spread:>15} {r['ratios_to_floor'][name]:8.2f}x")
        for what in ("load_s", "compile_s", "lint_s"):
            s = r[what]
            lines.append(
                f"  {what[:-2]:20} {s['median'] * 1000:8.0f} ms {s['min'] * 1000:6.0f}-{s['max'] * 1000:.0f} ms"
            )
    verdict = results["targets"]
    lines.append(
        f"\ntargets (3,000 events): load + compile {verdict['load_compile_s']:.2f} s "
        f"(< {TARGET_LOAD_COMPILE_S} s: {'met' if verdict['load_compile_met'] else 'MISSED'}); "
        f"is_valid {verdict['is_valid_vs_floor']:.2f}x floor "
        f"(<= {TARGET_FLOOR_RATIO}x: {'met' if verdict['floor_met'] else 'MISSED'})"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--quick", action="store_true", help="fewer events and runs (a smoke test)")
    parser.add_argument("--runs", type=int, default=7, help="runs per figure (default 7)")
    args = parser.parse_args(argv)
    runs = 3 if args.quick else args.runs
    n_valid = 3000 if args.quick else 30000
    with tempfile.TemporaryDirectory() as tmp:
        plans = {
            "plan_3000": bench_plan(3000, n_valid, runs, 200 if args.quick else 1000, Path(tmp)),
            "plan_1": bench_plan(1, n_valid, runs, 200 if args.quick else 1000, Path(tmp)),
        }
    big = plans["plan_3000"]
    load_compile = big["load_s"]["median"] + big["compile_s"]["median"]
    results = {
        "benchmark": "validation",
        "command": "python benchmarks/validation.py" + (" --quick" if args.quick else ""),
        "machine": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "jsonschema_rs": getattr(jsonschema_rs, "__version__", "?"),
        },
        "plans": plans,
        "targets": {
            "load_compile_s": round(load_compile, 3),
            "load_compile_met": load_compile < TARGET_LOAD_COMPILE_S,
            "is_valid_vs_floor": big["ratios_to_floor"]["maidian is_valid"],
            "floor_met": big["ratios_to_floor"]["maidian is_valid"] <= TARGET_FLOOR_RATIO,
        },
    }
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(table(results))
        RESULTS.mkdir(exist_ok=True)
        out = RESULTS / f"validation-{time.strftime('%Y%m%d-%H%M%S')}.json"
        out.write_text(json.dumps(results, indent=2))
        print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
