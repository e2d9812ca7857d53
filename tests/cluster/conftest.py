"""Fixtures for cluster mode: real Kafka brokers (kafka.py) and a real PostgreSQL server (postgres.py).

- `kafka`: one KRaft broker for the cluster tests (package scope: stopped once they are done); tests
  create their own topics (`topic_name`).
- `kafka3`: three brokers (replication factor 3, min.insync.replicas=2) for the fault tests of one module
  (each test restarts what it kills and uses its own topics).
- `postgres`: one PostgreSQL server for the cluster tests.

Each fixture stops what it started, by PID, at teardown. None of them skips: a server that cannot start
fails the test with the reason.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.kafka import KafkaCluster
from tests.cluster.postgres import PostgresServer

_TOPICS = itertools.count(1)


def _running(brokers: int) -> Iterator[KafkaCluster]:
    with tempfile.TemporaryDirectory(prefix=f"maidian-kafka{brokers}-") as root:
        cluster = KafkaCluster.start(Path(root), brokers=brokers)
        try:
            yield cluster
        finally:
            cluster.stop()


@pytest.fixture(scope="package")
def kafka() -> Iterator[KafkaCluster]:
    yield from _running(1)


@pytest.fixture(scope="module")
def kafka3() -> Iterator[KafkaCluster]:
    yield from _running(3)


@pytest.fixture(scope="package")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def topic_name(request: pytest.FixtureRequest) -> str:
    """A topic prefix unique to this test within the session's broker."""
    return f"t{next(_TOPICS)}-{request.node.name[:40].replace('[', '-').replace(']', '')}"
