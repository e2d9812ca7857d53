"""Cluster mode against single-node mode, side by side in one run on this machine.

    .venv/bin/python benchmarks/cluster.py [--duration 6] [--rounds 2] [--batch 500]

Rows, each fed by one load process per collector (benchmarks/collector.py's generator: pre-built
msgpack+zstd batches, every batch from its own device, one-event plan, keep-alive connections):
- `local fsync, 1 collector`: `maidian serve` with its default durability (fsync group commit);
- `kafka, N collectors` (N = 1, 2, 3): `maidian serve --sink kafka` processes producing with `acks=all` and
  idempotence to one KRaft broker (tests/cluster/kafka.py starts it; 384 MB heap).
For each row: events/s acknowledged, CPU µs per event of the collectors (all their threads, from /proc),
of the broker JVM, and the cores the load processes took. Then, over everything the Kafka rows produced:
- `ledger`: `maidian ledger` catching up on the raw topic (dedup + transactions), CPU µs per event;
- `loader`: `maidian load` catching up on the events topic into a data directory, CPU µs per event;
- `stitcher`: `maidian stitch` taking in every head of the events topic into a PostgreSQL 15 server
  (tests/cluster/postgres.py), CPU µs per event of the stitcher and of PostgreSQL (all its processes);
- end to end: a paced load (5,000 events/s, 50-event batches) through one Kafka collector with the
  ledger and loader running; the time from the collector receiving a request (the frame head's `at`)
  to the loader's frame being readable in the data directory, polled every 20 ms.
Rows alternate within each round (a slow spell of the shared host lands on all rows alike); the table
shows medians. JSON goes to benchmarks/results/cluster.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(ROOT))

from plangen import generate_plan  # noqa: E402

from tests.cluster.kafka import KafkaCluster  # noqa: E402

_spec = importlib.util.spec_from_file_location("bench_single", HERE / "collector.py")
assert _spec is not None
assert _spec.loader is not None
single = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(single)

PREFIX = "maidian"  # the Kafka rows write the default topics; the ledger and loader read them


def serve(plan: Path, data: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], int]:
    cmd = [sys.executable, "-m", "maidian.collector.cli", "serve", "--plan", str(plan), "--data", str(data)]
    cmd += ["--host", "127.0.0.1", "--port", "0", "--write-key", single.KEY]
    proc = subprocess.Popen(
        cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=ROOT, env={**os.environ, **env}
    )
    port = single._wait_port(proc)
    threading.Thread(target=proc.stderr.read, daemon=True).start()  # type: ignore[union-attr]
    return proc, port


def drive_many(ports: list[int], batch: int, duration_s: float, rate_hint: float) -> dict[str, Any]:
    """One load process per port, all started together; the combined figures."""
    ctx = mp.get_context("fork")
    go, results = ctx.Event(), ctx.Queue()
    conns = single.CONNS[batch]
    count = int(rate_hint * duration_s * 1.5 / batch / len(ports)) + conns * 4
    workers, readies = [], []
    for i, port in enumerate(ports):
        ready = ctx.Event()
        args = (port, 1, batch, count, 7000 + i + 10 * (os.getpid() % 100), conns, duration_s, ready, go, results)
        p = ctx.Process(target=single._load, args=(*args, False))
        p.start()
        workers.append(p)
        readies.append(ready)
    for r in readies:
        r.wait(600)
    go.set()
    outs = [results.get(timeout=duration_s + 120) for _ in workers]
    for p in workers:
        p.join()
    elapsed = max(o["elapsed"] for o in outs)
    ok = sum(o["stats"].get("200", 0) for o in outs)
    lat = sorted(x for o in outs for x in o["latencies"])
    statuses: dict[str, int] = {}
    for o in outs:
        for k, v in o["stats"].items():
            statuses[k] = statuses.get(k, 0) + v
    return {
        "events_total": ok * batch,
        "events_per_s": ok * batch / elapsed,
        "p50_ms": lat[len(lat) // 2] * 1000 if lat else None,
        "p99_ms": lat[int(len(lat) * 0.99)] * 1000 if lat else None,
        "statuses": statuses,
        "loadgen_cores": sum(o["cpu_s"] for o in outs) / elapsed,
    }


def broker_pid(cluster: KafkaCluster) -> int:
    proc = cluster.nodes[0].process
    assert proc is not None
    return proc.pid


def row(
    tmp: Path, plan: Path, cluster: KafkaCluster, collectors: int, kafka: bool, batch: int, duration_s: float, r: int
) -> dict[str, Any]:
    env = {"MAIDIAN_SINK": "kafka", "MAIDIAN_KAFKA_BOOTSTRAP": cluster.bootstrap} if kafka else {}
    procs = [serve(plan, tmp / f"data-{'k' if kafka else 'l'}{collectors}-{i}-{r}", env) for i in range(collectors)]
    try:
        before = [single.cpu_seconds(p.pid) for p, _ in procs]
        broker_before = single.cpu_seconds(broker_pid(cluster))
        out = drive_many([port for _, port in procs], batch, duration_s, rate_hint=70_000 * collectors)
        used = sum(single.cpu_seconds(p.pid) - b for (p, _), b in zip(procs, before, strict=True))
        events = max(1, out["events_total"])
        out["collector_cpu_us_per_event"] = used / events * 1e6
        out["broker_cpu_us_per_event"] = (single.cpu_seconds(broker_pid(cluster)) - broker_before) / events * 1e6
        out["collector_cores"] = used / duration_s
        return out
    finally:
        for p, _ in procs:
            single._stop(p)


def committed_lag(cluster: KafkaCluster, group: str, topic: str) -> int:
    """Records of `topic` the group has not committed yet (end offsets minus committed offsets)."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    c = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": group, "log_level": 0})
    try:
        parts = [TopicPartition(topic, p) for p in c.list_topics(topic, timeout=10).topics[topic].partitions]
        try:
            committed = {tp.partition: tp.offset for tp in c.committed(parts, timeout=10)}
        except KafkaException:  # the group's coordinator is not there yet: nothing committed
            committed = {}
        lag = 0
        for tp in parts:
            _low, high = c.get_watermark_offsets(tp, timeout=10, cached=False)
            lag += max(0, high - max(0, committed.get(tp.partition, 0)))
        return lag
    finally:
        c.close()


def role(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "maidian.collector.cli", *args], cwd=ROOT, stdout=out, stderr=out
        )


def started_cpu(proc: subprocess.Popen[bytes], log: Path, line: str, timeout_s: float = 120) -> float:
    """Wait for the role's start-up line; its CPU seconds then (start-up excluded from the figures)."""
    deadline = time.monotonic() + timeout_s
    while line not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{log.name}: no {line!r}: {log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.02)
    return float(single.cpu_seconds(proc.pid))


def catch_up(cluster: KafkaCluster, tmp: Path, events: int) -> dict[str, Any]:
    """CPU of the ledger and then the loader catching up on everything the Kafka rows produced."""
    boot = ["--kafka-bootstrap", cluster.bootstrap, "--topic-prefix", PREFIX]
    out: dict[str, Any] = {}
    frames = _topic_records(cluster, f"{PREFIX}.raw")
    out["frames"] = frames
    ledger = role(["ledger", *boot, "--group", "bench-ledger"], tmp / "ledger.log")
    try:
        base = started_cpu(ledger, tmp / "ledger.log", "running")
        started = time.monotonic()
        while committed_lag(cluster, "bench-ledger", f"{PREFIX}.raw") > 0:
            time.sleep(0.5)
        out["ledger_s"] = time.monotonic() - started
        used = single.cpu_seconds(ledger.pid) - base
        out["ledger_cpu_us_per_event"] = used / events * 1e6
        out["ledger_cpu_us_per_frame"] = used / frames * 1e6
    finally:
        single._stop(ledger)  # type: ignore[arg-type]
    loader = role(["load", *boot, "--group", "bench-loader", "--data", str(tmp / "loaded")], tmp / "loader.log")
    try:
        base = started_cpu(loader, tmp / "loader.log", "running")
        out.update(_loader_done(cluster, loader, events, frames, base))
    finally:
        single._stop(loader)  # type: ignore[arg-type]
    out.update(_stitcher_catch_up(cluster, tmp, events))
    return out


def _stitcher_catch_up(cluster: KafkaCluster, tmp: Path, events: int) -> dict[str, float]:
    """CPU of `maidian stitch` (and of PostgreSQL) taking in every head of the events topic."""
    import psycopg

    from tests.cluster.postgres import PostgresServer

    server = PostgresServer.start()
    try:
        frames = _topic_records(cluster, f"{PREFIX}.events")
        args = ["stitch", "--kafka-bootstrap", cluster.bootstrap, "--topic-prefix", PREFIX, "--postgres", server.dsn]
        stitcher = role(args, tmp / "stitch.log")
        base = started_cpu(stitcher, tmp / "stitch.log", "leading with epoch")
        pg_before = _postgres_cpu(server)
        started = time.monotonic()
        try:
            with psycopg.connect(server.dsn, autocommit=True) as conn:
                # Each partition's last commit marker stays after the stitcher's next offset: done when
                # the offsets are within that of the end and stop moving.
                last = -1
                while True:
                    try:
                        row = conn.execute("SELECT coalesce(sum(next_offset), 0) FROM maidian_stitch_offset").fetchone()
                    except psycopg.errors.UndefinedTable:
                        row = (0,)
                    done = int(row[0]) if row is not None else 0
                    if done >= frames - 12 and done == last:
                        break
                    last = done
                    time.sleep(1.0)
            took = time.monotonic() - started - 1.0
            used = single.cpu_seconds(stitcher.pid) - base
        finally:
            single._stop(stitcher)  # type: ignore[arg-type]
        return {
            "stitcher_s": took,
            "stitcher_cpu_us_per_event": used / events * 1e6,
            "stitcher_cpu_us_per_frame": used / max(1, frames) * 1e6,
            "postgres_cpu_us_per_event": (_postgres_cpu(server) - pg_before) / events * 1e6,
        }
    finally:
        server.stop()


def _postgres_cpu(server: Any) -> float:
    pid = int((server.data / "postmaster.pid").read_text().split()[0])
    return float(single.cpu_seconds(pid))


def _topic_records(cluster: KafkaCluster, topic: str) -> int:
    """The offsets a reader of `topic` ends at (the transactions' commit markers included)."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": "bench-count", "log_level": 0})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts)
    finally:
        c.close()


def _loader_done(
    cluster: KafkaCluster, loader: subprocess.Popen[bytes], events: int, frames: int, base: float
) -> dict[str, float]:
    out = {}
    started = time.monotonic()
    # One commit marker per partition stays after the loader's last committed offset: done when the lag is at
    # most that and the committed offsets stop moving.
    last = -1
    while True:
        lag = committed_lag(cluster, "bench-loader", f"{PREFIX}.events")
        if lag <= 12 and lag == last:
            break
        last = lag
        time.sleep(1.0)
    out["loader_s"] = time.monotonic() - started - 1.0
    used = single.cpu_seconds(loader.pid) - base
    out["loader_cpu_us_per_event"] = used / events * 1e6
    out["loader_cpu_us_per_frame"] = used / frames * 1e6
    return out


def end_to_end(cluster: KafkaCluster, tmp: Path, plan: Path) -> dict[str, Any]:
    """Request to loaded, with every role running: p50/p99 ms over the frames of a paced load."""
    from maidian.collector.store.frames import read_frames, segment_files

    prefix = "e2e"
    from maidian.collector.cluster.topics import create_topics, topic_plan

    create_topics(cluster.bootstrap, topic_plan(prefix, partitions=12, replication=1))
    env = {
        "MAIDIAN_SINK": "kafka",
        "MAIDIAN_KAFKA_BOOTSTRAP": cluster.bootstrap,
    }
    config = tmp / "e2e.toml"
    config.write_text(
        f'plan = "{plan}"\n[storage]\ndata_dir = "{tmp / "e2e-data"}"\n[sink]\n'
        f'raw_topic = "{prefix}.raw"\nquarantine_topic = "{prefix}.quarantine"\n'
        f'[[write_keys]]\nname = "k"\nsha256 = "{_hash(single.KEY)}"\n'
    )
    cmd = [sys.executable, "-m", "maidian.collector.cli", "serve", "--config", str(config), "--port", "0"]
    collector = subprocess.Popen(
        cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=ROOT, env={**os.environ, **env}
    )
    port = single._wait_port(collector)
    threading.Thread(target=collector.stderr.read, daemon=True).start()  # type: ignore[union-attr]
    boot = ["--kafka-bootstrap", cluster.bootstrap, "--topic-prefix", prefix]
    loaded = tmp / "e2e-loaded"
    roles = [role(["ledger", *boot], tmp / "e2e-ledger.log"), role(["load", *boot, "--data", str(loaded)], tmp / "l")]
    latencies: list[float] = []
    stop = threading.Event()

    def watch() -> None:
        offsets: dict[Path, int] = {}
        while not stop.is_set():
            now_ms = time.time() * 1000
            for path in segment_files(loaded / "raw") if (loaded / "raw").exists() else []:
                frames, end = read_frames(path, offsets.get(path, 0))
                offsets[path] = end
                latencies.extend(now_ms - f.head["at"] for f in frames)
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    try:
        time.sleep(3.0)  # the ledger and loader join their groups
        watcher.start()
        paced = drive_paced(port, rate_ev_s=5000, batch=50, duration_s=5.0)
        deadline = time.monotonic() + 30
        while len(latencies) < paced and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        single._stop(collector)
        for p in roles:
            single._stop(p)  # type: ignore[arg-type]
    lat = sorted(latencies)
    return {
        "frames": len(lat),
        "e2e_p50_ms": lat[len(lat) // 2] if lat else None,
        "e2e_p99_ms": lat[int(len(lat) * 0.99)] if lat else None,
    }


def _hash(key: str) -> str:
    from maidian.collector.settings import hash_key

    return hash_key(key)


def drive_paced(port: int, *, rate_ev_s: float, batch: int, duration_s: float) -> int:
    """Post `rate_ev_s` events per second in `batch`-event requests for `duration_s`; requests answered 200."""
    import http.client

    _, samples = generate_plan(1)
    bodies = single.make_bodies(samples, batch, int(rate_ev_s * duration_s / batch) + 1, 4242)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    interval = batch / rate_ev_s
    start = time.monotonic()
    ok = 0
    for i, body in enumerate(bodies):
        due = start + i * interval
        if due > time.monotonic():
            time.sleep(due - time.monotonic())
        headers = {
            "Content-Type": "application/msgpack",
            "Content-Encoding": "zstd",
            "X-Maidian-Write-Key": single.KEY,
        }
        conn.request("POST", "/v1/batch", body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        ok += resp.status == 200
    conn.close()
    return ok


def ledger_memory(n: int = 100_000) -> dict[str, float]:
    """Bytes of the ledger's dedup state (tracemalloc) per SDK source, per extra range, per opaque id."""
    import tracemalloc

    from maidian.collector.pipeline.dedup import SeenIds

    def measure(fill: Any) -> float:
        seen = SeenIds(1e9)
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        fill(seen)
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        return (after - before) / n

    def sources(seen: Any) -> None:
        for _ in range(n):
            seen.add_head({os.urandom(16).hex(): [1, 500]}, (), 1)

    def ranges(seen: Any) -> None:
        source = os.urandom(16).hex()
        for i in range(n):
            seen.add_head({source: [i * 3 + 1, i * 3 + 1]}, (), 1)

    def opaque(seen: Any) -> None:
        for i in range(n):
            seen.add_head({}, (f"srv-{os.urandom(12).hex()}",), 1_700_000_000_000 + i)

    return {"source": measure(sources), "extra_range": measure(ranges), "opaque_id_40_chars": measure(opaque)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ledger-memory", action="store_true", help="only measure the ledger's state per id")
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    if args.ledger_memory:
        print(json.dumps({k: round(v, 1) for k, v in ledger_memory().items()}))
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="maidian-bench-cluster-"))
    doc, _ = generate_plan(1)
    plan = tmp / "plan.json"
    plan.write_text(json.dumps(doc))
    cluster = KafkaCluster.start(tmp / "kafka", brokers=1)
    try:
        from maidian.collector.cluster.topics import create_topics, topic_plan

        create_topics(cluster.bootstrap, topic_plan(PREFIX, partitions=12, replication=1))
        specs = [("local fsync, 1 collector", 1, False)] + [(f"kafka, {n} collector(s)", n, True) for n in (1, 2, 3)]
        results: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in specs}
        for r in range(args.rounds):
            for name, n, kafka in specs:
                results[name].append(row(tmp, plan, cluster, n, kafka, args.batch, args.duration, r))
                m = results[name][-1]
                print(
                    f"{name:28s} {m['events_per_s']:>9,.0f} ev/s  collector {m['collector_cpu_us_per_event']:.2f} "
                    f"µs/ev  broker {m['broker_cpu_us_per_event']:.2f} µs/ev  load {m['loadgen_cores']:.2f} cores "
                    f"{m['statuses']}",
                    file=sys.stderr,
                    flush=True,
                )
        kafka_events = sum(m["events_total"] for name, _, k in specs if k for m in results[name])
        roles = catch_up(cluster, tmp, kafka_events)
        e2e = end_to_end(cluster, tmp, plan)
    finally:
        cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    table = {}
    for name, _, _ in specs:
        runs = results[name]
        table[name] = {
            k: statistics.median(run[k] for run in runs)
            for k in (
                "events_per_s",
                "collector_cpu_us_per_event",
                "broker_cpu_us_per_event",
                "collector_cores",
                "loadgen_cores",
                "p50_ms",
                "p99_ms",
            )
        }
    load = os.getloadavg()[0]
    print(f"\n{args.batch}-event batches, {args.duration:g} s per row, {args.rounds} rounds, medians; load {load:.2f}")
    print(
        "| row | events/s | collector CPU µs/event | broker CPU µs/event | collector cores | load-gen cores "
        "| p50 / p99 ms |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, m in table.items():
        print(
            f"| {name} | {m['events_per_s']:,.0f} | {m['collector_cpu_us_per_event']:.2f} | "
            f"{m['broker_cpu_us_per_event']:.2f} | {m['collector_cores']:.2f} | {m['loadgen_cores']:.2f} | "
            f"{m['p50_ms']:.1f} / {m['p99_ms']:.1f} |"
        )
    print(
        f"\n{kafka_events:,} events in {roles['frames']:,} frames; ledger: {roles['ledger_cpu_us_per_event']:.2f} "
        f"CPU µs/event ({roles['ledger_cpu_us_per_frame']:.0f} µs/frame, {roles['ledger_s']:.1f} s); "
        f"loader: {roles['loader_cpu_us_per_event']:.2f} CPU µs/event ({roles['loader_cpu_us_per_frame']:.0f} "
        f"µs/frame, {roles['loader_s']:.1f} s); "
        f"stitcher: {roles['stitcher_cpu_us_per_event']:.2f} CPU µs/event "
        f"({roles['stitcher_cpu_us_per_frame']:.0f} µs/frame, {roles['stitcher_s']:.1f} s), "
        f"PostgreSQL {roles['postgres_cpu_us_per_event']:.2f} µs/event"
    )
    print(
        f"end to end (request -> loaded, 5,000 ev/s paced): p50 {e2e['e2e_p50_ms']} ms, "
        f"p99 {e2e['e2e_p99_ms']} ms over {e2e['frames']} frames"
    )
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "cluster.json").write_text(
        json.dumps({"rows": table, "raw": results, "roles": roles, "e2e": e2e}, indent=1)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
