"""The support view's commands: `maidian support hash-password` and `maidian support add-user`.

The operator never writes a hash by hand: `add-user` reads the password
(from the terminal without echo, or one line of standard input), or issues a
random token, and prints, or appends to the configuration file, the
`[[support.accounts]]` table holding only its scrypt hash or SHA-256.
Exit codes: 0 done, 2 unusable input.
"""

from __future__ import annotations

import argparse
import getpass
import secrets
import sys
import tomllib
from pathlib import Path
from typing import Any

from maidian.collector.cli.output import reporting
from maidian.tracking_plan.cli import EXIT_OK, EXIT_UNUSABLE, add_command, add_group

__all__ = ["add_support_commands"]

_MIN_PASSWORD_CHARS = 12


def _read_password() -> str | None:
    if sys.stdin.isatty():
        first = getpass.getpass("password: ")
        if getpass.getpass("again: ") != first:
            print("error: the two passwords differ", file=sys.stderr)
            return None
        password = first
    else:
        password = sys.stdin.readline().rstrip("\n")
    if len(password) < _MIN_PASSWORD_CHARS:
        print(f"error: a password needs at least {_MIN_PASSWORD_CHARS} characters", file=sys.stderr)
        return None
    return password


@reporting
def _hash_password(args: argparse.Namespace) -> int:
    from maidian.collector.support.access import hash_password

    password = _read_password()
    if password is None:
        return EXIT_UNUSABLE
    print(hash_password(password))
    return EXIT_OK


@reporting
def _add_user(args: argparse.Namespace) -> int:
    from maidian.collector.settings import hash_key
    from maidian.collector.support.access import hash_password

    lines = ["", "[[support.accounts]]", f"name = {_toml_string(args.name)}", f'role = "{args.role}"']
    token = None
    if args.token:
        token = "mst_" + secrets.token_urlsafe(32)
        lines.append(f'token_sha256 = "{hash_key(token)}"')
    else:
        password = _read_password()
        if password is None:
            return EXIT_UNUSABLE
        lines.append(f'password_scrypt = "{hash_password(password)}"')
    snippet = "\n".join(lines) + "\n"
    if args.config:
        path = Path(args.config)
        doc = tomllib.loads(path.read_text("utf-8")) if path.exists() else {}
        if any(a.get("name") == args.name for a in doc.get("support", {}).get("accounts", [])):
            print(f"error: {path} already has an account named {args.name!r}", file=sys.stderr)
            return EXIT_UNUSABLE
        with path.open("a", encoding="utf-8") as f:
            f.write(snippet)
        print(f"added {args.name} ({args.role}) to {path}; reload or restart the collector", file=sys.stderr)
    else:
        sys.stdout.write(snippet)
    if token is not None:
        print(f"token (shown once, give it to {args.name}): {token}", file=sys.stderr)
    return EXIT_OK


def _toml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def add_support_commands(sub: Any) -> None:
    ssub = add_group(
        sub,
        "support",
        help="staff accounts for the support view",
        description="Accounts for the support view (/support) keep only a scrypt hash or a token's SHA-256.",
        example="maidian support add-user li.na --role agent --config maidian.toml",
        dest="support_command",
    )
    add_command(
        ssub,
        "hash-password",
        help="print the scrypt hash of a password (read without echo, or from stdin)",
        description="Print the scrypt hash (N=2**17, r=8, p=1) to put in password_scrypt.",
        example="maidian support hash-password < password.txt",
        handler=_hash_password,
    )
    p = add_command(
        ssub,
        "add-user",
        help="add a staff account: prints (or appends) its [[support.accounts]] table",
        description=(
            "Ask for the password (or issue a token with --token) and print the account's table with its hash; "
            "with --config, append it to that file."
        ),
        example="maidian support add-user li.na --role agent --config maidian.toml",
        handler=_add_user,
    )
    p.add_argument("name", help="the account name staff sign in with (or the SSO user name)")
    p.add_argument("--role", choices=("agent", "officer"), required=True, help="agent: look up; officer: also export")
    p.add_argument("--token", action="store_true", help="issue a random token instead of asking for a password")
    p.add_argument("--config", help="append the account to this TOML configuration file")
