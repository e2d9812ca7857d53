"""Cluster mode end to end on a real broker: collectors -> raw topic -> ledger -> events topic -> loader.

The set check is the battery's (tests/reliability/ledger.py): every event a collector acknowledged is in
the loaded store (lost 0), nothing else is (unexpected 0), and each event is there once (duplicates 0),
while the raw topic provably holds some events twice.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import pytest

from maidian.collector.cluster.topics import TopicPlan, create_topics
from tests.cluster.kafka import KafkaCluster, free_port
from tests.cluster.roles import ledger, loader, sink_config, start_collector, topic_ids, wait_loaded
from tests.cluster.traffic import SpreadLoad
from tests.reliability.procs import CollectorProcess, batch_body, http_get, http_post, key_headers


def test_a_collector_without_brokers_is_unready_and_answers_503(tmp_path: Path) -> None:
    config = sink_config(tmp_path / "c.toml", tmp_path / "data", f"127.0.0.1:{free_port()}")
    proc = CollectorProcess(config)
    cmd_env = {"MAIDIAN_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}"}
    proc.env = cmd_env
    with pytest.raises(RuntimeError, match="never became ready"):
        proc.start(timeout_s=8)
    try:
        status, body = http_get(proc.url + "/readyz")
        assert status == 503
        assert b'"brokers"' in body
        event = {"type": "track", "event": "app_open", "event_id": "e-1", "time": int(time.time() * 1000)}
        status, _ = http_post(proc.url + "/v1/batch", batch_body([event]), key_headers())
        assert status == 503
    finally:
        proc.kill()


def test_two_collectors_echoed_retries_and_a_killed_ledger_load_each_event_once(
    kafka: KafkaCluster, topic_name: str, tmp_path: Path
) -> None:
    """Retries reach both collectors; the ledger is SIGKILLed mid-stream and restarted: the output is exact."""
    prefix = topic_name
    create_topics(kafka.bootstrap, _plan_for(prefix))
    collectors = [start_collector(tmp_path, f"c{i}", kafka.bootstrap, prefix) for i in range(2)]
    # The ledger SIGKILLs itself inside its 3rd transaction, its outputs produced and not committed.
    the_ledger = ledger(tmp_path, kafka.bootstrap, prefix).start(MAIDIAN_LEDGER_CRASH_BEFORE_COMMIT="3")
    the_loader = loader(tmp_path, kafka.bootstrap, prefix, tmp_path / "loaded").start()
    try:
        load = SpreadLoad(batch_size=50, devices=8, seed=16, urls=[c.url for c in collectors], echo_fraction=0.3)

        async def run() -> None:
            stop = asyncio.Event()
            task = asyncio.create_task(load.run(load.urls[0], rate_ev_s=4000, stop=stop))
            code = await asyncio.to_thread(the_ledger.wait_exit, 60)
            assert code == -9
            the_ledger.start()
            await asyncio.sleep(1.5)
            stop.set()
            await task
            await load.drain(load.urls[0], timeout_s=90)

        asyncio.run(run())
        assert load.echoes > 0
        stored = wait_loaded(tmp_path / "loaded", load.ledger.acked, [the_ledger, the_loader])
        check = load.ledger.check(stored)
        check.assert_clean(delivered=True)
        raw_copies = Counter(topic_ids(kafka, f"{prefix}.raw"))
        assert max(raw_copies.values()) >= 2, "the raw topic was expected to hold echoed retries twice"
        assert set(raw_copies) == stored.ids
        events = topic_ids(kafka, f"{prefix}.events")
        assert len(events) == len(set(events)) == len(stored.ids)
        # the killed transaction's outputs are on the brokers, aborted: visible only to read_uncommitted
        assert len(topic_ids(kafka, f"{prefix}.events", committed_only=False)) > len(events)
    finally:
        for proc in collectors:
            proc.kill()
        the_ledger.kill()
        the_loader.kill()


def _plan_for(prefix: str) -> TopicPlan:
    from maidian.collector.cluster.topics import topic_plan

    return topic_plan(prefix, partitions=4, replication=1)
