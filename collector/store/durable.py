"""The durable log the pipeline appends to: one protocol, two implementations.

- `store.log.LogWriter`: local segments with fsync group commit (the default; single node);
- `cluster.kafka_log.KafkaLog`: an Apache Kafka topic through an idempotent `acks=all` producer.

Promise of every implementation: `append(frame)` either raises `Unavailable` (the request answers 503 with
Retry-After) or returns an `Appended` whose `committed` future resolves once the frame is durable under
that log's rule (or is None when it already is), or fails with `Unavailable`. The pipeline answers and
marks ids seen only after that (pipeline/ingest.py). `healthy` is what `/readyz` reports; `last_error`
says why not. The counters feed /metrics; a log without fsyncs leaves those at zero.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from maidian.collector.store.log import Appended, Recovered

__all__ = ["DurableLog"]


class DurableLog(Protocol):
    healthy: bool
    last_error: str | None
    written_bytes: int
    synced_bytes: int
    write_errors: int
    fsync_count: int
    fsync_seconds: float
    fsync_seconds_max: float
    synced_ends: dict[str, int]

    @property
    def unsynced_bytes(self) -> int: ...

    def open(self, verified: Mapping[str, int] | None = None) -> Recovered: ...

    async def start(self) -> None: ...

    def append(self, frame: bytes) -> Appended: ...

    async def sync_once(self) -> None: ...

    async def close(self) -> None: ...

    def close_sync(self) -> None: ...
