"""The QA commands of `maidian`: `qa` (a throw-away collector with its live page) and `coverage`.

Thin handlers over `qa.run_qa` and `coverage.coverage_of_data`; like the other
commands they import what they need when they run and return an exit code:
0 done, 1 coverage under `--fail-under`, 2 unusable input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from maidian.collector.cli.options import time_ms
from maidian.collector.cli.output import reporting
from maidian.tracking_plan.cli import EXIT_FINDINGS, EXIT_OK, add_command

__all__ = ["add_qa_commands"]


@reporting
def _qa(args: argparse.Namespace) -> int:
    from maidian.collector.run.qa import QaOptions, run_qa

    options = QaOptions(
        plan=Path(args.plan),
        host=args.host,
        port=args.port,
        data_dir=Path(args.data) if args.data else None,
        write_keys=tuple(args.write_key or ()),
        tag=args.tag,
    )
    return run_qa(options)


@reporting
def _coverage(args: argparse.Namespace) -> int:
    from maidian.collector.qa.coverage import coverage_of_data
    from maidian.collector.qa.report import render_html, render_text
    from maidian.tracking_plan import load_plan

    plan = load_plan(args.plan)
    report = coverage_of_data(
        Path(args.data), plan, since_ms=time_ms(args.since), until_ms=time_ms(args.until), tag=args.tag
    )
    if args.format == "json":
        text = json.dumps(report.to_dict(), ensure_ascii=False, indent=2) + "\n"
    elif args.format == "html":
        text = render_html(report)
    else:
        text = render_text(report)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    if args.fail_under is not None and (report.coverage or 0.0) * 100 < args.fail_under:
        print(
            f"coverage {100 * (report.coverage or 0.0):.1f}% is under --fail-under {args.fail_under:g}%",
            file=sys.stderr,
        )
        return EXIT_FINDINGS
    return EXIT_OK


def add_qa_commands(sub: Any) -> None:
    """Register `qa` and `coverage` on the root parser's subparsers."""
    p = add_command(
        sub,
        "qa",
        help="a throw-away collector and live page for testing a build",
        description=(
            "Start a collector with a temporary data directory and a write key of its own, and the live page\n"
            "at /live, where every event the build sends shows up with its verdict against the plan. Prints the\n"
            "URL and the SDK settings for the build; Ctrl-C prints the session's coverage and deletes the data."
        ),
        example="maidian qa --plan examples/securities_app.plan.json",
        handler=_qa,
    )
    p.add_argument("--plan", required=True, help="the tracking plan to test against")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for phones)")
    p.add_argument("--port", type=int, default=8106, help="port (default 8106, or any free one when taken; 0: any)")
    p.add_argument("--data", help="keep the data in this directory (default: a temporary one, deleted at the end)")
    p.add_argument("--write-key", action="append", help="accept this write key (the build's own); repeatable")
    p.add_argument("--tag", help="the $test_tag to suggest for the build (default qa-YYYYMMDD-HHMM)")

    p = add_command(
        sub,
        "coverage",
        help="which planned events were seen, never seen, and sent wrong",
        description=(
            "Report, per business line and per event: planned events seen (with counts), planned events never\n"
            "seen, events seen but not planned, the invalid rate with the top reasons, and how often each\n"
            "property was present. Reads a data directory in one streaming pass. Exit 1 under --fail-under."
        ),
        example="maidian coverage --plan plan.json --data /var/lib/maidian --tag qa-1 --format html -o cov.html",
        handler=_coverage,
    )
    p.add_argument("--plan", required=True, help="the tracking plan")
    p.add_argument("--data", required=True, help="the data directory")
    p.add_argument("--since", help="only events at or after this time (epoch ms or ISO 8601, UTC by default)")
    p.add_argument("--until", help="only events before this time")
    p.add_argument("--tag", help="only events whose $test_tag is TAG")
    p.add_argument("--format", choices=("text", "json", "html"), default="text", help="text (default), json or html")
    p.add_argument("-o", "--output", help="write to this file instead of standard output")
    p.add_argument("--fail-under", type=float, help="exit 1 when under this percentage of planned events was seen")
