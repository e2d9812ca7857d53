"""Reading back: a person's whole sequence (before login too), exports, quarantine replay, rebuilds."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maidian.collector.cli import main
from maidian.collector.http.app import make_app
from maidian.collector.read import export_events, person_events, quarantine_records, replay_quarantine
from maidian.tracking_plan import parse_plan
from tests.collector.conftest import ClientFactory
from tests.collector.helpers import body_of, headers_for, login_event, make_config, now_ms, order, statuses
from tests.conftest import MINI_PLAN

A = "a" * 32
B = "b" * 32
C = "c" * 32


def story(t0: int) -> list[dict[str, Any]]:
    """Two devices of one customer (u-1), before and after login, and a stranger on a third device.

    Ten seconds apart: the corrected times of separate requests differ by their
    skew estimates (milliseconds here), so events closer than that may swap.
    """
    return [
        order(1, device=A, anon="anon-A", t=t0 + 10_000),  # before login
        order(2, device=A, anon="anon-A", t=t0 + 20_000),
        login_event(3, device=A, anon="anon-A", login="u-1", t=t0 + 30_000),
        order(4, device=A, anon="anon-A", login="u-1", t=t0 + 40_000),
        order(1, device=B, anon="anon-B", t=t0 + 50_000),  # second device, before login
        login_event(2, device=B, anon="anon-B", login="u-1", t=t0 + 60_000),
        order(1, device=C, anon="anon-C", t=t0 + 70_000),  # somebody else
    ]


def ids_of(records: list[dict[str, Any]]) -> list[str]:
    return [r["event_id"] for r in records]


async def post_all(client: Any, batches: list[list[dict[str, Any]]]) -> None:
    for batch in batches:
        resp = await client.post("/v1/batch", data=body_of(batch), headers=headers_for())
        assert resp.status == 200, await resp.text()


async def test_events_of_a_person_include_events_before_login(start: ClientFactory, data_dir: Path) -> None:
    events = story(now_ms() - 600_000)
    client = await start()
    await post_all(client, [events[4:], events[:4]])  # the second device and the stranger arrive first
    await client.close()
    expected = [f"{A}-1", f"{A}-2", f"{A}-3", f"{A}-4", f"{B}-1", f"{B}-2"]
    for identity in ("anon-A", "u-1", "anon-B"):
        records = person_events(data_dir, identity)
        assert ids_of(records) == expected, identity
        assert [r["time"] for r in records] == sorted(r["time"] for r in records)
    assert ids_of(person_events(data_dir, "anon-C")) == [f"{C}-1"]


async def test_events_command_prints_json_lines(
    start: ClientFactory, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client = await start()
    await post_all(client, [story(now_ms() - 600_000)])
    assert main(["events", "--data", str(data_dir), "--person", "anon-B", "--plan", str(MINI_PLAN)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 6
    assert {"event_id", "time", "device_time", "received_at", "source", "identities"} <= set(lines[0])
    assert lines[0]["source"] == "current"
    assert main(["events", "--data", str(data_dir), "--person", "nobody"]) == 1
    await client.close()


def run_app(data_dir: Path, batches: list[list[dict[str, Any]]]) -> None:
    async def go() -> None:
        client = TestClient(TestServer(make_app(make_config(data_dir))))
        await client.start_server()
        try:
            await post_all(client, batches)
        finally:
            await client.close()

    asyncio.run(go())


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), cuts=st.lists(st.integers(1, 6), max_size=3))
def test_any_arrival_order_gives_the_same_persons(tmp_path: Path, seed: int, cuts: list[int]) -> None:
    events = story(now_ms() - 600_000)
    random.Random(seed).shuffle(events)
    edges = sorted({0, *cuts, len(events)})
    batches = [events[a:b] for a, b in itertools.pairwise(edges) if events[a:b]]
    data_dir = tmp_path / f"data-{seed}-{'-'.join(map(str, cuts))}"
    run_app(data_dir, batches)
    person = ids_of(person_events(data_dir, "u-1"))
    assert person == [f"{A}-1", f"{A}-2", f"{A}-3", f"{A}-4", f"{B}-1", f"{B}-2"]
    assert ids_of(person_events(data_dir, "anon-C")) == [f"{C}-1"]


async def test_export_with_since_and_until(
    start: ClientFactory, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    t0 = now_ms() - 3_600_000
    client = await start()
    await post_all(client, [[order(n, t=t0 + n * 1000) for n in range(1, 11)], [order(11, side="hold")]])
    await client.close()
    assert len(list(export_events(data_dir))) == 10
    window = list(export_events(data_dir, since_ms=t0 + 3000, until_ms=t0 + 6000))
    assert [r["device_time"] for r in window] == [t0 + 3000, t0 + 4000, t0 + 5000]
    assert main(["export", "--data", str(data_dir), "--since", str(t0 + 9000), "--format", "jsonl"]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 2
    assert captured.err == ""  # no progress display when stderr is not a terminal
    everything = list(export_events(data_dir, quarantined=True))
    assert sum(1 for r in everything if r.get("quarantined")) == 1


def fixed_plan(tmp_path: Path) -> Path:
    doc = json.loads(MINI_PLAN.read_text())
    doc["version"] = "1.1.0"
    doc["events"]["stock_order_submit"]["properties"]["properties"]["side"]["enum"] += ["hold"]
    doc["events"]["stock_order_cancel"] = {
        "description": "The user cancels an order.",
        "owner": "stock-team",
        "properties": {"type": "object", "properties": {}},
    }
    path = tmp_path / "plan-1.1.json"
    path.write_text(json.dumps(doc))
    return path


async def test_quarantine_list_and_replay_once(
    start: ClientFactory, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cancel = order(3)
    cancel["event"] = "stock_order_cancel"
    cancel["properties"] = {}
    client = await start()
    await post_all(client, [[order(1), order(2, side="hold"), cancel, order(4, price=-1)]])
    await client.close()
    listed = quarantine_records(data_dir)
    assert [r["rules"] for r in listed] == [["enum"], ["unknown_event"], ["range"]]
    assert not any(r["replayed"] for r in listed)
    assert main(["quarantine", "list", "--data", str(data_dir), "--rule", "enum", "--format", "json"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1

    plan_path = fixed_plan(tmp_path)
    report = replay_quarantine(data_dir, parse_plan(plan_path.read_text()))
    assert (report.moved, report.still_invalid) == (2, 1)
    again = replay_quarantine(data_dir, parse_plan(plan_path.read_text()))
    assert (again.moved, again.already_replayed, again.still_invalid) == (0, 2, 1)
    assert main(["quarantine", "replay", "--data", str(data_dir), "--plan", str(plan_path)]) == 0
    assert "moved 0 events" in capsys.readouterr().out
    ids = sorted(r["event_id"] for r in export_events(data_dir))
    assert ids == sorted([order(1)["event_id"], order(2)["event_id"], cancel["event_id"]])
    assert [r["replayed"] for r in quarantine_records(data_dir)] == [True, True, False]
    # A collector on the fixed plan knows the replayed ids: a late retry is a duplicate.
    client = await start(plan=plan_path)
    resp = await client.post("/v1/batch", data=body_of([order(2, side="hold")]), headers=headers_for())
    assert statuses(await resp.json()) == ["duplicate"]
    await client.close()


async def test_rebuild(start: ClientFactory, data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    client = await start()
    await post_all(client, [story(now_ms() - 600_000), [order(9, side="hold")]])
    await client.close()
    assert main(["rebuild", "--data", str(data_dir)]) == 0
    assert "7 accepted, 1 quarantined" in capsys.readouterr().out
    assert ids_of(person_events(data_dir, "u-1"))[0] == f"{A}-1"


def test_reading_something_that_is_not_a_data_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "--data", str(tmp_path)]) == 2
    assert "not a maidian data directory" in capsys.readouterr().err


async def test_export_shows_progress_on_a_terminal(
    start: ClientFactory, data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import os
    import pty
    import sys

    client = await start()
    await post_all(client, [[order(n) for n in range(1, 21)]])
    await client.close()
    master, slave = pty.openpty()
    with os.fdopen(slave, "w") as terminal:
        monkeypatch.setattr(sys, "stderr", terminal)
        assert main(["export", "--data", str(data_dir)]) == 0
    chunks = []
    while True:  # one read may return part of it; a closed terminal reads as EIO (Linux) or b""
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    shown = b"".join(chunks).decode()
    os.close(master)
    assert "exporting: 100%" in shown
    assert "exported 20 events" in shown
    assert len(capsys.readouterr().out.splitlines()) == 20
