"""Person views follow the identity graph: properties on generated shared-device histories.

A branch has pads (anonymous ids) that tellers log in on through the app (an
unsigned write key), and a signed back office that ties each teller's login to
a customer number. The histories are random: which pad, which teller, logged in
or not, signed or not, event times and receive times in any order, frames of
any size. For each history, on a real data directory:

- every stored event is in exactly one person's view (`person_view`), and it
  is the person the reference model of the graph (identity_model.py)
  attributes it to: the person of its highest-priority identity;
- deleting one person (`delete_person`, by any of their identity values)
  removes exactly their view, and every other person's view is unchanged.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from maidian.collector.identity.types import IdentityPolicy, Observation, order_time
from maidian.collector.privacy.operations import delete_person
from maidian.collector.read import person_view
from maidian.collector.store.catalog import Catalog
from maidian.collector.store.feed import IdentityFeed
from maidian.collector.store.heads import build_accepted_frame
from maidian.collector.store.ids import id_ranges
from maidian.collector.store.log import DataDir, LogWriter
from maidian.tracking_plan import load_plan
from tests.collector.identity_model import reference
from tests.conftest import MINI_PLAN

PLAN = load_plan(MINI_PLAN)
POLICY = IdentityPolicy.from_plan(PLAN)
PADS = ("pad-a", "pad-b")
TELLERS = ("teller-1", "teller-2", "teller-3")
CUSTOMERS = {"teller-1": "1000000001", "teller-2": "1000000002", "teller-3": "1000000003"}
T0 = 1_765_000_000_000


@dataclass(frozen=True)
class Sent:
    """One request: its events' identities and times, who sent it, when it arrived."""

    events: tuple[tuple[dict[str, str], int], ...]
    signed: bool
    received_ms: int


def _identities(pad: int, teller: int | None, signed: bool) -> dict[str, str]:
    if signed:
        login = TELLERS[teller if teller is not None else 0]
        return {"login_id": login, "customer_no": CUSTOMERS[login]}
    ids = {"anonymous_id": PADS[pad]}
    if teller is not None:
        ids["login_id"] = TELLERS[teller]
    return ids


_event = st.tuples(st.integers(0, 1), st.none() | st.integers(0, 2), st.integers(0, 50))
_request = st.builds(
    lambda evs, signed, at: Sent(
        tuple((_identities(p, t, signed), T0 + dt) for p, t, dt in evs), signed, T0 + 100 + at
    ),
    st.lists(_event, min_size=1, max_size=4),
    st.booleans(),
    st.integers(0, 50),
)
histories = st.lists(_request, min_size=1, max_size=8)


def _store(root: Path, history: list[Sent]) -> tuple[DataDir, dict[str, tuple[dict[str, str], int, bool, int]]]:
    """Write the history as frames; returns event id -> (identities, time, signed, received)."""
    data = DataDir(root).create()
    writer = LogWriter(data.raw, "w0")
    writer.open()
    ledger: dict[str, tuple[dict[str, str], int, bool, int]] = {}
    try:
        for r, sent in enumerate(history):
            stored: list[tuple[dict[str, Any], Any, int, list[str] | None]] = []
            for k, (ids, t) in enumerate(sent.events):
                eid = f"r{r}-e{k}"
                event = {"type": "track", "event": "stock_order_submit", "event_id": eid, "time": t}
                event.update(identities=ids, properties={})
                stored.append((event, msgspec.Raw(msgspec.msgpack.encode(event)), t, None))
                ledger[eid] = (ids, t, sent.signed, sent.received_ms)
            head = {
                "rid": f"r{r}",
                "at": sent.received_ms,
                "src": "gateway" if sent.signed else "app",
                "kind": "source" if sent.signed else "key",
                "trusted": sent.signed,
            }
            ranges, opaque = id_ranges([e["event_id"] for e, _r, _t, _f in stored])
            writer.append_sync(build_accepted_frame(head, stored, ranges, opaque))
    finally:
        writer.close_sync()
    return data, ledger


def _expected(ledger: dict[str, tuple[dict[str, str], int, bool, int]]) -> dict[str, str]:
    """Event id -> person, from the reference model of the graph.

    The graph sees one observation per request and identity set: the earliest
    event by (time, id), as a frame head records it (store/heads.py). Its order
    time is the event time for a signed sender, the receive time (after every
    signed event) for anyone else.
    """
    earliest: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[int, str]] = {}
    for eid, (ids, t, _signed, _at) in ledger.items():
        key = (eid.split("-")[0], tuple(sorted(ids.items())))
        earliest[key] = min(earliest.get(key, (t, eid)), (t, eid))
    observations = []
    for (_request, pairs), (t, eid) in earliest.items():
        _ids, _t, signed, at = ledger[eid]
        observations.append(Observation(eid, order_time(t, at, trusted=signed), "track", dict(pairs), signed))
    persons = reference(observations, POLICY).persons
    out = {}
    for eid, (ids, _t, _signed, _at) in ledger.items():
        top = min(ids, key=lambda t: (POLICY.priorities.get(t, 100), t))
        out[eid] = persons[(top, ids[top])]
    return out


def _views(data: DataDir, values: set[tuple[str, str]]) -> dict[str, frozenset[str]]:
    """Person -> the event ids of their view, for every person owning one of these identities."""
    catalog = Catalog(data)
    feed = IdentityFeed(data, POLICY)
    try:
        catalog.catch_up(feed)
        out: dict[str, frozenset[str]] = {}
        for t, v in sorted(values):
            if feed.graph.person_of(t, v) is None:
                continue
            view = person_view(data, catalog, feed.graph, v, t)
            assert view.person is not None
            out[view.person] = frozenset(e["event_id"] for e in view.events)
        return out
    finally:
        catalog.close()
        feed.close()


@pytest.fixture
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Path]]:
    """Directories for 400 data directories: in memory (/dev/shm) where there is one, since durability is
    not what these properties are about and every flush to a shared disk costs milliseconds."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path_factory.mktemp
        return
    with tempfile.TemporaryDirectory(dir=shm, prefix="maidian-views-") as top:
        yield lambda name: Path(tempfile.mkdtemp(dir=top, prefix=name))


def _all_values(ledger: dict[str, tuple[dict[str, str], int, bool, int]]) -> set[tuple[str, str]]:
    return {(t, v) for ids, _t, _s, _a in ledger.values() for t, v in ids.items()}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=histories)
def test_every_event_is_in_exactly_one_view_the_models(scratch: Callable[[str], Path], history: list[Sent]) -> None:
    data, ledger = _store(scratch("views"), history)
    note(repr(ledger))
    views = _views(data, _all_values(ledger))
    owners: dict[str, list[str]] = {}
    for person, events in views.items():
        for eid in events:
            owners.setdefault(eid, []).append(person)
    assert {eid: len(p) for eid, p in owners.items()} == dict.fromkeys(ledger, 1)
    assert {eid: p[0] for eid, p in owners.items()} == _expected(ledger)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=histories, pick=st.integers(0, 1000))
def test_deleting_one_person_leaves_every_other_view_unchanged(
    scratch: Callable[[str], Path], history: list[Sent], pick: int
) -> None:
    data, ledger = _store(scratch("delete"), history)
    note(repr(ledger))
    values = _all_values(ledger)
    before = _views(data, values)
    victim_type, victim_value = sorted(values)[pick % len(values)]
    catalog = Catalog(data)
    feed = IdentityFeed(data, POLICY)
    try:
        catalog.catch_up(feed)
        victim = feed.graph.person_of(victim_type, victim_value)
    finally:
        catalog.close()
        feed.close()
    assert victim is not None
    note(f"delete {victim_type} {victim_value}")
    delete_person(data.root, victim_value, plan=PLAN)
    after = _views(data, values)
    assert set(after.values()) == {events for person, events in before.items() if person != victim}


def test_a_catalog_of_the_previous_layout_is_rebuilt_and_the_graph_fed_again(tmp_path: Path) -> None:
    history = [
        Sent(((_identities(0, 0, False), T0),), False, T0 + 100),
        Sent(((_identities(0, 0, True), T0),), True, T0),
    ]
    data, ledger = _store(tmp_path / "data", history)
    values = _all_values(ledger)
    before = _views(data, values)
    catalog = Catalog(data)
    try:  # what a catalog written before the layout meta looked like to this code
        catalog.db.execute("DELETE FROM meta WHERE key = 'layout'")
        catalog.db.execute("DELETE FROM observations")
    finally:
        catalog.close()
    assert _views(data, values) == before
