"""The command line's side of the privacy audit log: the --reason and --actor options, and one record per access.

Its own module so that every command reading a person's data (`events
--person` in commands.py, `privacy export|delete` in privacy.py) records it
the same way without those modules importing each other.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_audit_arguments", "audit"]


def audit(args: argparse.Namespace, action: str, person: str | None) -> None:
    """Append the command's person-level access to the data directory's audit log (privacy/audit.py)."""
    from maidian.collector.privacy.audit import NOT_FOUND, AuditLog, current_actor

    log = AuditLog(Path(args.data))
    log.append(args.actor or current_actor(), "cli", action, person or NOT_FOUND, args.reason or "")


def add_audit_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reason", help="why (a ticket number, a request id): written to the audit log")
    p.add_argument("--actor", help="who, for the audit log (default: the operating-system user)")
