"""confluent-kafka vs aiokafka as the collector's producer, on one real KRaft broker.

    .venv/bin/python benchmarks/kafka_clients.py [--messages 50000] [--bytes 600] [--rounds 3]

Each client produces the same messages (one collector frame's size by default) with `acks=all` and idempotence
on, keyed over 64 keys, inside an asyncio program shaped like the collector: the producing coroutine awaits
one future per 500-message batch, the way a request waits for its frames. Reported per client: messages/s
(wall) and the producing process's CPU µs per message (user+system, all its threads, including librdkafka's
own). Rounds alternate the clients; the table shows each round's figures and the medians. The broker is
started by the cluster tests' fixture (tests/cluster/kafka.py) and stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.cluster.kafka import KafkaCluster

BATCH = 500


def _cpu_s() -> float:
    t = os.times()
    return t.user + t.system


async def _confluent(bootstrap: str, topic: str, payloads: list[bytes]) -> None:
    from confluent_kafka import KafkaException, Producer

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 2,
            "compression.type": "none",
            "log_level": 0,
        }
    )
    loop = asyncio.get_running_loop()
    stop = False

    async def poller() -> None:
        while not stop:
            await asyncio.to_thread(producer.poll, 0.05)

    task = asyncio.create_task(poller())
    for start in range(0, len(payloads), BATCH):
        future: asyncio.Future[None] = loop.create_future()
        chunk = payloads[start : start + BATCH]
        remaining = [len(chunk)]

        def done(err: Any, _msg: Any, future: asyncio.Future[None] = future, remaining: list[int] = remaining) -> None:
            if err is not None:
                loop.call_soon_threadsafe(future.set_exception, KafkaException(err))
                return
            remaining[0] -= 1
            if remaining[0] == 0:
                loop.call_soon_threadsafe(future.set_result, None)

        for i, payload in enumerate(chunk):
            producer.produce(topic, payload, key=b"k%d" % ((start + i) % 64), on_delivery=done)
        await future
    stop = True
    await task
    producer.flush(30)


async def _aiokafka(bootstrap: str, topic: str, payloads: list[bytes]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=2, compression_type=None
    )
    await producer.start()
    try:
        for start in range(0, len(payloads), BATCH):
            chunk = payloads[start : start + BATCH]
            futures = [
                await producer.send(topic, payload, key=b"k%d" % ((start + i) % 64)) for i, payload in enumerate(chunk)
            ]
            await asyncio.gather(*futures)
    finally:
        await producer.stop()


CLIENTS = {"confluent-kafka": _confluent, "aiokafka": _aiokafka}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--bytes", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    payloads = [os.urandom(args.bytes) for _ in range(args.messages)]
    rows: dict[str, list[tuple[float, float]]] = {name: [] for name in CLIENTS}
    with tempfile.TemporaryDirectory(prefix="maidian-bench-kafka-") as root:
        cluster = KafkaCluster.start(Path(root), brokers=1)
        try:
            for round_no in range(args.rounds):
                for name, run in CLIENTS.items():
                    topic = f"bench-{name}-{round_no}"
                    cluster.create_topic(topic, partitions=4)
                    cpu0, t0 = _cpu_s(), time.perf_counter()
                    asyncio.run(run(cluster.bootstrap, topic, payloads))
                    wall, cpu = time.perf_counter() - t0, _cpu_s() - cpu0
                    rows[name].append((args.messages / wall, cpu / args.messages * 1e6))
        finally:
            cluster.stop()
    print(f"{args.messages} messages of {args.bytes} B, acks=all, idempotent, {BATCH}-message awaits, one broker")
    print("| client | msg/s (median) | CPU µs/msg (median) | rounds (msg/s, µs) |")
    print("|---|---|---|---|")
    for name, figures in rows.items():
        rate = statistics.median(r for r, _ in figures)
        cpu = statistics.median(c for _, c in figures)
        runs = "; ".join(f"{r:,.0f}, {c:.1f}" for r, c in figures)
        print(f"| {name} | {rate:,.0f} | {cpu:.1f} | {runs} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
