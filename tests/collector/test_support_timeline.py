"""Timeline paging as a property: whatever the frames' time ranges, pages hold the person's events once, in order."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maidian.collector.identity.types import IdentityPolicy
from maidian.collector.store.catalog import Catalog
from maidian.collector.store.feed import IdentityFeed
from maidian.collector.store.heads import build_accepted_frame
from maidian.collector.store.ids import id_ranges
from maidian.collector.store.log import DataDir, LogWriter
from maidian.collector.support.timeline import PersonFrames, Timeline, TimelineFilter, find_person
from tests.collector.support_data import example_plan

T0 = 1_765_000_000_000
# (who, time offset, name): "a" is the person, "b" another login on A's pad, "pad" the pad before any login.
WHO = st.sampled_from(["a", "b", "pad", "c"])
EVENT = st.tuples(WHO, st.integers(0, 50), st.sampled_from(["stock_quote_view", "bank_deposit_submit"]))
FRAMES = st.lists(st.lists(EVENT, min_size=1, max_size=6), min_size=1, max_size=12)


def identities(who: str) -> dict[str, str]:
    return {
        "a": {"anonymous_id": "pad", "login_id": "UA"},
        "b": {"anonymous_id": "pad", "login_id": "UB"},
        "pad": {"anonymous_id": "pad"},
        "c": {"anonymous_id": "phone-c", "login_id": "UC"},
    }[who]


def write(root: Path, frames: list[list[tuple[str, int, str]]], repeat: int | None) -> list[dict[str, Any]]:
    """The frames as raw-log frames (A's first event first, so the pad binds to A); the events written."""
    layout: list[list[dict[str, Any]]] = []
    seq = 0
    for frame in [[("a", -1, "stock_quote_view")], *frames]:
        events = []
        for who, dt, name in frame:
            seq += 1
            time_ms = T0 + (dt + 1) * 1000
            events.append(
                {
                    "type": "track",
                    "event": name,
                    "event_id": f"dev-{seq}",
                    "time": time_ms,
                    "identities": identities(who),
                }
            )
        layout.append(events)
    if repeat is not None:
        layout.append(layout[repeat % len(layout)])  # a raw duplicate: one request's events stored twice
    writer = LogWriter(DataDir(root).create().raw, "w0")
    writer.open()
    for f, events in enumerate(layout):
        rows = [(e, msgspec.Raw(msgspec.msgpack.encode(e)), e["time"], None) for e in events]
        ranges, opaque = id_ranges([e["event_id"] for e in events])
        head = {"rid": str(f), "at": T0, "src": "t", "kind": "write_key", "trusted": False}
        writer.append_sync(build_accepted_frame(head, rows, ranges, opaque))
    writer.close_sync()
    return [e for events in layout for e in events]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=FRAMES, limit=st.integers(1, 7), repeat=st.none() | st.integers(0, 20), line=st.booleans())
def test_pages_are_the_attributed_events_each_once_newest_first(
    frames: list[list[tuple[str, int, str]]], limit: int, repeat: int | None, line: bool
) -> None:
    plan = example_plan()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        events = write(root, frames, repeat)
        data = DataDir(root)
        catalog = Catalog(data)
        feed = IdentityFeed(data, IdentityPolicy.from_plan(plan))
        try:
            catalog.catch_up(feed)
            found = find_person(feed.graph, plan, "UA", "login_id")
            assert found is not None
            flt = TimelineFilter(lines=frozenset({"bank"})) if line else TimelineFilter()
            mine = {
                e["event_id"]: (e["time"], e["event_id"])
                for e in events
                if e["identities"]["anonymous_id"] == "pad"
                and e["identities"].get("login_id") != "UB"
                and (not line or e["event"] == "bank_deposit_submit")
            }
            expected = sorted(mine.values(), reverse=True)
            timeline = Timeline(root, plan, "Asia/Shanghai")
            memory = PersonFrames()
            got: list[tuple[int, str]] = []
            cursor = None
            for _ in range(len(events) + 2):
                page = timeline.page(catalog, feed.graph, found, memory, flt=flt, cursor=cursor, limit=limit)
                assert len(page.events) <= limit
                got += [(e["time"], e["event_id"]) for e in page.events]
                cursor = page.cursor
                if cursor is None:
                    break
            assert got == expected
        finally:
            catalog.close()
            feed.close()
