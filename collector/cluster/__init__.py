"""Cluster mode (docs/scaling.md): stateless collectors producing to Apache Kafka, and the roles behind them.

- `kafka_log`: the Kafka implementation of the durable log the ingest pipeline appends to;
- `keys`: the partition key of a frame, and splitting a frame whose ids need several keys;
- `ledger`: exact deduplication per partition, in Kafka transactions (`maidian ledger`).

Everything here imports confluent-kafka lazily, so the single-node install never needs it.
"""
