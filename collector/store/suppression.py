"""The suppression list: identities whose new events are answered but not stored.

`state/suppressed.json` in the data directory holds keyed hashes of (type,
value), never the values, and the key they are made with. `maidian privacy
delete --suppress` adds to it; a starting collector loads it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from maidian.collector.errors import DataDirError
from maidian.collector.store.log import DataDir, write_atomically

__all__ = ["SUPPRESSED_FILE", "Suppression", "add_suppressed", "load_suppression"]

SUPPRESSED_FILE: Final = "suppressed.json"


@dataclass(frozen=True, slots=True)
class Suppression:
    """The identities whose new events are not stored: keyed hashes of (type, value), never the values."""

    key: bytes
    pseudonyms: frozenset[str]

    def pseudonym(self, identity_type: str, value: str) -> str:
        return hmac.new(self.key, f"{identity_type}\0{value}".encode(), hashlib.sha256).hexdigest()

    def covers(self, identities: Any) -> bool:
        """Whether an event's identities include a suppressed one."""
        if not self.pseudonyms or not isinstance(identities, Mapping):
            return False
        return any(self.pseudonym(str(t), str(v)) in self.pseudonyms for t, v in identities.items())


def load_suppression(data: DataDir) -> Suppression:
    """The data directory's suppression list (empty when there is none)."""
    try:
        doc = json.loads((data.state / SUPPRESSED_FILE).read_text())
    except FileNotFoundError:
        return Suppression(b"", frozenset())
    except (OSError, ValueError) as exc:
        raise DataDirError(f"{data.state / SUPPRESSED_FILE}: unreadable suppression list ({exc})") from None
    return Suppression(bytes.fromhex(doc["key"]), frozenset(doc["digests"]))


def add_suppressed(data: DataDir, identities: Iterable[tuple[str, str]]) -> int:
    data.state.mkdir(exist_ok=True)
    current = load_suppression(data)
    key = current.key or secrets.token_bytes(32)
    merged = Suppression(key, current.pseudonyms)
    pseudonyms = set(current.pseudonyms) | {merged.pseudonym(t, v) for t, v in identities}
    added = len(pseudonyms) - len(current.pseudonyms)
    if added:
        doc = {"key": key.hex(), "digests": sorted(pseudonyms)}
        write_atomically(data.state / SUPPRESSED_FILE, json.dumps(doc, indent=0).encode())
    return added
