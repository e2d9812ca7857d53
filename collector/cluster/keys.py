"""The partition key of a raw frame: every copy of an event id lands in one partition.

Exact deduplication happens per partition (the ledger), so the key must be a function of the event id
and of its sender's dedup scope (pipeline/dedup.py: ids are duplicates only within one write key or
signed source), never of the request or the collector: the scope plus, for an SDK-form id
`<source>-<seq>`, its source (one device's ids all land together, and a retry through any collector
lands with them), for an opaque id (server sources, vendor imports) the id itself. A frame whose ids
need one key is sent as it is (the SDK's usual batch, with no decoding beyond the head); a frame with
several keys is split into one frame per key, each with its own head (ids, identity observations, name
counts, time range), built by the same function that built the original, so the ledger and the loader
see ordinary frames.
"""

from __future__ import annotations

import zlib
from typing import Any, Final

import msgspec
import zstandard

from maidian.collector.pipeline.dedup import head_scope
from maidian.collector.store.frames import FRAME_HEADER, VERSION, frame_of
from maidian.collector.store.heads import build_accepted_frame
from maidian.collector.store.ids import id_ranges, split_event_id

__all__ = ["frame_head", "frame_keeping", "frame_with_head", "keyed_frames"]

_payload: Final = msgspec.msgpack.Decoder(tuple[int, dict[str, Any], bytes])
_body: Final = msgspec.msgpack.Decoder(dict[str, Any])
_encoder: Final = msgspec.msgpack.Encoder()
_decompressor: Final = zstandard.ZstdDecompressor()
# Head fields that describe the frame's events; a split frame gets its own.
_PER_EVENTS: Final = ("n", "seq", "oid", "obs", "names", "tmin", "tmax")


def frame_head(frame: bytes) -> tuple[dict[str, Any], bytes]:
    """A frame's head and its still-compressed body (the frame is checked: length and CRC)."""
    length, crc = FRAME_HEADER.unpack_from(frame)
    payload = memoryview(frame)[FRAME_HEADER.size : FRAME_HEADER.size + length]
    if len(payload) != length or zlib.crc32(payload) != crc:
        raise ValueError("not one whole frame")
    _version, head, body = _payload.decode(payload)
    return head, body


def _key_of(event_id: str) -> str:
    pair = split_event_id(event_id)
    return event_id if pair is None else pair[0]


def _decoded(body: bytes) -> tuple[list[Any], list[int], dict[str, list[str]]]:
    decoded = _body.decode(_decompressor.decompress(body))
    return decoded["e"], decoded["t"], decoded.get("f") or {}


def _rebuild(head: dict[str, Any], body: tuple[list[Any], list[int], dict[str, list[str]]], keep: list[int]) -> bytes:
    """A frame holding the events at `keep` of a decoded body, with its own head."""
    events, times, flags = body
    base = {k: v for k, v in head.items() if k not in _PER_EVENTS}
    stored = [(events[i], msgspec.Raw(_encoder.encode(events[i])), times[i], flags.get(str(i))) for i in keep]
    ranges, opaque = id_ranges(events[i]["event_id"] for i in keep)
    return build_accepted_frame(base, stored, ranges, opaque)


def partition_key(scope: str, key: str) -> bytes:
    """The record key: the sender's dedup scope and the id's own key (SDK source or opaque id)."""
    return f"{scope}\x1f{key}".encode()


def keyed_frames(frame: bytes, *, split: bool = True) -> list[tuple[bytes, bytes]]:
    """(key, frame) pairs that together hold exactly the frame's events, one key each."""
    head, body = frame_head(frame)
    scope = head_scope(head)
    seq: dict[str, Any] = head.get("seq") or {}
    oid: list[str] = head.get("oid") or []
    if not split or len(seq) + len(oid) <= 1:
        key = next(iter(seq), None) or (oid[0] if oid else "")
        return [(partition_key(scope, key), frame)]
    decoded = _decoded(body)
    groups: dict[str, list[int]] = {}
    for i, event in enumerate(decoded[0]):
        groups.setdefault(_key_of(event["event_id"]), []).append(i)
    return [(partition_key(scope, key), _rebuild(head, decoded, keep)) for key, keep in groups.items()]


def frame_keeping(head: dict[str, Any], body: bytes, new_ids: set[str]) -> bytes:
    """The frame cut down to the events whose ids are in `new_ids` (the ledger's partial duplicates)."""
    decoded = _decoded(body)
    keep = [i for i, event in enumerate(decoded[0]) if event["event_id"] in new_ids]
    return _rebuild(head, decoded, keep)


def frame_with_head(head: dict[str, Any], body: bytes) -> bytes:
    """A frame with a new head and the same compressed body (the loader records its Kafka position so)."""
    return frame_of(_encoder.encode((VERSION, head, body)))
