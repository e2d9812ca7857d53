"""Find where a JSON pointer lands in JSON text, for error messages and lint findings.

Positions are computed only when something is reported, by walking the text
along the pointer. Each object or array on the way is scanned once, skipping
its members' values with the C JSON scanner, and the member offsets are kept,
so reporting hundreds of findings in a plan of several megabytes stays cheap:
every container is read at most once however many pointers pass through it.
"""

from __future__ import annotations

import bisect
import json
import re
from collections.abc import Callable
from typing import Any

__all__ = ["Locator", "join_pointer", "line_col", "locate", "split_pointer"]

_WS = re.compile(r"[ \t\n\r]*")

Scanner = Callable[[str, int], tuple[Any, int]]


def split_pointer(pointer: str) -> list[str]:
    """Split a JSON pointer ("/a/b~1c") into its unescaped parts (["a", "b/c"])."""
    if not pointer:
        return []
    return [p.replace("~1", "/").replace("~0", "~") for p in pointer[1:].split("/")]


def join_pointer(parts: list[str | int] | tuple[str | int, ...]) -> str:
    """The JSON pointer for a list of keys and indexes."""
    out = ""
    for part in parts:
        text = str(part)
        if "~" in text or "/" in text:
            text = text.replace("~", "~0").replace("/", "~1")
        out += "/" + text
    return out


def line_col(text: str, offset: int) -> tuple[int, int]:
    """1-based line and column of `offset` in `text`."""
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def locate(text: str, pointer: str) -> int | None:
    """Offset of the value (or, for an object member, of its key) that `pointer` names.

    Returns None when the pointer does not exist in the text.
    """
    return Locator(text).locate(pointer)


class Locator:
    """Locates many pointers in one text, reading each container on the way at most once."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._scan: Scanner = json.decoder.JSONDecoder().scan_once  # type: ignore[attr-defined]
        # container offset -> {member key or index: (offset to report, offset of the value)}
        self._containers: dict[int, dict[str, tuple[int, int]]] = {}
        self._known: list[tuple[int, int]] = [(0, 1)]  # (offset, its 1-based line), sorted

    def locate(self, pointer: str) -> int | None:
        """Offset of the value (or, for an object member, of its key) that `pointer` names, or None."""
        pos = self._skip_ws(0)
        found = pos
        for part in split_pointer(pointer):
            members = self._containers.get(pos)
            if members is None:
                members = self._containers[pos] = self._members(pos)
            entry = members.get(part)
            if entry is None:
                return None
            found, pos = entry
        return found

    def position(self, pointer: str) -> tuple[int, int] | None:
        """1-based (line, column) of what `pointer` names, or None."""
        offset = self.locate(pointer)
        return None if offset is None else self.line_col(offset)

    def line_col(self, offset: int) -> tuple[int, int]:
        """1-based line and column of `offset`.

        Newlines are counted from the nearest offset already resolved below this
        one, so resolving many offsets reads the text about once.
        """
        i = bisect.bisect_right(self._known, (offset, 1 << 62)) - 1
        known_offset, known_line = self._known[i]
        line = known_line + self.text.count("\n", known_offset, offset)
        self._known.insert(i + 1, (offset, line))
        return line, offset - (self.text.rfind("\n", 0, offset) + 1) + 1

    def _skip_ws(self, pos: int) -> int:
        m = _WS.match(self.text, pos)
        return m.end() if m else pos

    def _skip_value(self, pos: int) -> int | None:
        try:
            return self._scan(self.text, pos)[1]
        except (StopIteration, ValueError, RecursionError):
            return None

    def _members(self, pos: int) -> dict[str, tuple[int, int]]:
        """The members of the object or array at `pos`; the first of repeated keys wins."""
        text = self.text
        opening = text[pos : pos + 1]
        closing = {"{": "}", "[": "]"}.get(opening)
        out: dict[str, tuple[int, int]] = {}
        if closing is None:
            return out
        pos = self._skip_ws(pos + 1)
        index = 0
        while text[pos : pos + 1] not in (closing, ""):
            if opening == "{":
                key_pos = pos
                try:
                    key, end = self._scan(text, pos)
                except (StopIteration, ValueError):
                    return out
                pos = self._skip_ws(end)
                if not isinstance(key, str) or text[pos : pos + 1] != ":":
                    return out
                pos = self._skip_ws(pos + 1)
                out.setdefault(key, (key_pos, pos))
            else:
                out[str(index)] = (pos, pos)
                index += 1
            end_of_value = self._skip_value(pos)
            if end_of_value is None:
                return out
            pos = self._skip_ws(end_of_value)
            if text[pos : pos + 1] != ",":
                break
            pos = self._skip_ws(pos + 1)
        return out
