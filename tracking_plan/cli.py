"""`maidian plan ...`: the plan commands, a thin layer over this package.

Each command parses its options, calls one library function, prints, and
returns an exit code: 0 clean, 1 findings (invalid events, lint findings,
breaking changes), 2 unusable input (a plan or file that cannot be read).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from typing import Any, TextIO

from .errors import EventFileError, PlanLoadError
from .loader import load_plan
from .validator import Validator, Violation

__all__ = ["add_command", "add_plan_commands", "read_events"]

EXIT_OK, EXIT_FINDINGS, EXIT_UNUSABLE = 0, 1, 2

Handler = Callable[[argparse.Namespace], int]


def add_command(
    sub: Any, name: str, *, help: str, description: str, example: str, handler: Handler
) -> argparse.ArgumentParser:
    """Add a subcommand whose help ends with a worked example (tests/test_cli_docs.py checks every one)."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help,
        description=description,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(handler=handler)
    return parser


def print_plan_problems(error: PlanLoadError, out: TextIO | None = None) -> int:
    """Print every problem of an unusable plan, one per line, and return the exit code for it."""
    out = out or sys.stderr
    for problem in error.problems:
        print(f"error: {problem}", file=out)
    return EXIT_UNUSABLE


# -- validate ------------------------------------------------------------------


def read_events(path: str) -> Iterator[tuple[int, Any, str | None]]:
    """Yield (line number, decoded event or None, JSON error message or None) per non-blank line."""
    try:
        stream = sys.stdin if path == "-" else open(path, encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        raise EventFileError(f"{path}: cannot read: {exc.strerror}") from None
    with stream:
        try:
            for number, line in enumerate(stream, 1):
                if not line.strip():
                    continue
                try:
                    yield number, json.loads(line), None
                except json.JSONDecodeError as exc:
                    yield number, None, f"invalid JSON at column {exc.colno}: {exc.msg}"
        except UnicodeDecodeError as exc:
            raise EventFileError(f"{path}: not UTF-8 text (byte {exc.start})") from None


def _event_name(event: Any) -> str:
    if isinstance(event, dict):
        name = event.get("event") if event.get("type") == "track" else event.get("type")
        if isinstance(name, str):
            return name
    return "?"


def _validate(args: argparse.Namespace) -> int:
    try:
        plan = load_plan(args.plan)
    except PlanLoadError as exc:
        return print_plan_problems(exc)
    validator = Validator(plan, stage=args.stage)
    total = invalid = 0
    reasons: dict[str, int] = {}
    try:
        for number, event, json_error in read_events(args.events):
            total += 1
            violations = [Violation("json", "", json_error)] if json_error else validator.validate(event)
            name = _event_name(event)
            if violations:
                invalid += 1
                for v in violations:
                    reasons[v.rule] = reasons.get(v.rule, 0) + 1
            if args.format == "json":
                errors = [{"path": v.path, "message": v.message, "rule": v.rule} for v in violations]
                print(
                    json.dumps(
                        {"line": number, "event": name, "valid": not violations, "errors": errors}, ensure_ascii=False
                    )
                )
            elif violations:
                print(f"line {number}: {name}: INVALID")
                for v in violations:
                    print(f"    {v}")
            elif not args.quiet:
                print(f"line {number}: {name}: ok")
    except EventFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    top = ", ".join(f"{rule} {count}" for rule, count in sorted(reasons.items(), key=lambda kv: -kv[1]))
    summary = f"{total} events: {total - invalid} valid, {invalid} invalid" + (f" ({top})" if top else "")
    print(summary, file=sys.stderr if args.format == "json" else sys.stdout)
    return EXIT_FINDINGS if invalid else EXIT_OK


def add_plan_commands(sub: Any) -> None:
    """Register `maidian plan` and its subcommands on the root parser's subparsers."""
    plan = sub.add_parser(
        "plan",
        help="check, compare and generate code from a tracking plan",
        description="Work with a tracking plan: lint it, validate events against it, diff two versions, "
        "generate typed code.",
        epilog="example:\n  maidian plan validate examples/securities_app.plan.json examples/events.jsonl",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = plan.add_subparsers(dest="plan_command", required=True, metavar="COMMAND")

    p = add_command(
        commands,
        "validate",
        help="validate events (JSON lines) against a plan",
        description=(
            "Check each line of an events file (one event per line, in the wire envelope: type, event, event_id,\n"
            "time, identities, properties) against the plan and print one verdict per line, then a summary.\n"
            "Exit 0 when every event is valid, 1 when any is invalid, 2 when the plan or the file is unusable."
        ),
        example="maidian plan validate examples/securities_app.plan.json examples/events.jsonl --format json",
        handler=_validate,
    )
    p.add_argument("plan", help="the plan file (JSON)")
    p.add_argument("events", help="events file, one JSON event per line ('-' for standard input)")
    p.add_argument(
        "--format", choices=("text", "json"), default="text", help="text (default) or one JSON object per line"
    )
    p.add_argument(
        "--stage",
        choices=("wire", "source"),
        default="wire",
        help="wire (default): events as sent, PII-tagged fields already hashed, masked or dropped; "
        "source: before the PII tags apply",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print only invalid events and the summary")
