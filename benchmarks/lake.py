"""What the lake costs and how fast its reports answer, on events shaped like the example plan.

    .venv/bin/python benchmarks/lake.py --events 1000000 --data /tmp/lake-1m     # generate (once), build, report
    .venv/bin/python benchmarks/lake.py --events 10000000 --data /tmp/lake-10m --runs 3
    .venv/bin/python benchmarks/lake.py --quick                                  # 50k events, a smoke test

The generator (`generate`) writes accepted frames into a data directory as the
collector would, one frame per app session: persons arrive from a UTM channel
(douyin, huawei_store, ...), browse anonymously (quotes, news, fund pages),
register and log in partway (the login merges the device's history), walk
the 12-step account-opening funnel with the drop-offs of the case studies
(ID photo, face check, video witness lose the most), get reviewed and
activated by the backend, deposit, receive pushes of two campaigns, and come
back on later days with falling probability. 2% of sessions arrive late (an
offline phone), and a profile_set follows each registration. About 45 events
per person.

Measured:
- the lake write rate: events per second of one pass's CPU time (the catalog
  and identity graph are brought up to date first, as a running collector
  keeps them), and the bytes per event on disk (events, profiles, identities);
- every report's time (median of --runs, each in a fresh process after one
  warm-up) and the process's peak RSS, beside the floor: the same question
  as a bare DuckDB query over the same files with the person column as
  written (no identity resolution, no maidian code);
- the cost of resolving persons at query time: the funnel through the
  `identities` join against the stored `person_id_at_write`;
- Polars (and chDB when installed) on the same files for the funnel's first
  steps and retention, for the engine choice.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from maidian.collector.pipeline.dedup import id_ranges
from maidian.collector.pipeline.ingest import build_accepted_frame
from maidian.collector.store.catalog import Catalog
from maidian.collector.store.feed import IdentityFeed
from maidian.collector.store.log import DataDir, LogWriter
from maidian.tracking_plan import Plan, load_plan

ROOT = Path(__file__).resolve().parents[1]
PLAN_PATH = ROOT / "examples" / "securities_app.plan.json"
DAY_MS = 86_400_000
T0 = 1_767_225_600_000  # 2026-01-01 00:00 UTC
DAYS = 30
CHANNELS = [
    ("douyin", "cpc", "spring_open", 0.24),
    ("huawei_store", "store", "none", 0.2),
    ("xiaomi_store", "store", "none", 0.12),
    ("appstore", "store", "none", 0.14),
    ("wechat", "social", "invite_2026", 0.12),
    ("baidu", "sem", "brand_kw", 0.1),
    ("branch_0571", "offline", "branch_qr", 0.08),
]
BROWSE = [
    "stock_quote_view",
    "news_feed_view",
    "news_article_view",
    "fund_list_view",
    "fund_detail_view",
    "community_feed_view",
    "app_page_view",
    "marketing_banner_view",
    "stock_position_view",
    "p2p_product_list_view",
]
OPEN_STEPS = [
    "account_open_start",
    "account_open_mobile_verify_submit",
    "account_open_id_card_upload",
    "account_open_face_verify_submit",
    "account_open_personal_info_submit",
    "account_open_risk_test_submit",
    "account_open_bank_card_bind_submit",
    "account_open_agreement_sign_submit",
    "account_open_video_witness_finish",
    "account_open_application_submit",
    "account_open_review_completed",
    "account_activated",
]
# Of those who reach a step, the share who pass it (ID photo, face check and video witness lose the most).
PASS_RATE = [0.92, 0.9, 0.75, 0.8, 0.93, 0.95, 0.85, 0.97, 0.72, 0.96, 0.93, 0.98]
WORDS = ["贵州茅台", "宁德时代", "腾讯控股", "招商银行", "平安", "稳健", "科技", "医药", "红利", "中证500"]


class Values:
    """Property values from a schema: enums and consts as declared, ids unique, other strings from a small pool."""

    def __init__(self, plan: Plan, rng: random.Random) -> None:
        self.plan = plan
        self.rng = rng
        self.templates: dict[str, list[tuple[str, Any]]] = {}
        self.counter = 0

    def template(self, name: str) -> list[tuple[str, Any]]:
        found = self.templates.get(name)
        if found is None:
            spec = self.plan.events[name]
            required = set(spec.required)
            found = [(p, s) for p, s in spec.properties.items() if p in required or len(p) % 3 == 0]
            self.templates[name] = found
        return found

    def value(self, prop: str, schema: dict[str, Any]) -> Any:
        rng = self.rng
        if "const" in schema:
            return schema["const"]
        if "enum" in schema:
            return rng.choice(schema["enum"])
        kind = schema.get("type")
        if kind == "integer":
            lo = int(schema.get("minimum", 0))
            return rng.randint(lo, max(lo, min(int(schema.get("maximum", lo + 500)), lo + 500)))
        if kind == "number":
            return round(rng.uniform(float(schema.get("minimum", 0)), 5000.0), 2)
        if kind == "boolean":
            return rng.random() < 0.5
        if kind == "array":
            return [rng.choice(WORDS) for _ in range(rng.randint(1, 2))]
        if kind == "string":
            if prop.endswith("_id") or schema.get("format") == "uuid":
                self.counter += 1
                return f"{prop[:3].upper()}{self.counter:012d}"
            if schema.get("format") == "date":
                return f"2026-01-{rng.randint(1, 28):02d}"
            if "name" in prop:
                return rng.choice(WORDS)
            return f"{prop[:4]}{rng.randint(0, 40)}"
        return None

    def properties(self, name: str, **fixed: Any) -> dict[str, Any]:
        out = {p: self.value(p, s) for p, s in self.template(name) if p not in fixed}
        out = {k: v for k, v in out.items() if v is not None}
        out.update(fixed)
        return out


def _channel(rng: random.Random) -> tuple[str, str, str]:
    x = rng.random()
    for source, medium, campaign, weight in CHANNELS:
        x -= weight
        if x <= 0:
            return source, medium, campaign
    return CHANNELS[0][:3]


def person_sessions(p: int, rng: random.Random, values: Values) -> list[list[dict[str, Any]]]:
    """One person's sessions: each a list of wire events (the frame an SDK batch makes)."""
    anon = f"{rng.getrandbits(64):016x}{p:016x}"
    source = f"{p:032x}"
    seq = 0
    login = f"U{p:010d}" if rng.random() < 0.62 else None
    source_utm, medium, campaign = _channel(rng)
    day0 = rng.randrange(DAYS)
    t = T0 + day0 * DAY_MS + rng.randrange(8 * 3_600_000, 22 * 3_600_000)
    sessions: list[list[dict[str, Any]]] = []
    logged_in = False

    def add(batch: list[dict[str, Any]], name: str, when: int, props: dict[str, Any], server: bool = False) -> None:
        nonlocal seq
        seq += 1
        ids = {"login_id": login} if server and login else {"anonymous_id": anon}
        if logged_in and not server and login:
            ids = {"anonymous_id": anon, "login_id": login}
        batch.append(
            {
                "type": "track",
                "event": name,
                "event_id": f"{source}-{seq}",
                "time": when,
                "identities": ids,
                "properties": props,
            }
        )

    day = day0
    first = True
    opening = login is not None and rng.random() < 0.55
    while day < DAYS:
        batch: list[dict[str, Any]] = []
        utm = {"utm_source": source_utm, "utm_medium": medium, "utm_campaign": campaign} if first else {}
        for i in range(rng.randint(5, 14)):
            t += rng.randint(5_000, 90_000)
            name = rng.choice(BROWSE)
            add(batch, name, t, values.properties(name, **(utm if i == 0 else {})))
        if login and not logged_in and (rng.random() < 0.6 or not first):
            logged_in = True
            t += 20_000
            add(batch, "user_register_completed", t, values.properties("user_register_completed"), server=True)
            add(batch, "user_login_succeeded", t + 1000, values.properties("user_login_succeeded"), server=True)
            t += 2000
            add(batch, "stock_quote_view", t, values.properties("stock_quote_view"))
            sessions.append(batch)
            batch = []
            profile = {
                "account_status": "registered",
                "province": rng.choice(["浙江", "广东", "上海", "北京"]),
                "registration_channel": source_utm,
                "registered_at": f"2026-01-{day + 1:02d}",
            }
            sessions.append(
                [
                    {
                        "type": "profile_set",
                        "event_id": f"{source}-p{day}",
                        "time": t,
                        "identities": {"login_id": login},
                        "properties": profile,
                    }
                ]
            )
        if logged_in and opening:
            opening = False
            for step, name in enumerate(OPEN_STEPS):
                t += rng.randint(20_000, 240_000) if step < 10 else rng.randint(3_600_000, 30 * 3_600_000)
                props = values.properties(name)
                if "result" in props:
                    props["result"] = "passed"
                if "review_result" in props:
                    props["review_result"] = "approved"
                add(batch, name, t, props, server=step >= 10)
                if rng.random() > PASS_RATE[step]:
                    if "result" in props:
                        props["result"] = values.value("result", {"enum": ["timeout", "retry_needed"]})
                    break
            else:
                if rng.random() < 0.6:
                    t += rng.randint(3_600_000, 3 * DAY_MS)
                    add(
                        batch,
                        "bank_transfer_page_view",
                        t,
                        values.properties("bank_transfer_page_view", direction="deposit"),
                    )
                    add(batch, "bank_deposit_submit", t + 60_000, values.properties("bank_deposit_submit"))
                    add(
                        batch,
                        "bank_deposit_succeeded",
                        t + 90_000,
                        values.properties("bank_deposit_succeeded", is_first_deposit=True),
                        server=True,
                    )
        if logged_in and rng.random() < 0.25:
            push_t = t + rng.randint(3_600_000, DAY_MS)
            campaign_id = rng.choice(["CP2026SPRING", "CP2026FUND"])
            add(batch, "push_sent", push_t, values.properties("push_sent", campaign_id=campaign_id), server=True)
            if rng.random() < 0.3:
                add(batch, "push_opened", push_t + 60_000, values.properties("push_opened", campaign_id=campaign_id))
        sessions.append(batch)
        first = False
        if rng.random() > 0.55:
            break
        gap = 1 if rng.random() < 0.5 else rng.randint(2, 7)
        day += gap
        t = T0 + day * DAY_MS + rng.randrange(8 * 3_600_000, 22 * 3_600_000)
    return sessions


def generate(data_dir: Path, events: int, seed: int = 2026) -> int:
    """Write about `events` events as accepted frames; returns how many were written."""
    plan = load_plan(PLAN_PATH)
    rng = random.Random(seed)
    values = Values(plan, rng)
    data = DataDir(data_dir).create()
    writer = LogWriter(data.raw, "w0", durability="write")
    writer.open()
    written = p = 0
    late: list[list[dict[str, Any]]] = []
    try:
        while written < events:
            for batch in person_sessions(p, rng, values):
                if not batch:
                    continue
                if rng.random() < 0.02:
                    late.append(batch)  # an offline phone: it arrives after everything else
                    continue
                written += _write(writer, batch)
            p += 1
        for batch in late:
            written += _write(writer, batch)
    finally:
        writer.close_sync()
    return written


def _write(writer: LogWriter, batch: list[dict[str, Any]]) -> int:
    stored = [(e, e, e["time"], None) for e in batch]
    ranges, opaque = id_ranges([e["event_id"] for e in batch])
    trusted = all("anonymous_id" not in e["identities"] for e in batch)
    head = {
        "at": max(e["time"] for e in batch) + 2000,
        "src": "orders" if trusted else "ios-2026",
        "kind": "key",
        "trusted": trusted,
    }
    writer.append(build_accepted_frame(head, stored, ranges, opaque))  # "write" durability: no fsync per frame
    return len(batch)


# -- measuring ----------------------------------------------------------------------------------------


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def measure_build(data_dir: Path) -> dict[str, Any]:
    from maidian.collector.lake.writer import build

    plan = load_plan(PLAN_PATH)
    data = DataDir(data_dir)
    catalog = Catalog(data)
    feed = IdentityFeed.for_plan(data, plan)
    started = time.perf_counter()
    catalog.catch_up(feed)
    catch_up_s = time.perf_counter() - started
    catalog.close()
    feed.close()
    cpu0 = time.process_time()
    wall0 = time.perf_counter()
    built = build(data_dir, plan, full=True, compact_all=True)
    cpu = time.process_time() - cpu0
    wall = time.perf_counter() - wall0
    lake = data_dir / "lake"
    size = _size(lake / "events") + _size(lake / "profiles") + (lake / "identities.parquet").stat().st_size
    n = built.events + built.profiles
    return {
        "events": n,
        "catalog_catch_up_s": round(catch_up_s, 2),
        "lake_pass_wall_s": round(wall, 2),
        "lake_pass_cpu_s": round(cpu, 2),
        "events_per_cpu_s": round(n / cpu),
        "bytes_per_event": round(size / n, 1),
        "events_bytes_per_event": round(_size(lake / "events") / max(1, built.events), 1),
        "raw_log_bytes_per_event": round(_size(data_dir / "raw") / n, 1),
        "identities": built.identities,
        "files": sum(1 for _ in (lake / "events").rglob("*.parquet")),
    }


def some_login(data_dir: Path) -> str:
    """A login id of the lake (the person lookups' subject)."""
    import pyarrow.parquet as pq

    table = pq.read_table(data_dir / "lake" / "identities.parquet", columns=["identity_type", "value"])
    logins = sorted(v for t, v in zip(*(c.to_pylist() for c in table.columns), strict=True) if t == "login_id")
    return logins[len(logins) // 2]


def _bare_person_sql(lake: Path) -> str:
    """The floor of a person lookup: the login's rows and its devices' rows, straight from the files."""
    events = f"read_parquet('{lake}/events/*/*.parquet', hive_partitioning = true)"
    login = some_login(lake.parent)
    return (
        f"SELECT * FROM {events} WHERE login_id = '{login}'"
        f" OR anonymous_id IN (SELECT anonymous_id FROM {events} WHERE login_id = '{login}')"
    )


def _bare_connection(lake: Path) -> Any:
    """DuckDB over the same files with no maidian code: persons as written, no identity resolution."""
    import duckdb

    db = duckdb.connect()
    db.execute("SET parquet_metadata_cache = true")
    files = f"'{lake}/events/*/*.parquet'"
    db.execute(f"CREATE VIEW events_raw AS SELECT * FROM read_parquet({files}, hive_partitioning = true)")
    db.execute(
        "CREATE VIEW events AS SELECT *, person_id_at_write AS person_id,"
        " (hash(person_id_at_write) >> 1)::BIGINT AS person_key FROM events_raw"
    )
    return db


def run_report(data_dir: Path, name: str, runs: int, bare: bool) -> dict[str, Any]:
    """Inside a fresh process: one warm-up, then `runs` timed runs; the median and the peak RSS."""
    import datetime as dt

    from maidian.collector.lake import report as r
    from maidian.collector.lake.engine import open_lake

    plan = load_plan(PLAN_PATH)
    lake = open_lake(data_dir, plan)

    def once() -> Any:
        if name == "funnel":
            return r.funnel(lake, plan.funnels["account_open"])
        if name == "retention":
            return r.retention(lake)
        if name == "channels":
            return r.channels(lake, success=["account_activated", "bank_deposit_succeeded"])
        if name == "campaign":
            return r.campaign(
                lake, exposure="push_sent", where={"campaign_id": "CP2026SPRING"}, conversion="bank_deposit_succeeded"
            )
        if name == "segment":
            return r.segment(
                lake,
                did=[r.Did("fund_detail_view", since=dt.date(2026, 1, 1), until=dt.date(2026, 1, 31))],
                did_not=[r.Did("bank_deposit_succeeded")],
                users=[
                    r.UserCondition("registered_at", ">=", "2026-01-01"),
                    r.UserCondition("registered_at", "<=", "2026-01-31"),
                ],
            )
        if name == "person":
            return r.person(lake, some_login(data_dir))
        raise SystemExit(f"unknown report {name}")

    run = once
    if bare:
        db = _bare_connection(data_dir / "lake")
        if name == "person":
            text, params = _bare_person_sql(data_dir / "lake"), {}
        else:
            once()
            assert lake.last_query is not None
            text, params = lake.last_query
        lake.close()

        def run() -> Any:
            return db.execute(text, params).fetchall()

    run()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - started)
    rows = len(result.rows) if hasattr(result, "rows") else len(result)
    peak_mb = _peak_rss_mb()
    return {
        "report": name,
        "bare": bare,
        "seconds": round(statistics.median(times), 3),
        "rows": rows,
        "peak_rss_mb": round(peak_mb),
    }


def _peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM: unlike ru_maxrss, not inherited from the parent)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_engines(data_dir: Path) -> dict[str, Any]:
    """Polars (and chDB when installed) on the same files: the first three funnel steps and day-1 retention."""
    import duckdb

    out: dict[str, Any] = {}
    glob = str(data_dir / "lake" / "events" / "*" / "*.parquet")
    db = duckdb.connect()
    steps = ", ".join(f"'{e}'" for e in OPEN_STEPS[:3])
    started = time.perf_counter()
    db.execute(
        f"SELECT person_id_at_write, event, min(time) FROM read_parquet('{glob}', hive_partitioning = true)"
        f" WHERE event IN ({steps}) GROUP BY 1, 2"
    ).fetchall()
    out["duckdb_funnel_first_touch_s"] = round(time.perf_counter() - started, 3)
    started = time.perf_counter()
    db.execute(
        f"WITH a AS (SELECT DISTINCT person_id_at_write AS p, event_date AS d FROM read_parquet('{glob}',"
        " hive_partitioning = true)), f AS (SELECT p, min(d) AS d0 FROM a GROUP BY 1)"
        " SELECT count(DISTINCT a.p) FROM a JOIN f USING (p) WHERE a.d = f.d0 + 1"
    ).fetchall()
    out["duckdb_retention_day1_s"] = round(time.perf_counter() - started, 3)
    try:
        import polars as pl
    except ImportError:
        out["polars"] = "not installed"
    else:
        started = time.perf_counter()
        ev = pl.scan_parquet(glob, hive_partitioning=True)
        firsts = (
            ev.filter(pl.col("event").cast(pl.String).is_in(OPEN_STEPS[:3]))
            .group_by("person_id_at_write", pl.col("event").cast(pl.String))
            .agg(pl.col("time").min())
            .collect()
        )
        out["polars_funnel_first_touch_s"] = round(time.perf_counter() - started, 3)
        started = time.perf_counter()
        active = ev.select("person_id_at_write", "event_date").unique()
        d0 = active.group_by("person_id_at_write").agg(pl.col("event_date").min().alias("d0"))
        (
            active.join(d0, on="person_id_at_write")
            .filter(pl.col("event_date") == pl.col("d0") + pl.duration(days=1))
            .select(pl.col("person_id_at_write").n_unique())
            .collect()
        )
        out["polars_retention_day1_s"] = round(time.perf_counter() - started, 3)
        out["polars_rows"] = firsts.height
    try:
        import chdb
    except ImportError:
        out["chdb"] = "not installed"
    else:
        started = time.perf_counter()
        chdb.query(
            f"SELECT person_id_at_write, event, min(time) FROM file('{glob}', Parquet)"
            f" WHERE event IN ({steps}) GROUP BY 1, 2",
            "CSV",
        )
        out["chdb_funnel_first_touch_s"] = round(time.perf_counter() - started, 3)
        started = time.perf_counter()
        conditions = ", ".join(f"ifNull(toString(event), '') = '{e}'" for e in OPEN_STEPS)
        chdb.query(
            f"SELECT level, count() FROM (SELECT person_id_at_write, windowFunnel({30 * 86400})("
            f"toDateTime(assumeNotNull(time)), {conditions}) AS level FROM file('{glob}', Parquet) GROUP BY 1)"
            " GROUP BY 1",
            "CSV",
        )
        out["chdb_window_funnel_12_steps_s"] = round(time.perf_counter() - started, 3)
    return out


REPORTS = ["funnel", "retention", "channels", "campaign", "segment", "person"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--data", type=Path, default=Path("/tmp/maidian-lake-bench"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="50k events, one run")
    parser.add_argument("--skip-build", action="store_true", help="report on the lake as it is")
    parser.add_argument("--one", nargs=2, metavar=("REPORT", "BARE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_report(args.data, args.one[0], args.runs, args.one[1] == "bare")))
        return 0
    if args.quick:
        args.events, args.runs = 50_000, 1
        args.data = args.data.with_name(args.data.name + "-quick")
    summary: dict[str, Any] = {"events_asked": args.events, "cores": os.cpu_count()}
    if not (args.data / "raw").is_dir():
        started = time.perf_counter()
        summary["generated"] = generate(args.data, args.events)
        summary["generate_s"] = round(time.perf_counter() - started, 1)
    if not args.skip_build:
        summary["build"] = measure_build(args.data)
        print(json.dumps(summary["build"]), file=sys.stderr)
    rows = []
    for name in REPORTS:
        # The segment's user properties need persons resolved (profiles carry no person as written): no floor.
        for bare in (False, True) if name != "segment" else (False,):
            cmd = [
                sys.executable,
                __file__,
                "--data",
                str(args.data),
                "--runs",
                str(args.runs),
                "--one",
                name,
                "bare" if bare else "maidian",
            ]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            rows.append(json.loads(done.stdout.splitlines()[-1]))
            print(json.dumps(rows[-1]), file=sys.stderr)
    summary["reports"] = rows
    summary["engines"] = run_engines(args.data)
    print(json.dumps(summary, ensure_ascii=False, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
