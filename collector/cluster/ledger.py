"""The ledger (`maidian ledger`): exact deduplication of the raw topic, per partition, in Kafka transactions.

The collectors' raw topic may hold an event twice (a retry after a lost answer, a retry through the other
collector, a producer retry across a broker failover); what the ledger emits holds it once. One ledger
process or many form a consumer group on the raw topic; each owns some partitions and, for each, the
range state of deduplication (`pipeline.dedup.SeenIds`: ranges per SDK source, plus opaque ids).

One loop iteration, in one Kafka transaction:
1. consume a batch of raw frames (read_committed);
2. for each frame, the ids it carries that the partition's state has not seen: all of them (the usual
   case: forwarded as it is), none (dropped) or some (a frame cut down to those events, `keys.py`);
3. produce the kept frames to the events topic, in the same partition number (the key is the same, so the
   loader and stitcher see one device in one partition), and one changelog record per touched key to the
   compacted state topic (key: the SDK source or opaque id; value: its last-seen time and ranges);
4. add the consumer's positions to the transaction and commit it.
A crash anywhere before the commit aborts the transaction: neither the output, the changelog records nor
the offsets become visible, and the next owner redoes the batch. A ledger that gains a partition first
restores its state from the changelog (read_committed, to the end) and only then processes it, so the
state always equals the committed output. Restarting a ledger with the same `--instance` fences its
predecessor (`init_transactions`) and aborts its open transaction at once; another instance's open
transaction is aborted by the brokers after `transaction_timeout_ms` (60 s), and restoring waits for that.
The tests kill a ledger inside a transaction with `MAIDIAN_LEDGER_CRASH_BEFORE_COMMIT=N` (it SIGKILLs
itself in its Nth transaction, once every output is on the brokers and before the commit).

State size: an SDK device costs one range (a few dozen bytes) however many events it sends; an opaque id
costs one dict entry (about 100-160 bytes). `memory()` reports both per partition (docs/scaling.md).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from maidian.collector.cluster.keys import frame_head, frame_keeping, partition_key
from maidian.collector.errors import CollectorError
from maidian.collector.pipeline.dedup import ScopedSeenIds, SeenIds, head_scope
from maidian.collector.settings import DEFAULT_DEDUP_WINDOW_S

__all__ = ["Ledger", "LedgerConfig", "PartitionState", "run_ledger"]

log = logging.getLogger("maidian.ledger")

_encode: Final = msgspec.msgpack.encode
_decode_entry: Final = msgspec.msgpack.Decoder(tuple[int, list[int]])
# How long restoring a partition may wait for an open transaction of a dead ledger to be aborted.
RESTORE_TIMEOUT_S: Final = 120.0


class LedgerError(CollectorError):
    """The ledger cannot go on (a fenced producer, a topic that does not exist)."""


@dataclass(frozen=True, slots=True)
class LedgerConfig:
    bootstrap: str
    raw_topic: str = "maidian.raw"
    events_topic: str = "maidian.events"
    state_topic: str = "maidian.ledger-state"
    group: str = "maidian-ledger"
    instance: str = "ledger-0"
    batch_messages: int = 500
    # Long enough to ride out a broker failover inside one transaction (a timed-out transaction is aborted
    # by the coordinator and fences its producer); a takeover by another instance waits at most this.
    transaction_timeout_ms: int = 60_000
    window_s: float = DEFAULT_DEDUP_WINDOW_S


@dataclass(slots=True)
class PartitionState:
    """One raw partition's deduplication state (per sender scope, as in single-node mode), and what it handled."""

    seen: ScopedSeenIds
    frames_in: int = 0
    frames_out: int = 0
    events_in: int = 0
    events_out: int = 0

    def fresh_ids(self, head: dict[str, Any]) -> tuple[list[str] | None, int]:
        """(None, n) when every id of the head is new; else (the new ids, n). n: the ids the head lists."""
        seq: dict[str, list[int]] = head.get("seq") or {}
        oid: list[str] = head.get("oid") or []
        seen = self.seen.of(head_scope(head))
        total = sum((flat[k + 1] - flat[k] + 1) for flat in seq.values() for k in range(0, len(flat) - 1, 2))
        total += len(oid)
        if all(seen.all_below(source, flat[0]) for source, flat in seq.items() if flat) and not any(
            seen.has_opaque(e) for e in oid
        ):
            return None, total
        new = [
            f"{source}-{n}"
            for source, flat in seq.items()
            for k in range(0, len(flat) - 1, 2)
            for n in range(flat[k], flat[k + 1] + 1)
            if not seen.has(source, n)
        ]
        new += [e for e in oid if not seen.has_opaque(e)]
        return new, total


def _retrying(call: Any, timeout_s: float = 120.0) -> Any:
    """Run a transactional call, again while it fails with a retriable error (a broker or coordinator
    moving: a killed broker's partitions get a new leader within seconds), up to `timeout_s`."""
    from confluent_kafka import KafkaException

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return call()
        except KafkaException as exc:
            error = exc.args[0]
            if not error.retriable() or error.txn_requires_abort() or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def changelog_records(seen: ScopedSeenIds, head: dict[str, Any]) -> Iterable[tuple[bytes, bytes]]:
    """(key, value) for each SDK source and opaque id a head touched: its whole entry after the update."""
    scope = head_scope(head)
    ids: SeenIds = seen.of(scope)
    for key in [*(head.get("seq") or {}), *(head.get("oid") or [])]:
        entry = ids.entry(key)
        if entry is not None:
            yield partition_key(scope, key), _encode(entry)


def restore_entry(seen: ScopedSeenIds, key: bytes, value: bytes) -> None:
    last_seen, flat = _decode_entry.decode(value)
    scope, _sep, name = key.decode().partition("\x1f")
    if flat:
        seen.of(scope).add_head({name: flat}, (), last_seen)
    else:
        seen.of(scope).add_head({}, (name,), last_seen)


@dataclass(slots=True)
class Ledger:
    """The consume-dedupe-produce loop (see the module docstring)."""

    config: LedgerConfig
    states: dict[int, PartitionState] = field(default_factory=dict)
    transactions: int = 0
    consumer: Any = None
    producer: Any = None
    # Fault injection for the tests (MAIDIAN_LEDGER_CRASH_BEFORE_COMMIT=N): SIGKILL itself in its Nth
    # transaction, after producing every output and before committing. 0: never.
    crash_before_commit: int = 0

    def _client_config(self) -> dict[str, Any]:
        return {"bootstrap.servers": self.config.bootstrap, "log_level": 3}

    def open(self) -> None:
        from confluent_kafka import Consumer, Producer

        self.producer = Producer(
            {
                **self._client_config(),
                "transactional.id": f"{self.config.group}-{self.config.instance}",
                "transaction.timeout.ms": self.config.transaction_timeout_ms,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "compression.type": "none",
            }
        )
        # Fences an earlier process with the same instance name and aborts its open transaction.
        self.producer.init_transactions(60)
        self.consumer = Consumer(
            {
                **self._client_config(),
                "group.id": self.config.group,
                # Static membership: a restart with the same instance takes its partitions back at once,
                # without waiting for the dead member's session to time out.
                "group.instance.id": self.config.instance,
                "session.timeout.ms": 10_000,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                "partition.assignment.strategy": "cooperative-sticky",
            }
        )
        self.consumer.subscribe([self.config.raw_topic], on_assign=self._on_assign, on_revoke=self._on_revoke)

    # -- partitions ----------------------------------------------------------------------

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        for tp in partitions:
            self.states[tp.partition] = self.restore(tp.partition)
        log.info("ledger %s: assigned %s", self.config.instance, sorted(tp.partition for tp in partitions))

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        for tp in partitions:
            self.states.pop(tp.partition, None)

    def restore(self, partition: int) -> PartitionState:
        """The partition's state from its changelog, read to the end (read_committed)."""
        from confluent_kafka import Consumer, TopicPartition

        seen = ScopedSeenIds(self.config.window_s)
        reader = Consumer(
            {
                **self._client_config(),
                "group.id": f"{self.config.group}-restore",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            }
        )
        try:
            tp = TopicPartition(self.config.state_topic, partition)
            _low, high = reader.get_watermark_offsets(tp, timeout=30, cached=False)
            if high > 0:
                reader.assign([TopicPartition(self.config.state_topic, partition, -2)])
                deadline = time.monotonic() + RESTORE_TIMEOUT_S
                while True:
                    for msg in reader.consume(1000, 0.2):
                        key, value = msg.key(), msg.value()
                        if msg.error() is None and key is not None and value is not None:
                            restore_entry(seen, key, value)
                    position = reader.position([tp])[0].offset
                    if position >= high:
                        break
                    if time.monotonic() > deadline:
                        raise LedgerError(f"restoring partition {partition}: stuck at {position} of {high}")
        finally:
            reader.close()
        return PartitionState(seen)

    # -- the loop ----------------------------------------------------------------------

    def step(self, timeout_s: float = 0.1) -> int:
        """Consume one batch and process it in one transaction; the number of raw frames handled."""
        from confluent_kafka import KafkaException

        messages = self.consumer.consume(self.config.batch_messages, timeout_s)
        for m in messages:
            error = m.error()
            if error is not None and error.fatal():
                raise LedgerError(f"the consumer failed: {error.str()}")
        messages = [m for m in messages if m.error() is None]
        if not messages:
            return 0
        self.producer.begin_transaction()
        try:
            for msg in messages:
                self._handle(msg)
            if self.transactions + 1 == self.crash_before_commit:
                self.producer.flush(30)  # the outputs are on the brokers, uncommitted: then the crash
                os.kill(os.getpid(), signal.SIGKILL)
            _retrying(
                lambda: self.producer.send_offsets_to_transaction(
                    self.consumer.position(self.consumer.assignment()), self.consumer.consumer_group_metadata(), 30
                )
            )
            _retrying(lambda: self.producer.commit_transaction(60))
        except KafkaException as exc:
            error = exc.args[0]
            if error.fatal():
                raise LedgerError(f"transaction failed: {error.str()}") from exc
            # Abortable, or not retriable within the bound: nothing of the batch is visible; redo it.
            log.warning("ledger %s: aborting a transaction: %s", self.config.instance, error.str())
            _retrying(lambda: self.producer.abort_transaction(60))
            self._rewind()
            return 0
        self.transactions += 1
        return len(messages)

    def _handle(self, msg: Any) -> None:
        partition = msg.partition()
        state = self.states.get(partition)
        if state is None:
            state = self.states[partition] = self.restore(partition)
        frame: bytes = msg.value()
        head, body = frame_head(frame)
        new, total = state.fresh_ids(head)
        state.frames_in += 1
        state.events_in += total
        now_ms = int(head.get("at", 0))
        if new is None:
            out = frame
            kept = total
        elif not new:
            return
        else:
            out = frame_keeping(head, body, set(new))
            kept = len(new)
            head = frame_head(out)[0]
        state.seen.of(head_scope(head)).add_head(head.get("seq") or {}, head.get("oid") or (), now_ms)
        self._produce(self.config.events_topic, out, msg.key(), partition)
        for key, value in changelog_records(state.seen, head):
            self._produce(self.config.state_topic, value, key, partition)
        state.frames_out += 1
        state.events_out += kept

    def _produce(self, topic: str, value: bytes, key: bytes | None, partition: int) -> None:
        while True:
            try:
                self.producer.produce(topic, value, key=key, partition=partition)
                return
            except BufferError:  # the producer's queue is full: let deliveries drain it
                self.producer.poll(0.1)

    def _rewind(self) -> None:
        """After an aborted transaction: state from the changelog, positions from the committed offsets."""
        assignment = self.consumer.assignment()
        committed = _retrying(lambda: self.consumer.committed(assignment, timeout=30))
        for tp in committed:
            self.states[tp.partition] = _retrying(lambda partition=tp.partition: self.restore(partition))
            self.consumer.seek(tp if tp.offset >= 0 else type(tp)(tp.topic, tp.partition, -2))

    def memory(self) -> dict[int, dict[str, int]]:
        """Per partition: SDK sources, their ranges, opaque ids, and an estimate of the bytes they hold."""
        out = {}
        for partition, state in self.states.items():
            seen = state.seen
            opaque = seen.opaque_count()
            sources = len(seen) - opaque
            ranges = seen.range_count
            out[partition] = {
                "sources": sources,
                "ranges": ranges,
                "opaque_ids": opaque,
                "bytes_estimate": sources * _SOURCE_BYTES + ranges * _RANGE_BYTES + opaque * _OPAQUE_BYTES,
            }
        return out

    def close(self) -> None:
        if self.consumer is not None:
            self.consumer.close()
            self.consumer = None
        self.producer = None


# Measured with tracemalloc on CPython 3.11 (benchmarks/cluster.py --ledger-memory): a source's dict entry,
# its 32-character key and its _Ranges with two lists; each further range two list slots and two ints;
# an opaque id's key string (40 characters) and dict slot with its int. Measured: 351, 80 and 151 bytes.
_SOURCE_BYTES: Final = 350
_RANGE_BYTES: Final = 80
_OPAQUE_BYTES: Final = 150


def run_ledger(config: LedgerConfig, *, report_every_s: float = 10.0) -> int:
    """`maidian ledger`: run until SIGTERM/SIGINT, then leave the group.

    A fatal transactional error (the producer fenced, for instance when the coordinator aborted a
    transaction that outlived `transaction_timeout_ms` during a failover) starts the ledger afresh in
    the same process, as a supervisor's restart would: a new producer with the same transactional id
    (which fences any older one), the partitions' state restored from the changelog, and the uncommitted
    batch redone.
    """
    from confluent_kafka import KafkaException

    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    crash = int(os.environ.get("MAIDIAN_LEDGER_CRASH_BEFORE_COMMIT", "0"))
    while not stopping:
        ledger = Ledger(config, crash_before_commit=crash)
        try:
            ledger.open()
            print(
                f"maidian ledger: running instance={config.instance} group={config.group}", file=sys.stderr, flush=True
            )
            last = time.monotonic()
            while not stopping:
                ledger.step()
                if time.monotonic() - last >= report_every_s:
                    last = time.monotonic()
                    print(f"maidian ledger: state per partition {ledger.memory()}", file=sys.stderr, flush=True)
        except (LedgerError, KafkaException) as exc:
            print(f"maidian ledger: starting afresh after: {exc}", file=sys.stderr, flush=True)
            crash = 0
            time.sleep(1.0)
        finally:
            ledger.close()
    print("maidian ledger: stopped", file=sys.stderr, flush=True)
    return 0
