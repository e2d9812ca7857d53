"""Hypothesis: the graph depends on the set of observations, never on their order, batching, restarts or replays.

Every example is also checked against `identity_model.reference`, a plain
rendering of docs/identity.md, so a bug that the incremental and the replay
paths shared would still show.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from maidian.collector.identity.graph import IdentityGraph
from maidian.collector.identity.types import IdentityPolicy, Observation
from tests.collector.identity_model import Ledger, graph_state, reference

# Small pools, a small cap and a narrow time range, so that links collide,
# caps bite, times tie and late events change earlier decisions.
POLICY = IdentityPolicy(
    max_devices_per_login=2,
    unique_types=frozenset({"login_id", "customer_no"}),
    identity_types=frozenset({"anonymous_id", "login_id", "customer_no", "device_fp"}),
    priorities={"login_id": 1, "customer_no": 2, "device_fp": 50, "anonymous_id": 1000},
)
# Variants of the rules, for the order-independence property.
POLICIES = [
    POLICY,
    replace(POLICY, max_devices_per_login=1, unbind_requires_trusted=False),
    replace(POLICY, one_login_per_anonymous=False, unique_types=frozenset({"login_id"})),
    replace(POLICY, one_login_per_anonymous=False, unique_types=frozenset(), person_id_key=b"k"),
    replace(POLICY, priorities={"login_id": 1, "customer_no": 2, "device_fp": 2, "anonymous_id": 1000}),
]
JUNK = ["null", "", "0", "undefined"]
IDENTITIES = st.fixed_dictionaries(
    {},
    optional={
        "anonymous_id": st.sampled_from(["a1", "a2", "a3", "a4", *JUNK[:1]]),
        "login_id": st.sampled_from(["l1", "l2", "l3", *JUNK[1:2]]),
        "customer_no": st.sampled_from(["c1", "c2", *JUNK[2:3]]),
        "device_fp": st.sampled_from(["f1", "f2"]),
        "bogus_id": st.just("b1"),
    },
)
CONTENT = st.tuples(
    st.integers(0, 12),
    st.sampled_from(["track"] * 6 + ["profile_set", "bind", "bind", "unbind"]),
    IDENTITIES,
    st.booleans(),
)


def numbered(contents: list[tuple[int, str, dict[str, str], bool]], start: int = 0) -> list[Observation]:
    return [
        Observation(f"e{start + i:04d}", t, kind, ids, trusted) for i, (t, kind, ids, trusted) in enumerate(contents)
    ]


def feed(graph: IdentityGraph, batches: list[list[Observation]], ledger: Ledger) -> None:
    for batch in batches:
        ledger.apply(graph.observe_many(batch))


@st.composite
def arrivals(draw: st.DrawFn) -> tuple[list[Observation], list[list[Observation]]]:
    """Observations, and the same observations permuted and split into batches."""
    observations = numbered(draw(st.lists(CONTENT, min_size=1, max_size=24)))
    shuffled = draw(st.permutations(observations))
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(shuffled) - 1)), max_size=6)))
    bounds = [0, *cuts, len(shuffled)]
    return observations, [shuffled[a:b] for a, b in itertools.pairwise(bounds) if a < b]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arrivals(), st.sampled_from(POLICIES))
def test_any_order_and_batching_gives_the_same_graph(
    case: tuple[list[Observation], list[list[Observation]]], policy: IdentityPolicy
) -> None:
    observations, batches = case
    expected = reference(observations, policy)

    in_time_order = IdentityGraph(policy=policy)
    ledger_a = Ledger()
    feed(in_time_order, [sorted(observations, key=lambda o: (o.time, o.event_id))], ledger_a)
    shuffled = IdentityGraph(policy=policy)
    ledger_b = Ledger()
    feed(shuffled, batches, ledger_b)

    for graph, ledger in ((in_time_order, ledger_a), (shuffled, ledger_b)):
        state = graph_state(graph, observations)
        assert state.persons == expected.persons
        assert state.refusals == expected.refusals
        # A caller that records every change (+1 / -1 for withdrawn) holds the same record.
        assert ledger.as_set() == expected.refusals
        assert graph.check() == []
        graph.close()
    # What the examples reach (pytest --hypothesis-show-statistics).
    for refused in sorted({r[2] for r in expected.refusals}):
        event(f"refused: {refused}")
    if ledger_b.withdrawn:
        event("a late event withdrew a refusal")
    if shuffled.stats["replays"]:
        event("a cluster was replayed")
    if any(o.kind == "unbind" and o.trusted for o in observations):
        event("a signed unbind")


@settings(max_examples=150, deadline=None)
@given(arrivals(), st.data())
def test_one_event_at_a_time_in_any_order_gives_the_same_graph(
    case: tuple[list[Observation], list[list[Observation]]], data: st.DataObject
) -> None:
    observations, _batches = case
    order = data.draw(st.permutations(observations))
    graph = IdentityGraph(policy=POLICY)
    ledger = Ledger()
    feed(graph, [[o] for o in order], ledger)
    expected = reference(observations, POLICY)
    assert graph_state(graph, observations) == expected
    assert ledger.as_set() == expected.refusals
    assert graph.check() == []


@settings(max_examples=150, deadline=None)
@given(arrivals(), st.data())
def test_forget_then_replaying_everything_restores_the_graph(
    case: tuple[list[Observation], list[list[Observation]]], data: st.DataObject
) -> None:
    observations, batches = case
    graph = IdentityGraph(policy=POLICY)
    ledger = Ledger()
    feed(graph, batches, ledger)
    persons = sorted(set(graph_state(graph, observations).persons.values()))
    if persons:
        person = data.draw(st.sampled_from(persons))
        before = graph.identities_of(person)
        forgotten = graph.forget(person)
        ledger.apply(forgotten.refusals)
        assert ledger.as_set() == graph_state(graph, observations).refusals
        assert forgotten.identities == before
        assert graph.identities_of(person) == {}
        assert all(graph.person_of(t, v) is None for t, values in before.items() for v in values)
        assert graph.check() == []
    # The log still holds every event (deleting them is the caller's part): observing them again rebuilds all.
    feed(graph, batches, ledger)
    expected = reference(observations, POLICY)
    assert graph_state(graph, observations) == expected
    assert ledger.as_set() == expected.refusals
    assert graph.check() == []


class ObserveReopenReplay(RuleBasedStateMachine):
    """A graph on a file, fed batches, closed and reopened, and fed old events again (recovery)."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="maidian-identity-"))
        self.path = self.dir / "identity.sqlite"
        self.graph = IdentityGraph(self.path, POLICY, cache_links=8)
        self.seen: list[Observation] = []
        self.ledger = Ledger()

    @rule(contents=st.lists(CONTENT, min_size=1, max_size=8))
    def observe(self, contents: list[tuple[int, str, dict[str, str], bool]]) -> None:
        batch = numbered(contents, start=len(self.seen))
        self.seen += batch
        self.ledger.apply(self.graph.observe_many(batch))

    @precondition(lambda self: bool(self.seen))
    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        again = data.draw(st.lists(st.sampled_from(self.seen), min_size=1, max_size=10))
        assert self.graph.observe_many(again) == []

    @rule()
    def reopen(self) -> None:
        self.graph.close()
        self.graph = IdentityGraph(self.path, POLICY, cache_links=8)

    @invariant()
    def matches_the_reference(self) -> None:
        expected = reference(self.seen, POLICY)
        assert graph_state(self.graph, self.seen) == expected
        assert self.ledger.as_set() == expected.refusals
        assert self.graph.check() == []

    def teardown(self) -> None:
        self.graph.close()
        shutil.rmtree(self.dir, ignore_errors=True)


TestObserveReopenReplay = ObserveReopenReplay.TestCase
# docs/reliability.md, T20 asks for at least 500 stateful examples in CI.
TestObserveReopenReplay.settings = settings(
    max_examples=500, stateful_step_count=10, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
