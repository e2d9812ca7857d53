"""Finding personal data the plan does not declare: mainland mobile numbers, resident ID numbers, bank cards, e-mail.

The plan's `x-pii` tags cover the properties and identity types it declares.
This module looks for personal data where no tag can: in properties the plan
does not declare and in identity values. It is shared by both ends: the
collector masks what it finds in quarantined records before they are stored
(collector/pipeline/redact.py), and the SDK's strict and warn modes can check
an event before it leaves the device:

    from maidian.tracking_plan.pii_detect import find_pii
    found = find_pii(event["properties"], declared=plan_property_names)
    # strict: refuse the event when `found` is not empty; warn: log the paths and kinds

What counts (each check is exact, so ordinary numbers rarely match):

- `mobile`: 11 digits starting 13-19 (an optional +86 or 86 before them), not
  inside a longer run of digits or letters (a hex id);
- `resident_id`: 18 characters, 17 digits and a digit or X, whose last
  character is the GB 11643-1999 check digit (ISO 7064 MOD 11-2) and whose
  digits 7-14 are a calendar date from 1900 on;
- `bank_card`: 16 to 19 digits, optionally grouped by spaces or hyphens in
  fours, passing the Luhn check and starting 2-6 (the card schemes' ranges);
- `email`: local@domain.tld.

`benchmarks/pii_detect.py` measures the false-positive rate on the example
events and a generated corpus of ordinary values (order ids, prices,
timestamps, phone-like account numbers).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator, Mapping
from typing import Any, Final

__all__ = ["KINDS", "detect", "find_pii", "mask_found"]

KINDS: Final = ("mobile", "resident_id", "bank_card", "email")

_MOBILE: Final = re.compile(r"(?<![0-9A-Za-z])(?:\+?86[- ]?)?(1[3-9][0-9]{9})(?![0-9A-Za-z])")
_RESIDENT_ID: Final = re.compile(r"(?<![0-9A-Za-z])([0-9]{17}[0-9Xx])(?![0-9A-Za-z])")
_CARD: Final = re.compile(r"(?<![0-9A-Za-z])([2-6][0-9]{3}(?:[ -]?[0-9]{4}){2}[ -]?[0-9]{4,7})(?![0-9A-Za-z])")
# Every kind but e-mail needs eleven digits in a row (or grouped by spaces or hyphens): one search rules most out.
_ELEVEN: Final = re.compile(r"[0-9](?:[ -]?[0-9]){10}")
_EMAIL: Final = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_ID_WEIGHTS: Final = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK: Final = "10X98765432"
# A string this long is a document, not a value: it is checked in its first part only.
_MAX_SCAN_CHARS: Final = 4096


def _resident_id_ok(text: str) -> bool:
    digits = text[:17]
    total = sum(int(d) * w for d, w in zip(digits, _ID_WEIGHTS, strict=True))
    if _ID_CHECK[total % 11] != text[17].upper():
        return False
    try:
        born = dt.date(int(text[6:10]), int(text[10:12]), int(text[12:14]))
    except ValueError:
        return False
    return born.year >= 1900


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = int(ch)
        if i % 2:
            n *= 2
            if n > 9:
                n -= 9
        total += n
    return total % 10 == 0


def detect(value: object) -> list[tuple[str, str]]:
    """(kind, matched text) for each piece of personal data in a string; [] for anything else."""
    if not isinstance(value, str) or len(value) < 5:
        return []
    text = value[:_MAX_SCAN_CHARS]
    found: list[tuple[str, str]] = []
    if "@" in text:
        found += [("email", m.group(0)) for m in _EMAIL.finditer(text)]
    if _ELEVEN.search(text) is None:
        return found
    ids = [m.group(1) for m in _RESIDENT_ID.finditer(text) if _resident_id_ok(m.group(1))]
    found += [("resident_id", i) for i in ids]
    for m in _CARD.finditer(text):
        digits = re.sub(r"[ -]", "", m.group(1))
        if 16 <= len(digits) <= 19 and digits not in ids and _luhn_ok(digits):
            found.append(("bank_card", m.group(1)))
    found += [("mobile", m.group(0)) for m in _MOBILE.finditer(text) if not any(m.group(1) in f for _k, f in found)]
    return found


def _walk(node: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], str]]:
    if isinstance(node, str):
        yield path, node
    elif isinstance(node, Mapping):
        for k, v in node.items():
            yield from _walk(v, (*path, str(k)))
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v, (*path, "*"))


def find_pii(values: Any, *, declared: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
    """("/a/b" path, kind) for personal data in a properties (or identities) object, outside the `declared` names."""
    out: list[tuple[str, str]] = []
    if not isinstance(values, Mapping):
        return out
    for name, value in values.items():
        if name in declared:
            continue
        for path, text in _walk(value, (str(name),)):
            out += [("/" + "/".join(path), kind) for kind, _m in detect(text)]
    return out


def mask_found(value: Any) -> Any:
    """The value with every piece of personal data `detect` finds masked (strings inside lists and maps too)."""
    if isinstance(value, str):
        for _kind, text in detect(value):
            keep = 3 if len(text) > 8 else 1
            value = value.replace(text, text[:keep] + "*" * max(1, len(text) - keep - 4) + text[-4:])
        return value
    if isinstance(value, Mapping):
        return {k: mask_found(v) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_found(v) for v in value]
    return value
