"""The identity graph in PostgreSQL: the single-node graph's rules, one active stitcher, fencing.

- Conflicting logins (one device bound to several logins, logins on many devices, unique customer
  numbers claimed twice) go through two collectors in random order; the stitcher that leads is SIGKILLed
  halfway and the standby takes over. The PostgreSQL table of persons must equal the reference model of
  the single-node graph (tests/collector/identity_model.py) over the same observations.
- A leader whose lock session is cut off (pg_terminate_backend: a network partition) is fenced: the
  standby takes a newer token, and the old leader's next write is refused without writing anything.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from maidian.collector.cluster.stitcher import Fenced, Stitcher, StitcherConfig
from maidian.collector.cluster.topics import create_topics, topic_plan
from maidian.collector.identity import IdentityPolicy, Observation
from maidian.tracking_plan import load_plan
from tests.cluster.kafka import KafkaCluster
from tests.cluster.postgres import PostgresServer
from tests.cluster.roles import RoleProcess, ledger, start_collector
from tests.collector.identity_model import reference
from tests.conftest import MINI_PLAN
from tests.reliability.procs import batch_body, http_post, key_headers


@pytest.fixture
def database(postgres: PostgresServer, request: pytest.FixtureRequest) -> str:
    """A fresh database of the session's server, for one test; its connection string."""
    import psycopg

    name = "t_" + "".join(c for c in request.node.name.lower() if c.isalnum())[:40]
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    return f"host=127.0.0.1 port={postgres.port} user=postgres dbname={name}"


def _events(rng: random.Random, count: int, now_ms: int) -> list[dict[str, Any]]:
    """Logins that fight: devices shared by several logins, logins on many devices, customer numbers reused."""
    out = []
    for i in range(count):
        identities = {
            "anonymous_id": f"dev-{rng.randrange(12)}",
            "login_id": f"user-{rng.randrange(9)}",
        }
        if rng.random() < 0.4:
            identities["customer_no"] = f"{rng.randrange(6):010d}"
        out.append(
            {
                "type": "track",
                "event": "stock_order_submit",
                "event_id": f"id-{i:05d}-{rng.randrange(1 << 30):x}",
                "time": now_ms - rng.randrange(3_600_000),
                "identities": identities,
                "properties": {"stock_code": "600519", "side": "buy", "price": 10.5, "quantity": 100},
            }
        )
    return out


def _post_all(urls: list[str], events: list[dict[str, Any]], rng: random.Random) -> None:
    for start in range(0, len(events), 7):
        body = batch_body(events[start : start + 7])
        url = rng.choice(urls)
        status = 0
        for _ in range(20):
            status, _ = http_post(url + "/v1/batch", body, key_headers())
            if status == 200:
                break
            time.sleep(0.2)
        assert status == 200


def _stored_persons(dsn: str) -> dict[tuple[str, str], str]:
    import psycopg

    with psycopg.connect(dsn) as conn:
        try:
            rows = conn.execute("SELECT type, value, person FROM maidian_identity").fetchall()
        except psycopg.errors.UndefinedTable:
            return {}
    return {(t, v): p for t, v, p in rows}


def _wait_log(role: RoleProcess, text: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in role.text():
        assert role.alive(), role.text()[-3000:]
        assert time.monotonic() < deadline, f"no {text!r} in:\n{role.text()[-3000:]}"
        time.sleep(0.05)


def test_persons_in_postgres_equal_the_single_node_model_across_a_stitcher_failover(
    kafka: KafkaCluster, topic_name: str, database: str, tmp_path: Path
) -> None:
    prefix = topic_name
    create_topics(kafka.bootstrap, topic_plan(prefix, partitions=4, replication=1))
    rng = random.Random(1616)
    events = _events(rng, 400, int(time.time() * 1000))
    collectors = [start_collector(tmp_path, f"c{i}", kafka.bootstrap, prefix) for i in range(2)]
    the_ledger = ledger(tmp_path, kafka.bootstrap, prefix).start()
    stitch_args = ("stitch", "--kafka-bootstrap", kafka.bootstrap, "--topic-prefix", prefix)
    stitch_args += ("--postgres", database, "--plan", str(MINI_PLAN))
    first = RoleProcess(tmp_path / "stitch-a.log", *stitch_args).start()
    second = RoleProcess(tmp_path / "stitch-b.log", *stitch_args)
    try:
        _wait_log(first, "leading with epoch 1")
        second.start()
        _wait_log(second, "standing by")
        urls = [c.url for c in collectors]
        _post_all(urls, events[:200], rng)
        deadline = time.monotonic() + 60
        while not _stored_persons(database):  # the first leader has committed some of it
            assert time.monotonic() < deadline, first.text()[-3000:]
            time.sleep(0.05)
        first.kill()
        _wait_log(second, "leading with epoch 2")
        _post_all(urls, events[200:], rng)
        policy = IdentityPolicy.from_plan(load_plan(MINI_PLAN))
        observations = [Observation(e["event_id"], e["time"], e["type"], e["identities"]) for e in events]
        expected = reference(observations, policy).persons
        deadline = time.monotonic() + 90
        stored = _stored_persons(database)
        while stored != expected and time.monotonic() < deadline:
            assert second.alive(), second.text()[-3000:]
            time.sleep(0.5)
            stored = _stored_persons(database)
        assert len(set(expected.values())) > 3
        assert stored == expected
    finally:
        for proc in collectors:
            proc.kill()
        for role in (the_ledger, first, second):
            role.kill()


def test_a_cut_off_leader_is_fenced_and_writes_nothing(kafka: KafkaCluster, database: str) -> None:
    import psycopg

    config = StitcherConfig(bootstrap=kafka.bootstrap, dsn=database, events_topic="unused.events")
    old, new = Stitcher(config), Stitcher(config)
    try:
        assert old.lead()
        old.restore()
        taken = threading.Event()

        def standby() -> None:
            if new.lead():
                taken.set()

        waiter = threading.Thread(target=standby, daemon=True)
        waiter.start()
        assert not taken.wait(1.0), "the standby must wait while the leader holds the lock"
        # A network partition as PostgreSQL sees it: the leader's lock session ends.
        lock_pid = old._lock_conn.info.backend_pid
        with psycopg.connect(database, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (lock_pid,))
        assert taken.wait(30), "the standby did not take over"
        assert new.epoch == old.epoch + 1
        late = [Observation("late-1", 1, "track", {"anonymous_id": "dev-x", "login_id": "user-x"})]
        with pytest.raises(Fenced):
            old.take_in(late, {0: 99})
        new.restore()
        new.take_in([], {0: 5})
        assert _stored_persons(database) == {}
        with psycopg.connect(database) as conn:
            assert conn.execute("SELECT count(*) FROM maidian_observation").fetchone() == (0,)
            assert conn.execute("SELECT next_offset FROM maidian_stitch_offset").fetchall() == [(5,)]
    finally:
        new.stopping = True
        old.stopping = True
        old.close()
        new.close()
