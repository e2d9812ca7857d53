"""A real `maidian serve` process: killed with SIGKILL under load, and stopped with SIGTERM mid-request."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from maidian.collector.errors import ConfigError
from maidian.collector.read import export_events
from maidian.collector.run.serve import loop_factory
from tests.collector.helpers import KEY, body_of, headers_for, order
from tests.conftest import MINI_PLAN, ROOT


class Server:
    """`maidian serve` as a subprocess on 127.0.0.1, any free port."""

    def __init__(self, data_dir: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        cmd = [
            sys.executable,
            "-m",
            "maidian.collector.cli",
            "serve",
            "--plan",
            str(MINI_PLAN),
            "--data",
            str(data_dir),
            "--port",
            "0",
            "--write-key",
            KEY,
            *extra,
        ]
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        self.listening = ""
        self.port = self._port()
        self.url = f"http://127.0.0.1:{self.port}"

    def _port(self) -> int:
        assert self.proc.stderr is not None
        lines = []
        while True:
            line = self.proc.stderr.readline()
            if not line:
                raise RuntimeError("the server exited:\n" + "".join(lines))
            lines.append(line)
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
            if m:
                self.listening = line
                return int(m.group(1))

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(30)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for s in started:
        if s.proc.poll() is None:
            s.kill()
        if s.proc.stderr:
            s.proc.stderr.close()


async def post_batches(url: str, batches: list[list[dict[str, Any]]], acked: dict[str, str], conns: int = 4) -> None:
    """Post batches over a few connections until the server goes away; note what was acknowledged."""
    queue: asyncio.Queue[list[dict[str, Any]]] = asyncio.Queue()
    for b in batches:
        queue.put_nowait(b)

    async def worker(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            batch = queue.get_nowait()
            try:
                async with session.post(url + "/v1/batch", data=body_of(batch), headers=headers_for()) as resp:
                    if resp.status != 200:
                        continue
                    result = await resp.json()
            except (TimeoutError, aiohttp.ClientError, ConnectionError):
                return  # indeterminate: the server is gone
            for event, r in zip(batch, result["results"], strict=True):
                if r["status"] in ("accepted", "duplicate"):
                    acked[event["event_id"]] = r["status"]

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        await asyncio.gather(*(worker(session) for _ in range(conns)))


@pytest.mark.parametrize("durability", ["fsync", "write"])
async def test_sigkill_under_load_loses_no_acknowledged_event(
    servers: list[Server], tmp_path: Path, durability: str
) -> None:
    """docs/reliability.md, T1 (process crashes): both durability modes keep every acknowledged event."""
    data_dir = tmp_path / "data"
    batches = [[order(b * 100 + k) for k in range(1, 101)] for b in range(60)]
    acked: dict[str, str] = {}
    for round_ in range(3):
        server = Server(data_dir, "--durability", durability)
        servers.append(server)
        before = len(acked)
        task = asyncio.create_task(post_batches(server.url, batches[round_ * 20 : round_ * 20 + 20], acked))
        deadline = time.monotonic() + 30
        while len(acked) < before + 500 and time.monotonic() < deadline and not task.done():
            await asyncio.sleep(0.005)
        server.kill()  # mid-stream: requests are in flight
        await task
        assert len(acked) > before, "nothing was acknowledged before the kill"
    # Restart and resend everything (the SDK's retries): nothing acknowledged may be lost or doubled.
    server = Server(data_dir)
    servers.append(server)
    resent: dict[str, str] = {}
    await post_batches(server.url, batches, resent)
    assert server.stop() == 0
    stored = [r["event_id"] for r in export_events(data_dir)]
    assert len(stored) == len(set(stored)), "an event was stored twice"
    assert set(acked) <= set(stored), "an acknowledged event was lost"
    assert all(resent[eid] == "duplicate" for eid in acked)
    assert set(stored) == {e["event_id"] for b in batches for e in b}


def _partial_request(port: int, body: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    head = (
        f"POST /v1/batch HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/msgpack\r\n"
        f"Content-Encoding: zstd\r\nX-Maidian-Write-Key: {KEY}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock.sendall(head + body[: len(body) // 2])
    return sock


async def _metric(url: str, name: str) -> float:
    async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as resp:
        for line in (await resp.text()).splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return float("nan")


async def test_sigterm_drains_a_request_in_flight(servers: list[Server], tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = Server(data_dir)
    servers.append(server)
    body = body_of([order(k) for k in range(1, 201)])
    sock = _partial_request(server.port, body)
    deadline = time.monotonic() + 10
    while await _metric(server.url, "maidian_in_flight_requests") < 1:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.stderr is not None
    line = await asyncio.to_thread(server.proc.stderr.readline)
    assert "stopping" in line
    sock.sendall(body[len(body) // 2 :])
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = await asyncio.to_thread(sock.recv, 65536)
        assert chunk, "the connection closed without an answer"
        response += chunk
    sock.close()
    assert response.startswith(b"HTTP/1.1 200"), response[:200]
    assert server.stop() == 0
    assert len(list(export_events(data_dir))) == 200


async def test_two_workers_share_a_port_and_a_data_directory(servers: list[Server], tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = Server(data_dir, "--workers", "2")
    servers.append(server)
    acked: dict[str, str] = {}
    batches = [[order(b * 10 + k) for k in range(1, 11)] for b in range(20)]
    await post_batches(server.url, batches, acked, conns=8)
    assert len(acked) == 200
    assert server.stop() == 0
    writers = {p.name.split("-")[0] for p in (data_dir / "raw").glob("*.seg") if p.stat().st_size > 8}
    assert writers <= {"w0", "w1"}
    stored = [r["event_id"] for r in export_events(data_dir)]
    assert sorted(stored) == sorted(acked)


async def test_sighup_rotates_and_revokes_keys_without_a_restart(servers: list[Server], tmp_path: Path) -> None:
    """docs/reliability.md, T17: both keys work during the overlap; the old one is refused once revoked."""
    from maidian.collector.settings import hash_key

    config = tmp_path / "maidian.toml"

    def write(old_revoked: bool) -> None:
        config.write_text(
            f'[[write_keys]]\nname = "old"\nsha256 = "{hash_key("old-key")}"\nrevoked = {str(old_revoked).lower()}\n'
            f'[[write_keys]]\nname = "new"\nsha256 = "{hash_key("new-key")}"\n'
        )

    write(old_revoked=False)
    server = Server(tmp_path / "data", "--config", str(config))
    servers.append(server)

    async def status_with(key: str, seq: int) -> int:
        async with (
            aiohttp.ClientSession() as session,
            session.post(server.url + "/v1/batch", data=body_of([order(seq)]), headers=headers_for(key=key)) as resp,
        ):
            return resp.status

    assert await status_with("old-key", 1) == 200
    assert await status_with("new-key", 2) == 200
    write(old_revoked=True)
    server.proc.send_signal(signal.SIGHUP)
    assert server.proc.stderr is not None
    line = await asyncio.to_thread(server.proc.stderr.readline)
    assert "reloaded keys: 2 active write keys" in line  # "new" and the --write-key one
    assert await status_with("old-key", 3) == 403
    assert await status_with("new-key", 4) == 200
    assert server.stop() == 0


@pytest.mark.parametrize("choice", ["auto", "asyncio"])
async def test_the_server_runs_on_either_event_loop(servers: list[Server], tmp_path: Path, choice: str) -> None:
    """uvloop when installed (the collector extra brings it), asyncio's own loop when asked for or missing."""
    data_dir = tmp_path / "data"
    server = Server(data_dir, env={"MAIDIAN_EVENT_LOOP": choice})
    servers.append(server)
    expected = "asyncio" if choice == "asyncio" or importlib.util.find_spec("uvloop") is None else "uvloop"
    assert f"loop={expected} " in server.listening
    acked: dict[str, str] = {}
    await post_batches(server.url, [[order(k) for k in range(1, 6)]], acked)
    assert len(acked) == 5
    assert server.stop() == 0
    assert sorted(r["event_id"] for r in export_events(data_dir)) == sorted(acked)


def test_uvloop_asked_for_but_missing_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now raises ImportError
    assert loop_factory("auto") is None
    assert loop_factory("asyncio") is None
    with pytest.raises(ConfigError, match="'uvloop' is not installed"):
        loop_factory("uvloop")
