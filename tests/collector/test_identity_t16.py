"""docs/reliability.md, T16, identity poisoning: caps and first binding under attack-sized, shuffled input."""

from __future__ import annotations

import random
from pathlib import Path

from maidian.collector.identity.graph import IdentityGraph
from maidian.collector.identity.types import IdentityPolicy, Observation, Refusal
from maidian.tracking_plan.envelope import BUILTIN_IDENTITIES, JUNK_IDENTITY_VALUES
from tests.collector.identity_model import Ledger

HOUR_MS = 3_600_000


def shuffled_batches(events: list[Observation], size: int, seed: int) -> list[list[Observation]]:
    order = list(events)
    random.Random(seed).shuffle(order)
    return [order[i : i + size] for i in range(0, len(order), size)]


def feed(graph: IdentityGraph, batches: list[list[Observation]]) -> tuple[Ledger, list[Refusal]]:
    ledger = Ledger()
    every: list[Refusal] = []
    for batch in batches:
        changes = graph.observe_many(batch)
        ledger.apply(changes)
        every += changes
    return ledger, every


def assert_messages_clean(refusals: list[Refusal], values: list[str]) -> None:
    messages = "\n".join(r.message for r in refusals)
    for v in values:
        assert v not in messages


def test_one_anonymous_id_identifying_as_5000_logins(tmp_path: Path) -> None:
    rng = random.Random(16)
    times = rng.sample(range(HOUR_MS), 5000)
    logins = [f"attacker-login-{i:05d}" for i in range(5000)]
    events = [
        Observation(f"evt-{i:05d}", t, "track", {"anonymous_id": "poisoned-device", "login_id": login})
        for i, (t, login) in enumerate(zip(times, logins, strict=True))
    ]
    with IdentityGraph(tmp_path / "identity.sqlite") as graph:
        ledger, every = feed(graph, shuffled_batches(events, 250, seed=1))
        first = min(events, key=lambda e: (e.time, e.event_id))
        person = graph.person_of("anonymous_id", "poisoned-device")
        assert person == graph.person_of("login_id", first.identities["login_id"])
        assert graph.identities_of(person)["login_id"] == {first.identities["login_id"]}
        record = graph.refusals()
        assert len(record) == 4999
        assert {r.rule for r in record} == {"anonymous_already_bound"}
        assert {r.event_id for r in record} == {e.event_id for e in events} - {first.event_id}
        assert ledger.as_set() == {(r.event_id, r.identity_type, r.rule) for r in record}
        # Every event is still stored under its own login: each one resolves to a person.
        assert all(graph.person_of("login_id", login) is not None for login in logins)
        assert_messages_clean(every, ["poisoned-device", *logins[:50]])
        assert graph.check() == []


def test_one_login_with_10000_anonymous_ids_in_an_hour(tmp_path: Path) -> None:
    rng = random.Random(17)
    times = rng.sample(range(HOUR_MS), 10_000)
    events = [
        Observation(f"evt-{i:05d}", t, "track", {"anonymous_id": f"device-{i:05d}", "login_id": "shared-login"})
        for i, t in enumerate(times)
    ]
    with IdentityGraph(tmp_path / "identity.sqlite", IdentityPolicy()) as graph:
        ledger, every = feed(graph, shuffled_batches(events, 500, seed=2))
        person = graph.person_of("login_id", "shared-login")
        bound = graph.identities_of(person)["anonymous_id"]
        earliest = sorted(events, key=lambda e: (e.time, e.event_id))[:500]
        assert bound == {e.identities["anonymous_id"] for e in earliest}
        record = graph.refusals()
        assert len(record) == 9500
        assert {r.rule for r in record} == {"device_cap"}
        assert len(ledger.held) == 9500
        assert_messages_clean(every, ["shared-login", "device-00001", "device-09999"])
        assert graph.check() == []


def test_illegal_ids_are_all_refused() -> None:
    graph = IdentityGraph()
    types = [*BUILTIN_IDENTITIES, "customer_no"]
    junk = [*sorted(JUNK_IDENTITY_VALUES), "  null  ", "NULL", "Undefined", " ", "\t"]
    events = [
        Observation(f"evt-{i:04d}", i, "track", {t: value, "device_fp": f"fp-{i}"})
        for i, (t, value) in enumerate((t, v) for t in types for v in junk)
    ]
    ledger, every = feed(graph, shuffled_batches(events, 40, seed=3))
    assert len(every) == len(events)
    assert {r.rule for r in every} == {"junk_id"}
    assert {r.event_id for r in every} == {e.event_id for e in events}
    assert len(ledger.held) == len(events)
    assert all(graph.person_of(t, v) is None for t in types for v in junk)
    # The events' other identities are kept: nothing an event carried that was valid is lost.
    assert all(graph.person_of("device_fp", f"fp-{i}") is not None for i in range(len(events)))


def test_a_hijack_of_a_bound_device_is_refused() -> None:
    graph = IdentityGraph()
    graph.observe_many([Observation("v1", 1000, "track", {"anonymous_id": "victim-phone", "login_id": "victim"})])
    victim = graph.person_of("login_id", "victim")
    attack = [
        Observation("a1", 2000, "bind", {"anonymous_id": "victim-phone", "login_id": "attacker"}),
        Observation("a2", 2001, "unbind", {"anonymous_id": "victim-phone", "login_id": "victim"}),
        Observation("a3", 2002, "bind", {"anonymous_id": "victim-phone", "login_id": "attacker"}),
    ]
    changes = graph.observe_many(attack)
    assert sorted((r.event_id, r.rule) for r in changes) == [
        ("a1", "anonymous_already_bound"),
        ("a2", "untrusted_unbind"),
    ]
    assert graph.person_of("anonymous_id", "victim-phone") == victim
    assert graph.identities_of(victim) == {"anonymous_id": {"victim-phone"}, "login_id": {"victim"}}
