"""What commands share on the way in: time options, the plan option, and the audit record of a person read.

Imported by every command module, so it imports nothing heavy: the plan
loader and the audit log load when a command runs.
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path
from typing import Any

__all__ = ["add_audit_arguments", "audit", "load_plan", "time_ms"]


def time_ms(text: str | None) -> int | None:
    """Epoch milliseconds from an integer or an ISO 8601 date/time (UTC unless it says otherwise)."""
    if text is None:
        return None
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither epoch milliseconds nor an ISO 8601 time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp() * 1000)


def load_plan(path: str | None) -> Any:
    """The plan at `path`, loaded when the command runs; None without one."""
    if path is None:
        return None
    from maidian.tracking_plan import load_plan

    return load_plan(path)


def audit(args: argparse.Namespace, action: str, person: str | None) -> None:
    """Append the command's person-level access to the data directory's audit log (privacy/audit.py)."""
    from maidian.collector.privacy.audit import record_access

    record_access(Path(args.data), action, person, actor=args.actor, reason=args.reason)


def add_audit_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reason", help="why (a ticket number, a request id): written to the audit log")
    p.add_argument("--actor", help="who, for the audit log (default: the operating-system user)")
