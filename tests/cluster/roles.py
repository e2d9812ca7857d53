"""Cluster mode's roles as real processes for the tests: collectors, ledgers and loaders, and what they wrote.

- `start_collector`: `maidian serve --sink kafka` (tests/reliability/procs.py's CollectorProcess, the
  battery's config with a `[sink]` table);
- `RoleProcess`: `maidian ledger` or `maidian load` in its own session, output in a file, SIGKILL/SIGTERM
  by PID;
- `topic_ids`: every event id in every frame of a topic (read_committed or not), to show what the raw
  topic holds twice;
- `produce_all` / `consume_values`: plain `acks=all` writes and reads of a topic (the fixtures' checks);
- `wait_loaded`: polls a loaded data directory until it holds the expected ids (or a bound passes).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgspec

from maidian.collector.cluster.keys import frame_head
from maidian.collector.store.frames import Frame, decode_body
from tests.cluster.kafka import KafkaCluster
from tests.conftest import ROOT
from tests.reliability.ledger import Stored
from tests.reliability.procs import CollectorProcess, write_config
from tests.reliability.store import read_store

_decode = msgspec.msgpack.Decoder()


def sink_config(path: Path, data_dir: Path, bootstrap: str, prefix: str = "maidian") -> Path:
    extra = (
        f'[sink]\nkind = "kafka"\nkafka_bootstrap = "{bootstrap}"\ndelivery_timeout_ms = 8000\n'
        f'raw_topic = "{prefix}.raw"\nquarantine_topic = "{prefix}.quarantine"\n'
    )
    return write_config(path, data_dir, extra=extra)


def start_collector(root: Path, name: str, bootstrap: str, prefix: str) -> CollectorProcess:
    config = sink_config(root / f"{name}.toml", root / f"{name}-data", bootstrap, prefix)
    return CollectorProcess(config, args=["--writer-id", name]).start()


class RoleProcess:
    """`maidian ledger|load ...` as a subprocess (killed by PID, never by name)."""

    def __init__(self, log: Path, *args: str) -> None:
        self.args = list(args)
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, **env: str) -> RoleProcess:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "maidian.collector.cli", *self.args],
                cwd=ROOT,
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
                env=dict(os.environ, PYTHONUNBUFFERED="1", **env),
                start_new_session=True,
            )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_exit(self, timeout_s: float = 60.0) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout_s)
        self.proc = None
        return code

    def kill(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        self.proc = None

    def stop(self, timeout_s: float = 60.0) -> int:
        if self.proc is None:
            return 0
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        finally:
            self.proc = None

    def text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def ledger(root: Path, bootstrap: str, prefix: str, instance: str = "ledger-0") -> RoleProcess:
    return RoleProcess(
        root / f"{instance}.log",
        *("ledger", "--kafka-bootstrap", bootstrap, "--topic-prefix", prefix, "--instance", instance),
    )


def loader(root: Path, bootstrap: str, prefix: str, data_dir: Path) -> RoleProcess:
    return RoleProcess(
        root / "loader.log",
        *("load", "--kafka-bootstrap", bootstrap, "--topic-prefix", prefix, "--data", str(data_dir)),
    )


def frame_ids(value: bytes) -> list[str]:
    head, body = frame_head(value)
    events = decode_body(Frame("kafka", 0, 0, head, body)).events
    out = []
    for raw in events:
        event = _decode.decode(raw) if isinstance(raw, bytes) else raw
        out.append(event["event_id"])
    return out


def topic_ids(cluster: KafkaCluster, topic: str, *, committed_only: bool = True) -> list[str]:
    """Every event id in every frame of `topic`, read from the beginning to the current end."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": cluster.bootstrap,
            "group.id": f"check-{topic}-{time.monotonic_ns()}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed" if committed_only else "read_uncommitted",
            "log_level": 0,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {}
        for p in partitions:
            _low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)
            ends[p] = high
        consumer.assign([TopicPartition(topic, p, -2) for p in partitions])
        ids: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for msg in consumer.consume(1000, 0.2):
                if msg.error() is None and msg.value() is not None:
                    ids += frame_ids(msg.value())
            positions = consumer.position([TopicPartition(topic, p) for p in partitions])
            if all(tp.offset >= ends[tp.partition] for tp in positions if ends[tp.partition] > 0):
                return ids
        raise AssertionError(f"could not read {topic} to its end")
    finally:
        consumer.close()


def wait_loaded(data_dir: Path, expected: Iterable[str], roles: Iterable[RoleProcess], timeout_s: float = 90) -> Stored:
    """Poll the loaded store until it holds every expected id; the store (the check then says what is off)."""
    want = set(expected)
    deadline = time.monotonic() + timeout_s
    stored = read_store(data_dir)
    while not want <= stored.ids and time.monotonic() < deadline:
        for role in roles:
            assert role.alive(), f"{role.args[0]} exited:\n{role.text()[-3000:]}"
        time.sleep(0.5)
        stored = read_store(data_dir)
    return stored


def produce_all(bootstrap: str, topic: str, values: list[bytes]) -> list[Any]:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True, "log_level": 0})
    results: list[Any] = []
    for value in values:
        producer.produce(topic, value, key=value[:1], on_delivery=lambda err, msg: results.append((err, msg)))
    producer.flush(60)
    return results


def consume_values(bootstrap: str, topic: str, count: int, *, committed_only: bool = True) -> list[bytes]:
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"check-{topic}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed" if committed_only else "read_uncommitted",
            "log_level": 0,
        }
    )
    from confluent_kafka import TopicPartition

    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, -2) for p in partitions])  # -2: from the beginning
    seen: list[bytes] = []
    empty_polls = 0
    try:
        while len(seen) < count and empty_polls < 40:
            msg = consumer.poll(0.5)
            if msg is None:
                empty_polls += 1
                continue
            assert msg.error() is None, msg.error()
            seen.append(msg.value())
    finally:
        consumer.close()
    return seen
