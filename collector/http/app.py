"""The HTTP edge: the native routes, the error middleware, and the app that mounts the vendor routes.

Routes (docs/protocol.md; docs/openapi.json describes them):

    POST /v1/batch   store a batch; 200 with per-event results
    POST /v1/debug   the same verdicts, nothing stored
    GET  /healthz    200 while the process runs
    GET  /readyz     200 when events can be accepted and persisted, else 503
    GET  /metrics    Prometheus text

and the vendor routes (`vendor_routes.py`, docs/migration.md): Sensors
Analytics' `/sa`, `/sa.gif` and `/debug`, and Segment's API under `/segment`,
which feed the same pipeline, and the live page (`live_routes.py`). This
folder is the HTTP edge: with the process runners (`run/`), the only code
that imports aiohttp (an import contract in pyproject.toml checks it).

One middleware turns every `RequestError` into its status and the protocol's
error body (`{"error": {"code", "message"}}`, with Retry-After on 429 and 503),
and anything else into a logged 500 that says it is a bug; nothing a sender
can put in a request is meant to reach that branch. Request bodies are read
raw (aiohttp's own decompression is off: `auto_decompress=False`), capped at
`max_body_bytes` as they arrive, and decompressed by `pipeline/decode.py` under its own
cap.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final

import msgspec
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage

from maidian.collector.errors import BadRequest, PayloadTooLarge, RequestError, RequestTimeout
from maidian.collector.http.admission import Admission, Gate, SlotLimits
from maidian.collector.http.request_id import request_id_of
from maidian.collector.http.vendor_routes import (
    VENDOR_PATHS,
    VENDOR_ROUTES,
    VendorRoutes,
    add_vendor_routes,
    max_line_bytes,
)
from maidian.collector.http.workers import PEERS
from maidian.collector.pipeline.auth import Authenticator
from maidian.collector.pipeline.decode import decode_batch, decompress, inflates_large, read_media_type
from maidian.collector.service import Collector
from maidian.collector.settings import Config
from maidian.tracking_plan.envelope import BATCH_PATH, DEBUG_PATH

__all__ = ["AUTH", "COLLECTOR", "ROUTES", "make_app"]

log = logging.getLogger("maidian.collector")

COLLECTOR: Final = web.AppKey("collector", Collector)
AUTH: Final = web.AppKey("auth", Authenticator)
GATE: Final = web.AppKey("gate", Gate)
VENDORS: Final = web.AppKey("vendors", VendorRoutes)
ROUTES: Final = (
    ("POST", BATCH_PATH),
    ("POST", DEBUG_PATH),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    *VENDOR_ROUTES,
)
_json = msgspec.json.Encoder()
# Counted in metrics for requests whose sender disconnected (nginx's "client closed request").
_CLIENT_GONE: Final = 499
_READ_CHUNK: Final = 1 << 16
_CONTENT_JSON: Final = "application/json"


def _error_response(error: RequestError) -> web.Response:
    body = _json.encode({"error": {"code": error.code, "message": error.message}})
    headers = {}
    if error.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after_s)))
    return web.Response(status=error.status, body=body, content_type=_CONTENT_JSON, headers=headers)


@web.middleware
async def _errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    collector = request.app[COLLECTOR]
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except RequestError as error:
        status = error.status
        return _error_response(error)
    except web.HTTPException as exc:
        status = exc.status
        vendor = request.app[VENDORS].unrouted(request, status) if status in (404, 405) else None
        if vendor is None:
            raise
        return vendor
    except (ConnectionError, asyncio.CancelledError):
        status = _CLIENT_GONE  # the sender went away mid-request; nothing of it was stored
        raise
    except Exception:
        log.exception("bug: unhandled error for %s %s", request.method, request.path)
        body = _json.encode({"error": {"code": "internal", "message": "a bug in the collector; retry later"}})
        return web.Response(status=500, body=body, content_type=_CONTENT_JSON)
    finally:
        collector.metrics.request(
            request.path if request.path in _KNOWN else "other", status, time.perf_counter() - started
        )


_KNOWN: Final = frozenset(path for _m, path in ROUTES) | VENDOR_PATHS


async def _read_body(request: web.Request, limit: int, timeout_s: float) -> bytes:
    """The body as sent, whole within `timeout_s` (a total deadline: a byte now and then does not renew it)."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"the body is {request.content_length} bytes; at most {limit} are accepted")
    chunks = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                chunk = await request.content.read(_READ_CHUNK)
                if not chunk:
                    break
                chunks += chunk
                if len(chunks) > limit:
                    raise PayloadTooLarge(f"the body is over {limit} bytes; send smaller batches")
    except TimeoutError:
        raise RequestTimeout(f"the body did not arrive whole within {timeout_s:g} s") from None
    if request.content_length is not None and len(chunks) != request.content_length:
        # The connection ended early (a reset mid-body): never decode, never store part of a batch.
        raise BadRequest(f"the body ended after {len(chunks)} of {request.content_length} bytes")
    return bytes(chunks)


async def _ingest(request: web.Request, *, store: bool) -> web.Response:
    collector = request.app[COLLECTOR]
    auth = request.app[AUTH]
    gate = request.app[GATE]
    gate.check_ready()
    headers = request.headers
    fmt, coding = read_media_type(headers.get("Content-Type"), headers.get("Content-Encoding"))
    # The credentials, from the head: a sender with none or wrong ones never holds a slot while its body trickles.
    claim = auth.claim(headers, request.query, now_s=time.time())
    sender = claim.sender
    ingest = gate.enter(sender)
    try:
        limits = collector.config.limits
        body = await _read_body(request, limits.max_body_bytes, collector.config.server.body_timeout_s)
        now_s = time.time()
        principal = auth.confirm(claim, method=request.method, path=request.path, body=body, now_s=now_s)
        if inflates_large(body, coding):  # zstd and zlib release the GIL: the loop serves others meanwhile
            data = await asyncio.to_thread(decompress, body, coding, limits.max_decoded_bytes, own_context=True)
        else:
            data = decompress(body, coding, limits.max_decoded_bytes)
        batch = decode_batch(data, fmt, limits)
        metrics = collector.metrics.bytes
        metrics["wire"] += len(body)
        metrics["decoded"] += len(data)
        if store:
            auth.take(principal, len(batch.events), now_s)
        outcome = await ingest.ingest(batch, principal, request_id_of(headers), store=store)
        return web.Response(body=outcome.to_json(), content_type=_CONTENT_JSON)
    finally:
        gate.leave(sender)


async def _batch(request: web.Request) -> web.Response:
    return await _ingest(request, store=True)


async def _debug(request: web.Request) -> web.Response:
    return await _ingest(request, store=False)


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    collector = request.app[COLLECTOR]
    admission = request.app[GATE].admission
    slots = {"in_flight": admission.authenticated, "max_in_flight": admission.limits.max_in_flight}
    if collector.is_ready() and not admission.full():
        return web.json_response({"status": "ready", **slots})
    if collector.is_ready():  # every slot is taken: an authenticated request would be refused now
        body: dict[str, object] = {"status": "unavailable", "reason": "overloaded", **slots}
        return web.json_response(body, status=503, headers={"Retry-After": "1"})
    log_down = "disk" if collector.config.sink.kind == "local" else "brokers"
    reason = "stopping" if collector.stopping else ("starting" if not collector.ready else log_down)
    detail = collector.raw.last_error or collector.quarantine.last_error
    body = {"status": "unavailable", "reason": reason}
    if detail and reason == log_down:
        body["error"] = detail
    return web.json_response(body, status=503, headers={"Retry-After": "5"})


async def _metrics(request: web.Request) -> web.Response:
    peers = request.app.get(PEERS)  # `--workers N`: every worker's counters, added up (http/workers.py)
    metrics = request.app[COLLECTOR].metrics
    text = metrics.render() if peers is None else await peers.metrics_text(metrics.snapshot())
    headers = {"X-Content-Format": "0.0.4"}
    if peers is not None:
        headers["X-Maidian-Worker"] = f"w{peers.workers.index}"
    return web.Response(text=text, content_type="text/plain", charset="utf-8", headers=headers)


class _MalformedRequests(logging.Filter):
    """aiohttp logs a request its parser refuses (a line over the limit) as an ERROR with a traceback:
    a sender's doing, not the collector's. One WARNING line instead, without the request's text."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, BadHttpMessage):
            record.msg, record.args = "refused a malformed request: %s (HTTP %d)", (type(exc).__name__, exc.code)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


_MALFORMED: Final = _MalformedRequests()


def make_app(config: Config, collector: Collector | None = None) -> web.Application:
    """The aiohttp application; the collector opens on startup and closes (draining, syncing) on cleanup."""
    server_log = logging.getLogger("aiohttp.server")
    if _MALFORMED not in server_log.filters:
        server_log.addFilter(_MALFORMED)
    # Sensors image beacons put their record in the URL: longer request lines only when Sensors is served.
    line_bytes = max_line_bytes(bool(config.auth.sensors_projects))
    app = web.Application(
        middlewares=[_errors],
        # Read bodies raw: decompression happens in pipeline/decode.py, capped (aiohttp would inflate zstd unbounded).
        handler_args={"auto_decompress": False, "max_field_size": 8190, "max_line_size": line_bytes},
        client_max_size=config.limits.max_body_bytes,
    )
    owned = collector or Collector(config)
    app[COLLECTOR] = owned
    app[AUTH] = Authenticator(config.auth)
    body_timeout_s = config.server.body_timeout_s

    def read_body(request: web.Request, limit: int) -> Awaitable[bytes]:
        return _read_body(request, limit, body_timeout_s)

    server = config.server
    admission = Admission(
        SlotLimits(
            max_in_flight=server.max_in_flight,
            per_sender=min(server.max_in_flight_per_sender, server.max_in_flight),
            unauthenticated=server.max_in_flight_unauthenticated,
        )
    )
    app[GATE] = Gate(owned, admission)
    owned.metrics.read_family(
        "maidian_admission_refused_total",
        "Requests answered 503 for want of a request slot: over the sender's share, the total, or the "
        "unauthenticated pool.",
        ("pool",),
        lambda: {(pool,): n for pool, n in admission.refused.items()},
    )
    vendors = VendorRoutes(owned, app[AUTH], app[GATE], read_body=read_body)
    app[VENDORS] = vendors

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        c = app[COLLECTOR]
        if c.ingest is None:
            c.open()
        await c.start()
        yield
        await c.close()

    app.cleanup_ctx.append(lifecycle)
    if config.live.enabled:  # the live view for QA (docs/guide-qa.md): off unless configured
        from maidian.collector.http.live_routes import mount_live

        mount_live(app, owned)
    if config.support.enabled:  # the support agents' view (docs/guide-support.md): off unless configured
        from maidian.collector.http.support_routes import mount_support

        mount_support(app, owned)
    app.router.add_post(BATCH_PATH, _batch)
    app.router.add_post(DEBUG_PATH, _debug)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    add_vendor_routes(app, vendors)
    return app
