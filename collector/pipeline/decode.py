"""Limits and decoding: from a request body to a batch of events, within hard limits.

Every limit is measured after decompression (`envelope.Limits`; defaults in
docs/protocol.md), and decompression is streamed and capped, so a small body
that inflates to gigabytes costs at most `max_decoded_bytes` of memory and the
time to inflate that much before it is refused with 413.

Two levels, so one bad event never sinks its batch:
- the batch (`decode_batch`): the body must decode as a batch, with at most
  `max_events` events; otherwise the request fails (400 or 413). The events
  are split out as raw encoded bytes (`msgspec.Raw`, no copy, no parse), which
  gives each event's encoded size for free.
- each event (`decode_event`): an event over `max_event_bytes`, one that does
  not decode (invalid UTF-8, truncated), or one over the property, nesting or
  string limits, or carrying a value JSON cannot hold (NaN, infinities, ext
  types) or the log cannot store (an integer beyond 64 bits, which JSON
  allows and msgpack does not), becomes a `Violation` and is quarantined;
  the others go on.

The values pass decodes into a type that only admits JSON values (string
keys, finite floats, no binary or extension types) nested no deeper than the
limit, so msgspec's C decoder enforces those limits as it builds the values
(`Batch.json_checked`). What it cannot express, the property count and the
UTF-8 size of strings, is checked per event only when the event's encoded
size allows a violation (`check_decoded_limits`). A batch that does not fit
that type is decoded again without it and walked in Python as before, which
finds and names the offending value.
"""

from __future__ import annotations

import contextlib
import functools
import io
import sys
import zlib
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal

import msgspec
import zstandard

from maidian.collector.errors import BadRequest, PayloadTooLarge, RequestError, UnsupportedMediaType
from maidian.collector.pipeline.keys import _repeated_keys
from maidian.collector.pipeline.limits import INT_MAX, INT_MIN, check_limits
from maidian.collector.pipeline.scan import map_value_at
from maidian.tracking_plan import Violation
from maidian.tracking_plan.envelope import CONTENT_TYPE_JSON, CONTENT_TYPE_MSGPACK, DROP_REASONS, Limits

__all__ = [
    "Batch",
    "Format",
    "decode_batch",
    "decode_event",
    "decoded_batch",
    "decompress",
    "event_too_large",
    "inflates_large",
    "kept_bytes",
    "read_dropped",
    "read_media_type",
]

Format = Literal["msgpack", "json"]

_TYPES: Final[dict[str, Format]] = {
    CONTENT_TYPE_MSGPACK: "msgpack",
    "application/x-msgpack": "msgpack",
    "application/vnd.msgpack": "msgpack",
    CONTENT_TYPE_JSON: "json",
}
ENCODINGS: Final = ("zstd", "gzip", "identity")
# zstd's own default maximum window (8 MiB, level 19 uses at most that): a frame
# asking for more memory than this is refused before any output is produced.
_MAX_WINDOW_BYTES: Final = 1 << 23
# Output read per call when streaming: each call allocates this much up front.
_CHUNK: Final = 256 << 10


# msgspec bounds stop at int64: the checked decoding takes int64, and an integer past it
# (up to INT_MAX is still storable) sends the batch to the walk, which applies the real range.
_Int = Annotated[int, msgspec.Meta(ge=INT_MIN, le=2**63 - 1)]


class _Batch(msgspec.Struct, forbid_unknown_fields=False):
    events: list[msgspec.Raw]
    sent_at: int | None = None  # within INT_MIN..INT_MAX (`decode_batch`)
    lib: str | None = None
    lib_version: str | None = None
    plan_version: str | None = None
    # Kept encoded: read by `read_dropped` only when it is small; a malformed report is ignored, never fatal.
    dropped: msgspec.Raw = msgspec.Raw()  # empty: no report


class _Envelope(msgspec.Struct, forbid_unknown_fields=False):
    """The batch with its events left whole: what counts them when `_Batch` is refused."""

    events: msgspec.Raw


class _Values(msgspec.Struct, forbid_unknown_fields=False):
    events: list[Any]


@dataclass(frozen=True, slots=True)
class Batch:
    """A decoded batch: its metadata and its events, still encoded."""

    events: list[msgspec.Raw]
    format: Format
    sent_at: int | None = None
    lib: str | None = None
    lib_version: str | None = None
    plan_version: str | None = None
    decoded_bytes: int = 0
    # The events decoded in one pass, when every one of them decodes (the usual case);
    # None sends each event through `decode_event` on its own.
    values: list[Any] | None = None
    # True when `values` were decoded as JSON values within the nesting limit (every
    # float finite, every key a string): `check_decoded_limits` then suffices for them.
    json_checked: bool = False
    # The sender's loss report (docs/protocol.md, "A batch"): {"source": str, "counts": {reason: n}}.
    dropped: dict[str, Any] | None = None
    # Events refused while decoding (over the size limit, undecodable, a map with a repeated key), by index;
    # their `values` entries are None.
    problems: dict[int, Violation] | None = None


def read_media_type(content_type: str | None, content_encoding: str | None) -> tuple[Format, str]:
    """The body's format and its single content coding, or 415/400 naming what is wrong."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    fmt = _TYPES.get(media)
    if fmt is None:
        shown = media or "no Content-Type"
        raise UnsupportedMediaType(f"{shown!r} is not supported; send {CONTENT_TYPE_MSGPACK} or {CONTENT_TYPE_JSON}")
    codings = [c.strip().lower() for c in (content_encoding or "").split(",") if c.strip()]
    if len(codings) > 1:
        raise BadRequest(
            "only one Content-Encoding is accepted (zstd or gzip), not a chain of them", code="bad_encoding"
        )
    coding = codings[0] if codings else "identity"
    if coding not in ENCODINGS:
        raise UnsupportedMediaType(f"Content-Encoding {coding!r} is not supported; send zstd, gzip or none")
    return fmt, coding


def decompress(body: bytes, coding: str, limit: int, *, own_context: bool = False) -> bytes:
    """Inflate `body`, refusing (413) as soon as the output would pass `limit` bytes.

    `own_context`: use a zstd context of its own, to inflate on another thread
    (`inflates_large`) while the event loop's thread uses the shared one.
    """
    if coding == "identity":
        if len(body) > limit:
            raise PayloadTooLarge(f"the body is over {limit} bytes")
        return body
    if coding == "zstd":
        return _unzstd(body, limit, _new_dctx() if own_context else _dctx)
    return _gunzip(body, limit)


# Output past which inflating is worth a hop to another thread (zlib and zstd release the GIL):
# a 16 MiB body takes 10-20 ms to inflate, an SDK batch of 500 events (about 160 KiB) under 0.3 ms.
_LARGE_OUTPUT_BYTES: Final = 1 << 20


def inflates_large(body: bytes, coding: str) -> bool:
    """Whether `body` may inflate to over 1 MiB: worth inflating off the event loop."""
    if coding == "identity":
        return False
    if coding == "zstd":
        try:
            size = zstandard.frame_content_size(body)
        except zstandard.ZstdError:
            return True
        return size < 0 or size > _LARGE_OUTPUT_BYTES
    # gzip states the member's size modulo 2**32 in its last four bytes; several members are rare.
    return len(body) < 4 or int.from_bytes(body[-4:], "little") > _LARGE_OUTPUT_BYTES


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the body inflates to more than {limit} bytes; send smaller batches")


# One decompression context for the process: creating one costs about 7 µs, a
# fifth of decoding a 50-event batch. Only the event loop's thread uses it.
def _new_dctx() -> zstandard.ZstdDecompressor:
    return zstandard.ZstdDecompressor(max_window_size=_MAX_WINDOW_BYTES)


_dctx = _new_dctx()


def _unzstd(body: bytes, limit: int, dctx: zstandard.ZstdDecompressor) -> bytes:
    try:
        size = zstandard.frame_content_size(body)
    except zstandard.ZstdError:
        size = -1  # not a zstd frame: the streaming path says why
    if 0 <= size <= limit:
        # One frame that declares its size (what the SDK sends): decompress in one call.
        # zstd checks the output against the declared size; extra frames are refused here
        # and go through the streaming path, which caps them as a whole.
        try:
            return dctx.decompress(body, allow_extra_data=False)
        except zstandard.ZstdError:
            pass
    out = bytearray()
    try:
        # read_across_frames: a body of several frames is one stream, capped as a whole.
        with dctx.stream_reader(io.BytesIO(body), read_across_frames=True) as reader:
            while True:
                chunk = reader.read(min(_CHUNK, limit + 1 - len(out)))
                if not chunk:
                    break
                out += chunk
                if len(out) > limit:
                    raise _too_large(limit)
    except zstandard.ZstdError as exc:
        raise BadRequest(f"the zstd body cannot be decompressed: {exc}", code="undecodable") from None
    return bytes(out)


def _gunzip(body: bytes, limit: int) -> bytes:
    out = bytearray()
    data = body
    try:
        while data:
            obj = zlib.decompressobj(16 + zlib.MAX_WBITS)
            # Inflate in _CHUNK steps, as for zstd: one call asked for the whole cap at once
            # allocated it up front and held the event loop about twice as long (T14).
            while not obj.eof:
                chunk = obj.decompress(data, min(_CHUNK, limit + 1 - len(out)))
                out += chunk
                if len(out) > limit:
                    raise _too_large(limit)
                rest = obj.unconsumed_tail
                if not chunk and len(rest) == len(data):
                    break  # the input is used up (or makes no progress): the member is unfinished
                data = rest
            if not obj.eof:
                raise BadRequest("the gzip body is truncated", code="undecodable")
            data = obj.unused_data  # another gzip member follows
    except zlib.error as exc:
        raise BadRequest(f"the gzip body cannot be decompressed: {exc}", code="undecodable") from None
    return bytes(out)


_json_envelope = msgspec.json.Decoder(_Envelope)
_msgpack_values = msgspec.msgpack.Decoder(_Values)
_json_values = msgspec.json.Decoder(_Values)
_msgpack_event = msgspec.msgpack.Decoder()
_json_event = msgspec.json.Decoder()

# A float that is a JSON number: NaN and the infinities fail both bounds.
_Finite = Annotated[float, msgspec.Meta(ge=-sys.float_info.max, le=sys.float_info.max)]


def json_value_type(containers: int) -> Any:
    """The type of a JSON value holding at most `containers` levels of arrays and objects.

    `json_value_type(0)` is a scalar (null, boolean, integer within 64 bits,
    finite float, string); each level more allows an array or a string-keyed object of the
    level below.
    """
    inner: Any = None | bool | _Int | _Finite | str
    for _ in range(containers):
        inner = None | bool | _Int | _Finite | str | list[inner] | dict[str, inner]
    return inner


@functools.lru_cache(maxsize=8)
def _checked_values(max_depth: int) -> tuple[msgspec.msgpack.Decoder[Any], msgspec.json.Decoder[Any]]:
    """Decoders of a batch's events as objects of JSON values nested within `max_depth`.

    An event's values sit at depth 0 (the properties object itself) and the
    containers inside `properties` count from 1 (`check_limits`), so a field of
    the event may hold `max_depth + 1` levels of containers.
    """
    value = json_value_type(max_depth + 1)
    events: Any = list[dict[str, value]]  # type: ignore[valid-type]
    values = msgspec.defstruct("_CheckedValues", [("events", events)], forbid_unknown_fields=False)
    return msgspec.msgpack.Decoder(values), msgspec.json.Decoder(values)


@functools.lru_cache(maxsize=8)
def _batch_decoders(max_events: int) -> tuple[msgspec.msgpack.Decoder[Any], msgspec.json.Decoder[Any]]:
    """Decoders of the batch envelope that refuse more than `max_events` events.

    msgpack states an array's length in its header, so a batch claiming
    millions of events is refused before one is built; JSON is bounded before
    decoding (`_json_values_bound`).
    """
    events: Any = Annotated[list[msgspec.Raw], msgspec.Meta(max_length=max_events)]
    batch = msgspec.defstruct(
        "_BatchOf",
        [("events", events)],
        bases=(_Batch,),
        forbid_unknown_fields=False,
    )
    return msgspec.msgpack.Decoder(batch), msgspec.json.Decoder(batch)


def _json_values_bound(data: bytes) -> int:
    """At most how many values and keys a JSON text holds: each but the first follows `,` `:` `[` or `{`."""
    return data.count(b",") + data.count(b":") + data.count(b"[") + data.count(b"{") + 1


def _envelope_error(data: bytes, fmt: Format, limits: Limits, error: msgspec.ValidationError) -> RequestError:
    """413 when the batch has too many events, else 400 with msgspec's account of what is wrong."""
    count = 0
    if fmt == "msgpack":
        # The count is in the array's header: found without walking the events (a walk of 16 million is slow).
        at = map_value_at(data, "events", _FIND_EVENTS_VALUES)
        if at is not None:
            count = _msgpack_array_length(data[at : at + 5])
    else:  # bounded: a JSON body that could hold more than max_values values was refused before decoding
        with contextlib.suppress(msgspec.DecodeError, RecursionError, ValueError):
            count = len(_json_raws.decode(_json_envelope.decode(data).events))
    if count > limits.max_events:
        return PayloadTooLarge(f"the batch has {count} events; at most {limits.max_events} are accepted")
    return BadRequest(f"the body is not a batch: {error}")


# Values of the other batch fields skipped while looking for `events` in a refused body.
_FIND_EVENTS_VALUES: Final = 1 << 16


def _msgpack_array_length(head: bytes) -> int:
    """The element count an encoded msgpack array's header states (0 when it is no array)."""
    first = head[0] if head else 0
    if 0x90 <= first <= 0x9F:
        return first & 0x0F
    if first in (0xDC, 0xDD):
        return int.from_bytes(head[1 : 3 if first == 0xDC else 5], "big")
    return 0


def decode_batch(data: bytes, fmt: Format, limits: Limits) -> Batch:
    """Split a decompressed body into a batch of events, decoded within the limits (400/413 when it is not one).

    The limits apply while decoding, never after: the event count from the
    array's header (msgpack) or a bound counted in C (JSON), each event's size
    before it is decoded, nesting in the decoder's type, and the values of the
    whole batch (`Limits.max_values`) for bodies large enough to hold more
    (`_one_by_one`). A map with a repeated key makes its event a problem
    (`_repeated_keys`), quarantined with the rule `duplicate_key`.
    """
    if fmt == "json" and len(data) > limits.max_values and _json_values_bound(data) > limits.max_values:
        raise _too_many_values(limits)
    decoders = _batch_decoders(limits.max_events)
    try:
        wire = decoders[0 if fmt == "msgpack" else 1].decode(data)
    except msgspec.ValidationError as exc:
        raise _envelope_error(data, fmt, limits, exc) from None
    except (msgspec.DecodeError, RecursionError, ValueError) as exc:
        raise BadRequest(f"the body is not valid {fmt}: {exc}", code="undecodable") from None
    if wire.sent_at is not None and not INT_MIN <= wire.sent_at <= INT_MAX:
        raise BadRequest(f"the body is not a batch: `sent_at` is outside {INT_MIN} to {INT_MAX}")
    events: list[msgspec.Raw] = wire.events
    problems: dict[int, Violation] = {}
    oversize = bool(events) and max(map(len, events)) > limits.max_event_bytes
    values: list[Any] | None
    if oversize or (fmt == "msgpack" and len(data) > limits.max_values):
        values = _one_by_one(events, fmt, limits, problems)
        json_checked = False
    else:
        # One pass over the whole batch costs less than one decode call per event; with the
        # limits in the type it costs the same as without, and spares a walk over the values.
        checked = _checked_values(limits.max_depth)
        try:
            values = checked[0 if fmt == "msgpack" else 1].decode(data).events
            json_checked = True
        except (msgspec.DecodeError, RecursionError, ValueError):
            json_checked = False
            try:
                values = (_msgpack_values if fmt == "msgpack" else _json_values).decode(data).events
            except (msgspec.DecodeError, RecursionError, ValueError):
                values = None
    if values is not None:
        _repeated_keys(values, events, fmt, limits, problems)
    return Batch(
        events=events,
        format=fmt,
        sent_at=wire.sent_at,
        lib=wire.lib,
        lib_version=wire.lib_version,
        plan_version=wire.plan_version,
        decoded_bytes=len(data),
        values=values,
        json_checked=json_checked,
        dropped=_dropped(wire.dropped, fmt),
        problems=problems or None,
    )


def _too_many_values(limits: Limits) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the batch holds more than {limits.max_values} values (objects, arrays, keys and scalars); "
        "send smaller batches"
    )


def _one_by_one(events: list[msgspec.Raw], fmt: Format, limits: Limits, problems: dict[int, Violation]) -> list[Any]:
    """Each event decoded on its own, within its size, and the batch's values counted as they are built.

    For a body that could hold more than `max_values` values, or with an
    event over `max_event_bytes` (never decoded): an event costs at most its
    own size's worth of memory before it is counted, and the batch is refused
    (413) as soon as its values pass the limit.
    """
    values: list[Any] = []
    # A msgpack value takes at least one byte: while the events decoded so far are no more bytes than
    # max_values, they cannot hold more values, and counting starts only past that.
    bound = 0
    counted = -1
    decode = (_msgpack_event if fmt == "msgpack" else _json_event).decode
    for index, raw in enumerate(events):
        if len(raw) > limits.max_event_bytes:
            problems[index] = event_too_large(len(raw), limits)
            values.append(None)
            continue
        try:
            event = decode(raw)
        except (msgspec.DecodeError, RecursionError, ValueError) as exc:
            problems[index] = _undecodable(exc)
            values.append(None)
            continue
        values.append(event)  # the judge checks its limits (`check_limits`): the batch is not `json_checked`
        if counted < 0:
            bound += len(raw)
            if bound <= limits.max_values:
                continue
            counted = sum(1 + _count_values(v) for v in values if v is not None)
        else:
            counted += 1 + _count_values(event)
        if counted > limits.max_values:
            raise _too_many_values(limits)
    return values


def _count_values(node: Any) -> int:
    """The values and keys inside a decoded value (its containers' entries, nested)."""
    t = type(node)
    if t is dict:
        n = 2 * len(node)
        items: Any = node.values()
    elif t is list:
        n = len(node)
        items = node
    else:
        return 0
    for v in items:
        if v and (type(v) is dict or type(v) is list):
            n += _count_values(v)
    return n


# A loss report larger than this is no report: the largest valid one (16 reasons) is under 1 KiB.
_MAX_DROPPED_BYTES: Final = 4096
_msgpack_any = msgspec.msgpack.Decoder()
_json_any = msgspec.json.Decoder()
_json_raws = msgspec.json.Decoder(list[msgspec.Raw])


def _dropped(raw: msgspec.Raw, fmt: Format) -> dict[str, Any] | None:
    if not len(raw) or len(raw) > _MAX_DROPPED_BYTES:
        return None
    try:
        value = (_msgpack_any if fmt == "msgpack" else _json_any).decode(raw)
    except (msgspec.DecodeError, RecursionError, ValueError):
        return None
    return read_dropped(value)


_msgpack_encoder = msgspec.msgpack.Encoder()
_json_encoder = msgspec.json.Encoder()


def decoded_batch(
    events: list[dict[str, Any]], *, sent_at: int | None, lib: str | None = None, lib_version: str | None = None
) -> Batch:
    """A batch of events that are already decoded (vendor traffic mapped onto the envelope).

    Each event is encoded once, as msgpack, the form the raw log stores; its
    encoded size is what the per-event limits measure, as for native events.
    The values must come from a JSON or msgpack decoder (finite floats, valid
    strings), which is what makes them encodable. JSON admits integers of any
    size and msgpack only 64 bits: a batch holding a wider one is encoded as
    JSON instead, the judge quarantines that event (`check_limits`) and the
    quarantine keeps it exactly as it came.
    """
    fmt: Format = "msgpack"
    try:
        raws = [msgspec.Raw(_msgpack_encoder.encode(e)) for e in events]
    except OverflowError:
        fmt = "json"
        raws = [msgspec.Raw(_json_encoder.encode(e)) for e in events]
    return Batch(
        events=raws,
        format=fmt,
        sent_at=sent_at,
        lib=lib,
        lib_version=lib_version,
        values=events,
    )


# A loss report is the sender's telemetry: bounded so that it cannot grow the frame head, the catalog or
# the series of /metrics.
_MAX_DROP_REASONS: Final = 16
_MAX_REASON_CHARS: Final = 32
_MAX_SOURCE_CHARS: Final = 128
# What one client instance can have dropped: 100,000 events a day (a full queue refilled every few
# minutes) for the 7 days a spool keeps them is 700,000; a report past this is no account of a device.
MAX_DROP_COUNT: Final = 10_000_000
# A reason the collector does not know is counted under this one, so a newer SDK's losses still show.
OTHER_REASON: Final = "other"


def read_dropped(value: Any) -> dict[str, Any] | None:
    """The batch's `dropped` report in its one accepted shape, or None (ignored) for anything else.

    Reasons are the protocol's (`envelope.DROP_REASONS`); any other is added
    to `other`. A report with a count past `MAX_DROP_COUNT` is implausible and
    ignored whole. A malformed report never fails the batch: the events
    matter more than the sender's account of the ones it lost.
    """
    if type(value) is not dict:
        return None
    source, counts = value.get("source"), value.get("counts")
    if type(source) is not str or not 0 < len(source) <= _MAX_SOURCE_CHARS or type(counts) is not dict:
        return None
    if len(counts) > _MAX_DROP_REASONS:
        return None
    clean: dict[str, int] = {}
    for reason, n in counts.items():
        if type(reason) is not str or not 0 < len(reason) <= _MAX_REASON_CHARS:
            return None
        if type(n) is not int or not 0 <= n <= MAX_DROP_COUNT:
            return None
        known = reason if reason in DROP_REASONS else OTHER_REASON
        clean[known] = clean.get(known, 0) + n
    return {"source": source, "counts": clean} if clean else None


def kept_bytes(raw: msgspec.Raw, problem: Violation, limits: Limits) -> msgspec.Raw:
    """What the quarantine keeps of a refused event: its bytes, cut at `max_body_bytes` when it is oversize.

    An event over `max_event_bytes` is never decoded but kept as sent, so
    readers still find its id; past the wire cap (1 MiB: only a body that
    inflates can hold such an event) keeping all of it, up to the 16 MiB a
    body may inflate to, would let each request write that much to the
    quarantine and copy it thrice in memory on the way.
    """
    if problem.rule != "too_large" or len(raw) <= limits.max_body_bytes:
        return raw
    return msgspec.Raw(bytes(memoryview(raw)[: limits.max_body_bytes]))


def _undecodable(exc: Exception) -> Violation:
    return Violation("undecodable", "", f"the event cannot be decoded: {exc}")


def event_too_large(size: int, limits: Limits) -> Violation:
    return Violation(
        "too_large", "", f"the event is {size} bytes encoded; at most {limits.max_event_bytes} are accepted"
    )


def decode_event(
    raw: msgspec.Raw, fmt: Format, limits: Limits, *, repeated_keys: bool = True
) -> tuple[Any, Violation | None]:
    """One event decoded and checked against the size limits and for repeated keys, or the violation that stops it.

    With `repeated_keys=False` the caller checks them (`decode_batch`).
    """
    size = len(raw)
    if size > limits.max_event_bytes:
        return None, event_too_large(size, limits)
    try:
        event = (_msgpack_event if fmt == "msgpack" else _json_event).decode(raw)
    except (msgspec.DecodeError, RecursionError, ValueError) as exc:
        return None, _undecodable(exc)
    if repeated_keys:
        problems: dict[int, Violation] = {}
        _repeated_keys([event], [raw], fmt, limits, problems)
        if problems:
            return event, problems[0]
    return event, check_limits(event, limits, size)
