"""`maidian plan ...`: the plan commands, a thin layer over this package.

Each command parses its options, calls one library function, prints, and
returns an exit code: 0 clean, 1 findings (invalid events, lint findings,
breaking changes), 2 unusable input (a plan or file that cannot be read).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
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


def add_group(sub: Any, name: str, *, help: str, description: str, example: str, dest: str) -> Any:
    """Add a command that holds subcommands (`maidian plan ...`); returns the subparsers to add them to."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help,
        description=description,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser.add_subparsers(dest=dest, required=True, metavar="COMMAND")


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


# -- lint --------------------------------------------------------------------------


def _lint(args: argparse.Namespace) -> int:
    from .lint import lint_file

    try:
        findings = lint_file(args.plan, ignore=args.ignore or ())
    except PlanLoadError as exc:
        return print_plan_problems(exc)
    if args.format == "json":
        rows = [
            {"rule": p.code, "path": p.pointer, "message": p.message, "line": p.line, "column": p.column}
            for p in findings
        ]
        print(json.dumps(rows, ensure_ascii=False, indent=2))
    else:
        for p in findings:
            print(p)
    counts: dict[str, int] = {}
    for p in findings:
        counts[p.code] = counts.get(p.code, 0) + 1
    top = ", ".join(f"{rule} {n}" for rule, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    summary = f"{args.plan}: {len(findings)} finding{'' if len(findings) == 1 else 's'}" + (f" ({top})" if top else "")
    print(summary, file=sys.stderr if args.format == "json" else sys.stdout)
    return EXIT_FINDINGS if findings else EXIT_OK


def _add_lint(commands: Any) -> None:
    from .lint import RULES

    p = add_command(
        commands,
        "lint",
        help="check a plan's names and consistency",
        description=(
            "Check a plan against naming and consistency rules and print one finding per line:\n"
            "file:line:column: message at JSON-pointer [rule]. Exit 0 when clean, 1 with findings, 2 when the plan\n"
            "cannot be read, is not JSON or breaks the plan meta-schema. A rule can be switched off for one place\n"
            'with "x-lint-ignore": ["rule", ...] on the object that holds it. Rules:\n\n'
            + "\n".join(
                textwrap.fill(text, 110, initial_indent=f"  {rule:24} ", subsequent_indent=" " * 27)
                for rule, text in RULES.items()
            )
        ),
        example="maidian plan lint examples/securities_app.plan.json --ignore missing-owner --format json",
        handler=_lint,
    )
    p.add_argument("plan", help="the plan file (JSON)")
    p.add_argument(
        "--format", choices=("text", "json"), default="text", help="text (default) or a JSON list of findings"
    )
    p.add_argument(
        "--ignore",
        action="append",
        metavar="RULE",
        choices=sorted(RULES),
        help="switch a rule off for this run (repeatable)",
    )


# -- diff --------------------------------------------------------------------------


def _diff(args: argparse.Namespace) -> int:
    from .diff import diff_plans

    try:
        old, new = load_plan(args.old), load_plan(args.new)
    except PlanLoadError as exc:
        return print_plan_problems(exc)
    result = diff_plans(old, new)
    if args.format == "json":
        print(json.dumps(result.to_dict(allow_breaking=args.allow_breaking), ensure_ascii=False, indent=2))
    else:
        for change in result.changes:
            print(change)
        breaking = len(result.breaking)
        count = len(result.changes)
        print(f"{count} change{'' if count == 1 else 's'}: {breaking} breaking, {count - breaking} compatible")
        print(f"version {result.version.message}")
        if breaking and args.allow_breaking and result.version.ok:
            print("breaking changes allowed (--allow-breaking) with a major version")
    return EXIT_OK if result.passes(allow_breaking=args.allow_breaking) else EXIT_FINDINGS


def _add_diff(commands: Any) -> None:
    p = add_command(
        commands,
        "diff",
        help="list the changes between two plans and check the version bump",
        description=(
            "List every change from OLD to NEW, each breaking (an event valid under OLD may be refused, or a\n"
            "field changes meaning) or compatible (additions, widenings, documentation), and check that NEW's\n"
            "version moved enough: breaking changes need a major bump (a minor one in 0.x), additions a minor\n"
            "bump, documentation a patch bump. Exit 0 when nothing breaks and the version is adequate, 1 on any\n"
            "breaking change or a version that did not move enough, 2 when a plan cannot be loaded.\n"
            "With --allow-breaking, breaking changes pass when the version was raised for them."
        ),
        example="maidian plan diff old.plan.json examples/securities_app.plan.json --format json",
        handler=_diff,
    )
    p.add_argument("old", help="the plan before (JSON)")
    p.add_argument("new", help="the plan after (JSON)")
    p.add_argument("--format", choices=("text", "json"), default="text", help="text (default) or one JSON object")
    p.add_argument(
        "--allow-breaking",
        action="store_true",
        help="a deliberate breaking release: pass when the version was raised enough for it",
    )


# -- codegen -----------------------------------------------------------------------


def _codegen(args: argparse.Namespace) -> int:
    from .codegen import generate_module

    try:
        plan = load_plan(args.plan)
    except PlanLoadError as exc:
        return print_plan_problems(exc)
    source = os.path.basename(args.plan) if os.path.isabs(args.plan) else args.plan
    text = generate_module(plan, source=source)
    if args.check:
        if not args.output or args.output == "-":
            print("error: --check needs -o FILE, the module to compare", file=sys.stderr)
            return EXIT_UNUSABLE
        try:
            current = Path(args.output).read_text("utf-8")
        except OSError as exc:
            print(f"{args.output}: cannot read: {exc.strerror}", file=sys.stderr)
            return EXIT_FINDINGS
        if current != text:
            print(f"{args.output} is out of date with {args.plan}: run `maidian plan codegen` again", file=sys.stderr)
            return EXIT_FINDINGS
        print(f"{args.output} is up to date with {args.plan} ({plan.version})")
        return EXIT_OK
    if not args.output or args.output == "-":
        sys.stdout.write(text)
        return EXIT_OK
    try:
        Path(args.output).write_text(text, "utf-8")
    except OSError as exc:
        print(f"error: {args.output}: cannot write: {exc.strerror}", file=sys.stderr)
        return EXIT_UNUSABLE
    print(f"wrote {args.output}: {len(plan.events)} event functions for {plan.name!r} {plan.version}")
    return EXIT_OK


def _add_codegen(commands: Any) -> None:
    p = add_command(
        commands,
        "codegen",
        help="generate a typed Python module with one function per event",
        description=(
            "Generate a Python module with one typed function per planned event: keyword-only arguments typed\n"
            "from the plan (enums as Literal, objects as TypedDict), required properties required, optional\n"
            "ones left out of the event unless given. Each function takes the client first and calls\n"
            "client.track(event, properties). The module passes mypy --strict and ruff; the same plan always\n"
            "gives the same bytes, so CI can check it is current with --check (exit 1 when stale)."
        ),
        example="maidian plan codegen examples/securities_app.plan.json -o app/tracking_events.py",
        handler=_codegen,
    )
    p.add_argument("plan", help="the plan file (JSON)")
    p.add_argument("-o", "--output", metavar="FILE", help="where to write the module (default: standard output)")
    p.add_argument("--check", action="store_true", help="do not write: exit 1 unless FILE is what would be written")


def add_plan_commands(sub: Any) -> None:
    """Register `maidian plan` and its subcommands on the root parser's subparsers."""
    commands = add_group(
        sub,
        "plan",
        help="check, compare and generate code from a tracking plan",
        description="Work with a tracking plan: lint it, validate events against it, diff two versions, "
        "generate typed code.",
        example="maidian plan validate examples/securities_app.plan.json examples/events.jsonl",
        dest="plan_command",
    )

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

    _add_lint(commands)
    _add_diff(commands)
    _add_codegen(commands)
