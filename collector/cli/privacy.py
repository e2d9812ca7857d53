"""The `maidian privacy` commands: delete a person, export a person, apply retention (privacy/operations.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from maidian.collector.cli.options import add_audit_arguments, audit, load_plan, time_ms
from maidian.collector.cli.output import emit_json_line, reporting
from maidian.tracking_plan.cli import EXIT_OK, add_command, add_group

__all__ = ["add_privacy_commands"]


@reporting
def _delete(args: argparse.Namespace) -> int:
    from maidian.collector.privacy.operations import delete_person

    cleared = delete_person(Path(args.data), args.person, suppress=args.suppress, plan=load_plan(args.plan))
    audit(args, "delete", cleared.person)
    print("\n".join(cleared.lines()))
    return EXIT_OK


@reporting
def _audit(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from maidian.collector.privacy.audit import AuditLog

    log = AuditLog(Path(args.data), name="support.jsonl") if args.support else AuditLog(Path(args.data))
    for record in reversed(log.list(limit=args.limit)):
        emit_json_line(asdict(record), sys.stdout)
    return EXIT_OK


@reporting
def _export(args: argparse.Namespace) -> int:
    from maidian.collector.cli.output import write_csv
    from maidian.collector.privacy.operations import export_person_records

    person, records = export_person_records(
        Path(args.data), args.person, plan=load_plan(args.plan), quarantined=args.quarantined
    )
    audit(args, "export", person)
    out = sys.stdout if args.output in (None, "-") else open(args.output, "w", encoding="utf-8", newline="")  # noqa: SIM115
    try:
        if args.format == "csv":
            write_csv(records, out)
        else:
            for record in records:
                emit_json_line(record, out)
    finally:
        if out is not sys.stdout:
            out.close()
    print(f"exported {len(records)} events", file=sys.stderr)
    return EXIT_OK


@reporting
def _retention(args: argparse.Namespace) -> int:
    import time

    from maidian.collector.privacy.operations import retain

    now_ms = time_ms(args.now) if args.now is not None else int(time.time() * 1000)
    assert now_ms is not None
    cleared = retain(Path(args.data), args.days, now_ms=now_ms, plan=load_plan(args.plan))
    print("\n".join(cleared.lines()))
    return EXIT_OK


def add_privacy_commands(sub: Any) -> None:
    """Register `maidian privacy delete|export|audit|retention`."""
    qsub = add_group(
        sub,
        "privacy",
        help="answer data-subject requests and apply retention",
        description=(
            "Delete or export one person's data, and remove data older than a retention period.\n"
            "docs/collector.md, 'Deleting and exporting one person's data', gives the guarantees."
        ),
        example="maidian privacy delete --data /var/lib/maidian --person u_10086 --suppress",
        dest="privacy_command",
    )
    p = add_command(
        qsub,
        "delete",
        help="remove every trace of one person",
        description=(
            "Remove every event and quarantined record that carries any identity of the person (all the ids\n"
            "the identity graph links), the catalog rows naming them, and the person from the identity graph.\n"
            "Segments are rewritten to new files and renamed in; a re-run finishes an interrupted one.\n"
            "Refuses to run while a collector holds the data directory. --suppress also stores keyed hashes of\n"
            "the identities so a collector started afterwards answers their new events but stores none."
        ),
        example="maidian privacy delete --data /var/lib/maidian --person u_10086 --suppress",
        handler=_delete,
    )
    p.add_argument("--data", required=True, help="the data directory")
    p.add_argument("--person", required=True, help="any identity value of the person")
    p.add_argument("--suppress", action="store_true", help="drop the person's future events too")
    p.add_argument("--plan", help="the tracking plan, for its identity rules")
    add_audit_arguments(p)

    p = add_command(
        qsub,
        "export",
        help="every stored event of one person, as JSON lines or CSV",
        description=(
            "Write every stored event of the person (any of their ids), deduplicated, in time order, as\n"
            "JSON lines or CSV (envelope columns, then identities.* and properties.*; a cell that a\n"
            "spreadsheet would run as a formula gets a leading apostrophe). Exit 1 when nothing is stored."
        ),
        example="maidian privacy export --data /var/lib/maidian --person u_10086 --format csv --output u_10086.csv",
        handler=_export,
    )
    p.add_argument("--data", required=True, help="the data directory")
    p.add_argument("--person", required=True, help="any identity value of the person")
    p.add_argument("--format", choices=("jsonl", "csv"), default="jsonl", help="jsonl (default) or csv")
    p.add_argument("--output", help="the file to write (default: standard output)")
    p.add_argument("--quarantined", action="store_true", help="also their quarantined records, with the reasons")
    p.add_argument("--plan", help="the tracking plan, for its identity rules")
    add_audit_arguments(p)

    p = add_command(
        qsub,
        "audit",
        help="who read, exported or deleted whose data, and why",
        description=(
            "List the audit log of person-level reads, exports and deletions (events --person, privacy\n"
            "export, privacy delete), oldest first, as JSON lines: at_ms, actor, role, action, person (the\n"
            "identity graph's pseudonymous person id, never an identity value) and reason."
        ),
        example="maidian privacy audit --data /var/lib/maidian",
        handler=_audit,
    )
    p.add_argument("--data", required=True, help="the data directory")
    p.add_argument("--limit", type=int, default=10_000, help="the newest this many records (default 10000)")
    p.add_argument(
        "--support", action="store_true", help="the support view's trail instead (lookups, timeline views, exports)"
    )

    p = add_command(
        qsub,
        "retention",
        help="remove events older than a number of days",
        description=(
            "Remove every event and quarantined record whose corrected time is more than DAYS before now\n"
            "(or --now), and nothing newer: whole old segments are deleted, a segment across the cutoff\n"
            "is rewritten. Refuses to run while a collector holds the data directory."
        ),
        example="maidian privacy retention --data /var/lib/maidian --days 180",
        handler=_retention,
    )
    p.add_argument("--data", required=True, help="the data directory")
    p.add_argument("--days", required=True, type=float, help="keep this many days of events")
    p.add_argument("--now", help="the current time (epoch ms or ISO 8601; default: the clock)")
    p.add_argument("--plan", help="the tracking plan, for its identity rules")
