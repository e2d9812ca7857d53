"""Sensors Analytics (神策) traffic: decode what its SDKs send and map it onto maidian events.

An app keeps its Sensors SDK and points the SDK's server URL at the collector
(docs/migration.md). What the SDKs send, and what this module relies on:

- The server URL is `<host>/sa?project=NAME` (`/sa.gif` for browser image
  beacons). The debug SDKs replace the URL's last path segment with `debug`
  and add `Dry-Run: true` when the data should only be checked.
- A record travels as the form field `data` (one record) or `data_list` (a JSON
  array), in a POST body (`application/x-www-form-urlencoded`, or `text/plain`
  for browser beacons) or in a GET query string. The value is base64 of the
  gzipped JSON when `gzip=1`, base64 of the plain JSON otherwise; `gzip=9` and
  `gzip=13` mark payloads the SDK encrypted, which cannot be read without the
  customer's key. Other fields (`crc`, `ext`, ...) are ignored.
- The project is the record's `project`, else the `project` parameter, else
  `default`.
- Records: `type` (`track`, `track_signup`, `track_id_bind`, `track_id_unbind`,
  `profile_*`, `item_*`), `event`, `time` (epoch ms), `distinct_id`,
  `properties` (with `$is_login_id` when the distinct id is a login id),
  `original_id` (sign-up), `identities` (ID-Mapping 3), `login_id` and
  `anonymous_id` (ID-Mapping 2, browser and mobile SDKs), `lib`, `_track_id`
  (a random number the browser, mobile and Java SDKs add once per record; the
  Python SDK sends none), `_flush_time` (when the batch was sent).
- Success is any 2xx; the SDKs ignore the body. The debug SDKs print the body
  of a non-200 answer as the reason.

Mapping rules (each documented for users in docs/migration.md):

- `track` becomes a track event named by the plan's `mappings.sensors.events`,
  else by the vendor's name (which then follows the plan's unknown-event
  policy). `track_signup` and `track_id_bind` become `bind`, `track_id_unbind`
  becomes `unbind` when the record names two identities; when the plan maps the
  vendor event (`$SignUp`, `$BindID`) a track event is produced as well.
  `profile_*` keep their type. `item_*` have no maidian equivalent and are
  rejected as `vendor_unsupported`, as is an unbind naming one identity.
- Identities come from the `identities` map, then `login_id`/`anonymous_id`,
  then (sign-up) `distinct_id` and `original_id`, and only when none of those
  gave any, from `distinct_id` with `$is_login_id`.
- The event id is derived from `_track_id` with the project, distinct id, type,
  event and time; without a `_track_id` it is a hash of the record's stable
  fields, numbered by occurrence within the request so that two identical
  records in one request stay two events while a resent request maps to the
  same ids.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from maidian.collector.errors import RequestError
from maidian.collector.vendors.common import (
    DEFAULT_VENDOR_LIMITS,
    Forbidden,
    Mapped,
    MappedRecord,
    Rejection,
    Undecodable,
    UnsupportedMediaType,
    VendorLimits,
    VendorRecord,
    VendorResponse,
    check_size,
    content_id,
    cors_headers,
    decode_base64,
    header,
    json_body,
    numbered,
    parse_form,
    reject,
    rejection_of,
    retry_after,
    split_records,
    wire_event,
)
from maidian.collector.vendors.names import NameMapper, Translation
from maidian.tracking_plan import Plan, Violation
from maidian.tracking_plan.envelope import PROFILE_TYPES

__all__ = [
    "DEFAULT_PROJECT",
    "IDENTITY_KEYS",
    "PRESETS",
    "SensorsMapper",
    "SensorsRequest",
    "debug_response",
    "decode_request",
    "error_response",
    "success_response",
]

DEFAULT_PROJECT: Final = "default"

# `gzip` values that mean the SDK encrypted the payload (its `enable_encrypt` options).
_ENCRYPTED: Final = {"9": "encrypted with the app's public key", "13": "encrypted for transport"}

# -- decoding ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SensorsRequest:
    """One decoded Sensors request.

    `project` is the `project` parameter (None when absent); `dry_run` is the
    `Dry-Run: true` header of the debug SDKs; `field` says where the records
    were (`data_list`, `data` or `body`).
    """

    records: tuple[VendorRecord, ...]
    project: str | None = None
    dry_run: bool = False
    field: str = "data"

    def project_of(self, record: VendorRecord) -> str:
        """The project a record belongs to: its own `project`, else the request's, else `default`."""
        own = record.value.get("project") if isinstance(record.value, dict) else None
        if isinstance(own, str) and own:
            return own
        return self.project or DEFAULT_PROJECT

    @property
    def projects(self) -> frozenset[str]:
        """Every project the request's records name; the route accepts the request only if it serves all of them."""
        return frozenset(self.project_of(r) for r in self.records)


def decode_request(
    method: str,
    query: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    limits: VendorLimits = DEFAULT_VENDOR_LIMITS,
) -> SensorsRequest:
    """Decode a Sensors request into records, or raise a `VendorError` naming what was wrong.

    `query` is the raw query string (percent-encoded, without `?`), `body` the
    raw body as received (any content type: form bodies, `text/plain` beacons,
    or, tolerated, the JSON itself). Fields in the body win over the query
    string. `method` is accepted for symmetry with the route; GET and POST are
    decoded alike.
    """
    del method  # GET beacons and POST bodies carry the same fields
    check_size("body", len(body), limits.max_body_bytes)
    check_size("query string", len(query), limits.max_query_bytes)
    params = parse_form(query, where="query string", limits=limits)
    text: bytes | None = None
    where = "body"
    stripped = body.lstrip()
    if stripped.startswith((b"{", b"[", b"\x1f\x8b")):
        text = json_body(stripped, where="body", limits=limits)
    elif stripped:
        params.update(parse_form(body.decode("utf-8", "replace"), where="body", limits=limits))
    if text is None:
        where = "data_list" if "data_list" in params else "data" if "data" in params else ""
        if not where:
            raise Undecodable("no data_list or data field in the query string or the body")
        text = _payload(params[where], params.get("gzip", ""), where, limits)
    records = split_records(text, where=where, limits=limits)
    dry_run = (header(headers, "dry-run") or "").strip().lower() == "true"
    return SensorsRequest(tuple(records), params.get("project") or None, dry_run, where)


def _payload(value: str, gzip_flag: str, where: str, limits: VendorLimits) -> bytes:
    if gzip_flag in _ENCRYPTED:
        raise UnsupportedMediaType(
            f"{where}: gzip={gzip_flag} means the payload is {_ENCRYPTED[gzip_flag]}; "
            "the collector cannot read it: turn the SDK's encryption off for this server"
        )
    if value.lstrip().startswith(("{", "[")):  # plain JSON, as some hand-written senders do
        data = value.encode("utf-8")
    else:
        data = decode_base64(value, where=where, limits=limits)
    return json_body(data, where=where, limits=limits)


# -- mapping -------------------------------------------------------------------------


def _lib(value: Any) -> Any:
    return f"sensors-{value}" if isinstance(value, str) else value


# Past this many seconds a duration is nonsense (the plan caps `$duration_ms` far lower); converting
# it would make an integer too large to store, so it is passed on unchanged for the plan to refuse.
_MAX_DURATION_S: Final = 2**53 / 1000


def _seconds_to_ms(value: Any) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= _MAX_DURATION_S:
        return round(value * 1000)
    return value


# Sensors presets that maidian has under its own name. Targets without `$` are
# used only when the plan declares them; anything else starting with `$` is
# dropped (and reported) unless the plan maps it.
PRESETS: Final[Mapping[str, Translation]] = {
    "$lib": Translation("$lib", _lib),
    "$lib_version": Translation("$lib_version"),
    "$os": Translation("$os"),
    "$os_version": Translation("$os_version"),
    "$app_name": Translation("$app_name"),
    "$app_version": Translation("$app_version"),
    "$model": Translation("$device_model"),
    "$manufacturer": Translation("$manufacturer"),
    "$screen_width": Translation("$screen_width"),
    "$screen_height": Translation("$screen_height"),
    "$network_type": Translation("$network_type"),
    "$carrier": Translation("$carrier"),
    "$timezone_offset": Translation("$timezone_offset"),
    "$screen_name": Translation("$screen_name"),
    "$title": Translation("$title"),
    "$url": Translation("$url"),
    "$referrer": Translation("$referrer"),
    "$browser": Translation("$runtime"),
    "$browser_version": Translation("$runtime_version"),
    "$event_duration": Translation("$duration_ms", _seconds_to_ms),
    "$utm_source": Translation("utm_source"),
    "$utm_medium": Translation("utm_medium"),
    "$utm_campaign": Translation("utm_campaign"),
    "$utm_content": Translation("utm_content"),
    "$utm_term": Translation("utm_term"),
}

# Sensors identity keys and the maidian identity types they may become (the
# first one the plan declares). Device and install ids are all anonymous ids;
# when a record carries several, the earlier key in this table wins.
IDENTITY_KEYS: Final[Mapping[str, tuple[str, ...]]] = {
    "$identity_login_id": ("login_id",),
    "$identity_anonymous_id": ("anonymous_id",),
    "$identity_android_id": ("anonymous_id",),
    "$identity_android_uuid": ("anonymous_id",),
    "$identity_idfv": ("anonymous_id",),
    "$identity_cookie_id": ("anonymous_id",),
    "$identity_mp_id": ("anonymous_id",),
    "$identity_mobile": ("mobile", "mobile_hash", "phone", "phone_hash"),
    "$identity_email": ("email", "email_hash"),
}
_ORDER: Final = {key: i for i, key in enumerate(IDENTITY_KEYS)}

_RECORD_TYPES: Final = ("track", "track_signup", "track_id_bind", "track_id_unbind", *sorted(PROFILE_TYPES))
_IDENTITY_OPS: Final = {"track_signup": "bind", "track_id_bind": "bind", "track_id_unbind": "unbind"}
# Properties the SDK uses to steer the receiver; they are read, never stored.
_CONSUMED: Final = ("$is_login_id", "$project", "$token", "$time")
# The fields that make two records without `_track_id` "the same" (docs/migration.md).
_STABLE: Final = (
    "type",
    "event",
    "distinct_id",
    "original_id",
    "login_id",
    "anonymous_id",
    "identities",
    "time",
    "properties",
)


def _epoch_ms(value: Any) -> int | None:
    """Sensors times: epoch milliseconds (13 digits), or seconds (10 digits) as its SDKs also accept."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    ms = int(value)
    if 10**9 <= ms < 10**10:
        return ms * 1000
    return ms if 10**10 <= ms < 10**13 else None


class SensorsMapper:
    """Sensors records onto maidian events for one plan. Build once per plan and reuse."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.names = NameMapper.for_plan(plan, "sensors")

    def map_request(self, request: SensorsRequest) -> Mapped:
        """Map every record of a request, in order."""
        seen: Counter[str] = Counter()
        out: list[MappedRecord | Rejection] = []
        for record in request.records:
            out.append(self.map_record(record, project=request.project_of(record), seen=seen))
        return Mapped(tuple(out))

    def map_record(
        self, record: VendorRecord, *, project: str = DEFAULT_PROJECT, seen: Counter[str] | None = None
    ) -> MappedRecord | Rejection:
        """Map one decoded record; `seen` numbers identical records within one request (see the module doc)."""
        undecoded = rejection_of(record, "sensors:x:", seen)
        if undecoded is not None:
            return undecoded
        value: dict[str, Any] = record.value
        i = record.index

        def fail(rule: str, path: str, message: str) -> Rejection:
            event_id = self._event_id(value, project, seen)
            return reject(i, rule, path, message, record=value, size=record.size_bytes, event_id=event_id)

        kind = value.get("type")
        if not isinstance(kind, str):
            return fail("vendor_record", "/type", "the record has no type" if kind is None else "type must be a string")
        if kind.startswith("item_"):
            return fail("vendor_unsupported", "/type", f"Sensors {kind} records describe items, which maidian has not")
        if kind not in _RECORD_TYPES:
            expected = ", ".join(_RECORD_TYPES)
            return fail(
                "vendor_record", "/type", f"unknown record type (string of length {len(kind)}); expected {expected}"
            )
        time_ms = _epoch_ms(value.get("time"))
        if time_ms is None:
            return fail("vendor_record", "/time", "time must be epoch milliseconds (13 digits; 10 are read as seconds)")
        props = value.get("properties", {})
        if props is None:
            props = {}
        if not isinstance(props, dict):
            return fail("vendor_record", "/properties", "properties must be an object")
        props = dict(props)
        is_login = props.get("$is_login_id") is True
        for name in _CONSUMED:
            props.pop(name, None)
        lib = value.get("lib")
        if isinstance(lib, dict) and kind not in PROFILE_TYPES:
            for name in ("$lib", "$lib_version", "$app_version"):
                if name not in props and name in lib:
                    props[name] = lib[name]

        dropped: list[str] = []
        identities = self._identities(value, kind, is_login, dropped)
        event_id = self._event_id(value, project, seen)
        events: list[dict[str, Any]] = []
        vendor_event = value.get("event")
        if kind == "track":
            if not isinstance(vendor_event, str) or not vendor_event:
                return fail("vendor_record", "/event", "a track record needs an event name")
            name = self.names.event_name(vendor_event)
            mapped = self._props(props, vendor_event, name, dropped)
            events.append(
                wire_event("track", name, event_id=event_id, time_ms=time_ms, identities=identities, properties=mapped)
            )
        elif kind in PROFILE_TYPES:
            mapped = self.names.properties(
                props, vendor_event=None, event=None, builtin={}, presets_only=kind == "profile_delete", dropped=dropped
            )
            if props and not mapped and kind != "profile_delete":
                # Only vendor presets the plan does not map (the web SDK's first-visit `$first_*`): counted, not kept.
                return MappedRecord(i, (), None, tuple(dropped))
            events.append(
                wire_event(kind, None, event_id=event_id, time_ms=time_ms, identities=identities, properties=mapped)
            )
        else:
            op = _IDENTITY_OPS[kind]
            if op == "unbind" and len(identities) < 2:
                return fail(
                    "vendor_unsupported",
                    "/identities",
                    "this unbind names one identity; maidian's unbind removes the link between two identities",
                )
            tracked = (
                vendor_event if isinstance(vendor_event, str) and vendor_event in self.names.mapping.events else None
            )
            own: list[str] = []
            link = self.names.properties(
                props, vendor_event=None, event=None, builtin=PRESETS, presets_only=True, dropped=own
            )
            events.append(
                wire_event(op, None, event_id=event_id, time_ms=time_ms, identities=identities, properties=link)
            )
            if tracked is not None:
                name = self.names.event_name(tracked)
                mapped = self._props(props, tracked, name, dropped)
                events.append(
                    wire_event(
                        "track",
                        name,
                        event_id=f"{event_id}/track",
                        time_ms=time_ms,
                        identities=dict(identities),
                        properties=mapped,
                    )
                )
            else:
                dropped.extend(own)
        return MappedRecord(i, tuple(events), _epoch_ms(value.get("_flush_time")), tuple(dropped))

    def _props(self, props: dict[str, Any], vendor_event: str, name: str, dropped: list[str]) -> dict[str, Any]:
        return self.names.properties(props, vendor_event=vendor_event, event=name, builtin=PRESETS, dropped=dropped)

    def _identities(self, value: dict[str, Any], kind: str, is_login: bool, dropped: list[str]) -> dict[str, str]:
        pairs: list[tuple[str, object]] = []
        given = value.get("identities")
        if isinstance(given, dict):
            pairs.extend(sorted(given.items(), key=lambda kv: _ORDER.get(kv[0], len(_ORDER))))
        elif given is not None:
            dropped.append("identities")
        for field, key in (("login_id", "$identity_login_id"), ("anonymous_id", "$identity_anonymous_id")):
            if value.get(field) is not None:
                pairs.append((key, value[field]))
        distinct = value.get("distinct_id")
        if kind == "track_signup":
            pairs.append(("$identity_login_id", distinct))
            pairs.append(("$identity_anonymous_id", value.get("original_id")))
        out = self.names.identities(pairs, IDENTITY_KEYS, dropped)
        if not out and distinct is not None:
            out = self.names.identities([_distinct_pair(distinct, is_login)], IDENTITY_KEYS, dropped)
        return out

    def _event_id(self, value: dict[str, Any], project: str, seen: Counter[str] | None) -> str:
        track_id = value.get("_track_id")
        if isinstance(track_id, (int, str)) and not isinstance(track_id, bool) and track_id != "":
            parts = [
                project,
                value.get("type"),
                value.get("event"),
                value.get("distinct_id"),
                track_id,
                value.get("time"),
            ]
            return content_id("sensors:t:", parts)
        stable: dict[str, Any] = {name: value[name] for name in _STABLE if name in value}
        stable["project"] = project
        return numbered(content_id("sensors:h:", stable), seen)


def _distinct_pair(distinct: object, is_login: bool) -> tuple[str, object]:
    """ID-Mapping 3 spells a non-default login key as `<key>+<value>` in distinct_id."""
    if isinstance(distinct, str) and distinct.startswith("$identity_") and "+" in distinct:
        key, _, rest = distinct.partition("+")
        return key, rest
    return ("$identity_login_id" if is_login else "$identity_anonymous_id"), distinct


# -- answers -------------------------------------------------------------------------

# The smallest transparent GIF: browsers load `/sa.gif` beacons as images.
_GIF: Final = bytes.fromhex("47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b")


def success_response(method: str, path: str, headers: Mapping[str, str]) -> VendorResponse:
    """The answer once the records are stored (quarantined ones included): 200, empty.

    Browsers load GET beacons (`/sa.gif`, or `/sa` with the record in the
    query string) as images, so those get a 1x1 GIF.
    """
    if method.upper() == "GET" or path.endswith(".gif"):
        return VendorResponse(200, _GIF, "image/gif", cors_headers(headers))
    return VendorResponse(200, b"", "text/plain", cors_headers(headers))


def error_response(error: RequestError, headers: Mapping[str, str]) -> VendorResponse:
    """The answer to a request that was not taken (a `VendorError`, or the collector's own refusals).

    Sensors' Android SDK deletes events on any 4xx other than 403 and 404, and
    keeps and retries them on those and on 5xx, so a credentials problem is
    answered 403 (`Forbidden`), never 401: the app keeps its data until the
    collector is configured. For the same reason a quota exceeded is answered
    503 rather than 429, with the same Retry-After.
    """
    status, code = error.status, error.code
    if status == 401:
        status, code = Forbidden.status, Forbidden.code
    elif status == 429:
        status = 503
    body = json.dumps({"code": code, "message": error.message}, ensure_ascii=False).encode()
    return VendorResponse(
        status, body, "application/json; charset=utf-8", (*cors_headers(headers), *retry_after(error))
    )


def debug_response(
    mapped: Mapped,
    verdicts: Sequence[Sequence[Violation]],
    *,
    dry_run: bool,
    headers: Mapping[str, str],
) -> VendorResponse:
    """The debug endpoint's verdict: 200 when every record is valid, 400 with each record's reasons otherwise.

    `verdicts[k]` are the violations of `mapped.events[k]` (empty when valid),
    as the collector's validation gives them. Sensors' debug SDKs treat 200 as
    "valid" and print the body of any other answer; `stored` says whether the
    records were also kept (no `Dry-Run` header). A browser (the request has an
    `Origin`) gets 200 either way, the web SDK's form: it alerts success for an
    empty JSON object and shows any other body as the reason for failure.
    """
    if len(verdicts) != len(mapped.events):
        raise ValueError(f"{len(verdicts)} verdicts for {len(mapped.events)} events")
    rows: list[dict[str, Any]] = []
    k = 0
    for rec in mapped.records:
        if isinstance(rec, Rejection):
            reasons = list(rec.reasons)
            events: list[str] = []
        else:
            reasons = [v for n in range(len(rec.events)) for v in verdicts[k + n]]
            events = [e.get("event") or e["type"] for e in rec.events]
            k += len(rec.events)
        row: dict[str, Any] = {"index": rec.index, "valid": not reasons, "events": events}
        if reasons:
            row["reasons"] = [v.to_dict() for v in reasons]
        rows.append(row)
    bad = [r for r in rows if not r["valid"]]
    if bad:
        first = bad[0]
        detail = "; ".join(f"{r['path'] or '/'}: {r['message']} [{r['rule']}]" for r in first["reasons"])
        message = f"{len(bad)} of {len(rows)} records break the plan; record {first['index']}: {detail}"
    else:
        message = f"all {len(rows)} records are valid"
    body = {"valid": not bad, "stored": not dry_run, "message": message, "records": rows}
    data = json.dumps(body, ensure_ascii=False).encode()
    if header(headers, "origin"):
        # The web SDK reads a 2xx body as the verdict: `{}` is success, anything else is shown as the failure.
        return VendorResponse(200, data if bad else b"{}", "application/json; charset=utf-8", cors_headers(headers))
    return VendorResponse(400 if bad else 200, data, "application/json; charset=utf-8", cors_headers(headers))
