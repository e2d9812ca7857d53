"""The pipeline feeds the identity graph every observation once, and records what it refuses."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from maidian.collector.identity.graph import IdentityGraph
from maidian.collector.identity.types import IdentityPolicy, Observation, Refusal
from maidian.collector.store import feed as feed_module
from maidian.collector.store.catalog import Catalog
from maidian.collector.store.feed import IdentityFeed
from maidian.collector.store.log import DataDir
from tests.collector.conftest import ClientFactory
from tests.collector.helpers import body_of, headers_for, login_event, now_ms, order

FED: list[Observation] = []


class RecordingGraph(IdentityGraph):
    """The identity graph, recording what it is fed."""

    def observe_many(self, observations: Iterable[Observation], *, checkpoint: str | None = None) -> list[Refusal]:
        batch = list(observations)
        FED.extend(batch)
        return super().observe_many(batch, checkpoint=checkpoint)


@pytest.fixture(autouse=True)
def recording(monkeypatch: pytest.MonkeyPatch) -> None:
    FED.clear()
    monkeypatch.setattr(feed_module, "IdentityGraph", RecordingGraph)


async def test_observations_reach_the_graph_and_refusals_are_recorded(start: ClientFactory, data_dir: Path) -> None:
    t0 = now_ms() - 60_000
    events: list[Any] = [order(k, anon="anon-1", t=t0 + k) for k in range(1, 101)]  # one device, one identity set
    events.append(login_event(101, anon="anon-1", login="u-1", t=t0 + 200))
    events.append(login_event(102, anon="anon-1", login="null", t=t0 + 300))
    client = await start()
    resp = await client.post("/v1/batch", data=body_of(events), headers=headers_for())
    assert resp.status == 200
    await client.close()  # the catalog catches up at shutdown
    # One observation per distinct identity set (the earliest event carrying it), not one per event.
    by_ids = {tuple(sorted(o.identities.items())): o for o in FED}
    assert len(FED) == 3
    assert by_ids[(("anonymous_id", "anon-1"),)].event_id == events[0]["event_id"]
    assert by_ids[(("anonymous_id", "anon-1"), ("login_id", "u-1"))].time > 0
    data = DataDir(data_dir)
    catalog = Catalog(data)
    try:
        [(event_id, rule, identity_type, message)] = catalog.refusals()
        assert (event_id, rule, identity_type) == (events[-1]["event_id"], "junk_id", "login_id")
        assert "null" not in message
        # Reopened, the graph knows how far it was fed: nothing is fed twice.
        FED.clear()
        feed = IdentityFeed(data, IdentityPolicy())
        catalog.catch_up(feed)
        feed.close()
        assert FED == []
        # A graph rebuilt from nothing is fed everything again; refusals are not recorded twice.
        for path in data_dir.glob(data.identity.name + "*"):
            path.unlink()
        feed = IdentityFeed(data, IdentityPolicy())
        catalog.catch_up(feed)
        feed.close()
        assert len(FED) == 3
        assert len(catalog.refusals()) == 1
    finally:
        catalog.close()


async def test_refusals_are_counted_in_metrics(start: ClientFactory) -> None:
    client = await start()
    body = body_of([login_event(1, anon="anon-2", login="null")])
    assert (await client.post("/v1/batch", data=body, headers=headers_for())).status == 200
    from maidian.collector.http.app import COLLECTOR

    collector = client.server.app[COLLECTOR]
    await collector.catch_up_catalog()
    text = await (await client.get("/metrics")).text()
    assert 'maidian_identity_refusals_total{rule="junk_id"} 1' in text
    await client.close()
