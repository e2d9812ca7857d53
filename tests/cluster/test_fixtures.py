"""The cluster fixtures start real servers that do what the cluster tests rely on."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cluster.kafka import BrokerNode, ClusterError, KafkaCluster, free_port
from tests.cluster.postgres import PostgresServer
from tests.cluster.roles import consume_values, produce_all


def test_one_broker_acks_all_writes_and_reads_back(kafka: KafkaCluster, topic_name: str) -> None:
    kafka.create_topic(topic_name, partitions=2)
    values = [f"v{i}".encode() for i in range(200)]
    results = produce_all(kafka.bootstrap, topic_name, values)
    assert [err for err, _ in results if err is not None] == []
    assert sorted(consume_values(kafka.bootstrap, topic_name, len(values))) == sorted(values)


def test_one_broker_runs_transactions(kafka: KafkaCluster, topic_name: str) -> None:
    """Aborted transactional writes stay invisible to read_committed consumers; committed ones show."""
    from confluent_kafka import Producer

    kafka.create_topic(topic_name, partitions=1)
    producer = Producer({"bootstrap.servers": kafka.bootstrap, "transactional.id": f"tx-{topic_name}", "log_level": 0})
    producer.init_transactions(60)
    producer.begin_transaction()
    producer.produce(topic_name, b"aborted")
    producer.abort_transaction(60)
    producer.begin_transaction()
    producer.produce(topic_name, b"committed")
    producer.commit_transaction(60)
    # one partition: an aborted record that leaked would come first
    assert consume_values(kafka.bootstrap, topic_name, 1) == [b"committed"]


def test_postgres_serves_sql_and_advisory_locks(postgres: PostgresServer) -> None:
    import psycopg

    with (
        psycopg.connect(postgres.dsn, autocommit=True) as first,
        psycopg.connect(postgres.dsn, autocommit=True) as second,
    ):
        assert first.execute("SELECT pg_try_advisory_lock(16)").fetchone() == (True,)
        assert second.execute("SELECT pg_try_advisory_lock(16)").fetchone() == (False,)
        first.execute("SELECT pg_advisory_unlock(16)")
        assert second.execute("SELECT pg_try_advisory_lock(16)").fetchone() == (True,)
        version = first.execute("SHOW server_version_num").fetchone()
        assert version is not None
        assert int(version[0]) >= 150000


def test_a_broker_that_cannot_start_fails_with_its_log(kafka: KafkaCluster, tmp_path: Path) -> None:
    """A node whose listener port is taken exits; the fixture raises at once with the node's log."""
    taken = kafka.nodes[0]
    node = BrokerNode(9, taken.port, free_port(), tmp_path / "clash")
    clash = KafkaCluster(kafka.libs, [node], kafka.cluster_id, kafka.log4j)
    clash._configure(node)
    clash._format(node)
    clash._spawn(node)
    try:
        with pytest.raises(ClusterError, match="broker 9 exited"):
            clash.wait_ready(timeout_s=60)
    finally:
        clash.stop()
