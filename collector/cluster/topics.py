"""The topics of cluster mode, created with the settings their promises need (`maidian topics`).

| topic                 | written by         | holds                                            | settings            |
|-----------------------|--------------------|--------------------------------------------------|---------------------|
| `maidian.raw`         | collectors         | accepted frames, a retry possibly twice           | delete, 8 days      |
| `maidian.quarantine`  | collectors         | quarantined frames with their reasons            | delete, 8 days      |
| `maidian.events`      | the ledger (txn)   | deduplicated frames, each event once             | delete, 1 day       |
| `maidian.ledger-state`| the ledger (txn)   | dedup state per SDK source / opaque id           | compact             |

The raw, events and state topics have the same partition count: the ledger writes partition p's output
and state to partition p. Every topic gets `min.insync.replicas` = replication - 1 (at least 1), so an
`acks=all` write survives the loss of one broker and is refused, not accepted unreplicated, beyond that.
"""

from __future__ import annotations

from dataclasses import dataclass

from maidian.collector.errors import CollectorError

__all__ = ["TopicPlan", "create_topics", "topic_plan"]


@dataclass(frozen=True, slots=True)
class TopicPlan:
    partitions: int = 12
    replication: int = 3
    raw_retention_ms: int = 8 * 86_400_000  # the dedup window: a retry can arrive this late
    # The loaders' and stitcher's catch-up margin: they are the only readers of the events topic.
    events_retention_ms: int = 86_400_000
    raw_topic: str = "maidian.raw"
    quarantine_topic: str = "maidian.quarantine"
    events_topic: str = "maidian.events"
    state_topic: str = "maidian.ledger-state"


def topic_plan(prefix: str = "maidian", *, partitions: int = 12, replication: int = 3) -> TopicPlan:
    """The topics named `<prefix>.raw`, `.quarantine`, `.events` and `.ledger-state`."""
    return TopicPlan(
        partitions=partitions,
        replication=replication,
        raw_topic=f"{prefix}.raw",
        quarantine_topic=f"{prefix}.quarantine",
        events_topic=f"{prefix}.events",
        state_topic=f"{prefix}.ledger-state",
    )


def create_topics(bootstrap: str, plan: TopicPlan, timeout_s: float = 60.0) -> list[str]:
    """Create the topics that do not exist yet; the names created."""
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    isr = str(max(1, plan.replication - 1))
    retained = {"min.insync.replicas": isr, "retention.ms": str(plan.raw_retention_ms)}
    wanted = [
        NewTopic(plan.raw_topic, plan.partitions, plan.replication, config=retained),
        NewTopic(plan.quarantine_topic, plan.partitions, plan.replication, config=retained),
        NewTopic(
            plan.events_topic,
            plan.partitions,
            plan.replication,
            config={**retained, "retention.ms": str(plan.events_retention_ms)},
        ),
        NewTopic(
            plan.state_topic,
            plan.partitions,
            plan.replication,
            config={"min.insync.replicas": isr, "cleanup.policy": "compact"},
        ),
    ]
    todo = [t for t in wanted if t.topic not in existing]
    if not todo:
        return []
    for name, future in admin.create_topics(todo, operation_timeout=timeout_s).items():
        try:
            future.result(timeout=timeout_s)
        except Exception as exc:
            raise CollectorError(f"creating topic {name}: {exc}") from exc
    return [t.topic for t in todo]
