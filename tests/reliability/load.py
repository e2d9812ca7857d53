"""A paced load of SDK-like batches against a collector, that resends until everything is acknowledged.

Batches are built the way the SDK builds them (msgpack, zstd, `<source>-<seq>`
ids from a handful of devices, `sent_at`), each once, and posted over a few
keep-alive connections at a target rate of events per second. The load keeps
its own ledger: an event is *tracked* once its batch was first posted, *acked*
when a 200 that reached us said `accepted` or `duplicate`, and *indeterminate*
when its request got no answer (the collector died, the connection reset). A
batch that was not acknowledged goes back to the front of the queue and is
sent again, with the same ids, like the SDK's retries.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec
import zstandard

from tests.reliability.constants import KEY
from tests.reliability.ledger import Ledger

__all__ = ["Load", "order_event"]

_cctx = zstandard.ZstdCompressor(level=1)


def order_event(source: str, seq: int, t_ms: int, anon: str) -> dict[str, Any]:
    return {
        "type": "track",
        "event": "stock_order_submit",
        "event_id": f"{source}-{seq}",
        "time": t_ms,
        "identities": {"anonymous_id": anon},
        "properties": {"stock_code": "600519", "side": "buy", "price": 1688.5, "quantity": 100 * (seq % 9 + 1)},
    }


@dataclass
class _Batch:
    ids: list[str]
    body: bytes
    attempts: int = 0


@dataclass
class Load:
    batch_size: int = 100
    devices: int = 10
    seed: int = 0
    key: str = KEY
    connections: int = 4
    ledger: Ledger = field(default_factory=Ledger)
    statuses: dict[int, int] = field(default_factory=dict)  # HTTP status -> count (0: no answer)
    requests: int = 0
    ack_times: dict[str, float] = field(default_factory=dict)  # event id -> monotonic time of its first ack
    missing_retry_after: int = 0  # 429 and 503 answers without Retry-After

    def __post_init__(self) -> None:
        rng = random.Random(self.seed)
        self._sources = [f"{rng.getrandbits(128):032x}" for _ in range(self.devices)]
        self._next_seq = [1] * self.devices
        self._device = 0
        self._queue: deque[_Batch] = deque()  # waiting to be (re)sent, oldest first
        self._unacked = 0

    def _new_batch(self) -> _Batch:
        d = self._device
        self._device = (d + 1) % self.devices
        source = self._sources[d]
        first = self._next_seq[d]
        self._next_seq[d] = first + self.batch_size
        now = int(time.time() * 1000)
        events = [order_event(source, first + k, now, f"dev-{d}") for k in range(self.batch_size)]
        body = _cctx.compress(msgspec.msgpack.encode({"sent_at": now, "lib": "battery", "events": events}))
        return _Batch([e["event_id"] for e in events], body)

    @property
    def unacked(self) -> int:
        """Batches not yet fully acknowledged (waiting or in flight)."""
        return self._unacked

    async def run(
        self,
        url: str,
        *,
        rate_ev_s: float,
        stop: asyncio.Event,
        new: bool = True,
        on_answer: Callable[[int], None] | None = None,
    ) -> None:
        """Post until `stop` is set: resends first, then (when `new`) fresh batches at `rate_ev_s`."""
        interval = self.batch_size / rate_ev_s
        start = time.monotonic()
        made = 0

        def next_batch() -> _Batch | None:
            nonlocal made
            if self._queue:
                return self._queue.popleft()
            if not new:
                return None
            due = start + made * interval
            if time.monotonic() < due:
                return None
            made += 1
            batch = self._new_batch()
            self._unacked += 1
            self.ledger.track(batch.ids)
            return batch

        async def worker(session: aiohttp.ClientSession) -> None:
            while not stop.is_set():
                batch = next_batch()
                if batch is None:
                    if not new and not self._queue:
                        return
                    await asyncio.sleep(0.005)
                    continue
                ok = await self._post(session, url, batch)
                if on_answer is not None:
                    on_answer(1 if ok else 0)
                if not ok:
                    self._queue.appendleft(batch)
                    await asyncio.sleep(0.02)

        timeout = aiohttp.ClientTimeout(total=15)
        connector = aiohttp.TCPConnector(limit=self.connections, force_close=False)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            await asyncio.gather(*(worker(session) for _ in range(self.connections)))

    async def _post(self, session: aiohttp.ClientSession, url: str, batch: _Batch) -> bool:
        batch.attempts += 1
        self.requests += 1
        headers = {
            "Content-Type": "application/msgpack",
            "Content-Encoding": "zstd",
            "X-Maidian-Write-Key": self.key,
        }
        try:
            async with session.post(url + "/v1/batch", data=batch.body, headers=headers) as resp:
                status = resp.status
                body = await resp.read()
                if status in (429, 503) and "Retry-After" not in resp.headers:
                    self.missing_retry_after += 1
        except (aiohttp.ClientError, ConnectionError, TimeoutError):
            self.statuses[0] = self.statuses.get(0, 0) + 1
            self.ledger.indeterminate.update(batch.ids)
            return False
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if status != 200:
            return False
        results = msgspec.json.decode(body)["results"]
        done = [i for i, r in zip(batch.ids, results, strict=True) if r["status"] in ("accepted", "duplicate")]
        self.ledger.ack(done)
        now = time.monotonic()
        for eid in done:
            self.ack_times.setdefault(eid, now)
        if len(done) != len(batch.ids):
            raise AssertionError(f"a valid event was not accepted: {results[:3]}")
        self._unacked -= 1
        return True

    async def drain(self, url: str, timeout_s: float = 60.0) -> None:
        """Resend every batch not yet acknowledged until all are (no new batches)."""
        deadline = time.monotonic() + timeout_s
        while self._queue:
            stop = asyncio.Event()
            task = asyncio.create_task(self.run(url, rate_ev_s=1.0, stop=stop, new=False))
            while not task.done():
                if time.monotonic() > deadline:
                    stop.set()
                    await task
                    raise AssertionError(f"{len(self._queue)} batches still unacknowledged after {timeout_s} s")
                await asyncio.sleep(0.05)
            await task
