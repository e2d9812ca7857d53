"""The live view's HTTP edge: the page, its assets, the event stream, the session's coverage, and who may see them.

Routes (mounted by `app.make_app` when `[live] enabled = true`, and by `maidian qa`):

    GET  /live                 the page (plain HTML, CSS and JavaScript shipped in the package)
    GET  /live/assets/{name}   live.css, live.js, report.css
    GET  /live/info            plan, tags seen, counts (JSON)
    GET  /live/stream          server-sent events: `hello`, then `ev` per judged event, `skipped` notes
    GET  /live/coverage        the session's coverage: ?format=html (a fragment) or json; ?tag=
    POST /live/session         {"token": "..."}: a browser presents the live token, gets a session cookie

Who may see it: the live view shows every user's events, so it never trusts a
write key (write keys ship inside apps and can be read out of any of them). A
browser presents the live token once (`[live] token_sha256` holds its SHA-256,
compared in constant time) and gets an HttpOnly, SameSite=Strict session
cookie scoped to /live, so the token is never in a URL or a log. Sessions
are signed rather than remembered, so with `--workers N` a session is valid
on every worker; workers other than w0 relay the data routes to w0, which
holds the one hub every worker's events reach (http/workers.py). With
`allow_loopback` (`maidian qa`), a browser on the same machine needs no
token, but only when it connected from a loopback address *and* asked for a
loopback host name, which refuses pages that rebind their own DNS name to
127.0.0.1. The page itself is served to anyone: it holds no data, and asks for
the token when the data routes answer 401.

Every response carries a Content-Security-Policy that allows only the page's
own files, so an event value can never run as script there.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Final

import msgspec
from aiohttp import web

from maidian.collector.http.pages import json_response, open_event_stream, serve_page, woken
from maidian.collector.http.workers import WORKERS, Forwarder, relay, watching_flag
from maidian.collector.qa.live import LiveFilter, LiveHub, LiveRecord
from maidian.collector.settings import LiveConfig, hash_key

if TYPE_CHECKING:
    from maidian.collector.service import Collector

__all__ = ["LIVE", "LIVE_DATA_ROUTES", "LIVE_ROUTES", "mount_live", "mount_live_data"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

LIVE: Final = web.AppKey("live", LiveHub)
LIVE_ROUTES: Final = (
    ("GET", "/live"),
    ("GET", "/live/assets/{name}"),
    ("GET", "/live/info"),
    ("GET", "/live/stream"),
    ("GET", "/live/coverage"),
    ("POST", "/live/session"),
)
_ASSETS: Final = {
    "live.css": "text/css",
    "live.js": "text/javascript",
    "report.css": "text/css",
}
_COOKIE: Final = "maidian_live"
# A tester's working day; the page asks for the token again after it.
_SESSION_S: Final = 12 * 3600
_LOOPBACK_NAMES: Final = frozenset({"localhost", "127.0.0.1", "::1"})
_json = msgspec.json.Encoder()


class _Access:
    """Who may read the live view: a signed session cookie from the token, or (when allowed) this machine.

    A session is `<expiry>.<nonce>.<HMAC-SHA256>` under a key derived from a
    secret and the token's hash: nothing is remembered per session, so every
    worker of `--workers N` (which share the secret, http/workers.py) accepts
    the sessions any of them issued, and changing the token ends them all.
    """

    def __init__(self, settings: LiveConfig, clock: Callable[[], float] = time.time) -> None:
        self.token_sha256 = settings.token_sha256.lower()
        self.allow_loopback = settings.allow_loopback
        self.clock = clock
        self.use_secret(secrets.token_bytes(32))

    def use_secret(self, secret: bytes) -> None:
        """Sign sessions under `secret` (the workers' shared one); sessions signed before no longer count."""
        self._key = hmac.new(secret, self.token_sha256.encode(), hashlib.sha256).digest()

    def _mac(self, message: str) -> str:
        return hmac.new(self._key, message.encode(), hashlib.sha256).hexdigest()

    def allows(self, request: web.Request) -> bool:
        if self.allow_loopback and _is_loopback_peer(request.remote) and _is_loopback_name(request.host):
            return True
        expiry, _, rest = request.cookies.get(_COOKIE, "").partition(".")
        nonce, _, mac = rest.partition(".")
        if not (expiry.isdigit() and nonce and mac):
            return False
        if not hmac.compare_digest(mac, self._mac(f"{expiry}.{nonce}")):
            return False
        return int(expiry) >= self.clock()

    def login(self, token: str) -> str | None:
        """A new session for the right token, else None."""
        if not self.token_sha256 or not hmac.compare_digest(hash_key(token), self.token_sha256):
            return None
        message = f"{int(self.clock() + _SESSION_S)}.{secrets.token_urlsafe(12)}"
        return f"{message}.{self._mac(message)}"


def _is_loopback_peer(remote: str | None) -> bool:
    try:
        return remote is not None and ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return False


def _is_loopback_name(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 or host.startswith("[") else host
    name = name.strip("[]").lower()
    if name in _LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


_ACCESS: Final = web.AppKey("live_access", _Access)


def _guarded(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def run(request: web.Request) -> web.StreamResponse:
        if not request.app[_ACCESS].allows(request):
            message = "the live view needs its token: open /live and enter it"
            return json_response({"error": {"code": "unauthenticated", "message": message}}, status=401)
        return await handler(request)

    return run


async def _info(request: web.Request) -> web.Response:
    return json_response(request.app[LIVE].info())


async def _coverage(request: web.Request) -> web.Response:
    from maidian.collector.qa.report import render_html_fragment

    report = request.app[LIVE].coverage(request.query.get("tag", "").strip() or None)
    if request.query.get("format") == "json":
        return json_response(report.to_dict())
    return web.Response(text=render_html_fragment(report), content_type="text/html", charset="utf-8")


async def _session(request: web.Request) -> web.Response:
    if request.content_type != "application/json":  # a cross-site form cannot send JSON without asking first
        return json_response({"error": {"code": "bad_request", "message": 'send {"token": ...} as JSON'}}, 415)
    try:
        body = msgspec.json.decode(await request.read(), type=dict[str, str])
    except msgspec.DecodeError:
        return json_response({"error": {"code": "bad_request", "message": 'send {"token": ...} as JSON'}}, 400)
    session = request.app[_ACCESS].login(body.get("token", ""))
    if session is None:
        return json_response({"error": {"code": "unauthenticated", "message": "that is not the live token"}}, 401)
    response = json_response({"ok": True})
    response.set_cookie(
        _COOKIE, session, max_age=_SESSION_S, path="/live", httponly=True, samesite="Strict", secure=request.secure
    )
    return response


def _sse(records: list[LiveRecord], skipped: int) -> bytes:
    parts = []
    if skipped:
        parts.append(b'event: skipped\ndata: {"n":%d}\n\n' % skipped)
    for r in records:
        parts.append(b"id: %d\nevent: ev\ndata: %s\n\n" % (r.seq, r.data))
    return b"".join(parts)


async def _stream(request: web.Request) -> web.StreamResponse:
    hub = request.app[LIVE]
    flt = LiveFilter.from_query(request.query)
    # A reconnecting EventSource says what it has seen (Last-Event-ID); a new one says where the page was cleared.
    after = request.headers.get("Last-Event-ID") or request.query.get("after") or "0"
    after_seq = int(after) if after.isdigit() else 0
    workers = request.app.get(WORKERS)
    response = await open_event_stream(request, {"X-Maidian-Worker": f"w{workers.index}"} if workers else None)
    ready = asyncio.Event()
    sub = hub.subscribe(flt, ready.set, after_seq=after_seq)
    try:
        hello = _json.encode({"last_seq": hub.history[-1].seq if hub.history else 0})
        await response.write(b"retry: 1000\nevent: hello\ndata: %s\n\n" % hello)
        while not hub.closed:
            if not await woken(response, ready):
                continue
            records, skipped = sub.take()
            if records or skipped:
                await response.write(_sse(records, skipped))  # waits while the page is slow; its queue drops
    except ConnectionError:
        pass  # the page went away
    finally:
        hub.unsubscribe(sub)
    return response


def _relayed(handler: Handler) -> Handler:
    """In a worker other than w0 (http/workers.py), answer with w0's answer: it keeps the one live hub."""

    async def run(request: web.Request) -> web.StreamResponse:
        forwarder = request.app.get(_FORWARDER)
        if forwarder is not None:
            return await relay(request, forwarder)
        response = await handler(request)
        workers = request.app.get(WORKERS)
        if workers is not None and not response.prepared:
            response.headers["X-Maidian-Worker"] = f"w{workers.index}"  # which worker answered
        return response

    return run


LIVE_DATA_ROUTES: Final[dict[str, Handler]] = {
    "/live/info": _info,
    "/live/stream": _stream,
    "/live/coverage": _coverage,
}
"""The data routes, as served to pages (guarded) and to sibling workers (`mount_live_data`)."""


def mount_live_data(app: web.Application, hub: LiveHub) -> None:
    """Serve `hub`'s data routes unguarded: w0's private socket, for the workers that relay their pages to it."""
    app[LIVE] = hub
    for path, handler in LIVE_DATA_ROUTES.items():
        app.router.add_get(path, handler)


_FORWARDER: Final = web.AppKey("live_forwarder", Forwarder)


def mount_live(app: web.Application, collector: Collector) -> LiveHub:
    """Serve the live view of `collector` on `app` (settings from `[live]`); the hub follows its pipeline once open."""
    settings = collector.config.live
    hub = LiveHub(
        collector.plan,
        history_events=settings.history_events,
        queue_events=settings.queue_events,
        observe_always=settings.observe_always,
    )
    app[LIVE] = hub
    app[_ACCESS] = _Access(settings)
    serve_page(app, "/live", "maidian.collector.qa", "live.html", _ASSETS)

    async def follow(app: web.Application) -> AsyncIterator[None]:
        workers = app.get(WORKERS)
        forwarder = None
        if workers is not None:
            app[_ACCESS].use_secret(workers.session_key)
        if workers is not None and workers.index != 0:
            forwarder = app[_FORWARDER] = Forwarder(workers)
            if collector.ingest is not None:
                collector.ingest.observer = forwarder.observe
            forwarder.start()
        elif collector.ingest is not None:
            if workers is not None:
                hub.on_watching = watching_flag(workers)
            hub.attach(collector.ingest)
        yield
        hub.close()
        if forwarder is not None:
            await forwarder.close()

    async def stop_streams(app: web.Application) -> None:
        hub.close()  # streams end now, not at the shutdown timeout
        forwarder = app.get(_FORWARDER)
        if forwarder is not None:
            forwarder.end_relays()  # relayed streams too

    app.cleanup_ctx.append(follow)
    app.on_shutdown.append(stop_streams)
    for path, handler in LIVE_DATA_ROUTES.items():
        app.router.add_get(path, _guarded(_relayed(handler)))
    app.router.add_post("/live/session", _session)
    return hub
