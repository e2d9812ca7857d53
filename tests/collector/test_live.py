"""The live view: a real collector streams every judged event to pages, bounded, filtered and access-checked."""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp.test_utils import TestClient

from maidian.collector.config import resolve_config
from maidian.collector.errors import ConfigError
from maidian.collector.http.app import COLLECTOR, ROUTES, make_app
from maidian.collector.http.live_routes import LIVE, LIVE_ROUTES
from maidian.collector.pipeline.decode import Batch
from maidian.collector.pipeline.ingest import Outcome
from maidian.collector.qa.coverage import coverage_of_data
from maidian.collector.qa.live import LiveFilter, LiveHub, LiveRecord, Subscriber
from maidian.collector.read import export_events
from maidian.collector.settings import LiveConfig, hash_key
from maidian.tracking_plan import load_plan
from tests.collector.helpers import KEY, body_of, headers_for, make_config, order, statuses
from tests.collector.qa_data import session
from tests.conftest import MINI_PLAN

TOKEN = "live-token-for-tests-0001"
PLAN = load_plan(MINI_PLAN)


async def live_client(aiohttp_client: Any, data_dir: Path, **live: Any) -> TestClient[Any, Any]:
    settings = {"enabled": True, "token_sha256": hash_key(TOKEN), "allow_loopback": True, **live}
    config = replace(make_config(data_dir), live=LiveConfig(**settings))
    client: TestClient[Any, Any] = await aiohttp_client(make_app(config))
    return client


class Stream:
    """A page's end of /live/stream: server-sent events parsed as they arrive."""

    def __init__(self, resp: Any) -> None:
        self.resp = resp

    async def next(self, timeout_s: float = 10.0) -> tuple[str, Any]:
        kind, data = "message", []
        while True:
            line = (await asyncio.wait_for(self.resp.content.readline(), timeout_s)).decode("utf-8")
            if line in ("\n", ""):
                if data:
                    return kind, json.loads("\n".join(data))
                if line == "":
                    raise EOFError
                continue
            if line.startswith("event: "):
                kind = line[7:].strip()
            elif line.startswith("data: "):
                data.append(line[6:].rstrip("\n"))

    async def events(self, n: int) -> list[dict[str, Any]]:
        out = []
        while len(out) < n:
            kind, data = await self.next()
            if kind == "ev":
                out.append(data)
        return out


async def open_stream(client: TestClient[Any, Any], query: str = "") -> Stream:
    resp = await client.get("/live/stream" + (f"?{query}" if query else ""))
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    stream = Stream(resp)
    kind, _hello = await stream.next()
    assert kind == "hello"
    return stream


async def test_every_event_streams_with_its_verdict_and_the_quarantines_reasons(
    aiohttp_client: Any, data_dir: Path
) -> None:
    client = await live_client(aiohttp_client, data_dir)
    stream = await open_stream(client)
    resp = await client.post("/v1/batch", data=body_of(session()), headers=headers_for())
    answer = await resp.json()
    got = await stream.events(12)
    assert [e["verdict"] for e in got] == statuses(answer)
    assert [e.get("reasons", []) for e in got] == [r.get("reasons", []) for r in answer["results"]]
    stored = {r["event"]["event_id"]: r["reasons"] for r in export_events(data_dir, quarantined=True) if "reasons" in r}
    for e in got:
        if e["verdict"] == "quarantined":
            assert e["reasons"] == stored[e["event_id"]]  # the very reasons the quarantine keeps
    assert {e["route"] for e in got} == {"batch"}
    masked = got[1]
    assert masked["payload"]["properties"]["mobile"] == "138****5678"  # as it arrived: masked by the sender
    assert got[5]["identities"] == {"anonymous_id": "设备-甲"}
    assert got[5]["line"] == "account"
    assert got[8]["payload"]["properties"]["stock_name"] == "贵州茅台"
    assert got[10]["event"] == "profile_set"
    assert got[10]["line"] == ""
    assert got[11]["verdict"] == "duplicate"

    resp = await client.post("/v1/debug", data=body_of([order(99, side="x")]), headers=headers_for())
    (debug,) = await stream.events(1)
    assert (debug["route"], debug["verdict"]) == ("debug", "quarantined")
    assert debug["reasons"] == (await resp.json())["results"][0]["reasons"]


async def test_filters_select_by_identity_event_line_verdict_and_tag(aiohttp_client: Any, data_dir: Path) -> None:
    client = await live_client(aiohttp_client, data_dir, observe_always=True)
    resp = await client.post("/v1/batch", data=body_of(session()), headers=headers_for())
    assert resp.status == 200
    cases = {
        "verdict=quarantined&tag=t1": ["stock_order_submit", "stock_order_filled", "stock_teleport"],
        "identity=设备-甲": ["account_login"],
        "event=teleport": ["stock_teleport", "stock_teleport"],
        "line=account": ["account_login", "account_login"],
        "tag=t2&verdict=accepted": ["stock_order_submit"],
    }
    for query, names in cases.items():
        stream = await open_stream(client, query)  # the recent past is replayed through the filter
        got = await stream.events(len(names))
        assert [e["event"] for e in got] == names, query
        stream.resp.close()


async def test_a_page_opened_later_sees_the_recent_past_after_what_it_cleared(
    aiohttp_client: Any, data_dir: Path
) -> None:
    client = await live_client(aiohttp_client, data_dir, observe_always=True)
    await client.post("/v1/batch", data=body_of([order(1), order(2)]), headers=headers_for())
    first = await (await open_stream(client)).events(2)
    assert [e["seq"] for e in first] == [1, 2]
    stream = await open_stream(client, "after=1")
    await client.post("/v1/batch", data=body_of([order(3)]), headers=headers_for())
    assert [e["seq"] for e in await stream.events(2)] == [2, 3]


async def test_the_sessions_coverage_is_the_coverage_of_its_data(aiohttp_client: Any, data_dir: Path) -> None:
    client = await live_client(aiohttp_client, data_dir, observe_always=True)
    await client.post("/v1/batch", data=body_of(session()), headers=headers_for())
    live = await (await client.get("/live/coverage?format=json")).json()
    stored = coverage_of_data(data_dir, PLAN).to_dict()
    assert live["totals"] == stored["totals"]
    assert live["lines"] == stored["lines"]
    assert live["unplanned"] == stored["unplanned"]
    tagged = await (await client.get("/live/coverage?format=json&tag=t2")).json()
    assert tagged["totals"] == coverage_of_data(data_dir, PLAN, tag="t2").to_dict()["totals"]
    html = await (await client.get("/live/coverage?tag=t2")).text()
    assert html.startswith('<section class="md-coverage">')
    assert "Never seen (1)" in html
    # An event checked on /v1/debug and then stored counts once.
    await client.post("/v1/debug", data=body_of([order(50)]), headers=headers_for())
    await client.post("/v1/batch", data=body_of([order(50)]), headers=headers_for())
    after = await (await client.get("/live/coverage?format=json")).json()
    assert after["totals"]["seen"] == live["totals"]["seen"] + 1


async def test_the_pipeline_is_followed_only_while_a_page_watches(aiohttp_client: Any, data_dir: Path) -> None:
    client = await live_client(aiohttp_client, data_dir)
    ingest = client.server.app[COLLECTOR].ingest
    assert ingest.observer is None
    stream = await open_stream(client)
    assert ingest.observer is not None
    stream.resp.close()
    await client.post("/v1/batch", data=body_of([order(1)]), headers=headers_for())  # the server notices the close
    for _ in range(200):
        if ingest.observer is None:
            break
        await asyncio.sleep(0.01)
    assert ingest.observer is None


async def test_the_live_view_is_off_unless_enabled(client: TestClient[Any, Any]) -> None:
    assert (await client.get("/live")).status == 404
    assert (await client.get("/live/stream")).status == 404
    assert client.server.app[COLLECTOR].ingest.observer is None
    served = {(r.method, r.resource.canonical) for r in client.server.app.router.routes() if r.method != "HEAD"}
    assert served == set(ROUTES)


async def test_the_routes_and_the_page(aiohttp_client: Any, data_dir: Path) -> None:
    client = await live_client(aiohttp_client, data_dir)
    served = {(r.method, r.resource.canonical) for r in client.server.app.router.routes() if r.method != "HEAD"}
    assert served == set(ROUTES) | set(LIVE_ROUTES)
    page = await client.get("/live")
    assert page.status == 200
    assert page.charset == "utf-8"
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    html = await page.text()
    assert '<script src="/live/assets/live.js"' in html
    assert "http" not in html.replace('"/live/', "")
    for name, kind in (("live.js", "text/javascript"), ("live.css", "text/css"), ("report.css", "text/css")):
        asset = await client.get(f"/live/assets/{name}")
        assert asset.status == 200
        assert asset.content_type == kind
        assert "http://" not in await asset.text()
        assert "https://" not in await asset.text()
    assert (await client.get("/live/assets/..%2Fapp.py")).status == 404
    assert (await client.get("/live/assets/live.html")).status == 404


async def test_without_loopback_access_a_browser_needs_the_token(aiohttp_client: Any, data_dir: Path) -> None:
    client = await live_client(aiohttp_client, data_dir, allow_loopback=False)
    assert (await client.get("/live")).status == 200  # the page holds no data; it asks for the token
    for path in ("/live/info", "/live/stream", "/live/coverage"):
        resp = await client.get(path)
        assert resp.status == 401, path
        assert (await resp.json())["error"]["code"] == "unauthenticated"
    assert (await client.get(f"/live/info?token={TOKEN}")).status == 401  # never from the URL
    assert (await client.post("/live/session", json={"token": KEY})).status == 401  # a write key is no token
    assert (await client.post("/live/session", data=f"token={TOKEN}")).status == 415  # no cross-site forms
    resp = await client.post("/live/session", json={"token": TOKEN})
    assert resp.status == 200
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert "Path=/live" in cookie
    assert (await client.get("/live/info")).status == 200


async def test_loopback_access_refuses_other_host_names(aiohttp_client: Any, data_dir: Path) -> None:
    client = await live_client(aiohttp_client, data_dir)
    assert (await client.get("/live/info")).status == 200
    assert (await client.get("/live/info", headers={"Host": "localhost:8106"})).status == 200
    # A page on another site whose name now resolves to 127.0.0.1 (DNS rebinding) gets nothing.
    assert (await client.get("/live/info", headers={"Host": "evil.example:8106"})).status == 401


async def test_a_page_that_stops_reading_never_slows_ingestion(aiohttp_client: Any, data_dir: Path) -> None:
    client = await live_client(aiohttp_client, data_dir, queue_events=100)
    port = client.server.port
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", port))
    await loop.sock_sendall(sock, f"GET /live/stream HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    hub = client.server.app[LIVE]
    for _ in range(500):
        if hub.subscribers:
            break
        await asyncio.sleep(0.01)
    (page,) = hub.subscribers
    big = "价" * 2000  # about 6 KiB of JSON per event
    accepted = 0
    for b in range(40):
        events = [order(b * 50 + i + 1, mobile=big + "*") for i in range(50)]
        resp = await client.post("/v1/batch", data=body_of(events), headers=headers_for())
        assert resp.status == 200
        accepted += (await resp.json())["accepted"]
        assert len(page.queue) <= 100  # bounded whatever the page does
    assert accepted == 2000
    received = bytearray()
    while b"event: skipped" not in received:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), 10)
        assert chunk, "the stream ended before a skipped note"
        received += chunk
    note = received[received.index(b"event: skipped") :].split(b"\n\n", 1)[0]
    skipped = json.loads(note.split(b"data: ", 1)[1])["n"]
    assert 0 < skipped < 2000
    sock.close()


# -- the hub on its own ----------------------------------------------------------------------------


def record(seq: int, **fields: Any) -> LiveRecord:
    base = {"verdict": "accepted", "name": "stock_order_submit", "line": "stock", "tag": "", "identities": ("d1",)}
    base.update(fields)
    return LiveRecord(seq, data=b"{}", **base)


def test_a_full_queue_drops_the_oldest_and_counts_them() -> None:
    woken = []
    sub = Subscriber(LiveFilter(), 3, lambda: woken.append(1))
    for i in range(1, 8):
        sub.offer(record(i))
    records, skipped = sub.take()
    assert [r.seq for r in records] == [5, 6, 7]
    assert skipped == 4
    assert sub.take() == ([], 0)
    assert len(woken) == 7


def test_filters_match_fields_exactly_and_event_names_in_part() -> None:
    r = record(1, verdict="quarantined", tag="t1", identities=("dev-1", "u_1"))
    assert LiveFilter(identity="u_1", event="order", line="stock", verdict="quarantined", tag="t1").matches(r)
    assert not LiveFilter(identity="u_").matches(r)
    assert not LiveFilter(tag="t").matches(r)
    assert not LiveFilter(verdict="accepted").matches(r)
    assert LiveFilter.from_query({"event": "  order ", "tag": "x" * 1000}) == LiveFilter(event="order", tag="x" * 256)


def _batch(events: list[Any], fmt: str = "msgpack") -> Batch:
    encode = msgspec.msgpack.encode if fmt == "msgpack" else msgspec.json.encode
    return Batch(events=[msgspec.Raw(encode(e)) for e in events], format=fmt)  # type: ignore[arg-type]


def test_undecodable_huge_and_unprintable_events_are_shown_safely() -> None:
    hub = LiveHub(PLAN, observe_always=True)
    results = [{"status": "quarantined", "reasons": [{"rule": "undecodable", "path": "", "message": "m"}]}] * 3
    batch = Batch(
        events=[
            msgspec.Raw(b"\xc1junk"),
            msgspec.Raw(msgspec.msgpack.encode({"type": "track", "event": "e_x", "properties": {"a": "x" * 100_000}})),
            msgspec.Raw(msgspec.msgpack.encode({"type": "track", "event": "e_y", "v": msgspec.msgpack.Ext(1, b"x")})),
        ],
        format="msgpack",
    )
    principal = type("P", (), {"name": "k"})()
    hub.observe(batch, principal, Outcome(0, 0, 3, results), True, 1)  # type: ignore[arg-type]
    shown = [json.loads(r.data) for r in hub.history]
    assert shown[0]["payload"] is None
    assert shown[0]["raw_base64"] == "wWp1bms="
    assert shown[1]["payload"] is None
    assert shown[1]["truncated_bytes"] > 100_000
    assert shown[2]["payload"] is None
    assert shown[2]["unprintable"] is True
    assert hub.tally.malformed == 1
    assert hub.tally.events["e_x"].invalid == 1


def test_a_broken_request_never_reaches_the_pipeline(caplog: pytest.LogCaptureFixture) -> None:
    hub = LiveHub(PLAN, observe_always=True)
    principal = type("P", (), {"name": "k"})()
    hub.observe(_batch([{"type": "track"}]), principal, Outcome(0, 0, 0, []), True, 1)  # type: ignore[arg-type]
    assert "ingestion is not affected" in caplog.text


def test_the_live_settings_are_checked(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text(f'plan = "{MINI_PLAN}"\n[live]\nenabled = true\n', "utf-8")
    with pytest.raises(ConfigError, match=r"live\.token_sha256"):
        resolve_config(file=toml, env={}, write_keys=("k",))
    toml.write_text(f'plan = "{MINI_PLAN}"\n[live]\nenabled = true\ntoken_sha256 = "{hash_key(TOKEN)}"\n', "utf-8")
    config = resolve_config(file=toml, env={}, write_keys=("k",))
    assert config.live.enabled
    assert not config.live.allow_loopback
    toml.write_text(f'plan = "{MINI_PLAN}"\n[live]\nenabeld = true\n', "utf-8")
    with pytest.raises(ConfigError, match="unknown setting 'enabeld'"):
        resolve_config(file=toml, env={}, write_keys=("k",))


def test_the_page_and_the_report_stylesheet_ship_in_the_package() -> None:
    import fnmatch
    import tomllib

    from tests.conftest import ROOT

    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["tool"]["setuptools"]["package-data"]
    shipped = patterns["maidian.collector.qa"]
    assets = sorted(p.name for p in (ROOT / "collector" / "qa" / "assets").iterdir())
    assert assets == ["live.css", "live.html", "live.js", "report.css"]
    for name in assets:
        assert any(fnmatch.fnmatch(f"assets/{name}", pattern) for pattern in shipped), name
    assert not (ROOT / "collector" / "qa" / "assets" / "__init__.py").exists()  # data, not a package
