"""The vendor routes: Sensors Analytics and Segment traffic through the collector's own pipeline.

Apps keep their vendor SDK and point it at the collector (docs/migration.md):

    GET, POST  /sa, /sa.gif, /debug    Sensors records: form body, query string or text/plain beacon
    POST       /segment/v1/{endpoint}  Segment's HTTP tracking API (batch, track, identify, alias, ...)
    OPTIONS    on each                 CORS preflight for browser SDKs

Each handler is thin and runs the same stages as `POST /v1/batch`, in the same
order where the vendor allows it: admission (readiness, requests in flight),
the body read raw and capped, decoding (the vendor module, capped), the
sender (a Sensors project or a Segment write key, resolved to a write key by
`pipeline/auth.py`), its quota, mapping onto maidian events with one mapper per plan,
and then the native `Ingest`: `decode.decoded_batch` encodes the mapped events
once, and the records no event came of travel as `ingest.Refused`. So the
limits, validation, the trigger rule, time correction (`_flush_time` and
`sentAt` are the batch's `sent_at`), deduplication by the vendor ids, the raw
log's durability, the quarantine with reasons and the identity feed are the
native ones, not copies of them.

A request's records become one batch per run of records that share a
`sent_at` (one for almost every request); a request is answered only once
every batch it made is durable.

Answers are the ones each vendor's SDK understands, for the collector's own
refusals too (overload, disk, quota):

- Sensors: 200 once stored (a 1x1 GIF to GET beacons); `/debug`, or
  `Dry-Run: true` anywhere, answers the verdict (200 valid, 400 with every
  reason) and with `Dry-Run` stores nothing. Errors are JSON; 401 becomes 403
  and 429 becomes 503 (with Retry-After), because the Android SDK deletes its
  data on any other 4xx.
- Segment: 200 `{"success": true}`; errors `{"success": false, "code",
  "message"}`; 429 with Retry-After, which analytics-python waits out.

Metrics: `maidian_requests_total{path}` names the vendor paths; the families
`maidian_vendor_requests_total{vendor,status}`,
`maidian_vendor_events_total{vendor,outcome}` and
`maidian_vendor_dropped_fields_total{vendor,field}` tell vendor traffic apart.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

import msgspec
from aiohttp import web

from maidian.collector.errors import RequestError
from maidian.collector.http.admission import UNAUTHENTICATED, Gate
from maidian.collector.http.request_id import request_id_of
from maidian.collector.pipeline.auth import Authenticator, Principal
from maidian.collector.pipeline.decode import decoded_batch
from maidian.collector.pipeline.ingest import Ingest, Outcome, Refused
from maidian.collector.service import Collector
from maidian.collector.vendors import segment, sensors
from maidian.collector.vendors import web as browser
from maidian.collector.vendors.common import (
    Mapped,
    Undecodable,
    VendorLimits,
    VendorResponse,
    header,
    preflight_response,
)
from maidian.collector.vendors.derive import Deriver
from maidian.tracking_plan import Violation
from maidian.tracking_plan.envelope import Limits

__all__ = ["VENDOR_PATHS", "VENDOR_ROUTES", "VendorRoutes", "add_vendor_routes", "ingest_mapped", "max_line_bytes"]

SENSORS_PATHS: Final = ("/sa", "/sa.gif", "/debug")
SENSORS_DEBUG_PATH: Final = "/debug"
SEGMENT_PATH: Final = f"{segment.PREFIX}/v1/{{endpoint}}"
# The routes as (method, path), the way app.ROUTES lists the native ones.
VENDOR_ROUTES: Final = (
    *((method, path) for path in SENSORS_PATHS for method in ("GET", "POST", "OPTIONS")),
    ("POST", SEGMENT_PATH),
    ("OPTIONS", SEGMENT_PATH),
    ("GET", browser.SETTINGS_PATH),
    ("OPTIONS", browser.SETTINGS_PATH),
    ("POST", browser.METRICS_PATH),
    ("OPTIONS", browser.METRICS_PATH),
)
# Every concrete path the routes answer, for the request metrics' `path` label (a bounded set).
VENDOR_PATHS: Final = frozenset(
    (*SENSORS_PATHS, *(f"{segment.PREFIX}/v1/{name}" for name in segment.ENDPOINTS), browser.METRICS_PATH)
)
# aiohttp's default request-line limit; Sensors image beacons carry their record in the URL.
_DEFAULT_LINE_BYTES: Final = 8190
# The longest URL Chromium sends (its kMaxURLChars); Sensors image beacons carry their record in it.
_BROWSER_URL_BYTES: Final = 2 << 20
# Room for the method, path and protocol around a beacon's query string.
_REQUEST_LINE_SLACK: Final = 1024
# Distinct dropped-field names counted per vendor before the rest are counted as "other":
# names come from the wire, and each one is a time series.
_MAX_DROPPED_NAMES: Final = 256

ReadBody = Callable[[web.Request, int], Awaitable[bytes]]


def vendor_limits(limits: Limits) -> VendorLimits:
    """The vendor decoders' limits, from the collector's own (docs/migration.md, "Limits")."""
    return VendorLimits(
        max_body_bytes=limits.max_body_bytes,
        max_base64_chars=limits.max_body_bytes,
        max_decoded_bytes=limits.max_decoded_bytes,
        max_records=limits.max_events,
        max_record_bytes=limits.max_event_bytes,
    )


def max_line_bytes(serves_sensors: bool) -> int:
    """aiohttp's request-line limit: long enough for any browser's URL only when Sensors projects are served.

    Native routes take nothing in the URL, so without Sensors the limit stays
    aiohttp's default and a slow sender cannot hold more per connection. With
    Sensors, a beacon URL up to the longest a browser sends (Chromium's 2 MiB)
    reaches the route, which answers one over the query-string limit 413 and
    counts it, instead of the HTTP parser's plain 400.
    """
    if not serves_sensors:
        return _DEFAULT_LINE_BYTES
    return max(_DEFAULT_LINE_BYTES, VendorLimits().max_query_bytes, _BROWSER_URL_BYTES) + _REQUEST_LINE_SLACK


@dataclass(frozen=True, slots=True)
class _Run:
    """Events that share a `sent_at`, with the records refused alongside them (the first run only)."""

    sent_at: int | None
    events: list[dict[str, Any]]
    refused: list[Refused]


_msgpack = msgspec.msgpack.Encoder()


def _runs(vendor: str, mapped: Mapped) -> list[_Run]:
    """The request's batches: events grouped by `sent_at` in request order; refused records go with the first."""
    runs = [_Run(sent_at, events, []) for sent_at, events in mapped.by_sent_at()]
    rejections = mapped.rejections
    if rejections:
        if not runs:
            runs.append(_Run(None, [], []))
        for rec in rejections:
            kept = rec.quarantined(vendor)
            runs[0].refused.append(Refused(kept, msgspec.Raw(_msgpack.encode(kept)), rec.reasons))
    return runs


def _violations(result: dict[str, Any]) -> list[Violation]:
    return [Violation(r["rule"], r["path"], r["message"]) for r in result.get("reasons", ())]


async def ingest_mapped(
    ingest: Ingest,
    vendor: str,
    mapped: Mapped,
    *,
    principal: Principal,
    request_id: str,
    store: bool,
    metrics: Collector,
) -> tuple[list[list[Violation]], list[Outcome]]:
    """Mapped vendor records through the native pipeline, one batch per `sent_at`: the routes and the importer.

    Returns each mapped event's violations in order, and each batch's outcome.
    """
    stage = metrics.metrics.bytes
    verdicts: list[list[Violation]] = []
    outcomes: list[Outcome] = []
    for run in _runs(vendor, mapped):
        batch = decoded_batch(run.events, sent_at=run.sent_at, lib=vendor)
        stage["decoded"] += sum(map(len, batch.events)) + sum(len(r.raw) for r in run.refused)
        outcome = await ingest.ingest(batch, principal, request_id, store=store, refused=run.refused)
        outcomes.append(outcome)
        verdicts.extend(_violations(r) for r in outcome.results[: len(run.events)])
    return verdicts, outcomes


class VendorRoutes:
    """The vendor handlers for one app: the collector, the authenticator, and one mapper per vendor for its plan.

    `gate` and `read_body` are the native handler's own (app.py),
    so both paths read, admit and name requests alike.
    """

    def __init__(
        self,
        collector: Collector,
        auth: Authenticator,
        gate: Gate,
        *,
        read_body: ReadBody,
    ) -> None:
        self.collector = collector
        self.auth = auth
        self.gate = gate
        self.read_body = read_body
        self.limits = vendor_limits(collector.config.limits)
        self.sensors = sensors.SensorsMapper(collector.plan)
        self.segment = segment.SegmentMapper(collector.plan)
        auth_config = collector.config.auth
        self.deriver = Deriver(auth_config.trusted_proxies, auth_config.vendor_derive)
        metrics = collector.metrics
        self.requests = metrics.family(
            "maidian_vendor_requests_total", "Vendor SDK requests by vendor and status.", ("vendor", "status")
        )
        self.events = metrics.family(
            "maidian_vendor_events_total",
            "Vendor records by outcome: accepted, duplicate, quarantined (the mapper's refusals included).",
            ("vendor", "outcome"),
        )
        self.dropped = metrics.family(
            "maidian_vendor_dropped_fields_total",
            "Vendor fields with no place in the plan, dropped while mapping (docs/migration.md).",
            ("vendor", "field"),
        )

    # -- Sensors ------------------------------------------------------------------------

    async def sensors_request(self, request: web.Request) -> web.Response:
        """`/sa`, `/sa.gif`, `/debug`: store Sensors records, or judge them (debug, dry run)."""
        headers = request.headers
        debug = request.path == SENSORS_DEBUG_PATH
        try:
            # Sensors SDKs send no credential: the project, in the body, names the sender.
            ingest = self.gate.enter(UNAUTHENTICATED)
            try:
                body = await self.read_body(request, self.limits.max_body_bytes)
                decoded = sensors.decode_request(
                    request.method, request.query_string, headers, body, limits=self.limits
                )
                principal = self._sensors_principal(decoded, request.remote)
                mapped = self.sensors.map_request(decoded)
                self.deriver.apply(mapped, peer=request.remote, headers=headers, switches=principal.derive)
                dry_run = browser.debug_dry_run(decoded.dry_run, headers) if debug else decoded.dry_run
                verdicts = await self._ingest(
                    ingest, "sensors", mapped, principal=principal, request=request, body=body, store=not dry_run
                )
            finally:
                self.gate.leave(UNAUTHENTICATED)
            if debug or dry_run:
                answer = sensors.debug_response(mapped, verdicts, dry_run=dry_run, headers=headers)
            else:
                answer = sensors.success_response(request.method, request.path, headers)
        except RequestError as error:
            answer = sensors.error_response(error, headers)
        return self._respond("sensors", answer)

    def _sensors_principal(self, decoded: sensors.SensorsRequest, peer: str | None) -> Principal:
        """The one sender all of the request's projects resolve to (403 for a project not served here)."""
        projects = decoded.projects or {decoded.project or sensors.DEFAULT_PROJECT}
        found = {self.auth.sensors_project(p, peer) for p in sorted(projects)}
        if len(found) > 1:
            raise Undecodable(
                "the records name Sensors projects bound to different write keys; send each project's records apart"
            )
        return found.pop()

    # -- Segment --------------------------------------------------------------------------

    async def segment_request(self, request: web.Request) -> web.Response:
        """`/segment/v1/{endpoint}`: store Segment messages."""
        headers = request.headers
        endpoint = segment.ENDPOINTS[request.match_info["endpoint"]]
        try:
            self.gate.check_ready()
            principal: Principal | None = None
            if header(headers, "authorization"):  # the key is in the headers: check it before the body
                principal = self.auth.segment_key(segment.write_key_of(headers), request.remote)
            sender = UNAUTHENTICATED if principal is None else principal.sender
            ingest = self.gate.enter(sender)
            try:
                body = await self.read_body(request, self.limits.max_body_bytes)
                decoded = segment.decode_request(endpoint, headers, body, limits=self.limits)
                if principal is None:
                    principal = self.auth.segment_key(decoded.write_key, request.remote)
                mapped = self.segment.map_request(decoded, now_ms=int(self.collector.clock() * 1000))
                self.deriver.apply(mapped, peer=request.remote, headers=headers, switches=principal.derive)
                await self._ingest(
                    ingest, "segment", mapped, principal=principal, request=request, body=body, store=True
                )
            finally:
                self.gate.leave(sender)
            answer = segment.success_response(headers)
        except RequestError as error:
            answer = segment.error_response(error, headers)
        return self._respond("segment", answer)

    async def segment_settings(self, request: web.Request) -> web.Response:
        """analytics.js's CDN settings for a configured write key (docs/migration.md)."""
        headers = request.headers
        try:
            write_key = request.match_info["write_key"]
            self.auth.segment_key(write_key, request.remote)
            forwarded = self.deriver.trusts(request.remote)
            answer = browser.settings_response(
                write_key, headers, scheme=request.scheme, host=request.host, forwarded=forwarded
            )
        except RequestError as error:
            answer = segment.error_response(error, headers)
        return self._respond("segment", answer)

    async def segment_metrics(self, request: web.Request) -> web.Response:
        """analytics.js's usage metrics: read (capped) and discarded."""
        try:
            await self.read_body(request, self.limits.max_body_bytes)
            answer = browser.metrics_response(request.headers)
        except RequestError as error:
            answer = segment.error_response(error, request.headers)
        return self._respond("segment", answer)

    def unrouted(self, request: web.Request, status: int) -> web.Response | None:
        """The answer to an unknown path (404) or method (405) under a vendor path: with CORS, so a browser
        sees the status rather than a CORS failure; None for other paths (the native answer stands)."""
        if request.path.startswith(segment.PREFIX + "/"):
            vendor = "segment"
        elif request.path in SENSORS_PATHS:
            vendor = "sensors"
        else:
            return None
        return self._respond(vendor, browser.unrouted_response(status, len(request.path), request.headers))

    # -- shared -----------------------------------------------------------------------------

    async def preflight(self, request: web.Request) -> web.Response:
        """CORS preflight for the browser SDKs."""
        vendor = "segment" if request.path.startswith(segment.PREFIX) else "sensors"
        return self._respond(vendor, preflight_response(request.headers))

    async def _ingest(
        self,
        ingest: Ingest,
        vendor: str,
        mapped: Mapped,
        *,
        principal: Principal,
        request: web.Request,
        body: bytes,
        store: bool,
    ) -> list[list[Violation]]:
        """Hand the mapped request to the native pipeline; each mapped event's violations, in request order."""
        if store:
            records = len(mapped.records)
            self.auth.take(principal, records, self.collector.clock())
        self.collector.metrics.bytes["wire"] += len(body)
        verdicts, outcomes = await ingest_mapped(
            ingest,
            vendor,
            mapped,
            principal=principal,
            request_id=request_id_of(request.headers),
            store=store,
            metrics=self.collector,
        )
        if store:
            self._count(vendor, outcomes, mapped)
        return verdicts

    def _count(self, vendor: str, outcomes: Iterable[Outcome], mapped: Mapped) -> None:
        for outcome in outcomes:
            for name, n in (
                ("accepted", outcome.accepted),
                ("duplicate", outcome.duplicate),
                ("quarantined", outcome.quarantined),
            ):
                if n:
                    self.events[(vendor, name)] = self.events.get((vendor, name), 0) + n
        for name, n in mapped.dropped().items():
            key = (vendor, name)
            if key not in self.dropped and sum(1 for v, _f in self.dropped if v == vendor) >= _MAX_DROPPED_NAMES:
                key = (vendor, "other")
            self.dropped[key] = self.dropped.get(key, 0) + n

    def _respond(self, vendor: str, answer: VendorResponse) -> web.Response:
        key = (vendor, str(answer.status))
        self.requests[key] = self.requests.get(key, 0) + 1
        response = web.Response(status=answer.status, body=answer.body)
        response.headers["Content-Type"] = answer.content_type
        for name, value in answer.headers:
            response.headers[name] = value
        return response


def add_vendor_routes(app: web.Application, routes: VendorRoutes) -> None:
    """Mount the vendor routes (VENDOR_ROUTES) on `app`."""
    for path in SENSORS_PATHS:
        app.router.add_route("GET", path, routes.sensors_request)
        app.router.add_route("POST", path, routes.sensors_request)
        app.router.add_route("OPTIONS", path, routes.preflight)
    names = "|".join(sorted(segment.ENDPOINTS))
    resource = app.router.add_resource(f"{segment.PREFIX}/v1/{{endpoint:(?:{names})}}")
    resource.add_route("POST", routes.segment_request)
    resource.add_route("OPTIONS", routes.preflight)
    settings = app.router.add_resource(browser.SETTINGS_PATH)
    settings.add_route("GET", routes.segment_settings)
    settings.add_route("OPTIONS", routes.preflight)
    metrics = app.router.add_resource(browser.METRICS_PATH)
    metrics.add_route("POST", routes.segment_metrics)
    metrics.add_route("OPTIONS", routes.preflight)
