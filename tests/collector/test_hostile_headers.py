"""No header, query or path value makes any route answer 5xx (issue 14, item 3).

A real collector app (native, Sensors, Segment and live routes all mounted)
listens on 127.0.0.1; each example sends one otherwise valid request as raw
bytes over a socket, with one header given a hostile value (bytes that are not
UTF-8, controls, lone UTF-8 continuation bytes, very long values), a hostile
query string, or a hostile path segment, and reads the status line. Raw bytes,
because an HTTP client would refuse to send most of these values. Every route
the app serves must have a request here: a route added without one fails
`test_every_route_has_a_request`.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import msgspec
import pytest
import zstandard
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maidian.collector.http.app import make_app
from maidian.collector.settings import (
    AuthConfig,
    Config,
    LiveConfig,
    ServerSource,
    StorageConfig,
    VendorSource,
    WriteKey,
    hash_key,
)
from maidian.tracking_plan import signing
from tests.collector.vendor_helpers import basic, securities_vendor_plan, sensors_form, sensors_payload

KEY = "mk_hostile_app_0001"
SOURCE = "orders-service"
SECRET = b"orders-service-secret-0123456789"
LIVE_TOKEN = "live-token-0123456789"
# The headers the collector reads somewhere, and a few it never reads.
HEADER_NAMES = (
    "X-Request-Id",
    "Content-Type",
    "Content-Encoding",
    "X-Maidian-Write-Key",
    "X-Maidian-Source",
    "X-Maidian-Timestamp",
    "X-Maidian-Nonce",
    "X-Maidian-Signature",
    "Authorization",
    "Origin",
    "Dry-Run",
    "Cookie",
    "Last-Event-ID",
    "User-Agent",
    "Referer",
    "Accept-Encoding",
    "Access-Control-Request-Headers",
    "Access-Control-Request-Method",
    "X-Forwarded-For",
    "Host",
)


@dataclass(frozen=True, slots=True)
class Template:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


def _now_ms() -> int:
    return int(time.time() * 1000)


def _native_body(seq: int) -> bytes:
    event = {
        "type": "track",
        "event": "app_launch",
        "event_id": f"0193a5b2c3d4e5f60718293a4b5c6d7e-{seq}",
        "time": _now_ms(),
        "identities": {"anonymous_id": "dev-hostile"},
        "properties": {"launch_type": "cold"},
    }
    batch = {"sent_at": _now_ms(), "events": [event]}
    return zstandard.ZstdCompressor().compress(msgspec.msgpack.encode(batch))


def _sensors_record() -> dict[str, Any]:
    return {
        "type": "track",
        "event": "$AppStart",
        "time": _now_ms(),
        "distinct_id": "dev-hostile",
        "properties": {
            "$lib": "js",
            "$lib_version": "1.26.0",
            "LaunchType": "cold",
            "LaunchSource": "icon",
            "IsFirstLaunch": False,
        },
        "project": "broker",
    }


def templates(seq: int) -> list[Template]:
    """One valid request per route (method, path pattern)."""
    native = _native_body(seq)
    key = {"Content-Type": "application/msgpack", "Content-Encoding": "zstd", "X-Maidian-Write-Key": KEY}
    stamp = int(time.time())
    nonce = signing.make_nonce()
    signed = {
        "Content-Type": "application/msgpack",
        "Content-Encoding": "zstd",
        "X-Maidian-Source": SOURCE,
        "X-Maidian-Timestamp": str(stamp),
        "X-Maidian-Nonce": nonce,
        "X-Maidian-Signature": signing.sign(
            SECRET, timestamp=stamp, nonce=nonce, method="POST", path="/v1/batch", body=native
        ),
    }
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    token = LIVE_TOKEN.encode()
    sensors_body = sensors_form([_sensors_record()])
    beacon = urlencode({"data": sensors_payload(_sensors_record(), compress=False), "project": "broker"})
    segment_msg = {
        "type": "track",
        "event": "Logged In",
        "userId": "u-hostile",
        "messageId": f"m-hostile-{seq}",
        "properties": {},
    }
    segment = {"Content-Type": "application/json", "Authorization": basic(KEY)}
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    out = [
        Template("POST", "/v1/batch", "", key, native),
        Template("POST", "/v1/batch", "", signed, native),
        Template("POST", "/v1/debug", "", key, native),
        Template("GET", "/healthz", "", {}, b""),
        Template("GET", "/readyz", "", {}, b""),
        Template("GET", "/metrics", "", {}, b""),
        Template("GET", "/live", "", {}, b""),
        Template("GET", "/live/assets/live.js", "", {}, b""),
        Template("GET", "/live/info", "", {}, b""),
        Template("GET", "/live/stream", "", {}, b""),
        Template("GET", "/live/coverage", "format=json", {}, b""),
        Template("POST", "/live/session", "", {"Content-Type": "application/json"}, b'{"token": "%s"}' % token),
        Template("POST", "/segment/v1/track", "", segment, json.dumps(segment_msg).encode()),
        Template("OPTIONS", "/segment/v1/track", "", preflight, b""),
        Template("POST", "/segment/v1/m", "", {"Content-Type": "application/json"}, b'{"series": []}'),
        Template("OPTIONS", "/segment/v1/m", "", preflight, b""),
        Template("GET", f"/segment/v1/projects/{KEY}/settings", "", {}, b""),
        Template("OPTIONS", f"/segment/v1/projects/{KEY}/settings", "", preflight, b""),
    ]
    for path in ("/sa", "/sa.gif", "/debug"):
        out.append(Template("POST", path, "", form, sensors_body))
        out.append(Template("GET", path, beacon, {}, b""))
        out.append(Template("OPTIONS", path, "", preflight, b""))
    return out


def _route_keys(app: web.Application) -> set[tuple[str, str]]:
    keys = set()
    for route in app.router.routes():
        if route.method == "HEAD":
            continue
        info = route.resource.get_info() if route.resource is not None else {}
        keys.add((route.method, str(info.get("path") or info.get("formatter"))))
    return keys


def _template_key(template: Template) -> tuple[str, str]:
    path = template.path
    if path.startswith("/segment/v1/projects/"):
        path = "/segment/v1/projects/{write_key}/settings"
    elif path.startswith("/segment/v1/") and path != "/segment/v1/m":
        path = "/segment/v1/{endpoint}"
    elif path.startswith("/live/assets/"):
        path = "/live/assets/{name}"
    return template.method, path


def _config(directory: Path) -> Config:
    return Config(
        plan=securities_vendor_plan(directory),
        storage=replace(StorageConfig(), data_dir=directory / "data", index_interval_s=0.05),
        auth=AuthConfig(
            write_keys=(WriteKey("broker-app", hash_key(KEY)),),
            sources=(ServerSource(SOURCE, SECRET),),
            sensors_projects=(VendorSource("broker", "broker-app"),),
        ),
        live=LiveConfig(enabled=True, token_sha256=hash_key(LIVE_TOKEN), allow_loopback=True),
    )


class _Server:
    """The app served from a thread of its own, so hypothesis can drive it with blocking sockets."""

    def __init__(self, config: Config) -> None:
        self.app = make_app(config)
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = self.runner.addresses[0][1]
        self._started.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.runner.cleanup())
        self.loop.close()

    def __enter__(self) -> _Server:
        self._thread.start()
        if not self._started.wait(30):
            raise RuntimeError("the collector app did not start within 30 s")
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Server]:
    with _Server(_config(tmp_path_factory.mktemp("hostile"))) as running:
        yield running


def send(
    port: int,
    template: Template,
    *,
    header: tuple[bytes, bytes] | None = None,
    query: bytes | None = None,
    path: bytes | None = None,
) -> int:
    """Send the request as raw bytes; the status code answered (0: the connection closed with no answer)."""
    headers = {k.encode(): v.encode() for k, v in template.headers.items()}
    headers.setdefault(b"Host", b"127.0.0.1")
    if header is not None:
        headers[header[0]] = header[1]
    target = path if path is not None else template.path.encode()
    q = query if query is not None else template.query.encode()
    if q:
        target += b"?" + q
    head = template.method.encode() + b" " + target + b" HTTP/1.1\r\n"
    head += b"".join(k + b": " + v + b"\r\n" for k, v in headers.items())
    head += b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(template.body)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head + template.body)
        line = b""
        while not line.endswith(b"\r\n"):
            chunk = s.recv(1)
            if not chunk:
                break
            line += chunk
    parts = line.split(b" ")
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


# Header values: bytes that are not UTF-8, lone continuation bytes, controls (no CR/LF: they would end the
# header), the characters HTTP allows, and long values.
_HOSTILE_BYTES = st.binary(min_size=0, max_size=80).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
_HOSTILE_VALUES = st.one_of(
    _HOSTILE_BYTES,
    st.sampled_from([b"\xff\xfe", b"\xc3", b"\x80abc", b"\xed\xa0\x80", b"\x00", b"\x7f", b"caf\xe9", b"\t"]),
    st.text(min_size=0, max_size=40)
    .map(lambda t: t.encode("utf-8", "surrogatepass"))
    .map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
    st.integers(min_value=1, max_value=9000).map(lambda n: b"\xe9" * n),
)
_HOSTILE_QUERIES = st.one_of(
    _HOSTILE_BYTES.map(lambda b: b.replace(b" ", b"").replace(b"#", b"")),
    _HOSTILE_BYTES.map(lambda b: quote(b, safe="").encode()),
    _HOSTILE_BYTES.map(lambda b: b"project=" + quote(b, safe="").encode() + b"&data=" + quote(b, safe="").encode()),
    _HOSTILE_BYTES.map(lambda b: b"tag=" + quote(b, safe="").encode() + b"&after=" + quote(b, safe="").encode()),
)
_HOSTILE_PATHS = _HOSTILE_BYTES.map(lambda b: quote(b, safe="").encode())


_counter = iter(range(1, 1 << 30))


def test_every_route_has_a_request(server: _Server) -> None:
    served = _route_keys(server.app)
    covered = {_template_key(t) for t in templates(0)}
    assert served - covered == set(), "routes with no request in templates()"


def test_valid_requests_succeed(server: _Server) -> None:
    """The templates themselves are right: each is answered 2xx, so a hostile value is what changes the answer."""
    for template in templates(next(_counter)):
        status = send(server.port, template)
        assert 200 <= status < 300, (template.method, template.path, status)


def test_every_header_not_utf8_on_every_route(server: _Server) -> None:
    """The sweep: each header the collector reads (and a few it does not), not UTF-8, on each route."""
    wrong = []
    for name in HEADER_NAMES:
        for template in templates(next(_counter)):
            status = send(server.port, template, header=(name.encode(), b"\xff\xfe\x80ab\xc3"))
            if not 0 < status < 500:
                wrong.append((name, template.method, template.path, status))
    assert wrong == []


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    name=st.one_of(st.sampled_from(HEADER_NAMES), st.from_regex(r"X-[A-Za-z0-9-]{1,20}", fullmatch=True)),
    value=_HOSTILE_VALUES,
    query=_HOSTILE_QUERIES,
    path=_HOSTILE_PATHS,
)
def test_no_hostile_header_query_or_path_gives_a_5xx(
    server: _Server, name: str, value: bytes, query: bytes, path: bytes
) -> None:
    for template in templates(next(_counter)):
        for hostile in (
            {"header": (name.encode(), value)},
            {"query": query},
            {"path": template.path.encode() + b"/" + path},
        ):
            status = send(server.port, template, **hostile)
            assert 0 < status < 500, (template.method, template.path, hostile, status)
