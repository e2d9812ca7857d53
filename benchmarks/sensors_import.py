"""`maidian import sensors-log` at scale: N generated LoggingConsumer records in daily files, imported twice.

Writes N records (default 1,000,000) over 10 daily files, runs the import
command as a subprocess twice (the second pass must find every record a
duplicate), and reports records per second and the peak resident memory of
each pass (`ru_maxrss` of the child), with the durability given. Then checks
with `maidian export` that every record is stored once.

    .venv/bin/python benchmarks/sensors_import.py [--records N] [--durability fsync|write] [--json]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.collector.sensors_logs import import_config, write_rotated  # noqa: E402


def one_pass(config: Path, files: list[Path]) -> dict[str, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    cmd = [sys.executable, "-m", "maidian.collector.cli", "import", "sensors-log", "--config", str(config)]
    done = subprocess.run([*cmd, *map(str, files)], capture_output=True, text=True, check=True)
    elapsed = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    summary = json.loads(done.stdout)
    return {
        **summary,
        "wall_s": round(elapsed, 2),
        "records_per_s_wall": round(summary["records"] / elapsed),
        "peak_rss_mib": round(max(peak_kib, before) / 1024, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=10)
    parser.add_argument("--durability", default="fsync")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = import_config(root, durability=args.durability)
        start_ms = int(time.time() * 1000) - args.records * 10 - 60_000
        files = write_rotated(root / "logs", args.records, days=args.days, start_ms=start_ms)
        size_mib = sum(f.stat().st_size for f in files) / 2**20
        passes = [one_pass(config, files), one_pass(config, files)]
        export = [sys.executable, "-m", "maidian.collector.cli", "export", "--data", str(root / "data")]
        with subprocess.Popen(export, stdout=subprocess.PIPE, text=True) as proc:
            assert proc.stdout is not None
            ids = {json.loads(line)["event_id"] for line in proc.stdout}
        result = {"records": args.records, "files_mib": round(size_mib, 1), "stored_once": len(ids), "passes": passes}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.records:,} records, {result['files_mib']} MiB in {args.days} files, {args.durability}")
        for i, p in enumerate(passes, 1):
            print(
                f"pass {i}: {p['records_per_s']:>8,} records/s (importer), {p['records_per_s_wall']:>8,}/s wall, "
                f"accepted {p['accepted']:,}, duplicate {p['duplicate']:,}, peak RSS {p['peak_rss_mib']} MiB"
            )
        print(f"distinct events stored: {len(ids):,}")
    return 0 if len(ids) == args.records else 1


if __name__ == "__main__":
    raise SystemExit(main())
