"""No acknowledged loss in cluster mode: a collector SIGKILLed, and a broker of three SIGKILLed, under traffic.

SDK-like traffic goes through two collectors (each attempt to the next one, some acknowledged batches
echoed to the other); the ledger and the loader run throughout. After the fault, the load resends
whatever was not acknowledged, and the loaded store must pass the set check: lost 0, unexpected 0,
duplicates after dedup 0, every tracked event delivered, while the raw topic holds some events twice.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from maidian.collector.cluster.topics import create_topics, topic_plan
from tests.cluster.kafka import KafkaCluster
from tests.cluster.roles import consume_values, ledger, loader, produce_all, start_collector, topic_ids, wait_loaded
from tests.cluster.traffic import SpreadLoad
from tests.reliability.procs import CollectorProcess


def _run_with_fault(
    cluster: KafkaCluster,
    prefix: str,
    root: Path,
    fault: Callable[[list[CollectorProcess]], None],
    *,
    replication: int,
    seconds_before: float = 1.5,
    seconds_after: float = 2.0,
) -> tuple[SpreadLoad, Counter[str]]:
    create_topics(cluster.bootstrap, topic_plan(prefix, partitions=4, replication=replication))
    collectors = [start_collector(root, f"c{i}", cluster.bootstrap, prefix) for i in range(2)]
    roles = [ledger(root, cluster.bootstrap, prefix).start(), loader(root, cluster.bootstrap, prefix, root / "loaded")]
    roles[1].start()
    try:
        load = SpreadLoad(batch_size=50, devices=8, seed=7, urls=[c.url for c in collectors], echo_fraction=0.2)

        async def run() -> None:
            stop = asyncio.Event()
            task = asyncio.create_task(load.run(load.urls[0], rate_ev_s=3000, stop=stop))
            await asyncio.sleep(seconds_before)
            await asyncio.to_thread(fault, collectors)
            await asyncio.sleep(seconds_after)
            stop.set()
            await task
            await load.drain(load.urls[0], timeout_s=120)

        asyncio.run(run())
        stored = wait_loaded(root / "loaded", load.ledger.tracked, roles)
        check = load.ledger.check(stored)
        check.assert_clean(delivered=True)
        assert check.acknowledged > 0
        raw = Counter(topic_ids(cluster, f"{prefix}.raw"))
        print(
            f"\n{prefix}: tracked {check.tracked} acknowledged {check.acknowledged} loaded {check.stored} "
            f"lost {check.lost} unexpected {check.unexpected} dup_loaded {check.dup_raw + check.dup_deduped} "
            f"raw copies {sum(raw.values())} statuses {load.statuses} echoes {load.echoes}"
        )
        assert set(raw) == stored.ids
        assert max(raw.values()) >= 2, "the raw topic was expected to hold some retries twice"
        return load, raw
    finally:
        for proc in collectors:
            proc.kill()
        for role in roles:
            role.kill()


def test_three_brokers_keep_acks_all_through_a_sigkill(kafka3: KafkaCluster) -> None:
    kafka3.create_topic("fault", partitions=3)
    kafka3.wait_in_sync("fault")
    kafka3.kill(0)
    assert kafka3.nodes[0].process is None
    values = [f"after-kill-{i}".encode() for i in range(100)]
    results = produce_all(kafka3.nodes[1].bootstrap_address, "fault", values)
    assert [err for err, _ in results if err is not None] == []
    kafka3.restart(0)
    kafka3.wait_in_sync("fault")
    assert sorted(consume_values(kafka3.bootstrap, "fault", len(values))) == sorted(values)


def test_a_collector_sigkilled_under_traffic_loses_no_acknowledged_event(
    kafka: KafkaCluster, topic_name: str, tmp_path: Path
) -> None:
    def kill_and_restart(collectors: list[CollectorProcess]) -> None:
        collectors[0].kill()
        collectors[0].start()

    load, _raw = _run_with_fault(kafka, topic_name, tmp_path, kill_and_restart, replication=1)
    assert load.statuses.get(0, 0) > 0 or load.ledger.indeterminate, "the kill was expected to cut requests"


def test_a_broker_of_three_sigkilled_under_traffic_loses_no_acknowledged_event(
    kafka3: KafkaCluster, tmp_path: Path
) -> None:
    def kill_and_restart_broker(_collectors: list[CollectorProcess]) -> None:
        kafka3.kill(0)
        kafka3.restart(0)

    load, _raw = _run_with_fault(kafka3, "faults", tmp_path, kill_and_restart_broker, replication=3)
    assert load.ledger.acked


@pytest.mark.long
@pytest.mark.timeout(900)
def test_long_every_broker_and_a_collector_sigkilled_in_turn_under_traffic(
    kafka3: KafkaCluster, tmp_path: Path
) -> None:
    """The long profile: each of the three brokers SIGKILLed and restarted in turn, then a collector, over
    a longer run of traffic; the same set check."""

    def rolling_kills(collectors: list[CollectorProcess]) -> None:
        for index in range(3):
            kafka3.kill(index)
            time.sleep(3.0)  # traffic runs on the two brokers left
            kafka3.restart(index)
            kafka3.wait_in_sync("long.raw")
        collectors[1].kill()
        collectors[1].start()

    load, _raw = _run_with_fault(
        kafka3, "long", tmp_path, rolling_kills, replication=3, seconds_before=5.0, seconds_after=10.0
    )
    assert load.ledger.acked
