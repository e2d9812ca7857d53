"""What every browser page the collector serves shares: its files, its security headers, JSON answers, event streams.

`serve_page` mounts a page at a path prefix (`/live`, `/support`), its assets
under `<prefix>/assets/`, and a middleware that puts `SECURITY_HEADERS` on
every answer under the prefix: a Content-Security-Policy that lets the page
run only its own files, so an event value can never run as script there.
`open_event_stream` starts a server-sent-events answer with the same headers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from importlib import resources
from typing import Final

import msgspec
from aiohttp import web

__all__ = ["HEARTBEAT_S", "SECURITY_HEADERS", "json_response", "open_event_stream", "serve_page", "woken"]

# Proxies and browsers drop idle streams after about a minute; a comment line every 15 s keeps them.
HEARTBEAT_S: Final = 15.0
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_json = msgspec.json.Encoder()

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(data: object, status: int = 200) -> web.Response:
    return web.Response(body=_json.encode(data), status=status, content_type="application/json", charset="utf-8")


def serve_page(app: web.Application, prefix: str, package: str, page: str, assets: Mapping[str, str]) -> None:
    """Serve `package`'s assets/`page` at `prefix`, the named `assets` (name: content type) under `prefix`/assets/."""
    folder = resources.files(package).joinpath("assets")

    async def show_page(request: web.Request) -> web.Response:
        return web.Response(body=folder.joinpath(page).read_bytes(), content_type="text/html", charset="utf-8")

    async def show_asset(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        kind = assets.get(name)
        if kind is None:
            raise web.HTTPNotFound()
        return web.Response(body=folder.joinpath(name).read_bytes(), content_type=kind, charset="utf-8")

    @web.middleware
    async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        if request.path == prefix or request.path.startswith(prefix + "/"):
            for name, value in SECURITY_HEADERS.items():
                response.headers.setdefault(name, value)
        return response

    app.middlewares.append(security_headers)
    app.router.add_get(prefix, show_page)
    app.router.add_get(prefix + "/assets/{name}", show_asset)


async def open_event_stream(request: web.Request, headers: Mapping[str, str] | None = None) -> web.StreamResponse:
    """A prepared server-sent-events answer: unbuffered through proxies, with the pages' security headers."""
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream; charset=utf-8", "X-Accel-Buffering": "no"}
    )
    for name, value in {**SECURITY_HEADERS, **(headers or {})}.items():
        response.headers[name] = value
    await response.prepare(request)
    return response


async def woken(response: web.StreamResponse, ready: asyncio.Event) -> bool:
    """Wait for `ready` (then clear it: True), or write a keep-alive comment after `HEARTBEAT_S` (False)."""
    try:
        await asyncio.wait_for(ready.wait(), HEARTBEAT_S)
    except TimeoutError:
        await response.write(b": keep-alive\n\n")
        return False
    ready.clear()
    return True
