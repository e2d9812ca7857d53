"""Real Apache Kafka brokers (KRaft, no ZooKeeper) for the cluster tests and benchmarks.

`KafkaCluster.start(root, brokers=N)` resolves the broker jars with `scripts/kafka-jars` (Maven Central,
cached), formats one storage directory per node with `kafka.tools.StorageTool`, and starts N combined
controller+broker JVMs (`java -cp 'libs/*' kafka.Kafka`) on 127.0.0.1 free ports, each in its own session
with its output in a file. It returns only once the cluster answers metadata with all N brokers registered
(polled, never slept on); a node that exits or a cluster that is not ready in time raises `ClusterError` with
the tail of the node's log, so a test that needs a broker fails with the reason.

With three nodes every internal topic is replicated three times and `min.insync.replicas=2`: one broker can
be SIGKILLed (`kill(i)`) and restarted (`restart(i)`) without losing an `acks=all` write. `stop()` ends
every JVM it started by PID (SIGTERM, then SIGKILL after a bound) and nothing else.
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import ROOT

HEAP = os.environ.get("MAIDIAN_KAFKA_HEAP", "-Xmx384m")
READY_TIMEOUT_S = 90.0

_LOG4J2 = """\
status = error
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.stdout.ref = STDOUT
logger.kafka.name = kafka.server.KafkaRaftServer
logger.kafka.level = INFO
"""


_STARTED = "Kafka Server started"


class ClusterError(RuntimeError):
    """A broker could not be started, or the cluster did not become ready."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def kafka_libs() -> Path:
    """The folder of broker jars, resolved (and cached) by scripts/kafka-jars."""
    result = subprocess.run(
        [str(ROOT / "scripts" / "kafka-jars")], capture_output=True, text=True, timeout=600, check=False
    )
    if result.returncode != 0:
        raise ClusterError(f"scripts/kafka-jars failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    libs = Path(result.stdout.strip().splitlines()[-1])
    if not any(libs.glob("kafka_2.13-*.jar")):
        raise ClusterError(f"no kafka_2.13 jar in {libs}")
    return libs


def _cluster_id() -> str:
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


@dataclass(slots=True)
class BrokerNode:
    node_id: int
    port: int
    controller_port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def config(self) -> Path:
        return self.directory / "server.properties"

    @property
    def log(self) -> Path:
        return self.directory / "broker.log"

    def starts(self) -> int:
        """How many times this node's log says the server finished starting."""
        try:
            return self.log.read_text(errors="replace").count(_STARTED)
        except OSError:
            return 0

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


@dataclass(slots=True)
class KafkaCluster:
    libs: Path
    nodes: list[BrokerNode]
    cluster_id: str
    log4j: Path
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _admins: dict[str, Any] = field(default_factory=dict)

    def admin(self, bootstrap: str | None = None) -> Any:
        """An admin client (cached per bootstrap list; librdkafka's log silenced: killed brokers are expected)."""
        servers = bootstrap or self.bootstrap
        if servers not in self._admins:
            from confluent_kafka.admin import AdminClient

            self._admins[servers] = AdminClient(
                {"bootstrap.servers": servers, "socket.connection.setup.timeout.ms": 1000, "log_level": 0}
            )
        return self._admins[servers]

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    @classmethod
    def start(cls, root: Path, *, brokers: int = 1, libs: Path | None = None) -> KafkaCluster:
        root.mkdir(parents=True, exist_ok=True)
        log4j = root / "log4j2.properties"
        log4j.write_text(_LOG4J2)
        nodes = [BrokerNode(i + 1, free_port(), free_port(), root / f"node{i + 1}") for i in range(brokers)]
        cluster = cls(libs or kafka_libs(), nodes, _cluster_id(), log4j)
        try:
            for node in nodes:
                cluster._configure(node)
                cluster._format(node)
            for node in nodes:
                cluster._spawn(node)
            cluster.wait_ready()
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _configure(self, node: BrokerNode) -> None:
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes)
        replicas = min(3, len(self.nodes))
        min_isr = 2 if replicas >= 3 else 1
        props = {
            "process.roles": "broker,controller",
            "node.id": node.node_id,
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{node.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": node.directory / "data",
            "num.partitions": 4,
            "default.replication.factor": replicas,
            "min.insync.replicas": min_isr,
            "offsets.topic.replication.factor": replicas,
            "offsets.topic.num.partitions": 4,
            "transaction.state.log.replication.factor": replicas,
            "transaction.state.log.min.isr": min_isr,
            "transaction.state.log.num.partitions": 4,
            "group.initial.rebalance.delay.ms": 0,
            "unclean.leader.election.enable": "false",
            "auto.create.topics.enable": "false",
            "num.network.threads": 2,
            "num.io.threads": 2,
            "num.recovery.threads.per.data.dir": 1,
            "background.threads": 2,
            "log.segment.bytes": 16 * 1024 * 1024,
            "controller.quorum.election.timeout.ms": 1000,
            "controller.quorum.fetch.timeout.ms": 2000,
            "broker.heartbeat.interval.ms": 500,
            "broker.session.timeout.ms": 4000,
            "replica.lag.time.max.ms": 5000,
        }
        node.directory.mkdir(parents=True, exist_ok=True)
        node.config.write_text("".join(f"{k}={v}\n" for k, v in props.items()))

    def _java(self, main: str, *args: str) -> list[str]:
        # setpriv: the JVM gets SIGKILL if the process that started it dies (a killed pytest leaves no broker).
        return [
            "setpriv",
            "--pdeathsig",
            "KILL",
            "java",
            HEAP,
            "-Xms64m",
            "-XX:+UseSerialGC",
            *(["-XX:TieredStopAtLevel=1"] if main != "kafka.Kafka" else []),
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.log4j}",
            "-cp",
            f"{self.libs}/*",
            main,
            *args,
        ]

    def _format(self, node: BrokerNode) -> None:
        result = subprocess.run(
            self._java("kafka.tools.StorageTool", "format", "-t", self.cluster_id, "-c", str(node.config)),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            raise ClusterError(
                f"formatting node {node.node_id} failed ({result.returncode}): "
                f"{(result.stdout + result.stderr)[-2000:]}"
            )

    def _spawn(self, node: BrokerNode) -> None:
        with node.log.open("ab") as out:
            node.process = subprocess.Popen(
                self._java("kafka.Kafka", str(node.config)),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.started.append(node.process)

    def _check_alive(self) -> None:
        for node in self.nodes:
            if node.process is not None and node.process.poll() is not None:
                raise ClusterError(f"broker {node.node_id} exited with {node.process.returncode}:\n{node.tail()}")

    def brokers_seen_by(self, node: BrokerNode, timeout_s: float = 2.0) -> set[int]:
        """The brokers that `node` itself reports in its metadata (empty if it does not answer)."""
        try:
            meta = self.admin(f"127.0.0.1:{node.port}").list_topics(timeout=timeout_s)
        except Exception:  # any failure here means "not ready yet"
            return set()
        return set(meta.brokers)

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Return once every running broker answers metadata listing every running broker; raise with logs if not."""
        running = [n for n in self.nodes if n.process is not None]
        want = {n.node_id for n in running}
        deadline = time.monotonic() + timeout_s
        seen: set[int] = set()
        while time.monotonic() < deadline:
            self._check_alive()
            views = [self.brokers_seen_by(n) for n in running]
            seen = set.intersection(*views) if views else set()
            if want <= seen:
                return
            time.sleep(0.2)
        tails = "\n".join(f"--- node {n.node_id}\n{n.tail(1500)}" for n in self.nodes)
        raise ClusterError(f"cluster not ready in {timeout_s:.0f} s: brokers {sorted(seen)} of {sorted(want)}\n{tails}")

    def create_topic(self, name: str, *, partitions: int = 4, config: dict[str, str] | None = None) -> None:
        from confluent_kafka.admin import NewTopic

        replicas = min(3, len(self.nodes))
        futures = self.admin().create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=replicas, config=config or {})],
            operation_timeout=30,
        )
        futures[name].result(timeout=60)

    def wait_in_sync(self, topic: str, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Return once every partition of `topic` has all its replicas in sync."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                meta = self.admin().list_topics(topic=topic, timeout=2.0)
                parts = meta.topics[topic].partitions.values()
                if parts and all(len(p.isrs) == len(p.replicas) and p.leader >= 0 for p in parts):
                    return
            except Exception:  # not in sync yet
                pass
            time.sleep(0.2)
        raise ClusterError(f"{topic} not in sync in {timeout_s:.0f} s")

    def kill(self, index: int) -> None:
        """SIGKILL one broker (0-based index) and wait until it is gone."""
        node = self.nodes[index]
        if node.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.process.pid, signal.SIGKILL)
        node.process.wait(timeout=30)
        node.process = None

    def restart(self, index: int, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Start a killed broker again on its own storage; return once this new process has started serving."""
        node = self.nodes[index]
        if node.process is not None:
            return
        before = node.starts()
        self._spawn(node)
        deadline = time.monotonic() + timeout_s
        while node.starts() == before:
            self._check_alive()
            if time.monotonic() > deadline:
                raise ClusterError(f"broker {node.node_id} did not start in {timeout_s:.0f} s:\n{node.tail()}")
            time.sleep(0.1)
        self.wait_ready(timeout_s)

    def stop(self) -> None:
        self._admins.clear()
        for proc in self.started:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in self.started:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        self.started.clear()
        for node in self.nodes:
            node.process = None
