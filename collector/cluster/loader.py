"""The loader (`maidian load`): the ledger's deduplicated frames, written into a data directory.

Each events-topic partition `p` is written by one writer, `k<p>`, into `raw/` of the data directory
(store/log.py: the same segments, fsync group commit and locks as a collector's), so every read command
(`events --person`, `export`, `coverage`, `privacy`) works on the result unchanged; the catalog and the
identity index are rebuilt from the frame heads by the readers, as in single-node mode.

Exactly once: every loaded frame's head records where it came from, `kafka = [topic, partition, offset]`,
and is fsynced before the loader moves on. A loader that (re)gains a partition reads the last frame of
`k<p>`'s segments and resumes after that offset, so a crash between the fsync and anything else loads
nothing twice, and nothing is skipped. Consumer group offsets are not used for this (they are committed
only as a progress gauge). The events topic is read with read_committed: only frames of committed ledger
transactions are loaded.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maidian.collector.cluster.keys import frame_head, frame_with_head
from maidian.collector.store.frames import read_frames, segment_files
from maidian.collector.store.log import DataDir, LogWriter

__all__ = ["Loader", "LoaderConfig", "last_loaded_offset", "run_loader"]


@dataclass(frozen=True, slots=True)
class LoaderConfig:
    bootstrap: str
    data_dir: Path
    events_topic: str = "maidian.events"
    group: str = "maidian-loader"
    batch_messages: int = 1000


def writer_of(partition: int) -> str:
    return f"k{partition}"


def last_loaded_offset(data: DataDir, partition: int) -> int:
    """The events-topic offset of the last frame loaded for `partition` (-1: none)."""
    for path in reversed(segment_files(data.raw, writer_of(partition))):
        frames, _end = read_frames(path)
        for frame in reversed(frames):
            where = frame.head.get("kafka")
            if where is not None and int(where[1]) == partition:
                return int(where[2])
    return -1


@dataclass(slots=True)
class Loader:
    config: LoaderConfig
    data: DataDir = field(init=False)
    writers: dict[int, LogWriter] = field(default_factory=dict)
    consumer: Any = None
    loaded_frames: int = 0
    stopping: bool = False
    _loop: asyncio.AbstractEventLoop | None = None

    def __post_init__(self) -> None:
        self.data = DataDir(self.config.data_dir).create()

    async def open(self) -> None:
        from confluent_kafka import Consumer

        self._loop = asyncio.get_running_loop()
        self.consumer = Consumer(
            {
                "bootstrap.servers": self.config.bootstrap,
                "group.id": self.config.group,
                "group.instance.id": f"{self.config.group}-{self.config.data_dir.name}",
                "session.timeout.ms": 10_000,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                "log_level": 3,
            }
        )
        self.consumer.subscribe([self.config.events_topic], on_assign=self._on_assign)

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        # On the consume thread: open the partitions' writers and resume after what is already loaded.
        for tp in partitions:
            tp.offset = last_loaded_offset(self.data, tp.partition) + 1
        consumer.assign(partitions)

    async def _writer(self, partition: int) -> LogWriter:
        writer = self.writers.get(partition)
        if writer is None:
            writer = LogWriter(self.data.raw, writer_of(partition))
            writer.open()
            await writer.start()
            self.writers[partition] = writer
        return writer

    async def step(self, timeout_s: float = 0.1) -> int:
        """Load one batch: every frame appended and fsynced (group commit) before the next batch."""
        messages = await asyncio.to_thread(self.consumer.consume, self.config.batch_messages, timeout_s)
        commits = []
        loaded = 0
        for msg in messages:
            if msg.error() is not None or msg.value() is None:
                continue
            head, body = frame_head(msg.value())
            head["kafka"] = [msg.topic(), msg.partition(), msg.offset()]
            writer = await self._writer(msg.partition())
            appended = writer.append(frame_with_head(head, body))
            if appended.committed is not None:
                commits.append(appended.committed)
            loaded += 1
        if commits:
            await asyncio.gather(*set(commits))
        if loaded:
            self.loaded_frames += loaded
            # Offsets are only a progress gauge here (the resume point is in the frames): a commit that
            # fails while a broker moves is left to the next batch.
            self.consumer.commit(asynchronous=True)
        return loaded

    async def close(self) -> None:
        for writer in self.writers.values():
            await writer.close()
        self.writers.clear()
        if self.consumer is not None:
            await asyncio.to_thread(self.consumer.close)
            self.consumer = None


async def _run(config: LoaderConfig) -> None:
    loader = Loader(config)
    loop = asyncio.get_running_loop()

    def stop() -> None:
        loader.stopping = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    await loader.open()
    print(f"maidian load: running into {config.data_dir}", file=sys.stderr, flush=True)
    try:
        while not loader.stopping:
            await loader.step()
    finally:
        await loader.close()
    print(f"maidian load: stopped after {loader.loaded_frames} frames", file=sys.stderr, flush=True)


def run_loader(config: LoaderConfig) -> int:
    """`maidian load`: run until SIGTERM/SIGINT."""
    asyncio.run(_run(config))
    return 0
