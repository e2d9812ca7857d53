"""T22, several worker processes answer as one service: `/metrics` and the live view with `--workers N`.

A real `maidian serve --workers N` (the kernel spreads connections over the
workers with SO_REUSEPORT; every request below opens a new connection):

- `/metrics`, scraped over and over while batches arrive, is the sum over the
  workers: no counter ever goes backwards from one scrape to the next, and
  once every batch is acknowledged, `maidian_events_total{outcome="accepted"}`
  equals the events sent, whichever worker answers;
- the live view: a session from the token, issued by whichever worker took
  the login, is valid on every worker (10 of 10 requests authorised), and a
  page's stream, whichever worker serves it, shows the events sent to every
  worker.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import aiohttp
import pytest

from maidian.collector.settings import hash_key
from tests.reliability.figures import Figures
from tests.reliability.load import order_event
from tests.reliability.procs import CollectorProcess, batch_body, key_headers, write_config

TOKEN = "live-token-for-t22"
BATCHES = 40
BATCH = 50
_ACCEPTED = re.compile(rb'^maidian_events_total\{outcome="accepted"\} (\d+)$', re.M)
_COUNTER = re.compile(rb"^(maidian_\w+_total(?:\{[^}]*\})?) ([0-9.e+]+)$", re.M)


def _config(tmp_path: Path) -> Path:
    live = f'[live]\nenabled = true\ntoken_sha256 = "{hash_key(TOKEN)}"\n'
    return write_config(tmp_path / "collector.toml", tmp_path / "data", extra=live)


def _fresh() -> aiohttp.ClientSession:
    """A session that opens a new connection per request (so SO_REUSEPORT picks a worker each time)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))


async def _scrape(url: str) -> tuple[str, dict[bytes, float]]:
    async with _fresh() as s, s.get(url + "/metrics") as resp:
        assert resp.status == 200
        body = await resp.read()
        return resp.headers.get("X-Maidian-Worker", "?"), {k: float(v) for k, v in _COUNTER.findall(body)}


async def _all_workers_up(url: str, workers: int, timeout_s: float = 60.0) -> None:
    """Wait until a scrape adds up every worker (they start side by side; the first one up answers /readyz)."""
    answering = re.compile(rb"^maidian_workers_answering (\d+)$", re.M)
    async with asyncio.timeout(timeout_s):
        while True:
            async with _fresh() as s, s.get(url + "/metrics") as resp:
                found = answering.search(await resp.read())
            if found is not None and int(found.group(1)) == workers:
                return
            await asyncio.sleep(0.1)


async def _post(url: str, batch: int) -> list[str]:
    now = int(time.time() * 1000)
    events = [order_event(f"{batch:032x}", i + 1, now, f"dev-{batch}") for i in range(BATCH)]
    async with _fresh() as s, s.post(url + "/v1/batch", data=batch_body(events), headers=key_headers()) as resp:
        assert resp.status == 200, await resp.text()
        answer = await resp.json()
    assert all(r["status"] == "accepted" for r in answer["results"])
    return [e["event_id"] for e in events]


@pytest.mark.parametrize("workers", [2, 4])
async def test_metrics_are_one_view_across_workers(tmp_path: Path, figures: Figures, workers: int) -> None:
    proc = CollectorProcess(_config(tmp_path), args=["--workers", str(workers)]).start()
    try:
        await _all_workers_up(proc.url, workers)
        previous: dict[bytes, float] = {}
        answered: set[str] = set()
        scrapes = backwards = 0
        sent = 0
        for batch in range(BATCHES):
            sent += len(await _post(proc.url, batch))
            for _ in range(2):
                worker, counters = await _scrape(proc.url)
                answered.add(worker)
                scrapes += 1
                backwards += sum(1 for k, v in previous.items() if counters.get(k, 0) < v)
                assert backwards == 0, [(k, v, counters.get(k)) for k, v in previous.items() if counters.get(k, 0) < v]
                previous = counters
        finals = set()
        for _ in range(10):
            worker, counters = await _scrape(proc.url)
            answered.add(worker)
            finals.add(counters[b'maidian_events_total{outcome="accepted"}'])
    finally:
        assert proc.stop() == 0
    assert finals == {float(sent)}, finals
    assert len(answered) >= 2, f"every scrape reached the same worker: {answered}"
    figures.inputs += scrapes + 10
    figures.note(
        f"--workers {workers}: {scrapes + 10} scrapes answered by {sorted(answered)}; counters going backwards "
        f"between scrapes: {backwards}; accepted events as scraped {int(min(finals))} = {sent} sent"
    )


async def test_the_live_view_works_with_any_worker(tmp_path: Path, figures: Figures) -> None:
    proc = CollectorProcess(_config(tmp_path), args=["--workers", "2"]).start()
    try:
        await _all_workers_up(proc.url, 2)
        async with _fresh() as s, s.post(proc.url + "/live/session", json={"token": TOKEN}) as resp:
            assert resp.status == 200
            cookie = resp.cookies["maidian_live"].value
        jar = {"maidian_live": cookie}
        allowed = 0
        served_by: set[str] = set()
        for _ in range(10):
            async with _fresh() as s, s.get(proc.url + "/live/info", cookies=jar) as resp:
                allowed += resp.status == 200
                served_by.add(resp.headers.get("X-Maidian-Worker", "?"))
        async with _fresh() as s, s.get(proc.url + "/live/info", cookies={"maidian_live": cookie + "0"}) as resp:
            assert resp.status == 401  # a forged session is refused
        assert allowed == 10, f"{allowed} of 10 live requests authorised"
        assert served_by == {"w0", "w1"}, f"every request reached the same worker: {served_by}"
        streams = [await _open_stream(proc.url, jar) for _ in range(4)]  # pages on whichever workers
        try:
            sent: set[str] = set()
            for batch in range(BATCHES // 2):
                sent.update(await _post(proc.url, batch))
            seen = await asyncio.gather(*(_read_until(stream, sent) for stream, _w in streams))
        finally:
            for stream, _w in streams:
                stream.close()
    finally:
        assert proc.stop() == 0
    writers = {p.name.split("-", 1)[0] for p in (tmp_path / "data" / "raw").glob("*.seg") if p.stat().st_size > 8}
    assert writers == {"w0", "w1"}, f"the batches did not reach both workers: {writers}"
    assert all(s == sent for s in seen)
    pages = sorted(w for _s, w in streams)
    figures.inputs += 11 + len(sent)
    figures.note(
        f"--workers 2: {allowed} of 10 live requests authorised with one session (answered by {sorted(served_by)}); "
        f"{len(streams)} pages (served by {pages}) each showed {len(sent)} of {len(sent)} events sent to "
        f"workers {sorted(writers)}"
    )


class _Stream:
    def __init__(self, session: aiohttp.ClientSession, response: aiohttp.ClientResponse) -> None:
        self.session = session
        self.response = response

    def close(self) -> None:
        self.response.close()
        asyncio.get_running_loop().create_task(self.session.close())


async def _open_stream(url: str, jar: dict[str, str]) -> tuple[_Stream, str]:
    session = _fresh()
    response = await session.get(url + "/live/stream", cookies=jar, timeout=aiohttp.ClientTimeout(total=None))
    assert response.status == 200
    return _Stream(session, response), response.headers.get("X-Maidian-Worker", "?")


async def _read_until(stream: _Stream, wanted: set[str], timeout_s: float = 60.0) -> set[str]:
    """The event ids a page's stream shows, read until it has shown `wanted` (or the time is up)."""
    seen: set[str] = set()
    async with asyncio.timeout(timeout_s):
        while not wanted <= seen:
            line = await stream.response.content.readline()
            if not line:
                break
            if line.startswith(b"data: ") and b'"event_id"' in line:
                seen.add(json.loads(line[6:])["event_id"])
    return seen & wanted
