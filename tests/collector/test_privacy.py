"""Privacy operations (docs/reliability.md, T19): delete a person, export a person, retention, suppression.

Real collectors on 127.0.0.1 fill real data directories; the commands run as
real subprocesses (`python -m maidian.collector.cli privacy ...`); every file
under the data directory is searched for the deleted person's canaries, as
raw bytes and with every segment's frames decompressed.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import random
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zstandard
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maidian.collector.cli import build_parser
from maidian.collector.cli.output import write_csv
from maidian.collector.http.app import make_app
from maidian.collector.identity.graph import IdentityGraph
from maidian.collector.privacy.operations import delete_person
from maidian.collector.read import export_events, person_events, quarantine_records, rebuild
from maidian.collector.service import Collector
from maidian.collector.store.catalog import Catalog
from maidian.collector.store.frames import encode_frame, read_frames, scan_frames, segment_files
from maidian.collector.store.heads import build_accepted_frame
from maidian.collector.store.ids import id_ranges
from maidian.collector.store.log import DataDir, LogWriter
from tests.collector.helpers import body_of, headers_for, make_config
from tests.conftest import ROOT

DAY_MS = 86_400_000
# Far enough in the past that 30-day retention removes it; the collector's clock is set there.
OLD_DAYS = 40


class Person:
    """One person's ids and canaries: strings found nowhere else, phone-like and ID-like."""

    def __init__(self, tag: str, n: int) -> None:
        self.tag = tag
        self.device = f"{n:x}" * 32
        self.anon = f"anon-{tag}-7f3c{n}e"
        self.anon2 = f"anon-{tag}-second-{n}"
        self.login = f"1380013{n}{n}{n}{n}"
        self.customer_no = f"11010190{n}{n}"
        self.id_card = f"ID11010119900{n}0{n}123X"
        self.seq = 0
        self.quarantined: list[tuple[str, int]] = []

    @property
    def canaries(self) -> list[str]:
        return [self.anon, self.anon2, self.login, self.customer_no, self.id_card]

    def event(self, t: int, *, login: bool = True, second: bool = False, **props: Any) -> dict[str, Any]:
        self.seq += 1
        identities = {"anonymous_id": self.anon2 if second else self.anon}
        if login:
            identities["login_id"] = self.login
            identities["customer_no"] = self.customer_no
        properties = {"stock_code": "600519", "side": "buy", "price": 12.5, "quantity": 100}
        properties["utm_source"] = self.id_card
        properties.update(props)
        return {
            "type": "track",
            "event": "stock_order_submit",
            "event_id": f"{self.device}-{self.seq}",
            "time": t,
            "identities": identities,
            "properties": properties,
        }

    def profile(self, t: int) -> dict[str, Any]:
        self.seq += 1
        return {
            "type": "profile_set",
            "event_id": f"{self.device}-{self.seq}",
            "time": t,
            "identities": {"login_id": self.login},
            "properties": {"tags": [self.id_card, self.login]},
        }


class Clock:
    """The collector's clock, which the test moves forward."""

    def __init__(self, now_s: float) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


class Ledger:
    """What the collector acknowledged, per event id: who it belongs to and its event time."""

    def __init__(self) -> None:
        self.accepted: dict[str, tuple[str, int]] = {}

    def of(self, tag: str, *, since_ms: int | None = None) -> set[str]:
        return {e for e, (t, ms) in self.accepted.items() if t == tag and (since_ms is None or ms >= since_ms)}


async def post(client: Any, events: list[tuple[Person, dict[str, Any]]], sent_at: int, ledger: Ledger) -> Any:
    resp = await client.post("/v1/batch", data=body_of([e for _p, e in events], sent_at=sent_at), headers=headers_for())
    assert resp.status == 200, await resp.text()
    result = await resp.json()
    for (person, event), outcome in zip(events, result["results"], strict=True):
        if outcome["status"] == "accepted":
            ledger.accepted[event["event_id"]] = (person.tag, event["time"])
        elif outcome["status"] == "quarantined":
            person.quarantined.append((event["event_id"], event["time"]))
    return result


def collector_client(data_dir: Path, clock: Clock, **storage: Any) -> TestClient[Any, Any]:
    config = make_config(data_dir, **storage)
    return TestClient(TestServer(make_app(config, Collector(config, clock=clock))))


def maidian(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "maidian.collector.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def file_texts(data_dir: Path) -> dict[str, bytes]:
    """Every file under the data directory as bytes, and each segment's frames decompressed too."""
    out: dict[str, bytes] = {}
    unzstd = zstandard.ZstdDecompressor()
    for path in sorted(p for p in data_dir.rglob("*") if p.is_file()):
        data = path.read_bytes()
        out[str(path.relative_to(data_dir))] = data
        if path.suffix == ".seg":
            frames, _end = scan_frames(data, path.name)
            plain = b"".join(unzstd.decompress(f.body) for f in frames)
            out[f"{path.relative_to(data_dir)} (decompressed)"] = plain
    return out


def hits(data_dir: Path, canaries: list[str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for name, data in file_texts(data_dir).items():
        here = [c for c in canaries if c.encode() in data]
        if here:
            found[name] = here
    return found


def stored_ids(data_dir: Path) -> set[str]:
    return {r["event_id"] for r in export_events(data_dir)}


async def fill(data_dir: Path, now_ms: int, people: list[Person], ledger: Ledger) -> None:
    """Old events (40 days ago, by the collector's clock then), then new ones (now), over several segments."""
    a = people[0]
    old_ms = now_ms - OLD_DAYS * DAY_MS
    clock = Clock(old_ms / 1000)
    client = collector_client(data_dir, clock, segment_max_bytes=2_500, segment_max_age_s=1e9)
    await client.start_server()
    try:
        for k in range(5):
            t = old_ms + k * 1000
            clock.now_s = t / 1000
            batch = [(p, p.event(t - 500, login=(k > 0))) for p in people]
            batch.append((a, a.event(t - 400, second=True)))
            if k == 2:
                batch.append((people[2], people[2].event(t - 300, side="hold")))  # old and quarantined
            await post(client, batch, t, ledger)
        clock.now_s = now_ms / 1000  # forty days later, the same process: one segment holds both
        for k in range(6):
            t = now_ms + k * 1000
            clock.now_s = t / 1000
            batch = [(p, p.event(t - 500, login=(k % 2 == 0 or k == 3), second=(k == 3))) for p in people]
            if k == 1:
                batch.append((a, a.profile(t - 300)))
                batch.append((a, a.event(t - 200, side="hold")))  # quarantined: enum
                batch.append((people[1], people[1].event(t - 100, utm_campaign='=HYPERLINK("http://x","y")')))
                batch.append((people[2], people[2].event(t - 50, side="hold")))  # new and quarantined
            await post(client, batch, t, ledger)
    finally:
        await client.close()


def catalog_state(data_dir: Path) -> tuple[Any, ...]:
    """The catalog's rows that follow from the logs (not the order they were indexed in)."""
    db = sqlite3.connect(data_dir / "catalog.sqlite")
    try:
        return tuple(
            sorted(db.execute(sql))
            for sql in (
                "SELECT type, value, segment, offset FROM identity_frames",
                "SELECT segment, offset, idx, event_id, name, rules FROM quarantine",
                "SELECT name, outcome, n FROM counts",
                "SELECT event_id, time, kind, identities FROM observations",
                "SELECT segment, offset, idx FROM replayed",
            )
        )
    finally:
        db.close()


def segment_times(data_dir: Path) -> list[tuple[int, int]]:
    out = []
    for path in segment_files(DataDir(data_dir).raw):
        frames, _ = read_frames(path)
        times = [t for f in frames if f.head.get("n") for t in (f.head["tmin"], f.head["tmax"])]
        if times:
            out.append((min(times), max(times)))
    return out


async def test_t19_privacy_operations(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    people = [Person("a", 1), Person("b", 2), Person("c", 3)]
    a, b, c = people
    ledger = Ledger()
    now_ms = int(time.time() * 1000)
    await fill(data_dir, now_ms, people, ledger)
    raw_segments = segment_files(DataDir(data_dir).raw)
    assert len(raw_segments) >= 3
    cutoff = now_ms - 30 * DAY_MS
    assert any(lo < cutoff <= hi for lo, hi in segment_times(data_dir)), "no segment straddles the cutoff"
    assert hits(data_dir, a.canaries), "the canaries must be found before the delete"
    assert len(ledger.of("a")) >= 10

    # delete(A), by its login id, with suppression
    done = maidian("privacy", "delete", "--data", str(data_dir), "--person", a.login, "--suppress")
    assert done.returncode == 0, done.stderr
    assert "quarantine: 1 records removed" in done.stdout, done.stdout
    assert hits(data_dir, a.canaries) == {}
    for other in (b, c):  # the search does find what is there
        assert {x for found in hits(data_dir, other.canaries).values() for x in found} == set(other.canaries)
    assert stored_ids(data_dir) == ledger.of("b") | ledger.of("c")
    # The cleaned catalog is what a rebuild from the rewritten logs gives.
    shutil.copytree(data_dir, tmp_path / "rebuilt")
    assert maidian("rebuild", "--data", str(tmp_path / "rebuilt")).returncode == 0
    assert catalog_state(data_dir) == catalog_state(tmp_path / "rebuilt")
    assert {r["event_id"] for r in quarantine_records(data_dir)} == {e for e, _ in c.quarantined}
    again = maidian("privacy", "delete", "--data", str(data_dir), "--person", a.login)
    assert again.returncode == 0, again.stderr
    assert "raw log: 0 events removed" in again.stdout, again.stdout

    # export(B): every acknowledged event of B, once, in time order; CSV escapes the formula
    out = tmp_path / "b.jsonl"
    done = maidian("privacy", "export", "--data", str(data_dir), "--person", b.anon, "--output", str(out))
    assert done.returncode == 0, done.stderr
    exported = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["event_id"] for r in exported} == ledger.of("b")
    assert len(exported) == len(ledger.of("b"))
    print(f"T19: {len(exported)} B events exported, {len(ledger.of('b'))} in the ledger")
    assert [r["time"] for r in exported] == sorted(r["time"] for r in exported)
    done = maidian("privacy", "export", "--data", str(data_dir), "--person", b.login, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert len(rows) == len(ledger.of("b"))
    planted = [r["properties.utm_campaign"] for r in rows if r["properties.utm_campaign"]]
    assert planted == ['\'=HYPERLINK("http://x","y")']
    done = maidian(
        "privacy", "export", "--data", str(data_dir), "--person", c.login, "--quarantined", "--format", "csv"
    )
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert [r["event_id"] for r in rows if r["quarantined"] == "true"] == [e for e, _t in c.quarantined]
    assert {r["event_id"] for r in rows if not r["quarantined"]} == ledger.of("c")
    assert all(json.loads(r["reasons"])[0]["rule"] == "enum" for r in rows if r["quarantined"])

    # suppression: a collector started afterwards answers A's new events and stores none of them
    before_q = [r for r in export_events(data_dir, quarantined=True) if r.get("quarantined")]
    clock = Clock(time.time())
    client = collector_client(data_dir, clock)
    await client.start_server()
    try:
        t = int(clock.now_s * 1000)
        new_a = [(a, a.event(t)), (a, a.event(t, login=False)), (a, a.event(t, side="hold"))]
        result = await post(client, [*new_a, (b, b.event(t))], t, ledger)
        assert [r["status"] for r in result["results"]] == ["accepted", "accepted", "quarantined", "accepted"]
        metrics = await (await client.get("/metrics")).text()
        assert "maidian_suppressed_events_total 3" in metrics
    finally:
        await client.close()
    for _a, event in new_a:
        ledger.accepted.pop(event["event_id"], None)
    assert hits(data_dir, a.canaries) == {}
    assert stored_ids(data_dir) == ledger.of("b") | ledger.of("c")
    assert [r for r in export_events(data_dir, quarantined=True) if r.get("quarantined")] == before_q

    # 30-day retention, with the clock forty days on from the old events
    before = list(export_events(data_dir, quarantined=True))
    done = maidian("privacy", "retention", "--data", str(data_dir), "--days", "30", "--now", str(now_ms))
    assert done.returncode == 0, done.stderr
    left = list(export_events(data_dir, quarantined=True))
    old = sum(1 for r in before if r["time"] < cutoff)
    print(f"T19: retention removed {old} of {old} old records, kept {len(left)} of {len(before) - old} newer")
    assert all(r["time"] >= cutoff for r in left)
    assert {r["event_id"] for r in left if not r.get("quarantined")} == (
        ledger.of("b", since_ms=cutoff) | ledger.of("c", since_ms=cutoff)
    )
    assert ledger.of("b", since_ms=cutoff) < ledger.of("b")  # something old was there to remove
    quarantined = [r for r in before if r.get("quarantined")]
    assert len(quarantined) == 2  # C's: one old, one new (A's went with A)
    assert [r for r in left if r.get("quarantined")] == [r for r in quarantined if r["time"] >= cutoff]
    kept = catalog_state(data_dir)
    assert maidian("rebuild", "--data", str(data_dir)).returncode == 0
    rebuilt = catalog_state(data_dir)
    # Identity observations of removed events stay (the graph keeps its links); the rest is what a rebuild gives.
    assert kept[:3] + kept[4:] == rebuilt[:3] + rebuilt[4:]
    assert set(rebuilt[3]) < set(kept[3])
    assert {r["event_id"] for r in person_events(data_dir, c.anon)} == ledger.of("c", since_ms=cutoff)


def test_delete_refuses_while_a_collector_holds_the_data_directory(tmp_path: Path) -> None:
    data = DataDir(tmp_path / "data").create()
    writer = LogWriter(data.raw, "w0")
    writer.open()
    try:
        done = maidian("privacy", "delete", "--data", str(data.root), "--person", "anon-x")
        assert done.returncode == 2
        assert "stop it first" in done.stderr
    finally:
        writer.close_sync()


def test_the_documented_privacy_commands_parse() -> None:
    text = (ROOT / "docs" / "collector.md").read_text("utf-8")
    lines = [line for line in text.splitlines() if line.startswith("maidian privacy ")]
    assert {line.split()[2] for line in lines} == {"delete", "export", "retention"}
    for line in lines:
        args = build_parser().parse_args(line.split()[1:])
        assert args.handler is not None, line


def test_csv_escapes_every_formula_start() -> None:
    records = [
        {"event_id": f"e{i}", "time": i, "properties": {"v": v, "n": -5, "nested": {"k": "@x"}}}
        for i, v in enumerate(["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx", "plain"])
    ]
    out = io.StringIO()
    write_csv(records, out)
    rows = list(csv.reader(io.StringIO(out.getvalue())))
    header = rows[0]
    values = [r[header.index("properties.v")] for r in rows[1:]]
    assert values == ["'=1+1", "'+1", "'-1", "'@SUM(A1)", "'\tx", "'\rx", "plain"]
    assert {r[header.index("properties.n")] for r in rows[1:]} == {"-5"}  # numbers are not formulas
    assert {r[header.index("properties.nested.k")] for r in rows[1:]} == {"'@x"}
    assert header[:3] == ["event_id", "type", "event"]


async def test_sigkill_during_delete_then_rerun_completes(tmp_path: Path) -> None:
    """Delete killed at random moments of its work, each time on a fresh copy; then a re-run completes it."""
    original = tmp_path / "data"
    people = [Person("a", 1), Person("b", 2), Person("c", 3)]
    a = people[0]
    ledger = Ledger()
    await fill(original, int(time.time() * 1000), people, ledger)
    cmd = [sys.executable, "-m", "maidian.collector.cli", "privacy", "delete", "--person", a.anon, "--data"]
    started = time.perf_counter()
    imports = "import maidian.collector.cli, maidian.collector.privacy.operations"
    subprocess.run([sys.executable, "-c", imports], check=True)
    startup_s = time.perf_counter() - started
    shutil.copytree(original, tmp_path / "timed")
    started = time.perf_counter()
    subprocess.run([*cmd, str(tmp_path / "timed")], cwd=ROOT, check=True, capture_output=True)
    whole_s = time.perf_counter() - started
    rng = random.Random(19)
    killed = partial = 0
    for n in range(4):
        data_dir = tmp_path / f"run{n}"
        shutil.copytree(original, data_dir)
        inodes = {p: p.stat().st_ino for p in segment_files(DataDir(data_dir).raw)}
        proc = subprocess.Popen([*cmd, str(data_dir)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if n % 2 == 0:
            await asyncio.sleep(rng.uniform(startup_s, whole_s))
        else:  # right after the first segment is swapped in: the middle of the work, whatever the load
            deadline = time.monotonic() + 30
            while proc.poll() is None and time.monotonic() < deadline:
                if any(p.stat().st_ino != ino for p, ino in inodes.items()):
                    break
                await asyncio.sleep(0.001)
        if proc.poll() is None:
            proc.kill()
            killed += 1
        proc.wait(30)
        # Whatever the moment, every segment is whole (old or new): readers see every frame, none torn.
        for directory in (DataDir(data_dir).raw, DataDir(data_dir).quarantine):
            for path in segment_files(directory):
                _frames, end = read_frames(path)
                assert end == path.stat().st_size, path
        assert stored_ids(data_dir) >= ledger.of("b") | ledger.of("c")
        partial += bool(hits(data_dir, a.canaries))
        done = maidian("privacy", "delete", "--data", str(data_dir), "--person", a.anon)
        assert done.returncode == 0, done.stderr
        assert hits(data_dir, a.canaries) == {}
        assert maidian("rebuild", "--data", str(data_dir)).returncode == 0
        assert stored_ids(data_dir) == ledger.of("b") | ledger.of("c")
        for p in people[1:]:
            assert {r["event_id"] for r in person_events(data_dir, p.login)} == ledger.of(p.tag)
    assert killed >= 1
    assert partial >= 1  # at least one kill left work for the re-run


async def test_sigkill_during_retention_then_rerun_completes(tmp_path: Path) -> None:
    """Retention killed right after its first segment change (a rewrite or a deletion); a re-run completes it."""
    data_dir = tmp_path / "data"
    people = [Person("a", 1), Person("b", 2), Person("c", 3)]
    ledger = Ledger()
    now_ms = int(time.time() * 1000)
    await fill(data_dir, now_ms, people, ledger)
    cutoff = now_ms - 30 * DAY_MS
    raw = DataDir(data_dir).raw
    inodes = {p: p.stat().st_ino for p in segment_files(raw)}
    cmd = [sys.executable, "-m", "maidian.collector.cli", "privacy", "retention", "--data", str(data_dir)]
    cmd += ["--days", "30", "--now", str(now_ms)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while proc.poll() is None and time.monotonic() < deadline:
        if any(not p.exists() or p.stat().st_ino != ino for p, ino in inodes.items()):
            proc.kill()
            break
        await asyncio.sleep(0.001)
    proc.wait(30)
    for directory in (raw, DataDir(data_dir).quarantine):
        for path in segment_files(directory):
            assert read_frames(path)[1] == path.stat().st_size, path
    assert stored_ids(data_dir) >= {e for e, (_tag, t) in ledger.accepted.items() if t >= cutoff}
    done = maidian("privacy", "retention", "--data", str(data_dir), "--days", "30", "--now", str(now_ms))
    assert done.returncode == 0, done.stderr
    assert stored_ids(data_dir) == {e for e, (_tag, t) in ledger.accepted.items() if t >= cutoff}
    assert maidian("rebuild", "--data", str(data_dir)).returncode == 0
    assert stored_ids(data_dir) == {e for e, (_tag, t) in ledger.accepted.items() if t >= cutoff}


def twin(event: dict[str, Any]) -> dict[str, Any]:
    """The event as a quarantined record would hold it: another id, a value the plan refuses."""
    return {**event, "event_id": event["event_id"] + "-q", "properties": {**event["properties"], "side": "hold"}}


def write_store(data: DataDir, events: list[dict[str, Any]], per_frame: int) -> None:
    """Each chunk of events as one raw frame, and their twins as one quarantine frame (JSON, as sent)."""
    writer = LogWriter(data.raw, "w0", segment_max_bytes=1_500)
    writer.open()
    quarantine = LogWriter(data.quarantine, "w0", segment_max_bytes=2_000)
    quarantine.open()
    try:
        for i in range(0, len(events), per_frame):
            chunk = events[i : i + per_frame]
            stored: list[tuple[dict[str, Any], Any, int, list[str] | None]] = [
                (e, msgspec.Raw(msgspec.msgpack.encode(e)), e["time"], None) for e in chunk
            ]
            ranges, opaque = id_ranges([e["event_id"] for e in chunk])
            head = {"rid": f"r{i}", "at": chunk[0]["time"], "src": "test", "kind": "write_key", "trusted": False}
            writer.append_sync(build_accepted_frame(head, stored, ranges, opaque))
            twins = [twin(e) for e in chunk]
            summary = [[t["event_id"], t["event"], ["enum"]] for t in twins]
            q_head = {**head, "n": len(twins), "seq": {}, "oid": [t["event_id"] for t in twins], "q": summary}
            body = {
                "e": [json.dumps(t).encode() for t in twins],
                "t": [t["time"] for t in twins],
                "r": [[{"rule": "enum"}] for _ in twins],
            }
            quarantine.append_sync(encode_frame({**q_head, "fmt": "json"}, body))
    finally:
        writer.close_sync()
        quarantine.close_sync()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    owners=st.lists(st.integers(0, 3), min_size=1, max_size=30),
    per_frame=st.integers(1, 6),
    victim=st.integers(0, 3),
    by_login=st.booleans(),
)
def test_delete_leaves_exactly_the_others_events(
    tmp_path_factory: pytest.TempPathFactory, owners: list[int], per_frame: int, victim: int, by_login: bool
) -> None:
    data = DataDir(tmp_path_factory.mktemp("store")).create()
    people = [Person(t, n + 1) for n, t in enumerate("pqrs")]
    events = []
    for k, owner in enumerate(owners):
        events.append(people[owner].event(1_763_800_000_000 + k, login=k % 3 != 1))
    write_store(data, events, per_frame)
    target = people[victim]
    mine = [e for e, o in zip(events, owners, strict=True) if o == victim]
    # A login id no stored event carries names nobody: nothing is deleted then.
    known = not by_login or any("login_id" in e["identities"] for e in mine)
    expected = {e["event_id"] for e in events} - ({e["event_id"] for e in mine} if known else set())
    delete_person(data.root, target.login if by_login else target.anon)
    assert stored_ids(data.root) == expected
    quarantined = {r["event"]["event_id"] for r in export_events(data.root, quarantined=True) if r.get("quarantined")}
    assert quarantined == {e + "-q" for e in expected}
    if known:
        assert hits(data.root, target.canaries) == {}


@pytest.mark.parametrize("failing", ["catalog", "forget"])
def test_a_run_stopped_between_steps_is_completed_by_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """Segments rewritten but the catalog not cleaned, or the catalog cleaned but the graph not: a re-run finishes.

    A second login on A's device (refused: the device is A's) is someone else's: their event stays, with the
    device id it carries, and so does their login.
    """
    data = DataDir(tmp_path / "data").create()
    a, b = Person("a", 1), Person("b", 2)
    t0 = 1_763_800_000_000
    stranger = "13999990000"
    refused = {
        **a.event(t0 + 3, utm_source="branch-pad"),
        "identities": {"anonymous_id": a.anon, "login_id": stranger},
    }
    events = [a.event(t0), b.event(t0 + 1), a.event(t0 + 2, login=False), refused, b.event(t0 + 4)]
    write_store(data, events, 2)
    if failing == "catalog":
        monkeypatch.setattr(Catalog, "forget_removed", _fail)
    else:
        monkeypatch.setattr(IdentityGraph, "forget", _fail)
    with pytest.raises(RuntimeError):
        delete_person(data.root, a.login)
    monkeypatch.undo()
    delete_person(data.root, a.login)
    assert hits(data.root, [a.anon2, a.login, a.customer_no, a.id_card]) == {}
    assert stored_ids(data.root) == {events[1]["event_id"], refused["event_id"], events[4]["event_id"]}
    assert [e["event_id"] for e in person_events(data.root, stranger)] == [refused["event_id"]]
    shutil.copytree(data.root, tmp_path / "rebuilt")
    rebuild(tmp_path / "rebuilt")
    assert catalog_state(data.root) == catalog_state(tmp_path / "rebuilt")


def _fail(*_args: Any, **_kwargs: Any) -> Any:
    raise RuntimeError("stopped here")


def test_cleared_counts_are_printed(tmp_path: Path) -> None:
    data = DataDir(tmp_path / "data").create()
    p = Person("z", 9)
    write_store(data, [p.event(1_763_800_000_000 + k) for k in range(5)], 2)
    done = maidian("privacy", "delete", "--data", str(data.root), "--person", p.customer_no)
    assert done.returncode == 0, done.stderr
    assert "raw log: 5 events removed, 0 kept" in done.stdout
    assert stored_ids(data.root) == set()
