"""A structural scan of msgpack: how many values an encoded event holds, and whether a map repeats a key.

Nothing is built: the scan walks the headers (a string's or a binary's bytes
are skipped by their length), so it costs a few hundred nanoseconds per
value and no memory beyond one set of keys per open map. `decode.py` runs it
where msgspec alone cannot answer:

- values per batch (`Limits.max_values`): msgspec builds every value of a
  batch before anything can be counted, and an empty array costs 64 bytes of
  Python for one byte of msgpack. A body of more bytes than `max_values` could
  hold more values than that (each msgpack value takes at least a byte), so
  only such bodies are scanned, and the scan stops as soon as the budget is
  spent;
- duplicate keys: msgspec keeps a repeated key's last value without a word,
  while another reader may keep the first, so the bytes stored would not say
  what was judged. An event whose canonical re-encoding differs from its bytes
  (rare: another encoder, float32, or a repeated key) is scanned to tell a
  repeated key from a harmless difference in encoding.

Keys are compared as decoded: a string key by its UTF-8 bytes whatever its
header width, any other key by its encoding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["Scan", "ScanError", "map_value_at", "scan_msgpack"]


class ScanError(Exception):
    """The bytes are not msgpack (truncated, or a byte msgpack never uses); the decoder says what."""


@dataclass(frozen=True, slots=True)
class Scan:
    """What a scan found: the values counted (all of them unless `over_budget`) and the first repeated key."""

    values: int
    duplicate_key: bool
    over_budget: bool
    # Where the value ends in the data (meaningful when the scan was not over budget).
    end: int = 0


# Per leading byte: (kind, n) where kind is
#   0 scalar of n bytes in all, 1 string/binary with an n-byte length, 2 ext with an n-byte length,
#   3 array with an n-byte count, 4 map with an n-byte count, 5 fixstr, 6 fixarray, 7 fixmap, 8 never used.
_SCALAR, _BYTES, _EXT, _ARRAY, _MAP, _FIXSTR, _FIXARRAY, _FIXMAP, _BAD = range(9)


def _table() -> tuple[tuple[int, int], ...]:
    table: list[tuple[int, int]] = []
    for b in range(256):
        if b <= 0x7F or b >= 0xE0:
            table.append((_SCALAR, 1))
        elif b <= 0x8F:
            table.append((_FIXMAP, b & 0x0F))
        elif b <= 0x9F:
            table.append((_FIXARRAY, b & 0x0F))
        elif b <= 0xBF:
            table.append((_FIXSTR, b & 0x1F))
        else:
            table.append(
                {
                    0xC0: (_SCALAR, 1),
                    0xC1: (_BAD, 0),
                    0xC2: (_SCALAR, 1),
                    0xC3: (_SCALAR, 1),
                    0xC4: (_BYTES, 1),
                    0xC5: (_BYTES, 2),
                    0xC6: (_BYTES, 4),
                    0xC7: (_EXT, 1),
                    0xC8: (_EXT, 2),
                    0xC9: (_EXT, 4),
                    0xCA: (_SCALAR, 5),
                    0xCB: (_SCALAR, 9),
                    0xCC: (_SCALAR, 2),
                    0xCD: (_SCALAR, 3),
                    0xCE: (_SCALAR, 5),
                    0xCF: (_SCALAR, 9),
                    0xD0: (_SCALAR, 2),
                    0xD1: (_SCALAR, 3),
                    0xD2: (_SCALAR, 5),
                    0xD3: (_SCALAR, 9),
                    0xD4: (_SCALAR, 3),
                    0xD5: (_SCALAR, 4),
                    0xD6: (_SCALAR, 6),
                    0xD7: (_SCALAR, 10),
                    0xD8: (_SCALAR, 18),
                    0xD9: (_BYTES, 1),
                    0xDA: (_BYTES, 2),
                    0xDB: (_BYTES, 4),
                    0xDC: (_ARRAY, 2),
                    0xDD: (_ARRAY, 4),
                    0xDE: (_MAP, 2),
                    0xDF: (_MAP, 4),
                }[b]
            )
    return tuple(table)


_TABLE: Final = _table()
_KINDS: Final = tuple(kind for kind, _n in _TABLE)
_SIZES: Final = tuple(n for _kind, n in _TABLE)
_STRINGS: Final = frozenset({0xD9, 0xDA, 0xDB})


def scan_msgpack(data: bytes, budget: int, max_depth: int, pos: int = 0) -> Scan:
    """Count the values of the msgpack value at `pos` (stopping past `budget`) and look for repeated map keys.

    Containers nested deeper than `max_depth` are counted as one value per
    remaining byte (an upper bound) and not walked: the decoder refuses them.
    """
    kinds = _KINDS
    sizes = _SIZES
    end = len(data)
    values = 0
    # The open containers: items left in each, and the keys seen in each map (None for arrays).
    # Map items alternate key, value, so in a map an odd count of items left (after this one) means a key.
    lefts: list[int] = []
    key_sets: list[set[bytes] | None] = []
    left = 1
    keys: set[bytes] | None = None
    duplicate = False
    while True:
        while left == 0:
            if not lefts:
                return Scan(values, duplicate, over_budget=False, end=pos)
            left = lefts.pop()
            keys = key_sets.pop()
        left -= 1
        values += 1
        if pos >= end:
            raise ScanError("truncated")
        b = data[pos]
        kind = kinds[b]
        if kind == _SCALAR:
            start = pos
            pos += sizes[b]
        elif kind == _FIXSTR:
            start = pos + 1
            pos = start + sizes[b]
        elif kind in (_BYTES, _EXT):
            n = sizes[b]
            start = pos + 1 + n
            pos = start + int.from_bytes(data[pos + 1 : start], "big") + (kind == _EXT)
        elif kind == _BAD:
            raise ScanError("a byte msgpack never uses")
        else:
            if kind in (_FIXMAP, _FIXARRAY):
                count = sizes[b]
                pos += 1
            else:
                n = sizes[b]
                count = int.from_bytes(data[pos + 1 : pos + 1 + n], "big")
                pos += 1 + n
            if keys is not None and left & 1:
                keys.add(b"\x02%d" % pos)  # a container as a key: never equal to another key
            if values > budget:
                return Scan(values, duplicate, over_budget=True)
            if count == 0:
                continue
            if len(lefts) >= max_depth:
                rest = values + end - pos
                return Scan(rest, duplicate, over_budget=rest > budget)
            lefts.append(left)
            key_sets.append(keys)
            if kind in (_FIXMAP, _MAP):
                left = 2 * count
                keys = set()
            else:
                left = count
                keys = None
            continue
        if pos > end:
            raise ScanError("truncated")
        if keys is not None and left & 1:  # this value was a key
            key = (
                data[start:pos] if kind == _FIXSTR or b in _STRINGS else b"\x01" + data[start - (kind != _SCALAR) : pos]
            )
            if key in keys:
                duplicate = True
            keys.add(key)
        elif values > budget:
            return Scan(values, duplicate, over_budget=True)


def map_value_at(data: bytes, key: str, budget: int) -> int | None:
    """Where the value of `key` starts in the msgpack map `data`, or None (no map, no such key, over `budget`).

    The values of the keys before it are skipped by scanning, within `budget` values in all.
    """
    if not data:
        return None
    first = data[0]
    if 0x80 <= first <= 0x8F:
        count, pos = first & 0x0F, 1
    elif first in (0xDE, 0xDF):
        width = 2 if first == 0xDE else 4
        count, pos = int.from_bytes(data[1 : 1 + width], "big"), 1 + width
    else:
        return None
    wanted = key.encode()
    for _ in range(count):
        try:
            found = scan_msgpack(data, budget, 1 << 30, pos)
        except ScanError:
            return None
        if found.over_budget:
            return None
        start = pos
        pos = found.end
        if _string_payload(data, start, pos) == wanted:
            return pos
        try:
            skipped = scan_msgpack(data, budget, 1 << 30, pos)
        except ScanError:
            return None
        budget -= found.values + skipped.values
        if skipped.over_budget or budget < 0:
            return None
        pos = skipped.end
    return None


def _string_payload(data: bytes, start: int, end: int) -> bytes | None:
    first = data[start]
    if 0xA0 <= first <= 0xBF:
        return data[start + 1 : end]
    if first in _STRINGS:
        return data[start + 1 + (1 << (first - 0xD9)) : end]
    return None
