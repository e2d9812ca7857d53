"""The stitcher (`maidian stitch`): one active writer feeds the deduplicated heads to the identity graph.

The graph's rules are the single-node graph's (identity/graph.py), run by the active stitcher on an
in-memory graph; PostgreSQL holds what survives it and what readers use:

- `maidian_observation`: every identity observation taken in (event id, canonical identities);
- `maidian_identity`: every identity's person, rewritten for each cluster a batch touched;
- `maidian_stitch_offset`: the next events-topic offset per partition;
- `maidian_stitch_leader`: the fencing token (`epoch`).

Each batch is one PostgreSQL transaction: check the fencing token (`SELECT ... FOR UPDATE`), insert the
observations, rewrite the touched clusters' persons, store the offsets, commit. So the stored graph always
equals the single-node graph of the stored observations, and a restart resumes exactly after them. A
failed transaction ends the process (its in-memory graph may be ahead of the stored one); the next
leader rebuilds from what was committed.

Leadership: a stitcher waits for the session-level advisory lock `LOCK_KEY` on a connection of its own
(a standby keeps trying every `standby_poll_s`); once it has it, it increments `epoch` and keeps the new
value as its token. If its lock connection dies (the process is killed, or the network cuts it off and
PostgreSQL ends the session), a standby takes the lock and increments the epoch; a former leader that was
merely paused then fails its next transaction's token check and exits without writing. The new leader
rebuilds the in-memory graph from `maidian_observation` (the result depends on the set of observations,
not their order) and resumes from the stored offsets.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from maidian.collector.cluster.keys import frame_head
from maidian.collector.errors import CollectorError
from maidian.collector.identity import IdentityGraph, IdentityPolicy, Observation

__all__ = ["Fenced", "Stitcher", "StitcherConfig", "run_stitcher"]

LOCK_KEY: Final = 0x6D6169646961  # "maidia"
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS maidian_stitch_leader (id INT PRIMARY KEY, epoch BIGINT NOT NULL);
INSERT INTO maidian_stitch_leader VALUES (1, 0) ON CONFLICT (id) DO NOTHING;
CREATE TABLE IF NOT EXISTS maidian_observation (
    event_id TEXT NOT NULL,
    identities TEXT NOT NULL,
    time BIGINT NOT NULL,
    kind TEXT NOT NULL,
    trusted BOOLEAN NOT NULL,
    PRIMARY KEY (event_id, identities)
);
CREATE TABLE IF NOT EXISTS maidian_identity (
    type TEXT NOT NULL,
    value TEXT NOT NULL,
    person TEXT NOT NULL,
    PRIMARY KEY (type, value)
);
CREATE INDEX IF NOT EXISTS maidian_identity_person ON maidian_identity (person);
CREATE TABLE IF NOT EXISTS maidian_stitch_offset (
    topic TEXT NOT NULL,
    partition INT NOT NULL,
    next_offset BIGINT NOT NULL,
    PRIMARY KEY (topic, partition)
);
"""


class Fenced(CollectorError):
    """Another stitcher became the active writer: this one must stop without writing."""


@dataclass(frozen=True, slots=True)
class StitcherConfig:
    bootstrap: str
    dsn: str
    events_topic: str = "maidian.events"
    plan: Path | None = None
    batch_messages: int = 1000
    standby_poll_s: float = 0.5


@dataclass(slots=True)
class Stitcher:
    config: StitcherConfig
    epoch: int = 0
    graph: IdentityGraph | None = None
    observations: int = 0
    stopping: bool = False
    _lock_conn: Any = None
    _conn: Any = None
    _consumer: Any = None
    _policy: IdentityPolicy = field(default_factory=IdentityPolicy)

    def __post_init__(self) -> None:
        if self.config.plan is not None:
            from maidian.tracking_plan import load_plan

            self._policy = IdentityPolicy.from_plan(load_plan(self.config.plan))

    # -- leadership ------------------------------------------------------------------------

    def lead(self) -> bool:
        """Wait for the advisory lock (False if asked to stop first); then take a new fencing token."""
        import psycopg

        self._lock_conn = psycopg.connect(self.config.dsn, autocommit=True)
        with psycopg.connect(self.config.dsn, autocommit=True) as setup:
            setup.execute(f"SELECT pg_advisory_lock({LOCK_KEY + 1})")  # one schema setup at a time
            setup.execute(_SCHEMA)
            setup.execute(f"SELECT pg_advisory_unlock({LOCK_KEY + 1})")
        while not self.stopping:
            row = self._lock_conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()
            if row is not None and row[0]:
                break
            time.sleep(self.config.standby_poll_s)
        else:
            return False
        row = self._lock_conn.execute(
            "UPDATE maidian_stitch_leader SET epoch = epoch + 1 WHERE id = 1 RETURNING epoch"
        ).fetchone()
        assert row is not None
        self.epoch = int(row[0])
        self._conn = psycopg.connect(self.config.dsn, autocommit=True)
        return True

    def restore(self) -> dict[int, int]:
        """The in-memory graph from the stored observations; the stored offsets."""
        graph = IdentityGraph(None, self._policy)
        rows = self._conn.execute("SELECT event_id, identities, time, kind, trusted FROM maidian_observation")
        batch: list[Observation] = []
        for event_id, identities, t, kind, trusted in rows:
            batch.append(Observation(event_id, int(t), kind, json.loads(identities), bool(trusted)))
            if len(batch) >= 10_000:
                graph.observe_many(batch)
                batch = []
        graph.observe_many(batch)
        self.graph = graph
        offsets = self._conn.execute(
            "SELECT partition, next_offset FROM maidian_stitch_offset WHERE topic = %s", (self.config.events_topic,)
        ).fetchall()
        return {int(p): int(o) for p, o in offsets}

    def open_consumer(self, offsets: dict[int, int]) -> None:
        from confluent_kafka import Consumer, TopicPartition

        topic = self.config.events_topic
        self._consumer = Consumer(
            {
                "bootstrap.servers": self.config.bootstrap,
                "group.id": "maidian-stitcher",  # offsets live in PostgreSQL; the group is never joined
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "log_level": 3,
            }
        )
        partitions = self._consumer.list_topics(topic, timeout=30).topics[topic].partitions
        self._consumer.assign([TopicPartition(topic, p, offsets.get(p, -2)) for p in partitions])

    # -- the loop ------------------------------------------------------------------------

    def step(self, timeout_s: float = 0.1) -> int:
        """One batch in one PostgreSQL transaction; the number of frames taken in."""
        assert self.graph is not None
        messages = [m for m in self._consumer.consume(self.config.batch_messages, timeout_s) if m.error() is None]
        if not messages:
            return 0
        observations: list[Observation] = []
        ends: dict[int, int] = {}
        for msg in messages:
            head, _body = frame_head(msg.value())
            trusted = bool(head.get("trusted"))
            for t, event_id, kind, identities in head.get("obs", ()):
                observations.append(Observation(event_id, int(t), kind, identities, trusted))
            ends[msg.partition()] = msg.offset() + 1
        self.take_in(observations, ends)
        return len(messages)

    def take_in(self, observations: list[Observation], ends: dict[int, int]) -> None:
        """Store a batch's observations, the persons of the clusters it touched, and the offsets: one
        transaction, refused (`Fenced`) when another stitcher took a newer token."""
        assert self.graph is not None
        conn = self._conn
        with conn.transaction():
            row = conn.execute("SELECT epoch FROM maidian_stitch_leader WHERE id = 1 FOR UPDATE").fetchone()
            if row is None or int(row[0]) != self.epoch:
                raise Fenced(f"the fencing token moved to {row and row[0]} (this stitcher holds {self.epoch})")
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO maidian_observation VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    [
                        (o.event_id, json.dumps(dict(o.identities), sort_keys=True), o.time, o.kind, o.trusted)
                        for o in observations
                    ],
                )
                self.graph.observe_many(observations)
                touched = {(str(t), str(v)) for o in observations for t, v in o.identities.items()}
                members = self.graph.cluster_members(touched)
                if members:
                    cur.executemany(
                        "INSERT INTO maidian_identity VALUES (%s, %s, %s) "
                        "ON CONFLICT (type, value) DO UPDATE SET person = EXCLUDED.person",
                        members,
                    )
                cur.executemany(
                    "INSERT INTO maidian_stitch_offset VALUES (%s, %s, %s) "
                    "ON CONFLICT (topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset",
                    [(self.config.events_topic, p, o) for p, o in ends.items()],
                )
        self.observations += len(observations)

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
        for conn in (self._conn, self._lock_conn):
            if conn is not None:
                conn.close()
        self._conn = self._lock_conn = None
        if self.graph is not None:
            self.graph.close()
            self.graph = None


def run_stitcher(config: StitcherConfig) -> int:
    """`maidian stitch`: stand by until leader, then stitch until SIGTERM/SIGINT (exit 3 when fenced)."""
    stitcher = Stitcher(config)

    def stop(_signum: int, _frame: object) -> None:
        stitcher.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print("maidian stitch: standing by for the leader lock", file=sys.stderr, flush=True)
    try:
        if not stitcher.lead():
            return 0
        offsets = stitcher.restore()
        stitcher.open_consumer(offsets)
        print(f"maidian stitch: leading with epoch {stitcher.epoch}", file=sys.stderr, flush=True)
        while not stitcher.stopping:
            stitcher.step()
    except Fenced as exc:
        print(f"maidian stitch: fenced: {exc}", file=sys.stderr, flush=True)
        return 3
    finally:
        stitcher.close()
    print("maidian stitch: stopped", file=sys.stderr, flush=True)
    return 0
