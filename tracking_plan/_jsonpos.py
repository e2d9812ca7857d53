"""Find where a JSON pointer lands in JSON text, for error messages.

Only used when something is wrong, so it favours simplicity over speed, but it
walks only along the pointer's path and skips everything else with regular
expressions, so it stays fast on plans of several megabytes.
"""

from __future__ import annotations

import json
import re

_WS = re.compile(r"[ \t\n\r]*")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.S)
_SCALAR = re.compile(r"[^,\]}\s]+")


def split_pointer(pointer: str) -> list[str]:
    """Split a JSON pointer ("/a/b~1c") into its unescaped parts (["a", "b/c"])."""
    if not pointer:
        return []
    return [p.replace("~1", "/").replace("~0", "~") for p in pointer.lstrip("/").split("/")]


def join_pointer(parts: list[str | int] | tuple[str | int, ...]) -> str:
    """The JSON pointer for a list of keys and indexes."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def line_col(text: str, offset: int) -> tuple[int, int]:
    """1-based line and column of `offset` in `text`."""
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def _skip_ws(text: str, pos: int) -> int:
    m = _WS.match(text, pos)
    return m.end() if m else pos


def _skip_value(text: str, pos: int) -> int:
    ch = text[pos : pos + 1]
    if ch == '"':
        m = _STRING.match(text, pos)
        return m.end() if m else len(text)
    if ch in ("{", "["):
        depth = 0
        for m in _TOKEN.finditer(text, pos):
            tok = m.group()
            if tok in ("{", "["):
                depth += 1
            elif tok in ("}", "]"):
                depth -= 1
                if depth == 0:
                    return m.end()
        return len(text)
    m = _SCALAR.match(text, pos)
    return m.end() if m else pos + 1


def locate(text: str, pointer: str) -> int | None:
    """Offset of the value (or, for an object member, of its key) that `pointer` names.

    Returns None when the pointer does not exist in the text.
    """
    pos = _skip_ws(text, 0)
    key_pos = pos
    for part in split_pointer(pointer):
        ch = text[pos : pos + 1]
        if ch == "{":
            pos = _skip_ws(text, pos + 1)
            while True:
                if text[pos : pos + 1] != '"':
                    return None
                m = _STRING.match(text, pos)
                if m is None:
                    return None
                key_pos = pos
                key = json.loads(m.group())
                pos = _skip_ws(text, m.end())
                if text[pos : pos + 1] != ":":
                    return None
                pos = _skip_ws(text, pos + 1)
                if key == part:
                    break
                pos = _skip_ws(text, _skip_value(text, pos))
                if text[pos : pos + 1] != ",":
                    return None
                pos = _skip_ws(text, pos + 1)
        elif ch == "[":
            if not part.isdigit():
                return None
            pos = _skip_ws(text, pos + 1)
            for _ in range(int(part)):
                if text[pos : pos + 1] == "]":
                    return None
                pos = _skip_ws(text, _skip_value(text, pos))
                if text[pos : pos + 1] != ",":
                    return None
                pos = _skip_ws(text, pos + 1)
            if text[pos : pos + 1] == "]":
                return None
            key_pos = pos
        else:
            return None
    return key_pos
