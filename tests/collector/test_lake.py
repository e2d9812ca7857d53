"""The lake: every report against a brute-force computation, and the writer's promises.

Persons come from the identity graph (a journey that crosses a login is one
person's), late events land in their date's partition, a merge the graph makes
after the rows were written shows in every report, a deleted person leaves
every report, and the files are plain Parquet that pyarrow reads alone.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maidian.collector.cli import main
from maidian.collector.lake import report as r
from maidian.collector.lake.engine import open_lake
from maidian.collector.lake.layout import LakeDir, LakeState
from maidian.collector.lake.schema import ddl
from maidian.collector.lake.writer import LakeError, build
from maidian.collector.privacy.operations import delete_person, retain
from maidian.tracking_plan import Plan
from tests.collector.lake_model import (
    DAY_MS,
    LAKE_PLAN_PATH,
    T0,
    bf_campaign,
    bf_channels,
    bf_funnel,
    bf_retention,
    bf_segment,
    event,
    lake_plan,
    rows_of,
    store,
)

PLAN = lake_plan()
OPEN = PLAN.funnels["open"]
SOURCES = ["抖音", "华为应用市场", "wechat"]
NAMES = ["app_page_view", "open_start", "open_verify", "open_submit", "bank_deposit_succeeded", "push_sent"]


# -- generated journeys ---------------------------------------------------------------------------------


@st.composite
def journeys(draw: st.DrawFn) -> list[list[dict[str, Any]]]:
    """Per person, batches of events: browsing as a device, maybe a login partway, maybe a shared device."""
    people = draw(st.integers(2, 7))
    batches: list[list[dict[str, Any]]] = []
    for p in range(people):
        anon = f"dev-{p}"
        login = f"U{p:04d}" if draw(st.booleans()) else None
        n = draw(st.integers(1, 9))
        login_at = draw(st.integers(0, n)) if login else n
        utm = draw(st.sampled_from([None, *SOURCES]))
        events = []
        for i in range(n):
            name = draw(st.sampled_from(NAMES))
            t = T0 + draw(st.integers(0, 9)) * DAY_MS + draw(st.integers(0, DAY_MS - 1))
            props: dict[str, Any] = {}
            if name == "open_verify":
                props["result"] = draw(st.sampled_from(["passed", "wrong_code"]))
            if name == "push_sent":
                props["campaign_id"] = draw(st.sampled_from(["c1", "c2"]))
            if i == 0 and utm is not None:
                props.update(utm_source=utm, utm_medium="cpc", utm_campaign="新春")
            ids = {"anonymous_id": anon} if i < login_at or login is None else {"anonymous_id": anon, "login_id": login}
            events.append(event(i + 1, p + 1, name, t, ids, props))
        if login is not None and draw(st.booleans()):
            province = draw(st.sampled_from(["浙江", "广东"]))
            t = T0 + draw(st.integers(0, 9)) * DAY_MS + draw(st.integers(0, DAY_MS - 1))
            events.append(event(n + 1, p + 1, "", t, {"login_id": login}, {"province": province}, kind="profile_set"))
        split = draw(st.integers(1, max(1, len(events))))
        batches += [events[:split], events[split:]]
    if people > 2 and draw(st.booleans()):
        # A second login on person 0's device: refused by the graph, attributed to that login's own person.
        t = T0 + draw(st.integers(0, 9)) * DAY_MS
        batches.append([event(1, 99, "open_start", t, {"anonymous_id": "dev-0", "login_id": "U9999"})])
    order = draw(st.permutations(range(len(batches))))
    return [batches[i] for i in order]


def _check_reports(data_dir: Path, plan: Plan, events: list[dict[str, Any]]) -> None:
    rows = rows_of(data_dir, plan, events)
    with open_lake(data_dir, plan) as lake:
        got = [row[2] for row in r.funnel(lake, OPEN).rows]
        assert got == bf_funnel(rows, OPEN)

        days = (1, 2, 3, 7)
        retention = r.retention(lake, days=days)
        expected = bf_retention(rows, "utm_source", days)
        got_retention = {}
        for row in retention.rows:
            got_retention[row[0]] = (row[1], [row[2 + 2 * i] for i in range(len(days))])
        assert got_retention == {g: (n, [a for a, _b in per]) for g, (n, per) in expected.items()}
        for row in retention.rows:
            _n, per = expected[row[0]]
            assert [row[3 + 2 * i] for i in range(len(days))] == [_rate(a, b) for a, b in per]

        success = ["open_submit", "bank_deposit_succeeded"]
        channels = {row[:3]: row[3:] for row in r.channels(lake, success=success).rows}
        want = bf_channels(rows, success)
        assert set(channels) == set(want)
        for key, (persons, counts, d1, d7) in want.items():
            got_row = channels[key]
            assert got_row[0] == persons
            assert [got_row[1 + 2 * i] for i in range(len(success))] == counts
            assert got_row[-2:] == (_rate(*d1), _rate(*d7))

        window_s = 3 * 86_400
        campaign = r.campaign(
            lake, exposure="push_sent", where={"campaign_id": "c1"}, conversion="open_submit", window_s=window_s
        )
        want_campaign = bf_campaign(rows, "push_sent", {"campaign_id": "c1"}, "open_submit", window_s * 1000)
        assert {row[0]: (row[1], row[2]) for row in campaign.rows} == want_campaign

        segment = r.segment(
            lake,
            did=[r.Did("open_start")],
            did_not=[r.Did("open_submit")],
            users=[r.UserCondition.parse("province=浙江")],
        )
        assert [row[0] for row in segment.rows] == bf_segment(rows, "open_start", "open_submit", "浙江")


def _rate(n: int, d: int) -> float | None:
    return None if d == 0 else round(n / d, 6)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=journeys(), passes=st.integers(1, 3))
def test_every_report_matches_brute_force_over_passes_late_events_and_logins(
    tmp_path_factory: pytest.TempPathFactory, batches: list[list[dict[str, Any]]], passes: int
) -> None:
    data_dir = tmp_path_factory.mktemp("lake")
    # The batches arrive in `passes` parts, a lake pass after each: logins merge histories after the fact.
    cuts = sorted(random.Random(len(batches)).sample(range(1, len(batches)), min(passes, len(batches)) - 1))
    cuts.append(len(batches))
    start = 0
    for cut in cuts:
        store(data_dir, batches[start:cut])
        build(data_dir, PLAN)
        start = cut
    _check_reports(data_dir, PLAN, [e for b in batches for e in b])


# -- the promises, one by one ---------------------------------------------------------------------------


def _journey_crossing_a_login(data_dir: Path) -> list[dict[str, Any]]:
    anon = {"anonymous_id": "dev-1"}
    both = {"anonymous_id": "dev-1", "login_id": "U0001"}
    first = [
        event(1, 1, "open_start", T0 + 1000, anon, {"entry": "push", "utm_source": "抖音"}),
        event(2, 1, "open_verify", T0 + 2000, anon, {"result": "passed"}),
    ]
    store(data_dir, [first])
    build(data_dir, PLAN)
    later = [event(3, 1, "open_submit", T0 + 3000, both)]
    store(data_dir, [later])
    return first + later


def test_a_funnel_across_a_login_is_one_persons_even_when_the_login_arrives_after_the_rows(tmp_path: Path) -> None:
    events = _journey_crossing_a_login(tmp_path)
    build(tmp_path, PLAN)
    with open_lake(tmp_path, PLAN) as lake:
        assert [row[2] for row in r.funnel(lake, OPEN).rows] == [1, 1, 1]
        device_funnel = r.adhoc_funnel([s.event for s in OPEN.steps], window_s=86_400, identity="anonymous_id")
        assert [row[2] for row in r.funnel(lake, device_funnel).rows] == [1, 1, 1]
        login_funnel = r.adhoc_funnel([s.event for s in OPEN.steps], window_s=86_400, identity="login_id")
        assert [row[2] for row in r.funnel(lake, login_funnel).rows] == [0, 0, 0]
        written = lake.rows("SELECT DISTINCT person_id_at_write, person_id FROM events ORDER BY 1")
    # The first pass wrote the device's own person; the view resolves every row to the login's.
    assert len({w["person_id_at_write"] for w in written}) == 2
    assert len({w["person_id"] for w in written}) == 1
    assert [row[2] for row in r.funnel(open_lake(tmp_path, PLAN), OPEN).rows] == bf_funnel(
        rows_of(tmp_path, PLAN, events), OPEN
    )


def test_a_late_event_lands_in_its_own_dates_partition(tmp_path: Path) -> None:
    today = [event(1, 1, "app_page_view", T0 + 5 * DAY_MS, {"anonymous_id": "d"})]
    store(tmp_path, [today])
    build(tmp_path, PLAN)
    late = [event(2, 1, "open_start", T0 + 1 * DAY_MS + 5, {"anonymous_id": "d"})]
    store(tmp_path, [late])
    built = build(tmp_path, PLAN)
    assert built.partitions == ["events/event_date=2026-01-06"]
    table = pq.read_table(tmp_path / "lake" / "events" / "event_date=2026-01-06")
    assert table["event_id"].to_pylist() == [late[0]["event_id"]]


def test_a_pass_resumes_from_its_checkpoint_and_a_cut_short_pass_leaves_nothing_behind(tmp_path: Path) -> None:
    store(tmp_path, [[event(i, 1, "app_page_view", T0 + i, {"anonymous_id": "d"}) for i in range(1, 4)]])
    build(tmp_path, PLAN)
    partition = tmp_path / "lake" / "events" / "event_date=2026-01-05"
    # What a pass killed before its checkpoint leaves: a file of the next pass, and a temporary file.
    stray = partition / "part-00000002-0001.parquet"
    stray.write_bytes((partition / "part-00000001-0001.parquet").read_bytes())
    (partition / "x.parquet.tmp").write_bytes(b"torn")
    again = build(tmp_path, PLAN)
    assert again.events == 0
    with open_lake(tmp_path, PLAN) as lake:
        assert lake.rows("SELECT count(*) AS n FROM events")[0]["n"] == 3
    assert not (partition / "x.parquet.tmp").exists()


def test_compaction_leaves_one_sorted_file_without_duplicates(tmp_path: Path) -> None:
    for i in range(1, 6):
        store(tmp_path, [[event(i, 1, "app_page_view", T0 + 1000 - i, {"anonymous_id": f"d{i % 2}"})]])
        build(tmp_path, PLAN, compact_files=3)
    # The same event stored twice (two collectors at one instant): one row after compaction.
    store(tmp_path, [[event(5, 1, "app_page_view", T0 + 995, {"anonymous_id": "d1"})]], writer="w1")
    build(tmp_path, PLAN, compact_all=True)
    partition = tmp_path / "lake" / "events" / "event_date=2026-01-05"
    files = sorted(p.name for p in partition.iterdir())
    assert len(files) == 1
    assert files[0].startswith("compact-")
    table = pq.read_table(partition / files[0])
    assert sorted(table["event_id"].to_pylist()) == [f"{1:032x}-{i}" for i in range(1, 6)]
    keys = table["identity_key"].to_pylist()
    assert keys == sorted(keys)
    assert LakeState.load(LakeDir.of(tmp_path)).compacting is None


def test_a_deleted_person_disappears_from_every_report_and_table(tmp_path: Path) -> None:
    events = _journey_crossing_a_login(tmp_path)
    other = [
        event(1, 2, "open_start", T0 + 10, {"anonymous_id": "dev-2"}, {"utm_source": "wechat"}),
        event(2, 2, "", T0 + 20, {"anonymous_id": "dev-2"}, {"province": "浙江"}, kind="profile_set"),
    ]
    store(tmp_path, [other, [event(9, 1, "", T0 + 30, {"login_id": "U0001"}, {"province": "浙江"}, "profile_set")]])
    build(tmp_path, PLAN)
    delete_person(tmp_path, "U0001", plan=PLAN)
    with open_lake(tmp_path, PLAN) as lake:
        values = {row["value"] for row in lake.rows("SELECT value FROM identities")}
        assert values == {"dev-2"}
        assert lake.rows("SELECT count(*) AS n FROM events WHERE anonymous_id = 'dev-1'")[0]["n"] == 0
        assert lake.rows("SELECT count(*) AS n FROM profiles WHERE login_id = 'U0001'")[0]["n"] == 0
        assert [row[2] for row in r.funnel(lake, OPEN).rows] == [1, 0, 0]
        assert len(r.segment(lake, users=[r.UserCondition.parse("province=浙江")]).rows) == 1
    remaining = [e for e in events + other if e["identities"].get("anonymous_id") == "dev-2"]
    _check_reports(tmp_path, PLAN, remaining)
    # A later pass brings nothing of them back.
    assert build(tmp_path, PLAN).events == 0


def test_retention_removes_old_rows_from_the_lake(tmp_path: Path) -> None:
    store(tmp_path, [[event(i, 1, "app_page_view", T0 + i * DAY_MS, {"anonymous_id": "d"}) for i in range(5)]])
    build(tmp_path, PLAN)
    retain(tmp_path, 2.5, now_ms=T0 + 4 * DAY_MS + 1, plan=PLAN)
    with open_lake(tmp_path, PLAN) as lake:
        dates = [row["event_date"] for row in lake.rows("SELECT event_date FROM events ORDER BY 1")]
    assert dates == [dt.date(2026, 1, 7), dt.date(2026, 1, 8), dt.date(2026, 1, 9)]
    assert not (tmp_path / "lake" / "events" / "event_date=2026-01-05").exists()


def test_the_files_are_plain_parquet_with_typed_columns_and_cji_intact(tmp_path: Path) -> None:
    props = {"utm_source": "抖音", "entry": "push", "undeclared": {"x": [1, "二"]}}
    store(
        tmp_path,
        [
            [
                event(1, 1, "open_start", T0, {"anonymous_id": "d"}, props),
                event(2, 1, "open_submit", T0 + 1, {"anonymous_id": "d"}, {"agreements": ["AG01", "协议2"]}),
                event(3, 1, "bank_deposit_succeeded", T0 + 2, {"anonymous_id": "d"}, {"amount": 12, "is_first": True}),
            ]
        ],
    )
    build(tmp_path, PLAN)
    import pyarrow as pa

    files = sorted((tmp_path / "lake" / "events").rglob("*.parquet"))
    table = pq.read_table(files[0])
    schema = table.schema
    assert schema.field("entry").type == pa.dictionary(pa.int32(), pa.string())
    assert schema.field("amount").type == pa.float64()
    assert schema.field("is_first").type == pa.bool_()
    assert schema.field("agreements").type == pa.list_(pa.string())
    assert schema.field("time").type == pa.timestamp("ms")
    rows = {row["event"]: row for row in table.to_pylist()}
    assert rows["open_start"]["utm_source"] == "抖音"
    assert json.loads(rows["open_start"]["extra"]) == {"undeclared": {"x": [1, "二"]}}
    assert rows["open_submit"]["agreements"] == ["AG01", "协议2"]
    assert rows["bank_deposit_succeeded"]["amount"] == 12.0
    identities = pq.read_table(tmp_path / "lake" / "identities.parquet").to_pylist()
    assert {(i["identity_type"], i["value"]) for i in identities} == {("anonymous_id", "d")}


def test_sql_is_read_only_and_person_lookup_goes_through_the_graph(tmp_path: Path) -> None:
    _journey_crossing_a_login(tmp_path)
    build(tmp_path, PLAN)
    with open_lake(tmp_path, PLAN) as lake:
        assert r.sql(lake, "SELECT count(*) AS n FROM events").rows == ((3,),)
        for statement in ("CREATE TABLE t AS SELECT 1", "COPY events_raw TO 'x.csv'", "SELECT 1; SELECT 2"):
            with pytest.raises(LakeError):
                r.sql(lake, statement)
        person = r.person(lake, "dev-1")
        assert [row[person.columns.index("event")] for row in person.rows] == [s.event for s in OPEN.steps]


def test_ddl_names_every_planned_column_for_each_engine() -> None:
    for engine in ("duckdb", "clickhouse", "postgres"):
        text = ddl(PLAN, engine)  # type: ignore[arg-type]
        for name in ("utm_source", "agreements", "province", "identity_key", "event_date"):
            assert name in text
    assert "ENGINE = Kafka" in ddl(PLAN, "clickhouse")
    import duckdb

    db = duckdb.connect()
    db.execute(ddl(PLAN, "duckdb"))
    assert "open" not in {r[0] for r in db.execute("SELECT column_name FROM (DESCRIBE events)").fetchall()}


def test_the_commands_build_and_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _journey_crossing_a_login(tmp_path)
    common = ["--data", str(tmp_path), "--plan", str(LAKE_PLAN_PATH)]
    assert main(["lake", "build", *common]) == 0
    assert json.loads(capsys.readouterr().out)["events"] == 1
    assert main(["report", "funnel", *common, "--name", "open", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [row["persons"] for row in doc["rows"]] == [1, 1, 1]
    assert main(["report", "retention", *common, "--csv", "--days", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "utm_source,persons,day1,day1_rate"
    out = tmp_path / "r.html"
    assert main(["report", "html", *common, "--out", str(out)]) == 0
    page = out.read_text("utf-8")
    assert "<svg" in page
    assert "抖音" in page
    assert "http" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert main(["report", "sql", *common, "SELECT '=HYPERLINK(1)' AS cell", "--csv"]) == 0
    assert capsys.readouterr().out.splitlines() == ["cell", "'=HYPERLINK(1)"]
    assert main(["report", "sql", *common, "DROP VIEW events"]) == 2
    assert main(["report", "segment", *common, "--did", "open_verify:result=wrong_code"]) == 1


def test_follow_runs_a_pass_per_interval_and_takes_what_arrived_between(tmp_path: Path) -> None:
    from maidian.collector.lake.writer import Built, follow

    store(tmp_path, [[event(1, 1, "app_page_view", T0, {"anonymous_id": "d"})]])
    seen: list[Built] = []

    def between(_seconds: float) -> None:
        # What the collector stores while the follower waits.
        store(tmp_path, [[event(len(seen) + 1, 2, "open_start", T0 + len(seen), {"anonymous_id": "e"})]])

    passes = follow(tmp_path, PLAN, interval_s=30, stop=lambda: len(seen) >= 3, report=seen.append, sleep=between)
    assert passes == 3
    assert [b.events for b in seen] == [1, 1, 1]
    with open_lake(tmp_path, PLAN) as lake:
        assert lake.rows("SELECT count(*) AS n FROM events")[0]["n"] == 3
