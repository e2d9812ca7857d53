"""The `maidian` command: one entry point for the plan, server and data commands.

It lives in the collector package because the collector may import the plan
package but not the other way round. Commands import what they need when they
run, so `maidian plan ...` works on the base install without the server
dependencies.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from maidian.collector.cli.cluster import add_cluster_commands
from maidian.collector.cli.commands import add_collector_commands
from maidian.collector.cli.imports import add_import_commands
from maidian.collector.cli.lake import add_lake_commands
from maidian.collector.cli.privacy import add_privacy_commands
from maidian.collector.cli.qa import add_qa_commands
from maidian.collector.cli.support import add_support_commands
from maidian.tracking_plan import __version__
from maidian.tracking_plan.cli import add_plan_commands

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The root parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="maidian",
        description="Event tracking for finance apps: tracking plans, the collector, and the data it stores.",
        epilog="example:\n  maidian plan lint examples/securities_app.plan.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"maidian {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_plan_commands(sub)
    add_collector_commands(sub)
    add_qa_commands(sub)
    add_privacy_commands(sub)
    add_import_commands(sub)
    add_support_commands(sub)
    add_lake_commands(sub)
    add_cluster_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `maidian ... | head`
        sys.stderr.close()
        return 0
    return code
