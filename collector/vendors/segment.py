"""Segment's HTTP tracking API: decode what its libraries send and map it onto maidian events.

A service keeps its Segment library and points the library's host at the
collector's `/segment` prefix (docs/migration.md): maidian's own `POST /v1/batch`
speaks a different body and authentication, so Segment's paths live under a
prefix of their own instead of being told apart by sniffing each request.

What the libraries send, and what this module relies on:

- `POST <host>/v1/batch` with `{"batch": [message, ...], "sentAt": ISO 8601,
  "writeKey": ...}` (server libraries such as analytics-python); browser
  analytics.js posts single messages to `/v1/t`, `/v1/p`, `/v1/i`, `/v1/a`,
  `/v1/g`, `/v1/s` and batches to `/v1/b`, with the write key in the body and
  `Content-Type: text/plain`; the mobile libraries post batches to `/v1/b`;
  `/v1/import` is an old name for the batch endpoint. The long names
  (`/v1/track`, `/v1/identify`, ...) take one message each.
- The write key is the user name of HTTP Basic auth (`writeKey:` in base64), or
  `writeKey` in the body.
- `Content-Encoding: gzip` when the library is told to compress.
- A message has `type`, `messageId` (a UUID the library mints once and keeps on
  retries), `userId` and/or `anonymousId`, `timestamp` (or `originalTimestamp`,
  when it happened) and `sentAt` (per batch), `context` (library, app, device,
  os, screen, network, page, campaign, ip, locale, timezone, userAgent, ...)
  and per type `event` + `properties` (track), `name` + `properties` (page,
  screen), `traits` (identify), `groupId` + `traits` (group), `previousId`
  (alias).
- Success is any 2xx; the libraries ignore its body (we send
  `{"success": true}`). Errors carry `{"code": ..., "message": ...}`, which analytics-python reads;
  it retries 408, 410, 429, 460 and 5xx other than 501 and 505, and drops the
  batch on any other answer.

Mapping rules (documented for users in docs/migration.md):

- `track` becomes a track event named by the plan's `mappings.segment.events`,
  else by the vendor's name. `page` and `screen` are the vendor events `$page`
  and `$screen`, `group` is the vendor event `$group` with `groupId` among its
  properties: the plan maps them onto planned events or they follow its
  unknown-event policy. `identify` becomes `profile_set` with the traits, plus a
  `bind` when it carries both a user id and an anonymous id. `alias` becomes a
  `bind` of `previousId` (an anonymous id) and `userId`.
- `userId` is the login id and `anonymousId` the anonymous id, unless the plan
  maps them (`mappings.segment.identities`).
- The event id is `segment:m:<messageId>`; messages without one get a hash of
  their stable fields, numbered within the request.
- `context` becomes maidian presets and `utm_*` properties (those only when the
  plan declares them); the rest of it is dropped and reported.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import msgspec

from maidian.collector.errors import RequestError
from maidian.collector.vendors.common import (
    DEFAULT_VENDOR_LIMITS,
    Mapped,
    MappedRecord,
    Rejection,
    Unauthenticated,
    Undecodable,
    UnsupportedMediaType,
    VendorLimits,
    VendorRecord,
    VendorResponse,
    check_size,
    content_id,
    cors_headers,
    header,
    json_body,
    numbered,
    records_of,
    reject,
    rejection_of,
    retry_after,
    split_records,
    wire_event,
)
from maidian.collector.vendors.names import NameMapper, Translation
from maidian.tracking_plan import Plan

__all__ = [
    "ENDPOINTS",
    "PREFIX",
    "SegmentMapper",
    "SegmentRequest",
    "decode_request",
    "endpoint_of",
    "error_response",
    "success_response",
    "write_key_of",
]

# The path prefix the collector serves Segment's API under: libraries are
# configured with `<collector>/segment` (or `<collector>/segment/v1` where the
# library's host setting includes the version).
PREFIX: Final = "/segment"

# The last path segment of each Segment endpoint -> the message type it takes
# (`batch` for a list of messages of any type).
ENDPOINTS: Final[Mapping[str, str]] = {
    "batch": "batch",
    "b": "batch",
    "import": "batch",
    "track": "track",
    "t": "track",
    "identify": "identify",
    "i": "identify",
    "alias": "alias",
    "a": "alias",
    "page": "page",
    "p": "page",
    "screen": "screen",
    "s": "screen",
    "group": "group",
    "g": "group",
}
_TYPES: Final = ("track", "identify", "alias", "page", "screen", "group")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MS: Final = timedelta(milliseconds=1)


def endpoint_of(path: str) -> str | None:
    """The endpoint a request path names (`/segment/v1/t` -> `track`), or None when it names none."""
    return ENDPOINTS.get(path.rstrip("/").rsplit("/", 1)[-1])


# -- decoding ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SegmentRequest:
    """One decoded Segment request.

    `endpoint` is a value of `ENDPOINTS`; `sent_at` is the batch's `sentAt`
    (epoch ms) when it has one; `context` the batch-level context that each
    message's own context extends.
    """

    endpoint: str
    write_key: str
    records: tuple[VendorRecord, ...]
    sent_at: int | None = None
    context: Mapping[str, Any] = field(default_factory=dict)


class _Batch(msgspec.Struct):
    batch: list[msgspec.Raw] = []
    sentAt: Any = None
    writeKey: Any = None
    context: Any = None


_BATCH: Final = msgspec.json.Decoder(_Batch)


def decode_request(
    endpoint: str, headers: Mapping[str, str], body: bytes, *, limits: VendorLimits = DEFAULT_VENDOR_LIMITS
) -> SegmentRequest:
    """Decode a Segment request into messages, or raise a `VendorError` naming what was wrong.

    `endpoint` is `endpoint_of(path)`; `body` the raw body as received.
    """
    if endpoint not in _TYPES and endpoint != "batch":
        raise ValueError(f"unknown Segment endpoint {endpoint!r}")
    check_size("body", len(body), limits.max_body_bytes)
    encoding = (header(headers, "content-encoding") or "identity").strip().lower()
    if encoding not in ("identity", "gzip", "x-gzip"):
        raise UnsupportedMediaType(f"Content-Encoding {encoding!r} is not supported; send gzip or nothing")
    text = json_body(body, where="body", limits=limits)
    if not text.startswith(b"{"):
        raise Undecodable("body: expected a JSON object")
    body_key: object = None
    context: Mapping[str, Any] = {}
    sent_at: int | None = None
    if endpoint == "batch":
        try:
            parsed = _BATCH.decode(text)
        except msgspec.ValidationError as exc:
            raise Undecodable(f"body: {exc}") from None
        except msgspec.DecodeError as exc:
            raise Undecodable(f"body: invalid JSON ({str(exc).removeprefix('JSON is malformed: ')})") from None
        except RecursionError:
            raise Undecodable("body: invalid JSON (nested too deeply)") from None
        records = records_of(parsed.batch, where="batch", limits=limits)
        body_key = parsed.writeKey
        context = parsed.context if isinstance(parsed.context, dict) else {}
        sent_at = iso_ms(parsed.sentAt)
    else:
        records = split_records(text, where="body", limits=limits)
        if records[0].value is not None:
            body_key = records[0].value.get("writeKey")
    key = write_key_of(headers, body_key)
    return SegmentRequest(endpoint, key, tuple(records), sent_at, context)


def write_key_of(headers: Mapping[str, str], body_key: object = None) -> str:
    """The write key: the user name of Basic auth, else `body_key` (the body's `writeKey`); 401 when neither."""
    auth = (header(headers, "authorization") or "").strip()
    scheme, _, credentials = auth.partition(" ")
    if scheme.lower() == "basic":
        try:
            user = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise Unauthenticated("Authorization: Basic credentials are not base64 of 'writeKey:'") from None
        key = user.partition(":")[0]
        if key:
            return key
    elif scheme.lower() == "bearer":
        raise Unauthenticated("Authorization: OAuth bearer tokens are not supported; send the write key as Basic auth")
    if isinstance(body_key, str) and body_key:
        return body_key
    raise Unauthenticated("no write key: send it as the Basic auth user name or as writeKey in the body")


def iso_ms(value: Any) -> int | None:
    """An ISO 8601 date-time as epoch milliseconds (UTC when it names no offset); None when it is not one."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _MS


# -- mapping -------------------------------------------------------------------------


def _lib(value: Any) -> Any:
    return f"segment-{value}" if isinstance(value, str) else value


# context.<group>.<key> -> a maidian preset, or a plan property (utm_*) when the plan declares it.
_CONTEXT: Final[Mapping[str, Mapping[str, Translation]]] = {
    "library": {"name": Translation("$lib", _lib), "version": Translation("$lib_version")},
    "app": {"name": Translation("$app_name"), "version": Translation("$app_version")},
    "device": {"model": Translation("$device_model"), "manufacturer": Translation("$manufacturer")},
    "os": {"name": Translation("$os"), "version": Translation("$os_version")},
    "screen": {"width": Translation("$screen_width"), "height": Translation("$screen_height")},
    "network": {"carrier": Translation("$carrier")},
    "page": {"url": Translation("$url"), "referrer": Translation("$referrer"), "title": Translation("$title")},
    "campaign": {
        "source": Translation("utm_source"),
        "medium": Translation("utm_medium"),
        "name": Translation("utm_campaign"),
        "term": Translation("utm_term"),
        "content": Translation("utm_content"),
    },
}
# Page and screen calls: Segment's own property names for what maidian has presets for.
_PAGE: Final[Mapping[str, Translation]] = {
    "name": Translation("$screen_name"),
    "url": Translation("$url"),
    "referrer": Translation("$referrer"),
    "title": Translation("$title"),
}
_GROUP: Final[Mapping[str, Translation]] = {"groupId": Translation("group_id")}
_IDENTITIES: Final[Mapping[str, tuple[str, ...]]] = {
    "userId": ("login_id",),
    "anonymousId": ("anonymous_id",),
    "previousId": ("anonymous_id",),
}
_VENDOR_EVENTS: Final = {"page": "$page", "screen": "$screen", "group": "$group"}
_STABLE: Final = (
    "type",
    "event",
    "userId",
    "anonymousId",
    "previousId",
    "groupId",
    "name",
    "category",
    "properties",
    "traits",
    "timestamp",
    "originalTimestamp",
)
_MAX_MESSAGE_ID: Final = 128 - len("segment:m:")


class SegmentMapper:
    """Segment messages onto maidian events for one plan. Build once per plan and reuse."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.names = NameMapper.for_plan(plan, "segment")

    def map_request(self, request: SegmentRequest, *, now_ms: int) -> Mapped:
        """Map every message of a request, in order; `now_ms` dates messages that carry no time at all."""
        seen: Counter[str] = Counter()
        out: list[MappedRecord | Rejection] = []
        for record in request.records:
            out.append(self.map_record(record, request, now_ms=now_ms, seen=seen))
        return Mapped(tuple(out))

    def map_record(
        self, record: VendorRecord, request: SegmentRequest, *, now_ms: int, seen: Counter[str] | None = None
    ) -> MappedRecord | Rejection:
        """Map one decoded message of `request`."""
        undecoded = rejection_of(record, "segment:x:", seen)
        if undecoded is not None:
            return undecoded
        msg: dict[str, Any] = record.value
        i = record.index

        def fail(rule: str, path: str, message: str) -> Rejection:
            event_id = self._event_id(msg, seen)
            return reject(i, rule, path, message, record=msg, size=record.size_bytes, event_id=event_id)

        kind = msg.get("type") if request.endpoint == "batch" else request.endpoint
        if not isinstance(kind, str) or kind not in _TYPES:
            what = "the message has no type" if kind is None else "unknown message type"
            return fail("vendor_record", "/type", f"{what}; expected one of {', '.join(_TYPES)}")
        dropped: list[str] = []
        time_ms = _first_time(msg, ("timestamp", "originalTimestamp"))
        if isinstance(time_ms, str):
            return fail("vendor_record", f"/{time_ms}", f"{time_ms} must be an ISO 8601 date-time")
        sent_at = iso_ms(msg.get("sentAt"))
        if sent_at is None:
            sent_at = request.sent_at
        if time_ms is None:
            time_ms = sent_at if sent_at is not None else now_ms
            dropped.append("time.missing")
        event_id = self._event_id(msg, seen)
        order = ("userId", "previousId", "anonymousId") if kind == "alias" else ("userId", "anonymousId")
        identities = self.names.identities([(k, msg.get(k)) for k in order], _IDENTITIES, dropped)
        context = {**request.context, **msg["context"]} if isinstance(msg.get("context"), dict) else request.context

        def build(name: str | None, vendor_event: str, props: Any, builtin: Mapping[str, Translation]) -> Any:
            if props is None:
                props = {}
            if not isinstance(props, dict):
                return None
            mapped = self.names.properties(
                props, vendor_event=vendor_event, event=name, builtin=builtin, dropped=dropped
            )
            for key, value in self._context(context, name, dropped).items():
                mapped.setdefault(key, value)
            return mapped

        events: list[dict[str, Any]] = []
        if kind == "track":
            vendor_event = msg.get("event")
            if not isinstance(vendor_event, str) or not vendor_event:
                return fail("vendor_record", "/event", "a track message needs an event name")
            name = self.names.event_name(vendor_event)
            props = build(name, vendor_event, msg.get("properties"), {})
            if props is None:
                return fail("vendor_record", "/properties", "properties must be an object")
            events.append(
                wire_event("track", name, event_id=event_id, time_ms=time_ms, identities=identities, properties=props)
            )
        elif kind in _VENDOR_EVENTS:
            vendor_event = _VENDOR_EVENTS[kind]
            name = self.names.event_name(vendor_event)
            source, where = ("traits", "/traits") if kind == "group" else ("properties", "/properties")
            given = msg.get(source)
            if given is not None and not isinstance(given, dict):
                return fail("vendor_record", where, f"{source} must be an object")
            extra = {k: msg[k] for k in ("name", "category", "groupId") if msg.get(k) is not None}
            props = build(name, vendor_event, {**extra, **(given or {})}, _GROUP if kind == "group" else _PAGE)
            events.append(
                wire_event("track", name, event_id=event_id, time_ms=time_ms, identities=identities, properties=props)
            )
        elif kind == "identify":
            traits = msg.get("traits")
            if traits is not None and not isinstance(traits, dict):
                return fail("vendor_record", "/traits", "traits must be an object")
            profile = self.names.properties(traits or {}, vendor_event=None, event=None, builtin={}, dropped=dropped)
            if profile:
                events.append(
                    wire_event(
                        "profile_set",
                        None,
                        event_id=event_id,
                        time_ms=time_ms,
                        identities=identities,
                        properties=profile,
                    )
                )
            if "login_id" in identities and "anonymous_id" in identities:
                link_id = f"{event_id}/bind" if events else event_id
                link = {k: identities[k] for k in ("anonymous_id", "login_id")}
                events.append(
                    wire_event("bind", None, event_id=link_id, time_ms=time_ms, identities=link, properties={})
                )
            if not events:
                dropped.append("identify.empty")
        else:  # alias
            link_props = {k: v for k, v in self._context(context, None, dropped).items() if k.startswith("$")}
            events.append(
                wire_event(
                    "bind", None, event_id=event_id, time_ms=time_ms, identities=identities, properties=link_props
                )
            )
        return MappedRecord(i, tuple(events), sent_at, tuple(dropped))

    def _context(self, context: Mapping[str, Any], event: str | None, dropped: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for group, value in context.items():
            table = _CONTEXT.get(group)
            if table is None or not isinstance(value, dict):
                dropped.append(f"context.{group}")
                continue
            for key, item in value.items():
                t = table.get(key)
                if t is not None and (t.target.startswith("$") or self.names.declares(t.target, event)):
                    out[t.target] = t.convert(item)
                elif group == "network" and key in ("wifi", "cellular") and item is True:
                    out.setdefault("$network_type", key)
                else:
                    dropped.append(f"context.{group}.{key}")
        return out

    def _event_id(self, msg: dict[str, Any], seen: Counter[str] | None) -> str:
        message_id = msg.get("messageId")
        if isinstance(message_id, int) and not isinstance(message_id, bool):
            message_id = str(message_id)
        if isinstance(message_id, str) and message_id:
            if len(message_id) <= _MAX_MESSAGE_ID:
                return f"segment:m:{message_id}"
            return "segment:m:" + hashlib.sha256(message_id.encode("utf-8", "surrogatepass")).hexdigest()
        stable = {k: msg[k] for k in _STABLE if k in msg}
        return numbered(content_id("segment:c:", stable), seen)


def _first_time(msg: Mapping[str, Any], names: tuple[str, ...]) -> int | str | None:
    """The first of `names` present in `msg`, as epoch ms; its name when it is present but not a date-time."""
    for name in names:
        if msg.get(name) is None:
            continue
        ms = iso_ms(msg[name])
        return name if ms is None else ms
    return None


# -- answers -------------------------------------------------------------------------

_SUCCESS: Final = b'{"success": true}'


def success_response(headers: Mapping[str, str]) -> VendorResponse:
    """The answer once the messages are stored (quarantined ones included): 200 `{"success": true}`."""
    return VendorResponse(200, _SUCCESS, "application/json", cors_headers(headers))


def error_response(error: RequestError, headers: Mapping[str, str]) -> VendorResponse:
    """An error in the shape Segment's libraries read: `{"success": false, "code": ..., "message": ...}`.

    The status is the collector's own (analytics-python retries 429 and 503
    after their `Retry-After`, and drops the batch on 400, 401, 403 and 413).
    """
    body = {"success": False, "code": error.code, "message": error.message}
    data = json.dumps(body, ensure_ascii=False).encode()
    return VendorResponse(
        error.status, data, "application/json; charset=utf-8", (*cors_headers(headers), *retry_after(error))
    )
