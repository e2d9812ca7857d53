"""The cluster-mode commands of `maidian` (docs/scaling.md): `topics`, `ledger` and `load`.

They need the `cluster` extra (confluent-kafka); each imports it only when it runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from maidian.collector.cli.output import reporting
from maidian.tracking_plan.cli import EXIT_OK, add_command

__all__ = ["add_cluster_commands"]


@reporting
def _topics(args: argparse.Namespace) -> int:
    from maidian.collector.cluster.topics import create_topics, topic_plan

    plan = topic_plan(args.topic_prefix, partitions=args.partitions, replication=args.replication)
    created = create_topics(args.kafka_bootstrap, plan)
    print(f"created: {', '.join(created) or 'nothing (all exist)'}")
    return EXIT_OK


@reporting
def _ledger(args: argparse.Namespace) -> int:
    from maidian.collector.cluster.ledger import LedgerConfig, run_ledger
    from maidian.collector.cluster.topics import topic_plan

    topics = topic_plan(args.topic_prefix)
    config = LedgerConfig(
        bootstrap=args.kafka_bootstrap,
        raw_topic=topics.raw_topic,
        events_topic=topics.events_topic,
        state_topic=topics.state_topic,
        group=args.group or f"{args.topic_prefix}-ledger",
        instance=args.instance,
    )
    return run_ledger(config)


@reporting
def _load(args: argparse.Namespace) -> int:
    from maidian.collector.cluster.loader import LoaderConfig, run_loader
    from maidian.collector.cluster.topics import topic_plan

    config = LoaderConfig(
        bootstrap=args.kafka_bootstrap,
        data_dir=Path(args.data),
        events_topic=topic_plan(args.topic_prefix).events_topic,
        group=args.group or f"{args.topic_prefix}-loader",
    )
    return run_loader(config)


@reporting
def _stitch(args: argparse.Namespace) -> int:
    from maidian.collector.cluster.stitcher import StitcherConfig, run_stitcher
    from maidian.collector.cluster.topics import topic_plan

    config = StitcherConfig(
        bootstrap=args.kafka_bootstrap,
        dsn=args.postgres,
        events_topic=topic_plan(args.topic_prefix).events_topic,
        plan=Path(args.plan) if args.plan else None,
    )
    return run_stitcher(config)


def _kafka_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kafka-bootstrap", required=True, help="the Kafka brokers, HOST:PORT,...")
    p.add_argument("--topic-prefix", default="maidian", help="topics PREFIX.raw, .events, ... (default maidian)")


def add_cluster_commands(sub: Any) -> None:
    """Register `topics`, `ledger`, `load` and `stitch`."""
    p = add_command(
        sub,
        "topics",
        help="create cluster mode's Kafka topics",
        description="Create the raw, quarantine, events and ledger-state topics that do not exist yet.",
        example="maidian topics --kafka-bootstrap kafka1:9092 --partitions 12 --replication 3",
        handler=_topics,
    )
    _kafka_arguments(p)
    p.add_argument("--partitions", type=int, default=12, help="partitions per topic (default 12)")
    p.add_argument("--replication", type=int, default=3, help="replicas per partition (default 3)")

    p = add_command(
        sub,
        "ledger",
        help="deduplicate the raw topic exactly, in Kafka transactions",
        description=(
            "Consume the raw topic as a consumer group, keep each event once per partition's dedup state,\n"
            "and produce the deduplicated frames and the state changelog with the offsets in one transaction."
        ),
        example="maidian ledger --kafka-bootstrap kafka1:9092 --instance ledger-0",
        handler=_ledger,
    )
    _kafka_arguments(p)
    p.add_argument("--group", help="the consumer group (default PREFIX-ledger)")
    p.add_argument(
        "--instance", default="ledger-0", help="this process's stable name: a restart with it fences the old one"
    )

    p = add_command(
        sub,
        "load",
        help="write the deduplicated events into a data directory",
        description="Consume the events topic and append its frames to DATA/raw, one writer per partition.",
        example="maidian load --kafka-bootstrap kafka1:9092 --data /var/lib/maidian",
        handler=_load,
    )
    _kafka_arguments(p)
    p.add_argument("--data", required=True, help="the data directory to load into")
    p.add_argument("--group", help="the consumer group (default PREFIX-loader)")

    p = add_command(
        sub,
        "stitch",
        help="feed the deduplicated events to the identity graph in PostgreSQL (one active writer)",
        description=(
            "Wait for the leader lock (a PostgreSQL advisory lock; a standby keeps waiting), take a new\n"
            "fencing token, rebuild the graph from the stored observations, and stitch the events topic with\n"
            "the offsets stored in the graph's own transaction. Exit 3 when another stitcher fenced this one."
        ),
        example="maidian stitch --kafka-bootstrap kafka1:9092 --postgres 'host=pg1 dbname=maidian' --plan plan.json",
        handler=_stitch,
    )
    _kafka_arguments(p)
    p.add_argument("--postgres", required=True, help="the PostgreSQL connection string (libpq form or URL)")
    p.add_argument("--plan", help="the tracking plan, for its identity rules (default: the built-in rules)")
