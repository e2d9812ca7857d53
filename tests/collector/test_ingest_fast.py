"""The batch-at-once paths of the pipeline give exactly what the per-event paths give.

`split_one_source` (all ids of one SDK source), `Ingest._fresh` (nothing to
deduplicate), the one-identity-set frame summary and the all-accepted
response each skip per-event Python work for an SDK's usual batch. These
properties run the same input through both paths and compare the results,
the responses and the bytes written to the logs.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maidian.collector.metrics import Metrics
from maidian.collector.pipeline.auth import Principal
from maidian.collector.pipeline.decode import decode_batch
from maidian.collector.pipeline.dedup import ScopedSeenIds
from maidian.collector.pipeline.ingest import Ingest, Outcome
from maidian.collector.pipeline.judge import Judge
from maidian.collector.store import heads as heads_module
from maidian.collector.store.frames import read_frames, segment_files
from maidian.collector.store.heads import build_accepted_frame
from maidian.collector.store.ids import split_event_id, split_one_source
from maidian.collector.store.log import LogWriter
from maidian.tracking_plan import Validator, load_plan
from maidian.tracking_plan.envelope import DEFAULT_LIMITS
from tests.conftest import MINI_PLAN

SOURCES = ["0193a5b2c3d4e5f60718293a4b5c6d7e", "0193a5b2c3d4e5f60718293a4b5c6d7f", "short"]
SEQ_TEXT = st.sampled_from(["1", "2", "3", "10", "01", "0", "", "1a", "٣", "²", "9" * 19, "1" + "0" * 19, "-1"])
IDS = st.one_of(
    st.builds(lambda s, n: f"{s}-{n}", st.sampled_from(SOURCES[:2]), st.integers(1, 6)),
    st.builds(lambda s, n: f"{s}-{n}", st.sampled_from(SOURCES), SEQ_TEXT),
    st.sampled_from(["order-77", "x" * 33, "0193a5b2c3d4e5f60718293a4b5c6d7e_5"]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(IDS, max_size=6))
def test_split_one_source_agrees_with_splitting_each_id(ids: list[str]) -> None:
    pairs = [split_event_id(eid) for eid in ids]
    sources = {p[0] for p in pairs if p is not None}
    expected = (
        (pairs[0][0], [p[1] for p in pairs if p is not None])
        if ids and all(p is not None for p in pairs) and len(sources) == 1 and pairs[0] is not None
        else None
    )
    assert split_one_source(ids) == expected


PLAN = load_plan(MINI_PLAN)
JUDGE = Judge(PLAN, Validator(PLAN), DEFAULT_LIMITS, window_s=8 * 86400, future_tolerance_s=3600)
NOW_MS = 1_763_800_000_000
IDENTITY_SETS = [
    {"anonymous_id": "dev-1"},
    {"anonymous_id": "dev-1", "login_id": "u1"},
    {"login_id": "u1", "anonymous_id": "dev-1"},  # equal to the one before, in another order
    {"anonymous_id": "dev-2"},
]


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["order", "order", "order", "bind", "bad"]))
    event: dict[str, Any] = {
        "type": "track",
        "event": "stock_order_submit",
        "event_id": draw(IDS),
        "time": NOW_MS - draw(st.sampled_from([0, 5, 5, 70_000, 9 * 86_400_000])),
        "identities": dict(draw(st.sampled_from(IDENTITY_SETS))),
        "properties": {"stock_code": "600519", "side": "buy", "quantity": 200, "price": 1688.5},
    }
    if kind == "bind":
        event.update(type="bind", identities={"anonymous_id": "dev-1", "login_id": "u1"}, properties={})
        del event["event"]
    elif kind == "bad":
        event["properties"]["side"] = "sideways"
    return event


BATCHES = st.lists(
    st.lists(events(), min_size=1, max_size=5).map(lambda evs: {"sent_at": NOW_MS, "events": evs}),
    min_size=1,
    max_size=4,
)


async def _run(batches: list[dict[str, Any]], directory: Path, *, fast: bool) -> list[bytes]:
    raw = LogWriter(directory / "raw", "w0")
    quarantine = LogWriter(directory / "quarantine", "w0")
    raw.open()
    quarantine.open()
    await raw.start()
    await quarantine.start()
    ingest = Ingest(
        JUDGE,
        raw=raw,
        quarantine=quarantine,
        seen=ScopedSeenIds(8 * 86400),
        quarantined=ScopedSeenIds(8 * 86400),
        metrics=Metrics(),
        clock=lambda: NOW_MS / 1000,
    )
    patch = pytest.MonkeyPatch()
    if not fast:
        patch.setattr(ingest, "_fresh", lambda valid, seen, pending: None)
        patch.setattr(heads_module, "_one_identity_set", lambda stored: None)
    try:
        answers = []
        for body in batches:
            batch = decode_batch(msgspec.msgpack.encode(body), "msgpack", DEFAULT_LIMITS)
            # Two requests at once with the same batch: the second waits for the first's commit.
            first, second = await asyncio.gather(
                ingest.ingest(batch, Principal("k", "key", trusted=False), "r1"),
                ingest.ingest(batch, Principal("k", "key", trusted=False), "r2"),
            )
            answers += [first.to_json(), second.to_json()]
    finally:
        patch.undo()
        await raw.close()
        await quarantine.close()
    return answers


def _log_bytes(directory: Path) -> list[bytes]:
    return [path.read_bytes() for log in ("raw", "quarantine") for path in segment_files(directory / log)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(BATCHES)
def test_ingest_gives_the_same_answers_and_logs_either_way(batches: list[dict[str, Any]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        fast_dir, slow_dir = Path(tmp) / "fast", Path(tmp) / "slow"
        fast = asyncio.run(_run(batches, fast_dir, fast=True))
        slow = asyncio.run(_run(batches, slow_dir, fast=False))
        assert fast == slow
        assert _log_bytes(fast_dir) == _log_bytes(slow_dir)


def test_the_fast_paths_are_taken_for_an_sdk_batch(tmp_path: Path) -> None:
    """Without this the comparison above could pass with the fast paths never running."""
    taken: list[str] = []
    fresh, summary = Ingest._fresh, heads_module._one_identity_set
    patch = pytest.MonkeyPatch()
    patch.setattr(Ingest, "_fresh", lambda self, *a: taken.append("fresh") or fresh(self, *a))
    patch.setattr(heads_module, "_one_identity_set", lambda stored: taken.append("summary") or summary(stored))
    device = SOURCES[0]
    evs = [
        {
            "type": "track",
            "event": "stock_order_submit",
            "event_id": f"{device}-{n}",
            "time": NOW_MS,
            "identities": {"anonymous_id": "dev-1"},
            "properties": {"stock_code": "600519", "side": "buy", "quantity": 200, "price": 1688.5},
        }
        for n in (1, 2, 3)
    ]
    try:
        answers = asyncio.run(_run([{"sent_at": NOW_MS, "events": evs}], tmp_path, fast=True))
    finally:
        patch.undo()
    assert taken == ["fresh", "summary", "fresh"]
    assert json.loads(answers[0])["accepted"] == 3
    assert json.loads(answers[1])["duplicate"] == 3
    frames, _ = read_frames(segment_files(tmp_path / "raw")[0])
    assert frames[0].head["obs"] == [[NOW_MS, f"{device}-1", "track", {"anonymous_id": "dev-1"}]]


STORED = st.lists(
    st.tuples(
        events(),
        st.integers(NOW_MS - 10, NOW_MS + 10),
        st.sampled_from([None, None, ["clock_skew"], ["future"]]),
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=200, deadline=None)
@given(STORED)
def test_the_one_identity_set_summary_makes_the_same_frame(items: list[Any]) -> None:
    stored = [(event, msgspec.Raw(msgspec.msgpack.encode(event)), t, flags) for event, t, flags in items]
    head = {"rid": "r", "at": NOW_MS}
    fast = build_accepted_frame(head, stored, {}, [])
    patch = pytest.MonkeyPatch()
    patch.setattr(heads_module, "_one_identity_set", lambda stored: None)
    try:
        slow = build_accepted_frame(head, stored, {}, [])
    finally:
        patch.undo()
    assert fast == slow


def test_an_all_accepted_response_is_the_general_one() -> None:
    for n in (1, 2, 50):
        accepted = Outcome(n, 0, 0, [{"status": "accepted"}] * n)
        assert json.loads(accepted.to_json()) == accepted.to_dict()
        assert accepted.to_json() == msgspec.json.encode(accepted.to_dict())
