"""The import commands of `maidian`: `import sensors-log` (a Sensors backend's LoggingConsumer files) and
`import segment-archive` (Segment's archived API calls, JSON lines).

A thin handler over `run.vendor_import`; like the other commands it imports
what it needs when it runs and returns an exit code: 0 done, 2 unusable input.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import Any

from maidian.collector.cli.options import time_ms
from maidian.collector.cli.output import reporting
from maidian.tracking_plan.cli import EXIT_OK, add_command

__all__ = ["add_import_commands"]


@reporting
def _import(args: argparse.Namespace) -> int:
    from maidian.collector.config import ConfigSource
    from maidian.collector.run.vendor_import import ImportOptions, import_vendor_files

    if not args.files and not args.follow:
        raise argparse.ArgumentTypeError("give the FILES to import, or --follow DIR")
    vendor = "segment" if args.format == "segment-archive" else "sensors"
    config = ConfigSource(args.config, (("plan", args.plan), ("data", args.data)), ()).resolve()
    options = ImportOptions(
        files=tuple(Path(f) for f in args.files),
        follow_dir=Path(args.follow) if args.follow else None,
        vendor=vendor,
        project=getattr(args, "project", "default"),
        write_key_name=getattr(args, "write_key_name", None),
        checkpoint=Path(args.checkpoint) if args.checkpoint else None,
        backfill_since_ms=time_ms(args.backfill_since),
    )
    stopping: list[int] = []
    if args.follow:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda n, _f: stopping.append(n))
    summary = import_vendor_files(config, options, stop=lambda: bool(stopping) or not args.follow)
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
        handler=_import,
    )
    s.add_argument("--project", default="default", help="the Sensors project of records that name none")
    _common_arguments(s)
    a = add_command(
        formats,
        "segment-archive",
        help="Segment's archived API calls (JSON lines, one message per line, .gz too)",
        description=(
            "Read files of Segment messages, one JSON object per line with its type (track, identify, page,\n"
            "screen, group, alias), as Segment's archives and warehouse exports hold them, map them with the\n"
            "plan's mappings.segment, and store them as /segment/v1/b would, as the write key --write-key-name\n"
            "names. messageId deduplicates: importing twice stores once. Options as for sensors-log."
        ),
        example="maidian import segment-archive --config maidian.toml --write-key-name web-app archive/*.json.gz",
        handler=_import,
    )
    a.add_argument("--write-key-name", required=True, help="the [[write_keys]] entry the messages are stored as")
    _common_arguments(a)


def _common_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("files", nargs="*", help="files, imported in the order given")
    s.add_argument("--config", help="the collector's TOML configuration (or MAIDIAN_CONFIG): plan, data, projects")
    s.add_argument("--plan", help="the tracking plan (overrides the configuration)")
    s.add_argument("--data", help="the data directory (overrides the configuration)")
    s.add_argument("--follow", metavar="DIR", help="keep importing the files of DIR as they grow, until stopped")
    s.add_argument("--checkpoint", help="a file recording how far each log file was imported (resumable)")
    s.add_argument(
        "--backfill-since",
        metavar="TIME",
        help="accept records back to TIME (ISO 8601 or epoch ms), deduplicated against what is stored since",
    )
