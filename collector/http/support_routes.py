"""The support view's HTTP edge: the page, the staff's sessions, search, timeline, live updates, export, audit.

Routes (mounted by `app.make_app` when `[support] enabled = true`):

    GET  /support                   the page (HTML, CSS, JavaScript shipped in the package; no data in it)
    GET  /support/assets/{name}     support.css, support.js
    POST /support/api/login         {"name", "password"}: a session cookie (HttpOnly, SameSite=Strict, /support)
    POST /support/api/logout
    GET  /support/api/me            the account, its role, the CSRF token, the plan's lines and identity types
    POST /support/api/search        {"value", "type", "reason"}: find a person; opens them as the session's view
    POST /support/api/timeline      {"cursor", "lines", "events", "since", "until"}: one page of the view's events
    GET  /support/api/stream        server-sent events: the view's new events as the collector judges them
    POST /support/api/export        officers only: the view's events as JSON lines
    GET  /support/api/audit         officers only: the audit records, newest first

Promises:
- every route but the page, its assets and login answers 401 without a live
  session; `export` and `audit` answer 403 to an agent;
- every POST but login needs the session's CSRF token in `X-CSRF-Token`, and
  every POST must be JSON (a cross-site form cannot send it without a
  preflight) from this origin when the browser says where it comes from;
- identity values travel only in POST bodies, never in a URL, and are never
  logged; a search, each timeline page and each export append an audit
  record (who, role, what, the pseudonymous person id, the reason typed)
  before the answer goes out, and a search without a reason is refused;
- a session holds one person at a time: a new search replaces the view.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

import msgspec
from aiohttp import web

from maidian.collector.http.live_routes import LIVE
from maidian.collector.http.pages import json_response, open_event_stream, serve_page, woken
from maidian.collector.identity.graph import IdentityGraph
from maidian.collector.privacy.audit import AuditLog
from maidian.collector.qa.live import LiveFilter, LiveHub
from maidian.collector.settings import SupportConfig
from maidian.collector.store.catalog import Catalog
from maidian.collector.support.access import Access, LockedOut, Session
from maidian.collector.support.timeline import Found, PersonFrames, Timeline, TimelineFilter, find_person

if TYPE_CHECKING:
    from maidian.collector.service import Collector

__all__ = ["SUPPORT_ROUTES", "mount_support"]

log = logging.getLogger("maidian.collector")

SUPPORT_ROUTES: Final = (
    ("GET", "/support"),
    ("GET", "/support/assets/{name}"),
    ("POST", "/support/api/login"),
    ("POST", "/support/api/logout"),
    ("GET", "/support/api/me"),
    ("POST", "/support/api/search"),
    ("POST", "/support/api/timeline"),
    ("GET", "/support/api/stream"),
    ("POST", "/support/api/export"),
    ("GET", "/support/api/audit"),
)
_ASSETS: Final = {"support.css": "text/css", "support.js": "text/javascript"}
_COOKIE: Final = "maidian_support"
_MAX_BODY_BYTES: Final = 16 << 10
_EXPORT_PAGE: Final = 2000


@dataclass(slots=True)
class _View:
    """The person a session has open: who, why, and what the timeline has learnt of their frames."""

    found: Found
    reason: str
    memory: PersonFrames = field(default_factory=PersonFrames)


class _Support:
    """The support view's state in one collector process."""

    def __init__(self, collector: Collector, settings: SupportConfig) -> None:
        self.settings = settings
        self.collector = collector
        self.access = Access(settings)
        self.audit = AuditLog(collector.data.root, name="support.jsonl")
        self.timeline = Timeline(collector.data.root, collector.plan, settings.time_zone)
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="maidian-support")
        key = os.environ.get(settings.pii_key_env, "")
        self.pii_key = key.encode() if key else None
        self.hub: LiveHub | None = None

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)


_STATE: Final = web.AppKey("support", _Support)


def _error(status: int, code: str, message: str) -> web.Response:
    return json_response({"error": {"code": code, "message": message}}, status)


def _peer(request: web.Request, settings: SupportConfig) -> str:
    """The client's address: the peer's, or the last X-Forwarded-For hop when the peer is a trusted proxy."""
    peer = request.remote or ""
    forwarded = request.headers.get("X-Forwarded-For", "")
    if forwarded and settings.sso_proxies:
        try:
            if any(ipaddress.ip_address(peer) in n for n in settings.sso_proxies):
                return forwarded.rsplit(",", 1)[-1].strip()
        except ValueError:
            pass
    return peer


def _session(request: web.Request) -> tuple[Session | None, bool]:
    """The request's session, and whether single sign-on opened it just now (the answer then sets its cookie)."""
    state = request.app[_STATE]
    session = state.access.session(request.cookies.get(_COOKIE, ""))
    header = state.settings.sso_header
    if header and (session is None or session.via == "sso"):
        user = request.headers.get(header, "").strip()
        if session is not None and user == session.account:
            return session, False
        fresh = state.access.sso(user, request.remote)
        return fresh, fresh is not None
    return session, False


Handler = Callable[[web.Request, Session], Awaitable[web.StreamResponse]]


def _guarded(handler: Handler, *, post: bool = False, officer: bool = False) -> Callable[..., Any]:
    async def run(request: web.Request) -> web.StreamResponse:
        session, fresh = _session(request)
        if session is None:
            return _error(401, "unauthenticated", "sign in to the support view first")
        if post:
            refusal = _post_refusal(request)
            if refusal is not None:
                return refusal
            if not request.app[_STATE].access.csrf_ok(session, request.headers.get("X-CSRF-Token", "")):
                return _error(403, "csrf", "the request lacks this session's CSRF token")
        if officer and session.role != "officer":
            return _error(403, "forbidden", "only an officer may do this")
        response = await handler(request, session)
        if fresh and not response.prepared:
            _set_cookie(response, request, session)
        return response

    return run


def _post_refusal(request: web.Request) -> web.Response | None:
    if request.content_type != "application/json":
        return _error(415, "bad_request", "send JSON")
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"{request.scheme}://{request.host}":
        return _error(403, "csrf", "a request from another origin")
    return None


def _set_cookie(response: web.StreamResponse, request: web.Request, session: Session) -> None:
    state = request.app[_STATE]
    response.set_cookie(
        _COOKIE,
        session.sid,
        max_age=int(state.settings.session_max_s),
        path="/support",
        httponly=True,
        samesite="Strict",
        secure=request.secure or state.settings.secure_cookie,
    )


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.content.read(_MAX_BODY_BYTES + 1)
    if len(raw) > _MAX_BODY_BYTES:
        raise web.HTTPRequestEntityTooLarge(max_size=_MAX_BODY_BYTES, actual_size=len(raw))
    try:
        body = msgspec.json.decode(raw or b"{}")
    except msgspec.DecodeError:
        raise web.HTTPBadRequest(text="not JSON") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="expected a JSON object")
    return body


async def _login(request: web.Request) -> web.StreamResponse:
    state = request.app[_STATE]
    refusal = _post_refusal(request)
    if refusal is not None:
        return refusal
    body = await _body(request)
    name, secret = str(body.get("name", ""))[:200], str(body.get("password", ""))[:1000]
    address = _peer(request, state.settings)
    loop = asyncio.get_running_loop()
    try:
        session = await loop.run_in_executor(None, state.access.login, name, secret, address)
    except LockedOut as exc:
        log.warning("support: login refused while locked out (account or address)")
        response = _error(429, "locked_out", "too many failed logins; try again later")
        response.headers["Retry-After"] = str(int(exc.retry_after_s) + 1)
        return response
    if session is None:
        log.warning("support: failed login from %s", address)
        return _error(401, "unauthenticated", "wrong name or password")
    log.info("support: %s (%s) signed in from %s", session.account, session.role, address)
    response = json_response({"ok": True, "csrf": session.csrf})
    _set_cookie(response, request, session)
    return response


async def _logout(request: web.Request, session: Session) -> web.StreamResponse:
    request.app[_STATE].access.logout(session)
    response = json_response({"ok": True})
    response.del_cookie(_COOKIE, path="/support")
    return response


async def _me(request: web.Request, session: Session) -> web.StreamResponse:
    state = request.app[_STATE]
    plan = state.collector.plan
    return json_response(
        {
            "account": session.account,
            "role": session.role,
            "csrf": session.csrf,
            "time_zone": state.settings.time_zone,
            "plan": {"name": plan.name, "version": plan.version},
            "lines": [{"prefix": p, "title": line.title} for p, line in plan.business_lines.items()],
            "events": sorted(plan.events),
            "identity_types": [
                {"name": t, "hashed": spec.pii == "hash", "description": spec.description}
                for t, spec in sorted(plan.identities.items(), key=lambda kv: (kv[1].priority, kv[0]))
            ],
        }
    )


def _person_json(found: Found, timeline: Timeline) -> dict[str, Any]:
    def linked(i: Any) -> dict[str, Any]:
        at = i.first_seen_ms
        return {**asdict(i), "first_seen_local": "" if at is None else timeline.local(at).strftime("%Y-%m-%d %H:%M:%S")}

    return {
        "person": found.person,
        "matched_type": found.matched_type,
        "identities": [linked(i) for i in found.identities],
    }


async def _search(request: web.Request, session: Session) -> web.StreamResponse:
    state = request.app[_STATE]
    body = await _body(request)
    reason = str(body.get("reason", "")).strip()
    if len(reason) < 4:
        return _error(400, "reason_required", "say why you look this customer up (a ticket or call reference)")
    value = str(body.get("value", ""))[:256]
    kind = str(body.get("type", "")) or None
    if kind is not None and kind not in state.collector.plan.identities:
        return _error(400, "bad_request", "not an identity type of the plan")

    def look(_catalog: Catalog, graph: IdentityGraph) -> Found | None:
        return find_person(graph, state.collector.plan, value, kind, pii_key=state.pii_key)

    found = await state.collector.read_catalog(look)
    session.view = None
    if found is None:
        await state.run(state.audit.append, session.account, session.role, "lookup_miss", "", reason)
        return _error(404, "not_found", "no person has that identity")
    session.view = _View(found, reason)
    await state.run(state.audit.append, session.account, session.role, "lookup", found.person, reason)
    return json_response(_person_json(found, state.timeline))


def _local_ms(state: _Support, text: Any) -> int | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise web.HTTPBadRequest(text="times look like 2026-12-07T09:30") from None
    if at.tzinfo is None:
        at = at.replace(tzinfo=state.timeline.zone)
    return int(at.timestamp() * 1000)


def _filter(state: _Support, body: dict[str, Any]) -> TimelineFilter:
    def names(key: str) -> frozenset[str]:
        raw = body.get(key) or []
        return frozenset(str(x) for x in raw if x) if isinstance(raw, list) else frozenset()

    return TimelineFilter(
        names("lines"), names("events"), _local_ms(state, body.get("since")), _local_ms(state, body.get("until"))
    )


def _with_view(handler: Callable[[web.Request, Session, _View], Awaitable[web.StreamResponse]]) -> Handler:
    """A handler for the person the session has open: 409 until a search opened one."""

    async def run(request: web.Request, session: Session) -> web.StreamResponse:
        view = session.view
        if not isinstance(view, _View):
            return _error(409, "no_person", "search for a person first")
        return await handler(request, session, view)

    return run


async def _timeline(request: web.Request, session: Session, view: _View) -> web.StreamResponse:
    state = request.app[_STATE]
    body = await _body(request)
    flt = _filter(state, body)
    cursor = body.get("cursor") if isinstance(body.get("cursor"), str) else None

    def read(catalog: Catalog, graph: IdentityGraph) -> dict[str, Any]:
        page = state.timeline.page(
            catalog, graph, view.found, view.memory, flt=flt, cursor=cursor, limit=state.settings.page_events
        )
        out: dict[str, Any] = {"events": page.events, "cursor": page.cursor}
        names = {e["event"] for e in page.events}
        if cursor is None:
            out["quarantined"] = state.timeline.quarantined(graph, view.found, flt)
            names |= {e["event"] for e in out["quarantined"]}
        out["notes"] = state.timeline.notes(names)
        return out

    out = await state.collector.read_catalog(read)
    await state.run(state.audit.append, session.account, session.role, "view", view.found.person, view.reason)
    return json_response(out)


async def _export(request: web.Request, session: Session, view: _View) -> web.StreamResponse:
    state = request.app[_STATE]
    body = await _body(request)
    reason = str(body.get("reason", "")).strip() or view.reason
    await state.run(state.audit.append, session.account, session.role, "export", view.found.person, reason)
    response = web.StreamResponse(
        headers={
            "Content-Type": "application/x-ndjson; charset=utf-8",
            "Content-Disposition": f'attachment; filename="person-{view.found.person}.jsonl"',
        }
    )
    await response.prepare(request)
    memory = PersonFrames()
    cursor: str | None = None
    while True:

        def read(catalog: Catalog, graph: IdentityGraph, c: str | None = cursor) -> Any:
            return state.timeline.page(
                catalog, graph, view.found, memory, flt=TimelineFilter(), cursor=c, limit=_EXPORT_PAGE
            )

        page = await state.collector.read_catalog(read)
        await response.write(b"".join(json.dumps(e, ensure_ascii=False).encode() + b"\n" for e in page.events))
        if page.cursor is None:
            break
        cursor = page.cursor
    await response.write_eof()
    return response


async def _audit(request: web.Request, session: Session) -> web.StreamResponse:
    state = request.app[_STATE]
    before = request.query.get("before", "")
    records = await state.run(lambda: state.audit.list(before=int(before) if before.isdigit() else None))
    zone = state.timeline.zone
    return json_response(
        {
            "records": [
                {**asdict(r), "local": datetime.fromtimestamp(r.at_ms / 1000, zone).strftime("%Y-%m-%d %H:%M:%S")}
                for r in records
            ]
        }
    )


async def _stream(request: web.Request, session: Session, view: _View) -> web.StreamResponse:
    """The view's new events, as the collector judges them: accepted ones attributed to the person, and quarantined."""
    state = request.app[_STATE]
    hub = state.hub
    if hub is None:
        return _error(503, "not_ready", "the collector is not following its pipeline yet")
    values = {v for _t, v in view.found.members}
    signed = {source.name for source in state.collector.config.auth.sources}
    response = await open_event_stream(request)
    ready = asyncio.Event()
    sub = hub.subscribe(LiveFilter(), ready.set, after_seq=hub.history[-1].seq if hub.history else 0)

    def pick(docs: list[dict[str, Any]], _catalog: Catalog, graph: IdentityGraph) -> list[dict[str, Any]]:
        out = []
        for doc in docs:
            event = doc.get("payload")
            if not isinstance(event, dict):
                continue
            ids = {str(t): str(v) for t, v in (doc.get("identities") or {}).items()}
            trusted = doc.get("source") in signed
            if doc.get("verdict") == "accepted" and graph.attribute(ids, trusted=trusted) not in (
                None,
                view.found.person,
            ):
                continue
            shaped = state.timeline.shape({**event, "source": doc.get("source")})
            shaped["verdict"] = doc.get("verdict")
            shaped["reasons"] = doc.get("reasons", [])
            out.append(shaped)
        return out

    try:
        await response.write(b"retry: 2000\nevent: hello\ndata: {}\n\n")
        while not hub.closed and session.view is view and state.access.sessions.get(session.sid) is session:
            if not await woken(response, ready):
                continue
            records, _skipped = sub.take()
            docs = [
                json.loads(r.data)
                for r in records
                if r.verdict != "duplicate" and any(v in values for v in r.identities)
            ]
            if not docs:
                continue
            events = await state.collector.read_catalog(functools.partial(pick, docs))
            if events:
                notes = state.timeline.notes({e["event"] for e in events})
                data = json.dumps({"events": events, "notes": notes}, ensure_ascii=False).encode()
                await response.write(b"event: events\ndata: %s\n\n" % data)
    except ConnectionError:
        pass
    finally:
        hub.unsubscribe(sub)
    return response


def mount_support(app: web.Application, collector: Collector) -> None:
    """Serve the support view of `collector` on `app` (settings from `[support]`)."""
    state = _Support(collector, collector.config.support)
    app[_STATE] = state
    serve_page(app, "/support", "maidian.collector.support", "support.html", _ASSETS)

    async def follow(app: web.Application) -> AsyncIterator[None]:
        if LIVE in app:
            state.hub = app[LIVE]  # the live view's hub already follows the pipeline: share its fan-out
            own = False
        else:
            state.hub = LiveHub(collector.plan, history_events=0)
            own = True
            if collector.ingest is not None:
                state.hub.attach(collector.ingest)
        yield
        if own and state.hub is not None:
            state.hub.close()
        state.pool.shutdown(wait=True)

    async def stop_streams(app: web.Application) -> None:
        if state.hub is not None and LIVE not in app:
            state.hub.close()

    app.cleanup_ctx.append(follow)
    app.on_shutdown.append(stop_streams)
    app.router.add_post("/support/api/login", _login)
    app.router.add_post("/support/api/logout", _guarded(_logout, post=True))
    app.router.add_get("/support/api/me", _guarded(_me))
    app.router.add_post("/support/api/search", _guarded(_search, post=True))
    app.router.add_post("/support/api/timeline", _guarded(_with_view(_timeline), post=True))
    app.router.add_get("/support/api/stream", _guarded(_with_view(_stream)))
    app.router.add_post("/support/api/export", _guarded(_with_view(_export), post=True, officer=True))
    app.router.add_get("/support/api/audit", _guarded(_audit, officer=True))
