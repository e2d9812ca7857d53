"""The wire envelope shared by the SDK and the collector.

This module is the single place where both ends agree on what an event and a
batch look like, on how event ids are formed, on the HTTP headers and on the
hard size limits. `docs/protocol.md` describes the same thing for people.

An event (one map in a batch)::

    {"type": "track", "event": "stock_order_submit",
     "event_id": "<source>-<seq>", "time": 1763800000000,
     "identities": {"anonymous_id": "...", "login_id": "..."},
     "properties": {...}}

A batch::

    {"sent_at": <epoch ms>, "lib": "maidian-python", "lib_version": "0.1.0",
     "plan_version": "1.4.0" | None, "events": [event, ...],
     "dropped": {"source": "<source id>", "counts": {"overflow": 12}}}   (optional)

Rules:
- `event_id` is minted once, when the event is tracked, and never changes on a
  retry. The SDK's form is `<source>-<seq>`: a 32-hex-digit source id minted per
  client instance (time-ordered, so it also sorts by creation) and a sequence
  number that counts up from 1 for that source. Against a random UUID per event
  this costs about 8.5 instead of 29 compressed bytes per event, and it lets the
  collector detect gaps and keep its deduplication state as ranges per source.
  Any other string up to `Limits.max_event_id_length` is accepted as an opaque
  id (server-side and imported traffic).
- `time` is the device's epoch milliseconds; `sent_at` lets the collector
  correct device clock skew.
- `identities` maps identity types (`anonymous_id`, `login_id` and the plan's
  declared types) to non-empty strings.
- Property names starting with `$` are presets that only the SDK sets
  (`PRESET_SCHEMAS`).
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "BATCH_FIELDS",
    "BUILTIN_IDENTITIES",
    "DEFAULT_LIMITS",
    "DROP_REASONS",
    "EVENT_FIELDS",
    "EVENT_TYPES",
    "HEADER_NONCE",
    "HEADER_SIGNATURE",
    "HEADER_SOURCE",
    "HEADER_TIMESTAMP",
    "HEADER_WRITE_KEY",
    "JUNK_IDENTITY_VALUES",
    "OPTIONAL_BATCH_FIELDS",
    "OUTCOMES",
    "PRESET_SCHEMAS",
    "PROFILE_TYPES",
    "Limits",
    "is_junk_identity",
    "make_event_id",
    "make_source_id",
    "parse_event_id",
]

# -- event types -------------------------------------------------------------

TRACK: Final = "track"
PROFILE_TYPES: Final = frozenset(
    {
        "profile_set",
        "profile_set_once",
        "profile_increment",
        "profile_append",
        "profile_unset",
        "profile_delete",
    }
)
IDENTITY_TYPES_OPS: Final = frozenset({"bind", "unbind"})
EVENT_TYPES: Final = frozenset({TRACK}) | PROFILE_TYPES | IDENTITY_TYPES_OPS

EVENT_FIELDS: Final = ("type", "event", "event_id", "time", "identities", "properties")
BATCH_FIELDS: Final = ("sent_at", "lib", "lib_version", "plan_version", "events", "dropped")
# Present only when the sender dropped events: {"source": <source id>, "counts": {reason: n}}, cumulative.
OPTIONAL_BATCH_FIELDS: Final = frozenset({"dropped"})

# Why a sender dropped events (the batch's `dropped` counts; docs/protocol.md, "A batch"). The
# collector counts any other reason as "other".
DROP_REASONS: Final = frozenset(
    {
        "overflow",
        "expired",
        "unencodable",
        "invalid",
        "too_large",
        "rejected_batch",
        "internal",
        "closed",
        "unsent",  # still in memory when the client closed or its process exited, with no spool to keep it
        "opted_out",  # waiting when the device opted out: purged, never to be sent
    }
)

BUILTIN_IDENTITIES: Final = ("anonymous_id", "login_id")

# -- per-event outcomes in a 200 response ------------------------------------

ACCEPTED: Final = "accepted"
DUPLICATE: Final = "duplicate"
QUARANTINED: Final = "quarantined"
OUTCOMES: Final = (ACCEPTED, DUPLICATE, QUARANTINED)

# -- HTTP --------------------------------------------------------------------

BATCH_PATH: Final = "/v1/batch"
DEBUG_PATH: Final = "/v1/debug"
CONTENT_TYPE_MSGPACK: Final = "application/msgpack"
CONTENT_TYPE_JSON: Final = "application/json"
HEADER_WRITE_KEY: Final = "X-Maidian-Write-Key"
# Server sources sign the body instead of sending a write key (signing.py).
HEADER_SOURCE: Final = "X-Maidian-Source"
HEADER_TIMESTAMP: Final = "X-Maidian-Timestamp"
HEADER_NONCE: Final = "X-Maidian-Nonce"
HEADER_SIGNATURE: Final = "X-Maidian-Signature"


@dataclass(frozen=True, slots=True)
class Limits:
    """Hard limits on what one request may carry, measured after decompression.

    The SDK builds batches inside these limits, so it never meets a 413 for a
    batch; an event too large on its own is quarantined by the collector (and
    reported to the host by the SDK), never silently dropped.
    """

    # aiohttp's and nginx's default body cap; a 500-event batch of the 12-property
    # order event is about 4 KiB compressed, so this leaves a wide margin.
    max_body_bytes: int = 1 << 20
    # 16x the body cap: real batches inflate 10-40x; anything past this is a bomb.
    max_decoded_bytes: int = 16 << 20
    # Ten times the SDK's default batch size of 200.
    max_events: int = 2000
    # The largest event in the example plan encodes to under 2 KiB.
    max_event_bytes: int = 32 << 10
    max_properties: int = 300
    # Containers nested inside `properties` (an object in a list is depth 2).
    max_depth: int = 8
    max_string_bytes: int = 8 << 10
    # Values in one batch (objects, arrays, keys and scalars, nested): an empty msgpack array is one
    # byte that Python holds in 64, so a 16 MiB body of them would take a gigabyte. 256 Ki values
    # take at most about 20 MiB; 500 SDK events of 12 properties hold about 17,000. A body of at
    # most this many bytes cannot hold more values than bytes, so only larger bodies are counted.
    max_values: int = 256 << 10
    # Event and property names; the longest name in a 3,259-point bank plan was 61.
    max_name_length: int = 100
    max_identity_length: int = 255
    max_event_id_length: int = 128


DEFAULT_LIMITS: Final = Limits()

# -- names -------------------------------------------------------------------

EVENT_NAME_RE: Final = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)+$")
PROPERTY_NAME_RE: Final = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*$")
PRESET_NAME_RE: Final = re.compile(r"^\$[a-z][a-z0-9]*(?:_[a-z0-9]+)*$")
IDENTITY_NAME_RE: Final = PROPERTY_NAME_RE

# Presets the SDK sets on every track event (or the collector, for `$ip`).
# A plan may declare them in `common_properties` to tighten them (for example
# make `$app_version` required); it may not invent other `$` names.
_STR: Final[dict[str, Any]] = {"type": "string", "maxLength": 256}
_POS_INT: Final[dict[str, Any]] = {"type": "integer", "minimum": 0}
PRESET_SCHEMAS: Final[dict[str, dict[str, Any]]] = {
    "$lib": _STR,
    "$lib_version": _STR,
    "$lib_method": {"type": "string", "enum": ["code", "codegen", "import"]},
    "$os": _STR,
    "$os_version": _STR,
    "$runtime": _STR,
    "$runtime_version": _STR,
    "$app_name": _STR,
    "$app_version": _STR,
    "$device_model": _STR,
    "$manufacturer": _STR,
    "$screen_width": _POS_INT,
    "$screen_height": _POS_INT,
    "$network_type": _STR,
    "$carrier": _STR,
    "$timezone_offset": {"type": "integer", "minimum": -1440, "maximum": 1440},
    "$screen_name": _STR,
    "$url": {"type": "string", "maxLength": 2048},
    "$referrer": {"type": "string", "maxLength": 2048},
    "$title": _STR,
    "$ip": {"type": "string", "maxLength": 64},
    "$duration_ms": _POS_INT,
    "$test_tag": {"type": "string", "maxLength": 64},
    "$server": {"type": "boolean"},
}

# -- identities ----------------------------------------------------------------

# Values that apps send when they have no id. Binding on them would merge every
# user who ever hit the bug into one person. Compared after strip() and lower().
JUNK_IDENTITY_VALUES: Final = frozenset(
    {
        "",
        "0",
        "-1",
        "null",
        "nil",
        "none",
        "undefined",
        "nan",
        "unknown",
        "anonymous",
        "guest",
        "[object object]",
        "00000000-0000-0000-0000-000000000000",
        "0000000000000000",
        "id",
        "distinct_id",
        "true",
        "false",
    }
)


def is_junk_identity(value: object) -> bool:
    """True when `value` cannot identify anybody (not a string, blank or a known junk value)."""
    if not isinstance(value, str):
        return True
    return value.strip().lower() in JUNK_IDENTITY_VALUES


# -- event ids -------------------------------------------------------------------

_SOURCE_RE: Final = re.compile(r"^([0-9a-f]{32})-([1-9][0-9]{0,18})$")


def make_source_id(now_ms: int | None = None) -> str:
    """A new 32-hex-digit source id: 48 bits of milliseconds then 80 random bits.

    Time first, so ids made later sort later (the UUIDv7 layout, without the
    version bits, which would only cost entropy).
    """
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    return f"{ms & 0xFFFF_FFFF_FFFF:012x}{os.urandom(10).hex()}"


def make_event_id(source: str, seq: int) -> str:
    """The event id of the `seq`-th event (counting from 1) of `source`."""
    return f"{source}-{seq}"


def parse_event_id(event_id: str) -> tuple[str, int] | None:
    """Split an SDK-form event id into (source, seq); None for any other form."""
    m = _SOURCE_RE.match(event_id)
    if m is None:
        return None
    return m.group(1), int(m.group(2))
