"""The durable log on Apache Kafka: a collector's frames go to a topic, acknowledged by `acks=all`.

`KafkaLog` has the surface of the local segment writer (`store.log.LogWriter`) that the pipeline and the
collector use (`store.durable.DurableLog`), so `maidian serve --sink kafka` runs the same pipeline:

- `append(frame)` produces the frame (split per partition key, `keys.py`) with an idempotent producer
  (`enable.idempotence`, `acks=all`) and returns at once; its `committed` future resolves when every part
  is acknowledged by all in-sync replicas (so by at least `min.insync.replicas` brokers), and fails with
  `Unavailable` (503 + Retry-After) on a delivery error or when `delivery_timeout_ms` passes. The pipeline
  marks ids seen only after that future resolves, so a failed request leaves nothing marked seen, and
  its retry is produced again: the raw topic may hold a retry twice; the ledger keeps it once.
- a full producer queue (`queue_max_messages`) answers 503 at once, without waiting (backpressure).
- `healthy` (and so `/readyz`) follows the brokers: a probe asks for the topic's metadata every
  `probe_interval_s` and is healthy when every partition has a leader; a delivery error makes it
  unhealthy until the next good probe or delivery. While unhealthy, `append` answers 503 at once.

Delivery reports arrive on librdkafka's poll thread and are handed to the event loop with
`call_soon_threadsafe`, one per produced frame (one per request in the usual case).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Mapping
from typing import Any, Final

from maidian.collector.cluster.keys import keyed_frames
from maidian.collector.errors import Unavailable
from maidian.collector.settings import SinkConfig
from maidian.collector.store.log import Appended, Recovered

__all__ = ["KafkaLog", "kafka_logs"]

log = logging.getLogger("maidian.collector.kafka")

# Seconds a sender is asked to wait when the brokers do not acknowledge: a leader election takes a few.
BROKER_RETRY_AFTER_S: Final = 2.0
QUEUE_RETRY_AFTER_S: Final = 1.0


class _Request:
    """The parts of one appended frame still waiting for their acknowledgement."""

    __slots__ = ("future", "loop", "remaining")

    def __init__(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[None], parts: int) -> None:
        self.loop = loop
        self.future = future
        self.remaining = parts


def _resolve(future: asyncio.Future[None], error: str | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(
            Unavailable(f"the brokers did not acknowledge: {error}", retry_after_s=BROKER_RETRY_AFTER_S)
        )
        future.exception()  # retrieved here; the requests that await it see it too


class KafkaLog:
    """Frames to one Kafka topic through an idempotent `acks=all` producer (see the module docstring)."""

    durability: Final = "kafka"

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        client_id: str,
        split_keys: bool = True,
        delivery_timeout_ms: int = 10_000,
        queue_max_messages: int = 100_000,
        probe_interval_s: float = 1.0,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.writer = client_id
        self.split_keys = split_keys
        self.probe_interval_s = probe_interval_s
        self._config: dict[str, Any] = {
            "bootstrap.servers": bootstrap,
            "client.id": client_id,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 2,
            "compression.type": "none",  # frame bodies are zstd already
            "delivery.timeout.ms": delivery_timeout_ms,
            "queue.buffering.max.messages": queue_max_messages,
            "socket.connection.setup.timeout.ms": 2000,
            "log_level": 3,
            **(extra or {}),
        }
        self._producer: Any = None
        self._poller: threading.Thread | None = None
        self._stop = threading.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.healthy = False
        self.last_error: str | None = None
        self.written_bytes = 0
        self.synced_bytes = 0
        self.produced_frames = 0
        self.acked_frames = 0
        self.delivery_errors = 0
        self.write_errors = 0
        self.fsync_count = 0
        self.fsync_seconds = 0.0
        self.fsync_seconds_max = 0.0
        # The local writer's covered offsets; nothing here (positions live in the topic).
        self.synced_ends: dict[str, int] = {}
        self._sequence = 0

    # -- the surface the collector uses ------------------------------------------------

    @property
    def unsynced_bytes(self) -> int:
        return self.written_bytes - self.synced_bytes

    def open(self, verified: Mapping[str, int] | None = None) -> Recovered:
        """Create the producer and check the topic answers (a collector that cannot reach it starts unready)."""
        from confluent_kafka import Producer

        self._producer = Producer(self._config)
        self._probe()
        return Recovered(segments=0)

    async def start(self) -> None:
        """Start the delivery-report thread and the broker probe."""
        self._poller = threading.Thread(target=self._poll_loop, name=f"maidian-kafka-{self.topic}", daemon=True)
        self._poller.start()
        self._task = asyncio.create_task(self._probe_loop(), name=f"maidian-kafka-probe-{self.topic}")

    def append(self, frame: bytes) -> Appended:
        """Produce one frame; its `committed` future resolves on `acks=all`. Raise `Unavailable` when refused."""
        if self._closing or self._producer is None:
            raise Unavailable("the collector is shutting down", retry_after_s=QUEUE_RETRY_AFTER_S)
        if not self.healthy:
            raise Unavailable(
                f"the Kafka brokers are unavailable ({self.last_error or 'no leader'})",
                retry_after_s=BROKER_RETRY_AFTER_S,
            )
        parts = keyed_frames(frame, split=self.split_keys)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        request = _Request(loop, future, len(parts))
        produced = 0
        try:
            for key, value in parts:
                self._producer.produce(self.topic, value, key=key, on_delivery=self._delivered(request))
                produced += 1
        except BufferError:
            self.write_errors += 1
            # Parts already produced may still land: the retry's copy is deduplicated by the ledger.
            request.remaining = -1
            raise Unavailable("the Kafka producer's queue is full", retry_after_s=QUEUE_RETRY_AFTER_S) from None
        self.written_bytes += len(frame)
        self.produced_frames += produced
        self._sequence += 1
        return Appended(self.topic, self._sequence, self._sequence, future)

    def _delivered(self, request: _Request) -> Any:
        def report(err: Any, _msg: Any) -> None:
            # On librdkafka's poll thread.
            if err is not None:
                self.delivery_errors += 1
                self.healthy = False
                self.last_error = str(err.str() if hasattr(err, "str") else err)
                if request.remaining > 0:
                    request.remaining = 0
                    request.loop.call_soon_threadsafe(_resolve, request.future, self.last_error)
                return
            self.acked_frames += 1
            if request.remaining > 0:
                request.remaining -= 1
                if request.remaining == 0:
                    request.loop.call_soon_threadsafe(_resolve, request.future, None)

        return report

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    def _probe(self) -> None:
        """Healthy when the topic's metadata comes back with a leader for every partition."""
        try:
            meta = self._producer.list_topics(self.topic, timeout=2.0)
            topic = meta.topics.get(self.topic)
            if topic is None or topic.error is not None:
                raise LookupError(f"topic {self.topic}: {getattr(topic, 'error', 'missing')}")
            if not topic.partitions or any(p.leader < 0 for p in topic.partitions.values()):
                raise LookupError(f"topic {self.topic}: a partition has no leader")
        except Exception as exc:
            self.healthy = False
            self.last_error = str(exc)
            return
        self.healthy = True
        self.last_error = None
        self.synced_bytes = self.written_bytes

    async def _probe_loop(self) -> None:
        while not self._closing:
            await asyncio.sleep(self.probe_interval_s)
            await asyncio.to_thread(self._probe)

    async def sync_once(self) -> None:
        """Wait until every frame produced so far is acknowledged (or failed)."""
        if self._producer is not None:
            await asyncio.to_thread(self._producer.flush, self._config["delivery.timeout.ms"] / 1000 + 1)

    async def close(self) -> None:
        """Refuse new frames, wait for the ones in flight, and stop the producer's threads."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.sync_once()
        self.close_sync()

    def close_sync(self) -> None:
        self._closing = True
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=5)
            self._poller = None
        if self._producer is not None:
            left = self._producer.flush(1.0)
            if left:
                log.warning("%d frames to %s were not acknowledged at shutdown", left, self.topic)
            self._producer = None


def kafka_logs(sink: SinkConfig, writer_id: str) -> tuple[KafkaLog, KafkaLog]:
    """The raw and quarantine logs of `maidian serve --sink kafka`."""
    common: dict[str, Any] = {
        "delivery_timeout_ms": sink.delivery_timeout_ms,
        "queue_max_messages": sink.queue_max_messages,
    }
    raw = KafkaLog(sink.kafka_bootstrap, sink.raw_topic, client_id=f"maidian-{writer_id}-raw", **common)
    quarantine = KafkaLog(
        sink.kafka_bootstrap, sink.quarantine_topic, client_id=f"maidian-{writer_id}-q", split_keys=False, **common
    )
    return raw, quarantine
