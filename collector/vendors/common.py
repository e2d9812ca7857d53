"""What the vendor ingestion paths share: limits, errors, transport decoding, ids, the mapping engine.

Apps instrumented with a vendor SDK (Sensors Analytics, Segment) point it at the
collector unchanged (docs/migration.md). Each vendor has a module that turns its
requests into records (`sensors.py`, `segment.py`) and its records into
maidian wire events (docs/protocol.md). This module holds the parts they have in
common, as pure functions and frozen data:

- `VendorLimits`: hard limits applied before and during decoding. Decompression
  is streamed and stops at the cap, so a gzip bomb costs at most the cap.
- `VendorError` and its subclasses: the only exceptions the decoders raise. Each
  carries the HTTP status and error code the route answers with, and a message
  that names the field and what was wrong with it; never the data itself.
  `VendorError` is a `RequestError`, so it sits in the collector's error tree
  (errors.py); the vendor routes answer it in the vendor's own shape.
- `VendorRecord`, `MappedRecord`, `Rejection`, `Mapped`: what a request becomes.
  A record the mapper cannot turn into events is a `Rejection` with reasons
  (maidian `Violation`s with rules `vendor_record` or `vendor_unsupported`), to
  be stored in the quarantine log like any other invalid event: nothing that
  was accepted is dropped.
- `NameMapper`: vendor property and identity names onto the plan's, in this
  order: the plan's per-event map, the plan's vendor-wide map, the vendor's
  built-in translations (`$model` is `$device_model`), then the name itself.
  Vendor presets (names starting with `$`) that none of these translates are
  dropped and reported, because maidian reserves `$` for its own presets.
- `content_id`: an opaque event id from a hash of a record's stable fields, for
  vendors whose SDKs send none.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import zlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl

import msgspec

from maidian.collector import errors
from maidian.collector.errors import RequestError
from maidian.tracking_plan import Violation
from maidian.tracking_plan.envelope import DEFAULT_LIMITS
from maidian.tracking_plan.validator import json_type

__all__ = [
    "DEFAULT_VENDOR_LIMITS",
    "Event",
    "Forbidden",
    "Mapped",
    "MappedRecord",
    "Rejection",
    "TooLarge",
    "Unauthenticated",
    "Undecodable",
    "UnsupportedMediaType",
    "VendorError",
    "VendorLimits",
    "VendorRecord",
    "VendorResponse",
    "check_size",
    "content_id",
    "cors_headers",
    "decode_base64",
    "header",
    "identity_value",
    "inflate",
    "json_body",
    "numbered",
    "parse_form",
    "preflight_response",
    "records_of",
    "reject",
    "rejection_of",
    "retry_after",
    "split_records",
    "wire_event",
]

# -- errors --------------------------------------------------------------------


class VendorError(RequestError):
    """A vendor request the collector cannot take; the sender's fault.

    `status` and `code` are what the route answers (the codes of
    docs/protocol.md); `str(error)` names the field and what was wrong. Each
    kind is also the native error of its status (`errors.Forbidden`, ...), so
    one status has one owner; the vendor routes answer it in the vendor's shape.
    """

    status: int = 400
    code: str = "undecodable"


class Undecodable(VendorError):
    """The body, a parameter or its encoding is malformed."""


class TooLarge(errors.PayloadTooLarge, VendorError):
    """A size limit was exceeded (body, query, base64 text, decompressed data, record count): 413."""


class UnsupportedMediaType(errors.UnsupportedMediaType, VendorError):
    """An encoding the collector does not speak (encrypted Sensors payloads, brotli, ...): 415."""


class Unauthenticated(errors.Unauthenticated, VendorError):
    """No usable credentials (write key) on the request: 401."""


class Forbidden(errors.Forbidden, VendorError):
    """Credentials or a project this collector does not accept: 403."""


# -- limits --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VendorLimits:
    """Hard limits on one vendor request. Each default says where its number comes from."""

    # The native body cap (envelope.Limits); Segment caps a batch at 500 KB and
    # the Sensors SDKs send at most 50-100 records, about 100 KB gzipped.
    max_body_bytes: int = DEFAULT_LIMITS.max_body_bytes
    # Browser image beacons carry the record in the URL; browsers cap URLs near 64 KiB.
    max_query_bytes: int = 64 << 10
    # The base64 text of one parameter, checked before decoding it.
    max_base64_chars: int = DEFAULT_LIMITS.max_body_bytes
    # After base64 and gzip: the native decoded-body cap, 16x the body cap.
    max_decoded_bytes: int = DEFAULT_LIMITS.max_decoded_bytes
    # The native events-per-batch cap; the vendor SDKs send at most 100 per request.
    max_records: int = DEFAULT_LIMITS.max_events
    # One record's JSON; 32 KiB is both the native event cap and Segment's own.
    max_record_bytes: int = DEFAULT_LIMITS.max_event_bytes
    # Form fields in a query string or body; the SDKs send three or four.
    max_form_fields: int = 64


DEFAULT_VENDOR_LIMITS: Final = VendorLimits()

# -- transport decoding ----------------------------------------------------------

_B64_STRIP: Final = str.maketrans({" ": "+", "-": "+", "_": "/", "\n": None, "\r": None, "\t": None})
_GZIP_MAGIC: Final = b"\x1f\x8b"
_BOM: Final = b"\xef\xbb\xbf"
_INFLATE_CHUNK: Final = 64 << 10


def check_size(what: str, size: int, limit: int) -> None:
    """Raise `TooLarge` naming `what` when `size` (bytes) is over `limit`."""
    if size > limit:
        raise TooLarge(f"{what}: {size} bytes, over the limit of {limit}")


def parse_form(text: str, *, where: str, limits: VendorLimits = DEFAULT_VENDOR_LIMITS) -> dict[str, str]:
    """The fields of an `application/x-www-form-urlencoded` string; the first value of a repeated name wins."""
    try:
        pairs = parse_qsl(text, keep_blank_values=True, max_num_fields=limits.max_form_fields)
    except ValueError:
        raise TooLarge(f"{where}: more than {limits.max_form_fields} form fields") from None
    out: dict[str, str] = {}
    for name, value in pairs:
        out.setdefault(name, value)
    return out


def decode_base64(text: str, *, where: str, limits: VendorLimits = DEFAULT_VENDOR_LIMITS) -> bytes:
    """Decode base64 as tolerantly as the vendors' receivers do.

    Accepted: the standard and URL-safe alphabets, missing padding, line breaks,
    and spaces where a sender forgot to percent-encode `+`.
    """
    if len(text) > limits.max_base64_chars:
        raise TooLarge(f"{where}: {len(text)} base64 characters, over the limit of {limits.max_base64_chars}")
    clean = text.translate(_B64_STRIP)  # before any strip(): a leading or trailing space may be a '+'
    clean += "=" * (-len(clean) % 4)
    try:
        return base64.b64decode(clean, validate=True)
    except (binascii.Error, ValueError):
        bad = next((c for c in clean.rstrip("=") if not (c.isascii() and (c.isalnum() or c in "+/"))), None)
        what = (
            f"the character {bad!r} is not base64" if bad is not None else "the length is not a whole number of bytes"
        )
        raise Undecodable(f"{where}: not base64 ({what})") from None


def inflate(data: bytes, *, where: str, limits: VendorLimits = DEFAULT_VENDOR_LIMITS) -> bytes:
    """Gunzip `data`, streamed, stopping as soon as the output passes `max_decoded_bytes`.

    Concatenated gzip members are joined, as `gzip.decompress` does.
    """
    out = bytearray()
    rest = data
    while rest:
        engine = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        chunk = rest
        try:
            while chunk:
                budget = limits.max_decoded_bytes - len(out) + 1
                out += engine.decompress(chunk, min(budget, _INFLATE_CHUNK))
                if len(out) > limits.max_decoded_bytes:
                    raise TooLarge(f"{where}: decompresses to more than {limits.max_decoded_bytes} bytes")
                chunk = engine.unconsumed_tail
        except zlib.error as exc:
            raise Undecodable(f"{where}: not valid gzip ({_zlib_reason(exc)})") from None
        if not engine.eof:
            raise Undecodable(f"{where}: the gzip stream is truncated")
        rest = engine.unused_data
        if rest and not rest.startswith(_GZIP_MAGIC):
            break  # trailing bytes after the last member, as gzip(1) tolerates
    return bytes(out)


def _zlib_reason(exc: zlib.error) -> str:
    text = str(exc)
    return text.split(": ", 1)[-1] if ": " in text else text


def json_body(data: bytes, *, where: str, limits: VendorLimits = DEFAULT_VENDOR_LIMITS) -> bytes:
    """`data` as JSON text: gunzipped when it starts with the gzip magic bytes, checked against the decoded cap."""
    if data.startswith(_GZIP_MAGIC):
        data = inflate(data, where=where, limits=limits)
    else:
        check_size(where, len(data), limits.max_decoded_bytes)
    data = data.lstrip()
    if data.startswith(_BOM):
        data = data[len(_BOM) :].lstrip()
    if not data.startswith((b"{", b"[")):
        shown = f"0x{data[:1].hex()}" if data else "nothing"
        raise Undecodable(f"{where}: expected JSON (an object or an array), the data starts with {shown}")
    return data


# -- records ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VendorRecord:
    """One record as the vendor's SDK sent it, decoded from JSON.

    `index` is its position in the request (counting from 0). `value` is None
    when the record could not be decoded on its own; `problem` then says why,
    and `raw` holds its JSON text so that it can be kept in the quarantine log.
    """

    index: int
    value: Any
    size_bytes: int
    problem: str | None = None
    raw: bytes = b""


_LIST: Final = msgspec.json.Decoder(list[msgspec.Raw])
_ANY: Final = msgspec.json.Decoder()


def split_records(text: bytes, *, where: str, limits: VendorLimits = DEFAULT_VENDOR_LIMITS) -> list[VendorRecord]:
    """Split JSON text (one object, or an array of them) into records, each measured and decoded on its own.

    A malformed document is an `Undecodable` error for the whole request; a
    record over `max_record_bytes` or not an object is returned with a
    `problem`, so the rest of the request still counts.
    """
    body = text.lstrip()
    try:
        raws: list[msgspec.Raw] = _LIST.decode(body) if body.startswith(b"[") else [msgspec.Raw(body)]
    except msgspec.DecodeError as exc:
        raise Undecodable(f"{where}: invalid JSON ({_json_reason(exc, body)})") from None
    except UnicodeDecodeError as exc:
        raise Undecodable(f"{where}: invalid JSON (not UTF-8 at byte {exc.start})") from None
    except RecursionError:
        raise Undecodable(f"{where}: invalid JSON (nested too deeply)") from None
    return records_of(raws, where=where, limits=limits)


def records_of(
    raws: Sequence[msgspec.Raw], *, where: str, limits: VendorLimits = DEFAULT_VENDOR_LIMITS
) -> list[VendorRecord]:
    """Decode raw JSON values (already known to be well-formed) into records, checking count and sizes."""
    if len(raws) > limits.max_records:
        raise TooLarge(f"{where}: {len(raws)} records, over the limit of {limits.max_records}")
    out: list[VendorRecord] = []
    for i, raw in enumerate(raws):
        size = len(raw)
        if size > limits.max_record_bytes:
            problem = f"{size} bytes, over the limit of {limits.max_record_bytes}"
            out.append(VendorRecord(i, None, size, problem, bytes(raw)))
            continue
        try:
            value = _ANY.decode(raw)
        except msgspec.DecodeError as exc:
            raise Undecodable(f"{where}: invalid JSON in record {i} ({_json_reason(exc, bytes(raw))})") from None
        except UnicodeDecodeError as exc:
            raise Undecodable(f"{where}: invalid JSON in record {i} (not UTF-8 at byte {exc.start})") from None
        except RecursionError:
            out.append(VendorRecord(i, None, size, "nested too deeply", bytes(raw)))
            continue
        if not isinstance(value, dict):
            out.append(VendorRecord(i, None, size, f"expected an object, got {json_type(value)}", bytes(raw)))
            continue
        out.append(VendorRecord(i, value, size))
    return out


def _json_reason(exc: msgspec.DecodeError, text: bytes) -> str:
    """Why `text` is not JSON, in our words where we can tell (the decoder's own wording changes by release)."""
    try:
        text.decode("utf-8")
    except UnicodeDecodeError as bad:
        return f"not UTF-8 at byte {bad.start}"
    return str(exc).removeprefix("JSON is malformed: ")


# -- results ---------------------------------------------------------------------

Event = dict[str, Any]


@dataclass(frozen=True, slots=True)
class MappedRecord:
    """A vendor record turned into maidian wire events (usually one; see the vendor modules).

    `sent_at` is the sender's clock when it sent the record (epoch ms), for
    skew correction, or None when the vendor sends none. `dropped` names the
    vendor fields that had no place in the plan (`properties.$is_first_day`,
    `context.userAgent`), so the route can count them.
    """

    index: int
    events: tuple[Event, ...]
    sent_at: int | None = None
    dropped: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Rejection:
    """A vendor record that cannot become a maidian event, with the reasons.

    The route stores it in the quarantine log with `reasons` (`quarantined`),
    exactly as it stores an invalid native event. Rules: `vendor_record` (the
    record is malformed: not an object, too large, no valid time, unknown
    type) and `vendor_unsupported` (well-formed, but maidian has no
    equivalent). `record` is the decoded record, or None when it did not
    decode on its own and `raw` holds its JSON text. `event_id` is the id the
    record would have had (or a hash of its text), so a resent request
    quarantines it once.
    """

    index: int
    reasons: tuple[Violation, ...]
    record: Any = None
    size_bytes: int = 0
    event_id: str | None = None
    raw: bytes = b""

    def quarantined(self, vendor: str) -> dict[str, Any]:
        """What the quarantine log keeps: the vendor, the record as sent, and the id and name it is indexed by.

        `type` and `event` repeat the record's own, so `maidian quarantine list`
        names it (`SubmitOrder`, `item_set`); the record itself is kept whole
        under `record`, or as its JSON text under `record_json` when it did not
        decode on its own.
        """
        out: dict[str, Any] = {"vendor": vendor}
        if self.event_id is not None:
            out["event_id"] = self.event_id
        if isinstance(self.record, dict):
            for name in ("type", "event"):
                if isinstance(self.record.get(name), str):
                    out[name] = self.record[name]
            out["record"] = self.record
        else:
            out["record_json"] = self.raw.decode("utf-8", "replace")
        return out


@dataclass(frozen=True, slots=True)
class Mapped:
    """A whole vendor request, mapped: one `MappedRecord` or `Rejection` per record, in request order."""

    records: tuple[MappedRecord | Rejection, ...]

    @property
    def events(self) -> list[Event]:
        """Every maidian event, in request order."""
        return [e for r in self.records if isinstance(r, MappedRecord) for e in r.events]

    @property
    def rejections(self) -> list[Rejection]:
        return [r for r in self.records if isinstance(r, Rejection)]

    def dropped(self) -> Counter[str]:
        """How often each vendor field was dropped in this request."""
        return Counter(name for r in self.records if isinstance(r, MappedRecord) for name in r.dropped)

    def by_sent_at(self) -> list[tuple[int | None, list[Event]]]:
        """The events grouped into runs that share a `sent_at`, in request order (one run for most requests)."""
        runs: list[tuple[int | None, list[Event]]] = []
        for r in self.records:
            if not isinstance(r, MappedRecord) or not r.events:
                continue
            if runs and runs[-1][0] == r.sent_at:
                runs[-1][1].extend(r.events)
            else:
                runs.append((r.sent_at, list(r.events)))
        return runs


def reject(
    index: int, rule: str, path: str, message: str, *, record: Any = None, size: int = 0, event_id: str | None = None
) -> Rejection:
    """A `Rejection` with one reason."""
    return Rejection(index, (Violation(rule, path, message),), record, size, event_id)


def rejection_of(record: VendorRecord, prefix: str, seen: Counter[str] | None = None) -> Rejection | None:
    """The rejection for a record that could not be decoded on its own, if it is one.

    Its id is `prefix` and a hash of its JSON text, numbered within the request
    like other content ids.
    """
    if record.problem is None:
        return None
    message = f"record {record.index}: {record.problem}"
    event_id = numbered(prefix + hashlib.sha256(record.raw).hexdigest()[:32], seen)
    reason = (Violation("vendor_record", "", message),)
    return Rejection(record.index, reason, None, record.size_bytes, event_id, record.raw)


def wire_event(
    kind: str, name: str | None, *, event_id: str, time_ms: int, identities: dict[str, str], properties: dict[str, Any]
) -> Event:
    """A maidian wire event (docs/protocol.md): exactly the envelope's fields, `event` only for track events."""
    out: Event = {"type": kind}
    if name is not None:
        out["event"] = name
    out["event_id"] = event_id
    out["time"] = time_ms
    out["identities"] = identities
    out["properties"] = properties
    return out


# -- ids -------------------------------------------------------------------------

_ID_ENCODER: Final = msgspec.json.Encoder(order="sorted")


def content_id(prefix: str, parts: Any) -> str:
    """`prefix` and 128 bits of SHA-256 over a canonical JSON encoding of `parts` (keys sorted)."""
    return prefix + hashlib.sha256(_ID_ENCODER.encode(parts)).hexdigest()[:32]


def numbered(base: str, seen: Counter[str] | None) -> str:
    """Number repeats of a content id within one request: `base`, then `base.1`, `base.2`, ...

    Two identical records in one request stay two events, and a resent
    request numbers them the same way, so its ids repeat exactly.
    """
    if seen is None:
        return base
    n = seen[base]
    seen[base] += 1
    return base if n == 0 else f"{base}.{n}"


def identity_value(value: object) -> str | None:
    """An identity value as maidian carries it: a non-empty string (integers are spelled out)."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


# -- the mapping engine ------------------------------------------------------------


# -- responses ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VendorResponse:
    """An HTTP answer in the shape a vendor SDK expects; the route copies it onto its response."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain"
    headers: tuple[tuple[str, str], ...] = ()


def cors_headers(request_headers: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """CORS headers for a browser SDK's request: without them the browser hides the answer and the SDK retries.

    Ingestion endpoints only take data in, so any origin may send; the origin
    is echoed (not `*`) so that SDKs sending with credentials are answered too.
    """
    origin = header(request_headers, "origin")
    if not origin:
        return ()
    return (
        ("Access-Control-Allow-Origin", origin),
        ("Access-Control-Allow-Credentials", "true"),
        ("Vary", "Origin"),
    )


def retry_after(error: RequestError) -> tuple[tuple[str, str], ...]:
    """The `Retry-After` header (whole seconds, at least 1) for an error that carries a wait."""
    if error.retry_after_s is None:
        return ()
    return (("Retry-After", str(max(1, math.ceil(error.retry_after_s)))),)


def preflight_response(request_headers: Mapping[str, str]) -> VendorResponse:
    """The answer to a CORS preflight (`OPTIONS`) on a vendor route."""
    asked = header(request_headers, "access-control-request-headers")
    headers = (
        *cors_headers(request_headers),
        ("Access-Control-Allow-Methods", "GET, POST, OPTIONS"),
        ("Access-Control-Allow-Headers", asked or "Content-Type, Authorization"),
        ("Access-Control-Max-Age", "86400"),
    )
    return VendorResponse(204, headers=headers)


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A request header by case-insensitive name (plain dicts in tests, CIMultiDict in the app)."""
    name = name.lower()
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None
