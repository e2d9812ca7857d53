"""The configuration file's shape: every key known, every value of its type, or a refusal naming file, line and key.

A configuration that says nothing about a typo is a security hole in a
collector: `revokd = true` on a leaked write key would leave the key active,
and `revoked = "ture"` would read as whatever the reader guesses. So before
any setting is used, `check_file` walks the parsed document against the
shape below and refuses, at start-up (and on SIGHUP, which then keeps the old
keys), any key it does not know and any value of another type, with the
file, the line and the dotted key:

    collector.toml:14: write_keys[1].revokd: unknown setting 'revokd'; known: burst_events, name, ...

Types are TOML's own: a boolean is `true` or `false` (never a string), an
integer is an integer, a number may be either, a string is a string. The
values' ranges and choices (`durability`, `event_loop`, hex digests, networks)
are checked where they are read (config.py). Lines come from the file's text
(`tomllib` keeps none): the key's line in its table, or the table's header.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Final

from maidian.collector.errors import ConfigError

__all__ = ["BOOL", "INT", "NUMBER", "STR", "STRINGS", "Table", "Tables", "check_file", "group", "line_of"]

BOOL: Final = "a boolean (true or false)"
INT: Final = "an integer"
NUMBER: Final = "a number"
STR: Final = "a string"
STRINGS: Final = "a list of strings"


@dataclass(frozen=True, slots=True)
class Table:
    """A TOML table's keys and what each holds: a type's name above, a `Table`, or a `Tables` array."""

    keys: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Tables:
    """An array of tables (`[[name]]`), each of one shape."""

    entry: Table


def group(kind: type[Any], **shapes: Any) -> Table:
    """A settings group's shape, from its dataclass: each field's type is its default value's, or `shapes[name]`."""
    defaults = kind()
    keys: dict[str, Any] = dict(shapes)
    for f in fields(kind):
        if f.name in shapes:
            continue
        value = getattr(defaults, f.name)
        if isinstance(value, bool):
            keys[f.name] = BOOL
        elif isinstance(value, int):
            keys[f.name] = INT
        elif isinstance(value, float):
            keys[f.name] = NUMBER
        elif isinstance(value, str | Path):
            keys[f.name] = STR
        else:
            raise TypeError(f"{kind.__name__}.{f.name}: no TOML type for {type(value).__name__}")
    return Table(keys)


def _is(value: Any, expected: str) -> bool:
    if expected == BOOL:
        return isinstance(value, bool)
    if expected == INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected == NUMBER:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if expected == STR:
        return isinstance(value, str)
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def check_file(doc: Mapping[str, Any], shape: Table, *, file: str, text: str) -> None:
    """Refuse (ConfigError) the first key `shape` does not know or value of the wrong type, with its line."""
    problem = _check(doc, shape, ())
    if problem is None:
        return
    path, message = problem
    line = line_of(text, path)
    where = _dotted(path)
    raise ConfigError(f"{file}:{line}: {where}: {message}" if line else f"{file}: {where}: {message}")


def _check(
    node: Mapping[str, Any], shape: Table, path: tuple[str | int, ...]
) -> tuple[tuple[str | int, ...], str] | None:
    for key, value in node.items():
        here = (*path, key)
        expected = shape.keys.get(key)
        if expected is None:
            return here, f"unknown setting {key!r}; known: {', '.join(sorted(shape.keys))}"
        if isinstance(expected, Table):
            if not isinstance(value, dict):
                return here, "expected a table"
            found = _check(value, expected, here)
        elif isinstance(expected, Tables):
            if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                return here, f"expected an array of tables ([[{_dotted(here)}]])"
            found = None
            for i, entry in enumerate(value):
                found = _check(entry, expected.entry, (*here, i))
                if found is not None:
                    break
        elif not _is(value, expected):
            return here, f"expected {expected}, not {_shown(value)}"
        else:
            found = None
        if found is not None:
            return found
    return None


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    return f"a {type(value).__name__}"


def _dotted(path: tuple[str | int, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


_HEADER: Final = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(?:#.*)?$")
_KEY: Final = re.compile(r'^\s*("(?:[^"\\]|\\.)*"|\'[^\']*\'|[A-Za-z0-9_-]+)\s*=')


def _names(header: str) -> tuple[str, ...]:
    return tuple(part.strip().strip("\"'") for part in header.split("."))


def line_of(text: str, path: tuple[str | int, ...]) -> int | None:
    """The 1-based line where `path` (table names, array indexes, then a key) is set in the TOML `text`."""
    tables = tuple(p for p in path[:-1] if isinstance(p, str))
    index = next((p for p in reversed(path[:-1]) if isinstance(p, int)), None)
    last = path[-1]
    if isinstance(last, int):  # an entry of an array of tables: its header
        tables, index, key = tuple(p for p in path if isinstance(p, str)), last, None
    else:
        key = last
    current: tuple[str, ...] = ()
    seen: dict[tuple[str, ...], int] = {}
    in_target = not tables
    header_line: int | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header is not None:
            current = _names(header.group(2))
            if header.group(1) == "[[":
                seen[current] = seen.get(current, -1) + 1
            in_target = current == tables and (index is None or seen.get(current) == index)
            if in_target:
                header_line = number
                if key is None:
                    return number
            elif key is not None and current[: len(tables) + 1] == (*tables, key) and index is None:
                return number  # `[server]` (or `[[vendors.x.projects]]`) for the key `server` (`x`) itself
            continue
        if in_target and key is not None:
            found = _KEY.match(line)
            if found is not None and found.group(1).strip("\"'") == key:
                return number
    return header_line
