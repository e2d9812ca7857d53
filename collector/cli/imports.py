"""The import commands of `maidian`: `import sensors-log` (a Sensors backend's LoggingConsumer files).

A thin handler over `run.sensors_import`; like the other commands it imports
what it needs when it runs and returns an exit code: 0 done, 2 unusable input.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import Any

from maidian.collector.cli.commands import _time_ms
from maidian.collector.cli.output import reporting
from maidian.tracking_plan.cli import EXIT_OK, add_command

__all__ = ["add_import_commands"]


@reporting
def _sensors_log(args: argparse.Namespace) -> int:
    from maidian.collector.config import ConfigSource
    from maidian.collector.run.sensors_import import ImportOptions, import_sensors_logs

    if not args.files and not args.follow:
        raise argparse.ArgumentTypeError("give the log FILES to import, or --follow DIR")
    config = ConfigSource(args.config, (("plan", args.plan), ("data", args.data)), ()).resolve()
    options = ImportOptions(
        files=tuple(Path(f) for f in args.files),
        follow_dir=Path(args.follow) if args.follow else None,
        project=args.project,
        checkpoint=Path(args.checkpoint) if args.checkpoint else None,
        backfill_since_ms=_time_ms(args.backfill_since),
    )
    stopping: list[int] = []
    if args.follow:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda n, _f: stopping.append(n))
    summary = import_sensors_logs(config, options, stop=lambda: bool(stopping) or not args.follow)
    print(json.dumps(summary.to_dict()), file=sys.stdout)
    return EXIT_OK


def add_import_commands(sub: Any) -> None:
    """Register `import` and its vendor formats on the root parser's subparsers."""
    p = add_command(
        sub,
        "import",
        help="import a vendor's stored event files through the collector's pipeline",
        description="Import event files another analytics product wrote, mapped, validated and deduplicated\n"
        "exactly like live traffic (docs/migration.md).",
        example="maidian import sensors-log --config maidian.toml /var/log/sa/service.log.2026-12-0*",
        handler=lambda _args: EXIT_OK,
    )
    formats = p.add_subparsers(dest="format", required=True, metavar="FORMAT")
    s = add_command(
        formats,
        "sensors-log",
        help="a Sensors backend's LoggingConsumer files (one JSON record per line)",
        description=(
            "Read LoggingConsumer / ConcurrentLoggingConsumer files, map each record with the plan's\n"
            "mappings.sensors, and store it as the /sa route would: validated, deduplicated (importing twice\n"
            "stores once), quarantined with reasons. Progress goes to stderr; the summary (JSON) to stdout.\n"
            "--follow keeps reading a directory the application still writes (the LogAgent role) until\n"
            "SIGINT/SIGTERM; --checkpoint makes either resumable. Records older than the deduplication\n"
            "window are quarantined too_old unless --backfill-since reaches back to them."
        ),
        example="maidian import sensors-log --config maidian.toml --project orders /var/log/sa/service.log.*",
        handler=_sensors_log,
    )
    s.add_argument("files", nargs="*", help="log files, imported in the order given")
    s.add_argument("--config", help="the collector's TOML configuration (or MAIDIAN_CONFIG): plan, data, projects")
    s.add_argument("--plan", help="the tracking plan (overrides the configuration)")
    s.add_argument("--data", help="the data directory (overrides the configuration)")
    s.add_argument("--project", default="default", help="the Sensors project of records that name none")
    s.add_argument("--follow", metavar="DIR", help="keep importing the files of DIR as they grow, until stopped")
    s.add_argument("--checkpoint", help="a file recording how far each log file was imported (resumable)")
    s.add_argument(
        "--backfill-since",
        metavar="TIME",
        help="accept records back to TIME (ISO 8601 or epoch ms), deduplicated against what is stored since",
    )
