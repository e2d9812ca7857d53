"""A capture server for the vendor SDK tests: a real aiohttp app on 127.0.0.1 that records every request.

It answers each request with `answer(captured)` (success by default), after any
statuses queued in `fail_next`, so a test can make the SDK see an outage and
retry. The tests then decode what was captured: they pin what the real SDKs
send, apart from the collector (test_vendor_e2e.py drives the same SDKs
against a real `maidian serve`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from maidian.collector.vendors.common import VendorResponse


@dataclass(frozen=True, slots=True)
class Captured:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


def ok(_: Captured) -> VendorResponse:
    return VendorResponse(200)


@dataclass
class CaptureServer:
    answer: Callable[[Captured], VendorResponse] = ok
    requests: list[Captured] = field(default_factory=list)
    fail_next: list[int] = field(default_factory=list)

    def app(self) -> web.Application:
        # The decoders gunzip with a cap; aiohttp would otherwise inflate bodies itself, uncapped.
        app = web.Application(handler_args={"auto_decompress": False})
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        captured = Captured(
            request.method, request.path, request.query_string, dict(request.headers), await request.read()
        )
        self.requests.append(captured)
        if self.fail_next:
            return web.Response(status=self.fail_next.pop(0), text="try again later")
        answer = self.answer(captured)
        response = web.Response(status=answer.status, body=answer.body, content_type=answer.content_type.split(";")[0])
        for name, value in answer.headers:
            response.headers[name] = value
        return response
