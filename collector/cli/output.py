"""What every command prints the same way: errors as a message and an exit code, JSON lines, CSV.

Exit codes (shared with `maidian plan`, tracking_plan/cli.py): 0 done,
1 nothing found (`NoSuchPerson`), 2 unusable input: a configuration, a data
directory, a plan, a damaged derived file (the message names the file and the
repair); 3 the data directory's disk refused (`DiskError`: full, quota, I/O
error, read-only; free space and run the command again). A traceback is a bug.

CSV is formula-safe: a cell a spreadsheet would run as a formula starts with a
quote, so an exported value cannot execute in the analyst's spreadsheet.
"""

from __future__ import annotations

import argparse
import csv
import functools
import io
import json
import sys
from collections.abc import Callable
from typing import Any, Final, TextIO

from maidian.tracking_plan.cli import EXIT_FINDINGS, EXIT_UNUSABLE, print_plan_problems

__all__ = ["CSV_ENVELOPE_COLUMNS", "EXIT_DISK", "Handler", "emit_json_line", "jsonable", "reporting", "write_csv"]

Handler = Callable[[argparse.Namespace], int]
# The data directory's disk refused (`DiskError`: full, quota, I/O error, read-only): free space and run again.
EXIT_DISK: Final = 3


def reporting(handler: Handler) -> Handler:
    """Turn the errors a command expects into a message and its exit code."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        from maidian.collector.errors import CollectorError, DiskError, NoSuchPerson
        from maidian.tracking_plan.errors import PlanLoadError

        try:
            return _disk_errors_named(handler, args)
        except DiskError as exc:
            print(f"maidian {args.command}: {exc}", file=sys.stderr)
            return EXIT_DISK
        except NoSuchPerson as exc:
            print(f"maidian {args.command}: {exc}", file=sys.stderr)
            return EXIT_FINDINGS
        except PlanLoadError as exc:
            return print_plan_problems(exc)
        except (CollectorError, argparse.ArgumentTypeError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_UNUSABLE

    return run


def _disk_errors_named(handler: Handler, args: argparse.Namespace) -> int:
    """Run `handler`, raising the disk's refusals met as OS errors as `DiskError` (SQLite's: collector/sqlite.py)."""
    from maidian.collector.errors import DiskError

    try:
        return handler(args)
    except BrokenPipeError:
        raise
    except OSError as exc:
        disk = DiskError.from_os_error(exc)
        if disk is None:
            raise
        raise disk from exc


def emit_json_line(record: Any, out: TextIO) -> None:
    out.write(json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=jsonable))
    out.write("\n")


def jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        import base64

        return {"base64": base64.b64encode(value).decode()}
    return str(value)


CSV_ENVELOPE_COLUMNS: Final = (
    "event_id",
    "type",
    "event",
    "time",
    "device_time",
    "received_at",
    "source",
    "flags",
    "quarantined",
    "reasons",
    "undecodable_base64",
)
# Cells a spreadsheet would run as a formula (OWASP "CSV injection").
_FORMULA_STARTS: Final = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value) if isinstance(value, float) else str(value)
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict) and value:
        for k, v in value.items():
            _flatten(f"{prefix}.{k}", v, out)
    else:
        out[prefix] = value


def _flat_record(record: dict[str, Any]) -> dict[str, Any]:
    """A quarantined record (`export --quarantined` form) in the shape of an event, for the CSV's columns."""
    if not record.get("quarantined"):
        return record
    event = record.get("event")
    flat = dict(event) if isinstance(event, dict) else {}
    flat.update(
        device_time=flat.get("time"),
        time=record.get("time"),
        received_at=record.get("received_at"),
        source=record.get("source"),
        quarantined=True,
        reasons=record.get("reasons"),
    )
    return flat


def write_csv(records: list[dict[str, Any]], out: TextIO) -> None:
    """Records as CSV: the envelope columns, then identities.* and properties.* (sorted), formula-safe."""
    rows: list[dict[str, Any]] = []
    extra: set[str] = set()
    for record in map(_flat_record, records):
        row = {k: record.get(k) for k in CSV_ENVELOPE_COLUMNS}
        for part in ("identities", "properties"):
            flat: dict[str, Any] = {}
            _flatten(part, record.get(part) or {}, flat)
            flat.pop(part, None)
            row.update(flat)
            extra.update(flat)
        rows.append(row)
    columns = [*CSV_ENVELOPE_COLUMNS, *sorted(c for c in extra if c.startswith("identities."))]
    columns += sorted(c for c in extra if c.startswith("properties."))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in columns])
    out.write(buffer.getvalue())
