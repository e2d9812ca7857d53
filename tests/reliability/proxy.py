"""A fault-injecting HTTP/1.1 proxy on 127.0.0.1, between a sender and the collector.

The proxy reads each request whole (head and body), decides what happens to
it, and records the exchange. The faults (`Fault`):

- `forward` (with an optional `delay_s` first): pass it on, pass the answer back;
- `drop_response`: pass it on, read the collector's answer, then reset the
  sender's connection instead of answering: a lost acknowledgement;
- `reset_mid_body`: pass the head and a fraction of the body on, then reset
  both connections: a partition mid-request;
- `blackhole`: keep the request and never answer, until the sender gives up
  (the time it did is recorded) or the proxy stops;
- `respond`: answer with a status (and Retry-After) without passing it on;
- `refuse`: reset the sender's connection at once, as a collector that is down.

Requests are decided by a script (`script(...)`, first in first out) and then
by `policy`, a function of the request; without either they are forwarded.
When `upstream` is None (the collector is stopped), every request is refused.

Each `Exchange` records the event ids the body carried (decompressed and
decoded), what was done, the status, and, when a 200 reached the sender, the
per-event results: `acks()` is the ledger's record of acknowledgements.
The proxy runs its own event loop in a thread, so threads and coroutines in
the test process, and other processes, all go through the same one.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import random
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import zstandard

__all__ = ["Exchange", "Fault", "FaultProxy", "Request"]

_MAX_HEAD = 64 << 10
_MAX_DECODED = 16 << 20


@dataclass(frozen=True, slots=True)
class Fault:
    kind: str = "forward"  # forward, drop_response, reset_mid_body, blackhole, respond, refuse
    delay_s: float = 0.0
    fraction: float = 0.5  # reset_mid_body: share of the body passed on
    status: int = 503  # respond
    retry_after: str | None = None
    body: bytes = b'{"error":{"code":"unavailable","message":"injected by the fault proxy"}}'

    @staticmethod
    def respond(status: int, retry_after: str | None = None) -> Fault:
        return Fault("respond", status=status, retry_after=retry_after)


FORWARD = Fault()


@dataclass(frozen=True, slots=True)
class Request:
    """What a policy sees of a request."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    ids: tuple[str, ...]
    at: float


@dataclass
class Exchange:
    at: float  # monotonic, when the request had arrived whole
    path: str
    ids: tuple[str, ...]
    action: str
    forwarded: bool = False  # the collector got the whole request
    delivered: bool = False  # an answer reached the sender
    status: int | None = None  # the answer's status (the collector's, or the injected one)
    retry_after: str | None = None
    results: list[str] | None = None  # per-event statuses of a 200
    ended: float = 0.0  # monotonic, when the proxy was done with it (or the sender gave up)
    bytes_in: int = 0
    wall: float = 0.0  # time.time() when the request had arrived whole
    conn: int = 0  # which sender connection it came on (numbered from 1)


@dataclass
class _Parsed:
    method: str
    path: str
    head: bytes
    body: bytes
    headers: dict[str, str]


class FaultProxy:
    def __init__(self, upstream: tuple[str, int] | None = None, *, seed: int = 0, capture: bool = False) -> None:
        self.upstream = upstream
        self.policy: Callable[[Request], Fault | None] | None = None
        self.capture = capture
        self.captured: list[bytes] = []  # heads and bodies as sent, and decompressed bodies (capture=True)
        self.exchanges: list[Exchange] = []
        self.rng = random.Random(seed)
        self.in_flight = 0
        self.max_in_flight = 0
        self.url = ""
        self.port = 0
        self._script: deque[Fault] = deque()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._ready = threading.Event()
        self._stopping: asyncio.Event | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._connections = 0

    # -- control (any thread) ----------------------------------------------------

    def script(self, *faults: Fault) -> None:
        with self._lock:
            self._script.extend(faults)

    def set_upstream(self, url_or_none: str | tuple[str, int] | None) -> None:
        if isinstance(url_or_none, str):
            host, port = url_or_none.rsplit("//", 1)[1].rsplit(":", 1)
            self.upstream = (host, int(port))
        else:
            self.upstream = url_or_none

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the fault proxy did not start")
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what happened ----------------------------------------------------------------

    def snapshot(self) -> list[Exchange]:
        with self._lock:
            return list(self.exchanges)

    def acks(self) -> set[str]:
        """Event ids the sender was told are `accepted` or `duplicate`."""
        out: set[str] = set()
        for ex in self.snapshot():
            if ex.delivered and ex.status == 200 and ex.results is not None and ex.path == "/v1/batch":
                out.update(i for i, s in zip(ex.ids, ex.results, strict=False) if s in ("accepted", "duplicate"))
        return out

    def indeterminate(self) -> set[str]:
        """Event ids of requests the collector got whole and whose answer never reached the sender."""
        out: set[str] = set()
        for ex in self.snapshot():
            if ex.forwarded and not ex.delivered:
                out.update(ex.ids)
        return out

    def sent_ids(self) -> list[str]:
        """Every event id in every batch request, repeats included (what went over the wire)."""
        return [i for ex in self.snapshot() if ex.path == "/v1/batch" for i in ex.ids]

    def statuses(self) -> list[int]:
        return [ex.status for ex in self.snapshot() if ex.status is not None]

    # -- serving --------------------------------------------------------------------------

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        loop.run_until_complete(self._startup())
        self._ready.set()
        loop.run_forever()
        loop.close()

    async def _startup(self) -> None:
        self._stopping = asyncio.Event()
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0, limit=_MAX_HEAD, backlog=512)
        self.port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    async def _shutdown(self) -> None:
        assert self._stopping is not None
        self._stopping.set()
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            _reset(w)
        await asyncio.sleep(0)

    def _decide(self, request: Request) -> Fault:
        with self._lock:
            if self._script:
                return self._script.popleft()
        policy = self.policy
        if policy is not None:
            fault = policy(request)
            if fault is not None:
                return fault
        return FORWARD

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        self._connections += 1
        conn = self._connections
        try:
            while True:
                parsed = await _read_request(reader)
                if parsed is None:
                    break
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
                try:
                    keep = await self._exchange(parsed, reader, writer, conn)
                finally:
                    self.in_flight -= 1
                if not keep:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            if not writer.is_closing():
                writer.close()

    async def _exchange(
        self, p: _Parsed, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: int
    ) -> bool:
        now = time.monotonic()
        ids = _event_ids(p) if p.method == "POST" else ()
        if self.capture:
            self.captured.append(p.head + p.body)
            plain = _plain_body(p)
            if plain is not None:
                self.captured.append(plain)
        fault = self._decide(Request(p.method, p.path, p.headers, p.body, ids, now))
        ex = Exchange(
            at=now,
            path=p.path,
            ids=ids,
            action=fault.kind,
            bytes_in=len(p.head) + len(p.body),
            wall=time.time(),
            conn=conn,
        )
        with self._lock:
            self.exchanges.append(ex)
        try:
            return await self._handle(fault, ex, p, reader, writer)
        finally:
            ex.ended = time.monotonic()

    async def _handle(
        self, fault: Fault, ex: Exchange, p: _Parsed, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        if fault.kind == "refuse":
            _reset(writer)
            return False
        if fault.kind == "respond":
            headers = {"Content-Type": "application/json"}
            if fault.retry_after is not None:
                headers["Retry-After"] = fault.retry_after
            ex.status, ex.retry_after = fault.status, fault.retry_after
            await _answer(writer, _response(fault.status, headers, fault.body), ex)
            return True
        if fault.kind == "blackhole":
            assert self._stopping is not None
            gone = asyncio.ensure_future(reader.read(1 << 16))
            stop = asyncio.ensure_future(self._stopping.wait())
            await asyncio.wait({gone, stop}, return_when=asyncio.FIRST_COMPLETED)
            for f in (gone, stop):
                f.cancel()
            return False
        if fault.delay_s:
            await asyncio.sleep(fault.delay_s)
        upstream = self.upstream
        if upstream is None:
            ex.action = "refused"
            _reset(writer)
            return False
        try:
            ureader, uwriter = await asyncio.open_connection(*upstream, limit=_MAX_HEAD)
        except OSError:
            ex.action = "refused"
            _reset(writer)
            return False
        try:
            if fault.kind == "reset_mid_body":
                cut = max(1, min(len(p.body) - 1, int(len(p.body) * fault.fraction)))
                uwriter.write(p.head + p.body[:cut])
                await uwriter.drain()
                _reset(uwriter)
                _reset(writer)
                return False
            uwriter.write(p.head + p.body)
            await uwriter.drain()
            try:
                status, headers, raw, body = await _read_response(ureader)
            except (asyncio.IncompleteReadError, ConnectionError, ValueError):
                ex.forwarded = True  # the collector may have stored it before dying
                _reset(writer)
                return False
        finally:
            if not uwriter.is_closing():
                uwriter.close()
        ex.forwarded = True
        ex.status = status
        ex.retry_after = headers.get("retry-after")
        if status == 200 and p.path in ("/v1/batch", "/v1/debug"):
            ex.results = _results(body)
        if fault.kind == "drop_response":
            _reset(writer)
            return False
        await _answer(writer, raw, ex)
        return headers.get("connection", "").lower() != "close"


# -- HTTP/1.1, as much as the collector and the SDKs speak ------------------------------------


def _headers(block: bytes) -> tuple[str, dict[str, str]]:
    lines = block.decode("latin-1").split("\r\n")
    out: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        out[name.strip().lower()] = value.strip()
    return lines[0], out


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "content-length" in headers:
        return await reader.readexactly(int(headers["content-length"]))
    if headers.get("transfer-encoding", "").lower() == "chunked":
        raw = bytearray()
        while True:
            size_line = await reader.readuntil(b"\r\n")
            raw += size_line
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            chunk = await reader.readexactly(size + 2)
            raw += chunk
            if size == 0:
                return bytes(raw)
    return b""


async def _read_request(reader: asyncio.StreamReader) -> _Parsed | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    line, headers = _headers(head)
    method, path = line.split(" ")[:2]
    body = await _read_body(reader, headers)
    return _Parsed(method, path.split("?", 1)[0], head, body, headers)


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    line, headers = _headers(head)
    status = int(line.split(" ")[1])
    body = await _read_body(reader, headers)
    plain = body
    if headers.get("transfer-encoding", "").lower() == "chunked":
        plain = _unchunk(body)
    return status, headers, head + body, plain


def _unchunk(raw: bytes) -> bytes:
    out = bytearray()
    pos = 0
    while True:
        end = raw.index(b"\r\n", pos)
        size = int(raw[pos:end].split(b";", 1)[0], 16)
        if size == 0:
            return bytes(out)
        out += raw[end + 2 : end + 2 + size]
        pos = end + 2 + size + 2


def _response(status: int, headers: dict[str, str], body: bytes) -> bytes:
    lines = [f"HTTP/1.1 {status} Injected", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def _answer(writer: asyncio.StreamWriter, data: bytes, ex: Exchange) -> None:
    # Marked before the write: the sender may read the answer and move on before this coroutine resumes.
    ex.delivered = True
    try:
        writer.write(data)
        await writer.drain()
    except (ConnectionError, OSError):
        ex.delivered = False
        raise


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (linger 0), as a dropped connection looks."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _plain_body(p: _Parsed) -> bytes | None:
    body = p.body
    if p.headers.get("transfer-encoding", "").lower() == "chunked":
        try:
            body = _unchunk(body)
        except ValueError:
            return None
    coding = p.headers.get("content-encoding", "identity").lower()
    try:
        if coding == "zstd":
            return zstandard.ZstdDecompressor().decompress(body, max_output_size=_MAX_DECODED)
        if coding == "gzip":
            return gzip.decompress(body)
    except (zstandard.ZstdError, OSError, EOFError):
        return None
    return body


def _event_ids(p: _Parsed) -> tuple[str, ...]:
    plain = _plain_body(p)
    if plain is None:
        return ()
    try:
        if "json" in p.headers.get("content-type", ""):
            batch: Any = msgspec.json.decode(plain)
        else:
            batch = msgspec.msgpack.decode(plain)
    except (msgspec.DecodeError, ValueError, RecursionError):
        return ()
    events = batch.get("events") if isinstance(batch, dict) else None
    if not isinstance(events, list):
        return ()
    return tuple(str(e.get("event_id")) if isinstance(e, dict) else "" for e in events)


def _results(body: bytes) -> list[str] | None:
    try:
        answer = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return None
    results = answer.get("results") if isinstance(answer, dict) else None
    if not isinstance(results, list):
        return None
    return [str(r.get("status")) if isinstance(r, dict) else "?" for r in results]


def within(deadline_s: float) -> Callable[[float], bool]:
    """A clock check for policies: True until `deadline_s` seconds from now."""
    until = time.monotonic() + deadline_s
    return lambda at: at < until
