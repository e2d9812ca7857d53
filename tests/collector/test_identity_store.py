"""The graph on a real SQLite file: restarts, replays, fork, several processes, forget, policy changes."""

from __future__ import annotations

import multiprocessing
import os
import random
import sqlite3
from pathlib import Path

import pytest

from maidian.collector.identity.graph import IdentityGraph
from maidian.collector.identity.types import IdentityGraphError, IdentityPolicy, Observation
from tests.collector.identity_model import graph_state, reference


def obs(event_id: str, time: int, kind: str = "track", trusted: bool = False, **identities: str) -> Observation:
    return Observation(event_id, time, kind, identities, trusted)


def traffic(n_devices: int, seed: int) -> list[Observation]:
    """Devices browsing, logging in (some sharing devices or logins), a few server binds and junk."""
    rng = random.Random(seed)
    out: list[Observation] = []
    for d in range(n_devices):
        device = f"dev-{d}"
        login = f"u-{rng.randrange(n_devices // 2)}"
        base = rng.randrange(10_000)
        for i in range(rng.randrange(1, 5)):
            out.append(obs(f"{device}-{i}", base + i, anonymous_id=device))
        out.append(obs(f"{device}-login", base + 10, anonymous_id=device, login_id=login))
        if rng.random() < 0.2:
            out.append(
                obs(f"{device}-bind", base + 11, "bind", login_id=login, customer_no=f"{rng.randrange(50):010d}")
            )
        if rng.random() < 0.05:
            out.append(obs(f"{device}-junk", base + 12, anonymous_id=device, login_id="undefined"))
    return out


POLICY = IdentityPolicy(
    max_devices_per_login=3,
    unique_types=frozenset({"login_id", "customer_no"}),
    priorities={"login_id": 1, "customer_no": 2, "anonymous_id": 1000},
)


def test_the_graph_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "identity.sqlite"
    events = traffic(200, seed=1)
    with IdentityGraph(path, POLICY) as graph:
        graph.observe_many(events[:300])
    with IdentityGraph(path, POLICY) as graph:
        graph.observe_many(events[300:])
        assert graph_state(graph, events) == reference(events, POLICY)
        assert graph.check() == []
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


def test_replaying_the_log_tail_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "identity.sqlite"
    events = traffic(100, seed=2)
    with IdentityGraph(path, POLICY) as graph:
        first = graph.observe_many(events)
        counts = graph.counts()
        state = graph_state(graph, events)
    assert first  # the traffic has refusals to report once
    # A restarted collector replays an overlapping tail, shuffled, with a cold cache.
    with IdentityGraph(path, POLICY) as graph:
        tail = events[len(events) // 3 :]
        random.Random(3).shuffle(tail)
        assert graph.observe_many(tail) == []
        assert graph.observe_many(events) == []
        assert graph.counts() == counts
        assert graph_state(graph, events) == state


def test_the_checkpoint_commits_with_the_observations(tmp_path: Path) -> None:
    path = tmp_path / "identity.sqlite"
    with IdentityGraph(path) as graph:
        assert graph.checkpoint() is None
        graph.observe_many([obs("e1", 1, anonymous_id="d", login_id="u")], checkpoint="segment-3:4096")
        graph.observe_many([obs("e1", 1, anonymous_id="d", login_id="u")], checkpoint="segment-3:8192")
    with IdentityGraph(path) as graph:
        assert graph.checkpoint() == "segment-3:8192"


def test_known_links_cost_no_sqlite_work() -> None:
    graph = IdentityGraph()
    known = [obs(f"e{i}", 100 + i, anonymous_id=f"dev-{i % 10}", login_id=f"u-{i % 10}") for i in range(20)]
    graph.observe_many(known)
    statements: list[str] = []
    fast_before = graph.stats["fast"]
    graph._store.conn.set_trace_callback(statements.append)
    later = [obs(f"f{i}", 1000 + i, anonymous_id=f"dev-{i % 10}", login_id=f"u-{i % 10}") for i in range(500)]
    assert graph.observe_many(later) == []
    assert statements == []
    assert graph.stats["fast"] - fast_before == 500
    # An event earlier than every sighting of its link is not known yet: it goes to SQLite.
    graph.observe_many([obs("g1", 1, anonymous_id="dev-1", login_id="u-1")])
    assert statements


def test_a_forked_child_opens_its_own_connection(tmp_path: Path) -> None:
    path = tmp_path / "identity.sqlite"
    graph = IdentityGraph(path)
    graph.observe_many([obs("e1", 1, anonymous_id="dev-1", login_id="u-1")])
    parent_conn = graph._store.conn
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, never return into pytest
        code = 1
        try:
            graph.observe_many([obs("e2", 2, anonymous_id="dev-2", login_id="u-1")])
            fresh = graph._store.conn is not parent_conn and graph._store.pid == os.getpid()
            same = graph.person_of("anonymous_id", "dev-2") == graph.person_of("login_id", "u-1")
            os.write(write, b"ok" if fresh and same else b"bad")
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        answer = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert answer == b"ok"
    # The parent's connection is untouched and sees the child's commit.
    assert graph._store.conn is parent_conn
    assert graph.person_of("anonymous_id", "dev-2") == graph.person_of("login_id", "u-1")
    graph.close()


def test_an_in_memory_graph_refuses_use_after_fork() -> None:
    graph = IdentityGraph()
    graph.observe_many([obs("e1", 1, anonymous_id="dev-1")])
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            graph.person_of("anonymous_id", "dev-1")
            os.write(write, b"used")
        except IdentityGraphError as e:
            os.write(write, b"refused" if "fork" in str(e) else b"other")
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        assert pipe.read() == b"refused"
    os.waitpid(pid, 0)
    assert graph.person_of("anonymous_id", "dev-1") is not None


def _observe_in_child(path: str, events: list[Observation]) -> None:
    with IdentityGraph(Path(path), POLICY) as graph:
        for i in range(0, len(events), 25):
            graph.observe_many(events[i : i + 25])


def test_two_processes_on_one_file_end_where_one_would(tmp_path: Path) -> None:
    path = tmp_path / "identity.sqlite"
    events = traffic(150, seed=4)
    random.Random(5).shuffle(events)
    half = len(events) // 2
    ctx = multiprocessing.get_context("spawn")
    child = ctx.Process(target=_observe_in_child, args=(str(path), events[:half]))
    child.start()
    try:
        _observe_in_child(str(path), events[half:])
    finally:
        child.join(timeout=120)
    assert child.exitcode == 0
    with IdentityGraph(path, POLICY) as graph:
        assert graph_state(graph, events) == reference(events, POLICY)
        assert graph.check() == []


def test_forget_deletes_a_person_and_leaves_no_value_in_the_files(tmp_path: Path) -> None:
    path = tmp_path / "identity.sqlite"
    canary_login, canary_device, canary_customer = "CANARY-13812345678", "CANARY-DEVICE-77", "CANARY-0000000009"
    events = [
        obs("e1", 1, anonymous_id=canary_device),
        obs("e2", 2, anonymous_id=canary_device, login_id=canary_login),
        obs("e3", 3, "bind", login_id=canary_login, customer_no=canary_customer),
        # Another person who once used the same device: refused there, kept elsewhere.
        obs("e4", 4, anonymous_id=canary_device, login_id="other-user"),
        obs("e5", 5, anonymous_id="other-device", login_id="other-user"),
        # Someone seen only beside the forgotten person.
        obs("e6", 6, anonymous_id=canary_device, login_id="ghost"),
    ]
    with IdentityGraph(path, POLICY) as graph:
        graph.observe_many(events)
        person = graph.person_of("login_id", canary_login)
        assert person is not None
        forgotten = graph.forget(person)
        assert forgotten.identities == {
            "anonymous_id": {canary_device},
            "login_id": {canary_login},
            "customer_no": {canary_customer},
        }
        assert sorted((r.event_id, r.withdrawn) for r in forgotten.refusals) == [("e4", True), ("e6", True)]
        assert graph.identities_of(person) == {}
        assert graph.person_of("anonymous_id", canary_device) is None
        assert graph.person_of("login_id", "ghost") is None
        assert graph.identities_of(graph.person_of("login_id", "other-user") or "") == {
            "anonymous_id": {"other-device"},
            "login_id": {"other-user"},
        }
        assert graph.refusals() == []
        assert graph.check() == []
        assert graph.forget(person).identities == {}
        blobs = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
        for canary in (canary_login, canary_device, canary_customer, "ghost"):
            assert canary.encode() not in blobs, canary
        # New events of the person build them again (suppression is the caller's decision).
        graph.observe_many([obs("e7", 7, anonymous_id=canary_device, login_id=canary_login)])
        assert graph.person_of("anonymous_id", canary_device) == person


def test_forget_in_one_process_is_seen_by_the_cache_of_another(tmp_path: Path) -> None:
    path = tmp_path / "identity.sqlite"
    a, b = IdentityGraph(path), IdentityGraph(path)
    link = obs("e1", 1, anonymous_id="dev-1", login_id="u-1")
    a.observe_many([link])
    person = a.person_of("login_id", "u-1")
    assert person is not None
    b.forget(person)
    # `a` had the link cached; a later event with the same identities must rebuild it.
    a.observe_many([obs("e2", 2, anonymous_id="dev-1", login_id="u-1")])
    assert a.person_of("anonymous_id", "dev-1") == person
    a.close()
    b.close()


def test_a_new_policy_replays_the_store_and_reports_the_changes(tmp_path: Path) -> None:
    path = tmp_path / "identity.sqlite"
    events = [obs(f"e{i}", i, anonymous_id=f"dev-{i}", login_id="u-1") for i in range(4)]
    with IdentityGraph(path, IdentityPolicy(max_devices_per_login=4)) as graph:
        assert graph.observe_many(events) == []
    with IdentityGraph(path, IdentityPolicy(max_devices_per_login=2)) as graph:
        assert graph.refusal_counts() == {"device_cap": 2}
        changes = graph.observe_many([])
        assert sorted((r.event_id, r.rule) for r in changes) == [("e2", "device_cap"), ("e3", "device_cap")]
        assert graph.observe_many([]) == []


def test_a_store_from_another_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "identity.sqlite"
    IdentityGraph(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema'")
    conn.commit()
    conn.close()
    with pytest.raises(IdentityGraphError, match="schema 99"):
        IdentityGraph(path)


def test_forget_that_splits_another_person_keeps_every_part_consistent() -> None:
    # a1 was refused on l1's link; forgetting a1's person removes that link, so f1 falls away from l1.
    events = [
        obs("e0", 0, anonymous_id="a1", login_id="l2"),
        obs("e1", 0, anonymous_id="a2", login_id="l1"),
        obs("e2", 0, login_id="l1", anonymous_id="a1", device_fp="f1"),
        obs("e3", 0, device_fp="f1"),
    ]
    graph = IdentityGraph()
    graph.observe_many(events)
    assert graph.person_of("device_fp", "f1") == graph.person_of("login_id", "l1")
    graph.forget(graph.person_of("login_id", "l2") or "")
    assert graph.check() == []
    assert graph.identities_of(graph.person_of("login_id", "l1") or "") == {"anonymous_id": {"a2"}, "login_id": {"l1"}}
    assert graph.person_of("device_fp", "f1") != graph.person_of("login_id", "l1")
    graph.observe_many(events)
    assert graph.check() == []
    assert graph.person_of("device_fp", "f1") == graph.person_of("login_id", "l1")
