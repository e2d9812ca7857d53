"""A protocol-faithful collector stand-in for SDK tests: a real aiohttp server on 127.0.0.1.

It speaks docs/protocol.md: it authenticates (write key or signature), decodes
zstd + msgpack (or JSON) batches, validates events against a plan at the wire
stage when given one, deduplicates by event id, and answers 200 with one
result per event in order. Tests script its failures:

- `script(Fault(...), ...)`: the next requests get these answers instead
  (a status with a Retry-After, a hang, a lost answer after storing, a delay);
- `delay_s`: every request takes at least this long;
- `blackhole = True`: requests are read and never answered.

It records every request (time, path, headers, event ids) and every event it
stored, raw and deduplicated, so a test checks delivery as a set:
lost = tracked - stored, duplicates = raw count - unique count. It runs its own
event loop in a thread, so sync and async clients meet the same server.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import zstandard
from aiohttp import web

from maidian.tracking_plan import envelope, signing

__all__ = ["Fault", "RequestLog", "Sink"]


@dataclass(frozen=True, slots=True)
class Fault:
    """One scripted answer. `store=True` stores the events before answering (a lost ack when `drop`)."""

    status: int = 503
    retry_after: str | None = None
    body: bytes = b'{"error": {"code": "unavailable", "message": "scripted"}}'
    drop: bool = False  # close the connection without any answer
    hang_s: float = 0.0  # wait this long before answering
    store: bool = False


@dataclass(frozen=True, slots=True)
class RequestLog:
    at: float  # time.monotonic() when the request arrived
    path: str
    headers: dict[str, str]
    event_ids: tuple[str, ...]
    status: int | None
    body_bytes: int


@dataclass
class Sink:
    write_keys: frozenset[str] = frozenset({"wk_test"})
    secrets: dict[str, bytes] = field(default_factory=lambda: {"orders-service": b"s3cret"})
    validator: Any = None  # a maidian.tracking_plan.Validator at the wire stage, or None
    delay_s: float = 0.0
    blackhole: bool = False
    ssl_context: Any = None  # an ssl.SSLContext: serve https (https://localhost:<port>)
    url: str = ""
    requests: list[RequestLog] = field(default_factory=list)
    raw: list[dict[str, Any]] = field(default_factory=list)
    stored: dict[str, dict[str, Any]] = field(default_factory=dict)
    quarantined: dict[str, list[Any]] = field(default_factory=dict)
    bodies: list[bytes] = field(default_factory=list)  # decompressed, as the collector would read them
    batches: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._faults: deque[Fault] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._release: asyncio.Event | None = None
        self.arrived = threading.Event()  # set at the first request

    # -- control ----------------------------------------------------------------

    def script(self, *faults: Fault) -> None:
        with self._lock:
            self._faults.extend(faults)

    def start(self) -> Sink:
        self._thread = threading.Thread(target=self._serve, name="sink", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the sink did not start")
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None or self._thread is None:
            return
        fut = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
        fut.result(10)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(10)
        self._loop = None

    def __enter__(self) -> Sink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_for(self, count: int, timeout_s: float = 20.0) -> bool:
        """Poll until `count` unique events are stored, or the deadline."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if len(self.stored) >= count:
                return True
            time.sleep(0.01)
        return len(self.stored) >= count

    def ids(self) -> set[str]:
        return set(self.stored)

    def raw_ids(self) -> list[str]:
        return [e["event_id"] for e in self.raw]

    def batch_requests(self) -> list[RequestLog]:
        return [r for r in self.requests if r.path == envelope.BATCH_PATH]

    # -- serving ------------------------------------------------------------------

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        loop.run_until_complete(self._startup())
        self._ready.set()
        loop.run_forever()
        loop.close()

    async def _startup(self) -> None:
        app = web.Application(client_max_size=envelope.DEFAULT_LIMITS.max_body_bytes)
        app.router.add_post(envelope.BATCH_PATH, self._handle)
        app.router.add_post(envelope.DEBUG_PATH, self._handle)
        self._release = asyncio.Event()
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5, auto_decompress=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.ssl_context)
        await site.start()
        sockets = site._server.sockets if site._server is not None else []  # type: ignore[union-attr]
        port = sockets[0].getsockname()[1]
        self.url = f"https://localhost:{port}" if self.ssl_context is not None else f"http://127.0.0.1:{port}"

    async def _shutdown(self) -> None:
        if self._release is not None:
            self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def _next_fault(self) -> Fault | None:
        with self._lock:
            return self._faults.popleft() if self._faults else None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        blackholed = self.blackhole  # as it was when the request came, whatever a test flips meanwhile
        self.arrived.set()
        body = await request.read()
        headers = dict(request.headers)
        fault = self._next_fault()
        if blackholed:
            assert self._release is not None
            await self._release.wait()
            return web.Response(status=503)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        auth = self._authenticate(request, body)
        if auth is not None:
            self._log(arrived, request, headers, (), auth.status, body)
            return auth
        try:
            plain = self._plain(body, headers)
            batch = self._decode(plain, headers)
        except Exception as exc:
            self._log(arrived, request, headers, (), 400, body)
            return web.json_response({"error": {"code": "undecodable", "message": str(exc)[:200]}}, status=400)
        events = batch["events"]
        ids = tuple(str(e.get("event_id")) for e in events)
        if fault is not None:
            if fault.hang_s:
                await asyncio.sleep(fault.hang_s)
            if fault.store and request.path == envelope.BATCH_PATH:
                self._store(events)
            self._log(arrived, request, headers, ids, None if fault.drop else fault.status, body)
            if fault.drop:
                if request.transport is not None:
                    request.transport.close()
                return web.Response(status=500)
            resp_headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
            if not fault.store:
                return web.Response(
                    status=fault.status, body=fault.body, headers=resp_headers, content_type="application/json"
                )
        self._log(arrived, request, headers, ids, 200, body)
        self.bodies.append(plain)
        self.batches.append({k: v for k, v in batch.items() if k != "events"})
        results = self._store(events) if request.path == envelope.BATCH_PATH else self._judge(events)
        counts = {s: sum(1 for r in results if r["status"] == s) for s in envelope.OUTCOMES}
        return web.json_response({**counts, "results": results})

    def _authenticate(self, request: web.Request, body: bytes) -> web.Response | None:
        key = request.headers.get(envelope.HEADER_WRITE_KEY)
        if key is not None:
            if key in self.write_keys:
                return None
            return _error(401, "unauthenticated", "unknown write key")
        source = request.headers.get(envelope.HEADER_SOURCE)
        secret = self.secrets.get(source or "")
        if secret is None:
            return _error(401, "unauthenticated", "no credentials")
        try:
            timestamp = int(request.headers.get(envelope.HEADER_TIMESTAMP, ""))
        except ValueError:
            return _error(401, "unauthenticated", "bad timestamp")
        ok = signing.signature_matches(
            request.headers.get(envelope.HEADER_SIGNATURE, ""),
            secret,
            timestamp=timestamp,
            nonce=request.headers.get(envelope.HEADER_NONCE, ""),
            method=request.method,
            path=request.path,
            body=body,
        )
        if not ok or abs(time.time() - timestamp) > signing.WINDOW_S:
            return _error(401, "unauthenticated", "bad signature")
        return None

    @staticmethod
    def _plain(body: bytes, headers: dict[str, str]) -> bytes:
        if headers.get("Content-Encoding") == "zstd":
            return zstandard.ZstdDecompressor().decompress(
                body, max_output_size=envelope.DEFAULT_LIMITS.max_decoded_bytes
            )
        return body

    @staticmethod
    def _decode(body: bytes, headers: dict[str, str]) -> dict[str, Any]:
        if headers.get("Content-Type", "").startswith(envelope.CONTENT_TYPE_JSON):
            batch = msgspec.json.decode(body)
        else:
            batch = msgspec.msgpack.decode(body)
        if not isinstance(batch, dict) or not isinstance(batch.get("events"), list):
            raise ValueError("not a batch")
        unknown = set(batch) - set(envelope.BATCH_FIELDS)
        if unknown:
            raise ValueError(f"unknown batch fields {sorted(unknown)}")
        return batch

    def _judge(self, events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for event in events:
            violations = self.validator.validate(event) if self.validator is not None else []
            if violations:
                out.append({"status": "quarantined", "reasons": [v.to_dict() for v in violations]})
            elif event.get("event_id") in self.stored:
                out.append({"status": "duplicate"})
            else:
                out.append({"status": "accepted"})
        return out

    def _store(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        results = self._judge(events)
        for event, result in zip(events, results, strict=True):
            self.raw.append(event)
            if result["status"] == "accepted":
                self.stored[event["event_id"]] = event
            elif result["status"] == "quarantined":
                self.quarantined[event["event_id"]] = result["reasons"]
        return results

    def _log(
        self,
        at: float,
        request: web.Request,
        headers: dict[str, str],
        ids: tuple[str, ...],
        status: int | None,
        body: bytes,
    ) -> None:
        self.requests.append(RequestLog(at, request.path, headers, ids, status, len(body)))


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)
