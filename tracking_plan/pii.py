"""PII tags: how tagged values are transformed before they leave the device.

A property schema (or an identity type) may carry `"x-pii"`:

- `hash`: replaced by the keyed hash HMAC-SHA256(key, value) as 64 lowercase hex
  digits. Keyed, because an unkeyed hash of an 11-digit mobile number is
  reversed by enumerating 10^11 candidates in minutes. Equal values give equal
  hashes under one key, so the field still joins.
- `mask`: replaced by a string that keeps a few characters at each end
  (`mask_value`), the form bank statements print.
- `drop`: removed; never transmitted at all.

The SDK applies the tags (`apply_pii`) before an event is encoded. The collector
enforces them: its compiled schemas (validator.py, the "wire" stage) accept a
hashed field only in hash form, a masked field only with its mask, and a
dropped field not at all, so a client that forgot to transform is quarantined
instead of storing raw data.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from typing import Any, Final

__all__ = [
    "HASH_PATTERN",
    "MASK_PATTERN",
    "PII_TAGS",
    "PiiPaths",
    "apply_pii",
    "hash_value",
    "mask_value",
    "settle_pii",
]

PII_TAGS: Final = ("hash", "mask", "drop")
HASH_PATTERN: Final = "^[0-9a-f]{64}$"
MASK_PATTERN: Final = "[*]"

# A path is a tuple of property names; "*" stands for every item of an array.
PiiPaths = Mapping[tuple[str, ...], str]
_HASH_RE: Final = re.compile(HASH_PATTERN)


def hash_value(value: object, key: bytes) -> str:
    """The keyed hash of `value` (strings as UTF-8; other values by their str())."""
    data = value if isinstance(value, str) else str(value)
    return hmac.new(key, data.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


def mask_value(value: object) -> str:
    """Keep the ends and star out the middle: 13812345678 -> 138****5678, 张三 -> 张*."""
    s = value if isinstance(value, str) else str(value)
    n = len(s)
    if n <= 1:
        return "*" * n
    if n <= 4:
        return s[0] + "*" * (n - 1)
    if n <= 8:
        return s[0] + "*" * (n - 3) + s[-2:]
    return s[:3] + "*" * (n - 7) + s[-4:]


Transform = Callable[[Any, str, bytes], Any]


def _apply(node: Any, path: tuple[str, ...], tag: str, key: bytes, transform: Transform) -> Any:
    head, rest = path[0], path[1:]
    if head == "*":
        if not isinstance(node, list):
            return node
        if not rest:
            return [transform(item, tag, key) for item in node if tag != "drop"]
        return [_apply(item, rest, tag, key, transform) for item in node]
    if not isinstance(node, dict) or head not in node:
        return node
    out = dict(node)
    if not rest:
        if tag == "drop":
            del out[head]
        else:
            out[head] = transform(out[head], tag, key)
    else:
        out[head] = _apply(out[head], rest, tag, key, transform)
    return out


def _transform(value: Any, tag: str, key: bytes) -> Any:
    if value is None:
        return None
    if tag == "hash":
        return hash_value(value, key)
    if tag == "mask":
        return mask_value(value)
    return value


def apply_pii(properties: dict[str, Any], paths: PiiPaths, key: bytes) -> dict[str, Any]:
    """A copy of `properties` with every tagged path transformed; the input is not changed.

    Returns the same object when no tagged path is present (the common case
    costs one dict lookup per tagged top-level name).
    """
    out = properties
    for path, tag in paths.items():
        if path[0] in out:
            out = _apply(out, path, tag, key, _transform)
    return out


def _settle(value: Any, tag: str, key: bytes) -> Any:
    """`_transform` for a value that may already be in its tagged form: a hash or a mask stays as it is."""
    if isinstance(value, str) and (
        (tag == "hash" and _HASH_RE.match(value)) or (tag == "mask" and MASK_PATTERN.strip("[]") in value)
    ):
        return value
    return _transform(value, tag, key)


def settle_pii(record: Any, paths: PiiPaths, identity_tags: Mapping[str, str], key: bytes) -> Any:
    """A copy of a whole record (an event as sent) with every tagged value in its tagged form.

    For data at rest that failed validation (the collector's quarantine): a
    value already hashed or masked is kept, a clear one is hashed with `key`,
    masked or dropped, in `properties` by the plan's paths and in
    `identities` by the identity types' tags. Anything that is not an event
    with a properties object comes back unchanged.
    """
    if not isinstance(record, dict):
        return record
    out = record
    props = record.get("properties")
    if isinstance(props, dict):
        settled = props
        for path, tag in paths.items():
            if path[0] in settled:
                settled = _apply(settled, path, tag, key, _settle)
        if settled is not props:
            out = {**out, "properties": settled}
    ids = record.get("identities")
    if isinstance(ids, dict) and any(t in ids for t in identity_tags):
        fixed = {t: (_settle(v, identity_tags[t], key) if t in identity_tags else v) for t, v in ids.items()}
        out = {**out, "identities": {t: v for t, v in fixed.items() if identity_tags.get(t) != "drop"}}
    return out
