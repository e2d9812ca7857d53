"""The stitching rules one by one, bind and unbind, person ids and the readers' helpers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from maidian.collector.identity.graph import IdentityGraph, observations_from
from maidian.collector.identity.types import RULES, IdentityGraphError, IdentityPolicy, Observation, Refusal
from maidian.tracking_plan import load_plan
from maidian.tracking_plan.envelope import JUNK_IDENTITY_VALUES
from tests.collector.identity_model import person_id
from tests.conftest import MINI_PLAN

PLAN_POLICY = IdentityPolicy.from_plan(load_plan(MINI_PLAN))


def obs(event_id: str, time: int, kind: str = "track", trusted: bool = False, **identities: str) -> Observation:
    return Observation(event_id, time, kind, identities, trusted)


@pytest.fixture
def graph() -> Iterator[IdentityGraph]:
    g = IdentityGraph(policy=PLAN_POLICY)
    yield g
    g.close()


def assert_no_values(refusals: list[Refusal], values: set[str]) -> None:
    for r in refusals:
        assert r.rule in RULES
        for v in values:
            assert v not in r.message, (v, r)
            assert v not in r.identity_type, (v, r)


# -- linking ------------------------------------------------------------------------


def test_events_before_login_belong_to_the_person(graph: IdentityGraph) -> None:
    graph.observe_many([obs("e1", 100, anonymous_id="dev-1"), obs("e2", 200, anonymous_id="dev-1")])
    assert graph.person_of("anonymous_id", "dev-1") == person_id(("anonymous_id", "dev-1"))
    graph.observe_many([obs("e3", 300, anonymous_id="dev-1", login_id="u-1")])
    person = graph.person_of("login_id", "u-1")
    assert person == person_id(("login_id", "u-1"))
    assert graph.person_of("anonymous_id", "dev-1") == person
    assert graph.identities_of(person) == {"anonymous_id": {"dev-1"}, "login_id": {"u-1"}}


def test_bind_and_server_events_link_declared_types(graph: IdentityGraph) -> None:
    graph.observe_many(
        [
            obs("e1", 1, anonymous_id="dev-1", login_id="u-1"),
            obs("e2", 2, "bind", login_id="u-1", customer_no="0000000001"),
            obs("e3", 3, "profile_set", customer_no="0000000001", mobile_hash="h" * 64, trusted=True),
        ]
    )
    person = graph.person_of("login_id", "u-1")
    assert graph.identities_of(person) == {
        "anonymous_id": {"dev-1"},
        "login_id": {"u-1"},
        "customer_no": {"0000000001"},
        "mobile_hash": {"h" * 64},
    }
    assert graph.find("0000000001") == person
    assert graph.find("dev-1", "anonymous_id") == person
    assert graph.find("nobody") is None


def test_first_binding_by_time_holds_on_a_shared_device(graph: IdentityGraph) -> None:
    changes = graph.observe_many(
        [
            obs("e1", 100, anonymous_id="branch-pad", login_id="teller-1"),
            obs("e2", 200, anonymous_id="branch-pad", login_id="teller-2"),
            obs("e3", 300, anonymous_id="branch-pad", login_id="teller-3"),
        ]
    )
    assert [(r.event_id, r.rule, r.identity_type) for r in changes] == [
        ("e2", "anonymous_already_bound", "anonymous_id"),
        ("e3", "anonymous_already_bound", "anonymous_id"),
    ]
    assert_no_values(changes, {"branch-pad", "teller-1", "teller-2", "teller-3"})
    assert graph.person_of("anonymous_id", "branch-pad") == graph.person_of("login_id", "teller-1")
    assert graph.person_of("login_id", "teller-2") != graph.person_of("login_id", "teller-1")
    # The second teller's events carry their login, so they are attributed to them, not to the device's person.
    assert graph.attribute({"anonymous_id": "branch-pad", "login_id": "teller-2"}) == graph.person_of(
        "login_id", "teller-2"
    )
    assert graph.attribute({"anonymous_id": "branch-pad"}) == graph.person_of("login_id", "teller-1")
    assert graph.attribute({"anonymous_id": "unseen"}) is None


def test_a_late_event_with_an_earlier_time_takes_the_binding(graph: IdentityGraph) -> None:
    graph.observe_many([obs("e1", 100, anonymous_id="pad", login_id="teller-1")])
    changes = graph.observe_many([obs("e0", 50, anonymous_id="pad", login_id="teller-2")])
    # The earlier binding wins, as if the events had arrived in time order, and the change is reported.
    assert [(r.event_id, r.rule, r.withdrawn) for r in changes] == [("e1", "anonymous_already_bound", False)]
    assert graph.person_of("anonymous_id", "pad") == graph.person_of("login_id", "teller-2")
    # The same late event once more changes nothing.
    assert graph.observe_many([obs("e0", 50, anonymous_id="pad", login_id="teller-2")]) == []


def test_a_superseded_refusal_is_withdrawn(graph: IdentityGraph) -> None:
    graph.observe_many(
        [
            obs("e1", 100, anonymous_id="pad", login_id="teller-1"),
            obs("e2", 200, anonymous_id="pad", login_id="teller-2"),
        ]
    )
    # teller-2 on the pad turns out to have come first: e2's refusal goes, e1 is refused instead.
    changes = graph.observe_many([obs("e0", 50, anonymous_id="pad", login_id="teller-2")])
    assert sorted((r.event_id, r.withdrawn) for r in changes) == [("e1", False), ("e2", True)]
    assert [(r.event_id, r.rule) for r in graph.refusals()] == [("e1", "anonymous_already_bound")]


def test_device_cap_is_exact() -> None:
    graph = IdentityGraph(policy=IdentityPolicy())
    batch = [obs(f"e{i:04d}", i, anonymous_id=f"dev-{i}", login_id="u-1") for i in range(501)]
    changes = graph.observe_many(batch)
    assert [(r.event_id, r.rule, r.identity_type) for r in changes] == [("e0500", "device_cap", "anonymous_id")]
    person = graph.person_of("login_id", "u-1")
    assert len(graph.identities_of(person)["anonymous_id"]) == 500
    assert graph.person_of("anonymous_id", "dev-500") != person
    assert "500" in changes[0].message
    assert "dev-500" not in changes[0].message


def test_two_identified_persons_never_merge(graph: IdentityGraph) -> None:
    graph.observe_many(
        [
            obs("e1", 1, login_id="u-1", customer_no="0000000001"),
            obs("e2", 2, login_id="u-2", customer_no="0000000002"),
        ]
    )
    # A server event that would put one customer number with the other login: refused, not merged.
    changes = graph.observe_many([obs("e3", 3, login_id="u-2", customer_no="0000000001", trusted=True)])
    assert [(r.event_id, r.rule, r.identity_type) for r in changes] == [("e3", "unique_conflict", "customer_no")]
    assert "login_id" in changes[0].message
    assert_no_values(changes, {"u-1", "u-2", "0000000001", "0000000002"})
    assert graph.person_of("login_id", "u-1") != graph.person_of("login_id", "u-2")
    assert graph.person_of("customer_no", "0000000001") == graph.person_of("login_id", "u-1")


def test_a_refused_identity_does_not_stop_the_others_on_the_event(graph: IdentityGraph) -> None:
    graph.observe_many([obs("e1", 1, anonymous_id="pad", login_id="u-1")])
    changes = graph.observe_many([obs("e2", 2, anonymous_id="pad", login_id="u-2", customer_no="0000000002")])
    assert [(r.rule, r.identity_type) for r in changes] == [("anonymous_already_bound", "anonymous_id")]
    assert graph.person_of("customer_no", "0000000002") == graph.person_of("login_id", "u-2")


@pytest.mark.parametrize("junk", [*sorted(JUNK_IDENTITY_VALUES), " NULL ", "Undefined"])
def test_junk_ids_are_refused(graph: IdentityGraph, junk: str) -> None:
    changes = graph.observe_many(
        [
            obs("e1", 1, anonymous_id="dev-1", login_id=junk),
            obs("e2", 2, anonymous_id=junk, login_id="u-1"),
            obs("e3", 3, customer_no=junk),
        ]
    )
    assert sorted((r.event_id, r.rule, r.identity_type) for r in changes) == [
        ("e1", "junk_id", "login_id"),
        ("e2", "junk_id", "anonymous_id"),
        ("e3", "junk_id", "customer_no"),
    ]
    assert graph.person_of("login_id", junk) is None
    assert graph.person_of("anonymous_id", junk) is None
    # The valid identities on those events are still registered, each on its own.
    assert graph.person_of("anonymous_id", "dev-1") != graph.person_of("login_id", "u-1")
    # The message is the same whatever the value, so it cannot carry it.
    assert {r.message for r in changes if r.identity_type == "login_id"} == {JUNK_LOGIN_MESSAGE}


JUNK_LOGIN_MESSAGE = IdentityGraph().observe_many([Observation("x", 0, "track", {"login_id": "null"})])[0].message


def test_unknown_types_are_refused_without_echoing_a_bad_name(graph: IdentityGraph) -> None:
    changes = graph.observe_many(
        [obs("e1", 1, anonymous_id="dev-1", wechat_id="w-1"), Observation("e2", 2, "track", {"13812345678": "x"})]
    )
    assert sorted((r.event_id, r.rule, r.identity_type) for r in changes) == [
        ("e1", "unknown_type", "wechat_id"),
        ("e2", "unknown_type", "(invalid name)"),
    ]
    assert_no_values(changes, {"13812345678", "w-1"})
    assert graph.person_of("wechat_id", "w-1") is None


def test_non_string_values_are_junk(graph: IdentityGraph) -> None:
    weird = Observation("e1", 1, "track", {"anonymous_id": ["a"], "login_id": None})  # type: ignore[dict-item]
    changes = graph.observe_many([weird])
    assert sorted(r.identity_type for r in changes) == ["anonymous_id", "login_id"]


# -- bind and unbind ---------------------------------------------------------------


def test_trusted_unbind_separates_and_a_later_bind_rejoins(graph: IdentityGraph) -> None:
    graph.observe_many([obs("e1", 1, anonymous_id="pad", login_id="teller-1")])
    graph.observe_many([obs("e2", 2, "unbind", trusted=True, anonymous_id="pad", login_id="teller-1")])
    assert graph.person_of("anonymous_id", "pad") != graph.person_of("login_id", "teller-1")
    # The device is free: the next login binds it (an implicit track event is not enough for the unbound pair).
    graph.observe_many([obs("e3", 3, anonymous_id="pad", login_id="teller-2")])
    assert graph.person_of("anonymous_id", "pad") == graph.person_of("login_id", "teller-2")
    graph.observe_many([obs("e4", 4, anonymous_id="pad", login_id="teller-1")])
    assert graph.person_of("anonymous_id", "pad") == graph.person_of("login_id", "teller-2")
    # An explicit bind later than the unbind restores the pair; its first binding (e1) wins again.
    changes = graph.observe_many([obs("e5", 5, "bind", anonymous_id="pad", login_id="teller-1")])
    assert graph.person_of("anonymous_id", "pad") == graph.person_of("login_id", "teller-1")
    assert [(r.event_id, r.rule) for r in changes] == [("e3", "anonymous_already_bound")]


def test_unbind_from_an_unsigned_source_is_refused(graph: IdentityGraph) -> None:
    graph.observe_many([obs("e1", 1, anonymous_id="victim-phone", login_id="victim")])
    changes = graph.observe_many(
        [
            obs("e2", 2, "unbind", anonymous_id="victim-phone", login_id="victim"),
            obs("e3", 3, "bind", anonymous_id="victim-phone", login_id="attacker"),
        ]
    )
    assert [(r.event_id, r.rule) for r in changes] == [
        ("e2", "untrusted_unbind"),
        ("e3", "anonymous_already_bound"),
    ]
    assert graph.person_of("anonymous_id", "victim-phone") == graph.person_of("login_id", "victim")


def test_unbind_of_a_pair_still_joined_through_another_link_keeps_one_person(graph: IdentityGraph) -> None:
    graph.observe_many(
        [
            obs("e1", 1, login_id="u-1", customer_no="0000000001"),
            obs("e2", 2, login_id="u-1", anonymous_id="dev-1"),
            obs("e3", 3, customer_no="0000000001", anonymous_id="dev-1", trusted=True),
        ]
    )
    graph.observe_many([obs("e4", 4, "unbind", trusted=True, login_id="u-1", anonymous_id="dev-1")])
    assert graph.person_of("anonymous_id", "dev-1") == graph.person_of("login_id", "u-1")
    graph.observe_many([obs("e5", 5, "unbind", trusted=True, customer_no="0000000001", anonymous_id="dev-1")])
    assert graph.person_of("anonymous_id", "dev-1") != graph.person_of("login_id", "u-1")


def test_a_late_unbind_applies_to_the_whole_history(graph: IdentityGraph) -> None:
    graph.observe_many(
        [obs("e1", 10, anonymous_id="pad", login_id="t-1"), obs("e2", 20, anonymous_id="pad", login_id="t-2")]
    )
    changes = graph.observe_many([obs("e0", 5, "unbind", trusted=True, anonymous_id="pad", login_id="t-1")])
    assert [(r.event_id, r.withdrawn) for r in changes] == [("e2", True)]
    assert graph.person_of("anonymous_id", "pad") == graph.person_of("login_id", "t-2")


# -- person ids ----------------------------------------------------------------------


def test_person_ids_follow_the_representative_through_merge_and_split(graph: IdentityGraph) -> None:
    graph.observe_many([obs("e1", 1, anonymous_id="dev-1")])
    anonymous_person = graph.person_of("anonymous_id", "dev-1")
    graph.observe_many([obs("e2", 2, anonymous_id="dev-1", login_id="u-1")])
    login_person = graph.person_of("login_id", "u-1")
    assert anonymous_person == person_id(("anonymous_id", "dev-1"))
    assert login_person == person_id(("login_id", "u-1"))
    assert graph.identities_of(anonymous_person) == {}
    # Unrelated data does not rename anyone.
    graph.observe_many([obs("e3", 3, anonymous_id="dev-2", login_id="u-2"), obs("e4", 4, anonymous_id="dev-1")])
    assert graph.person_of("anonymous_id", "dev-1") == login_person
    graph.observe_many([obs("e5", 5, "unbind", trusted=True, anonymous_id="dev-1", login_id="u-1")])
    assert graph.person_of("anonymous_id", "dev-1") == anonymous_person
    assert graph.person_of("login_id", "u-1") == login_person


def test_the_earliest_identity_of_equal_priority_names_the_person_even_when_seen_late() -> None:
    policy = IdentityPolicy(priorities={"login_id": 1, "device_fp": 50, "anonymous_id": 1000})
    graph = IdentityGraph(policy=policy)
    graph.observe_many(
        [obs("e1", 10, anonymous_id="a", device_fp="f1"), obs("e2", 20, anonymous_id="a", device_fp="f2")]
    )
    assert graph.person_of("device_fp", "f2") == person_id(("device_fp", "f1"))
    # f2 alone, earlier than anything seen of f1: f2 now names the person.
    graph.observe_many([obs("e0", 5, device_fp="f2")])
    assert graph.person_of("device_fp", "f1") == person_id(("device_fp", "f2"))
    assert graph.person_of("anonymous_id", "a") == person_id(("device_fp", "f2"))


def test_person_ids_can_be_keyed() -> None:
    keyed = IdentityGraph(policy=IdentityPolicy(person_id_key=b"secret"))
    keyed.observe_many([obs("e1", 1, login_id="u-1")])
    assert keyed.person_of("login_id", "u-1") == person_id(("login_id", "u-1"), b"secret")
    assert keyed.person_of("login_id", "u-1") != person_id(("login_id", "u-1"))


# -- policy and helpers --------------------------------------------------------------


def test_policy_from_plan() -> None:
    assert PLAN_POLICY.unique_types == {"login_id", "customer_no", "mobile_hash"}
    assert PLAN_POLICY.identity_types == {"anonymous_id", "login_id", "customer_no", "mobile_hash"}
    assert PLAN_POLICY.priorities["customer_no"] == 2
    assert PLAN_POLICY.priorities["anonymous_id"] == 1000
    relaxed = IdentityPolicy.from_plan(load_plan(MINI_PLAN), max_devices_per_login=3, unique_types=frozenset())
    assert relaxed.max_devices_per_login == 3
    assert relaxed.unique_types == frozenset()
    with pytest.raises(ValueError, match="max_devices_per_login"):
        IdentityPolicy(max_devices_per_login=0)


def test_observations_from_wire_events() -> None:
    events = [
        {"type": "track", "event": "x_y", "event_id": "s-1", "time": 5, "identities": {"anonymous_id": "d"}},
        {"type": "track", "event_id": "s-2", "time": 6},
    ]
    assert observations_from(events, trusted=True) == [Observation("s-1", 5, "track", {"anonymous_id": "d"}, True)]


def test_a_closed_graph_refuses_work() -> None:
    graph = IdentityGraph()
    graph.close()
    with pytest.raises(IdentityGraphError, match="closed"):
        graph.observe_many([obs("e1", 1, anonymous_id="d")])
    with pytest.raises(IdentityGraphError, match="closed"):
        graph.person_of("anonymous_id", "d")


def test_in_order_traffic_never_replays_and_a_late_event_replays_its_cluster_once() -> None:
    graph = IdentityGraph(policy=IdentityPolicy(max_devices_per_login=5))
    in_order = [obs(f"e{i:03d}", 100 + i, anonymous_id=f"dev-{i % 7}", login_id=f"u-{i % 3}") for i in range(60)]
    graph.observe_many(in_order[:30])
    graph.observe_many(in_order[30:])
    assert graph.stats["replays"] == 0
    late = [
        obs("late-1", 5, anonymous_id="dev-1", login_id="u-2"),
        obs("late-2", 6, anonymous_id="dev-2", login_id="u-0"),
    ]
    graph.observe_many(late)
    assert graph.stats["replays"] == 1
    # Unrelated clusters are left alone.
    graph.observe_many([obs("late-3", 1, anonymous_id="elsewhere", login_id="u-9")])
    assert graph.stats["replays"] == 1


def test_a_malformed_type_name_is_refused_even_without_a_plan() -> None:
    graph = IdentityGraph()  # no plan: any well-formed type is accepted
    changes = graph.observe_many([Observation("e1", 1, "track", {"13812345678": "x", "wechat_id": "w-1"})])
    assert [(r.rule, r.identity_type) for r in changes] == [("unknown_type", "(invalid name)")]
    assert graph.person_of("13812345678", "x") is None
    assert graph.person_of("wechat_id", "w-1") is not None
    # The same event again (a replay) is settled without a second refusal.
    assert graph.observe_many([Observation("e1", 1, "track", {"13812345678": "x", "wechat_id": "w-1"})]) == []
