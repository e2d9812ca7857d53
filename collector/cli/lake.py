"""`maidian lake build|follow|ddl` and `maidian report funnel|retention|channels|campaign|segment|person|sql|html`.

Thin handlers over the lake's writer.py, engine.py and report.py, imported when
a command runs (the lake extra's pyarrow and duckdb load only then). Every report prints a
text table by default, or `--json`, `--csv`, and writes the offline HTML page
with `--html FILE`. Exit codes as for the other data commands: 0 done,
1 nothing found, 2 unusable input.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from maidian.collector.cli.output import reporting
from maidian.tracking_plan.cli import EXIT_FINDINGS, EXIT_OK, add_command, add_group

__all__ = ["add_lake_commands"]


def _plan(args: argparse.Namespace) -> Any:
    from maidian.tracking_plan import load_plan

    path = args.plan or os.environ.get("MAIDIAN_PLAN")
    if not path:
        raise argparse.ArgumentTypeError("the lake's columns come from the plan: give --plan (or MAIDIAN_PLAN)")
    return load_plan(path)


def _data(args: argparse.Namespace) -> Path:
    path = args.data or os.environ.get("MAIDIAN_DATA")
    if not path:
        raise argparse.ArgumentTypeError("give --data (or MAIDIAN_DATA): the collector's data directory")
    return Path(path)


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from exc


def _where(items: list[str] | None) -> dict[str, Any]:
    from maidian.collector.lake.report import _scalar

    out: dict[str, Any] = {}
    for item in items or ():
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise argparse.ArgumentTypeError(f"a condition reads PROPERTY=VALUE: {item!r}")
        values = [_scalar(v) for v in value.split("|")]
        out[name] = values if len(values) > 1 else values[0]
    return out


# -- lake ------------------------------------------------------------------------------------------------


@reporting
def _build(args: argparse.Namespace) -> int:
    import json

    from maidian.collector.lake.writer import build

    built = build(_data(args), _plan(args), timezone=args.timezone, compact_all=args.compact, full=args.full)
    print(json.dumps(built.as_dict(), ensure_ascii=False))
    return EXIT_OK


@reporting
def _follow(args: argparse.Namespace) -> int:
    import json
    import threading

    from maidian.collector.lake.writer import Built, follow

    stopping = threading.Event()

    def stop(_signum: int, _frame: Any) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def report(built: Built) -> None:
        print(json.dumps(built.as_dict(), ensure_ascii=False), flush=True)

    follow(
        _data(args),
        _plan(args),
        interval_s=args.interval_s,
        timezone=args.timezone,
        stop=stopping.is_set,
        report=report,
        sleep=stopping.wait,
    )
    return EXIT_OK


@reporting
def _ddl(args: argparse.Namespace) -> int:
    from maidian.collector.lake.schema import ddl

    sys.stdout.write(ddl(_plan(args), args.engine))
    return EXIT_OK


# -- report ----------------------------------------------------------------------------------------------


def _output(args: argparse.Namespace, run: Callable[[Any], Any]) -> int:
    from maidian.collector.lake.engine import open_lake
    from maidian.collector.lake.html import render

    with open_lake(_data(args), _plan(args)) as lake:
        report = run(lake)
    if args.html:
        Path(args.html).write_text(render([report], title=report.title), encoding="utf-8")
    if args.json:
        sys.stdout.write(report.as_json() + "\n")
    elif args.csv:
        _write_csv(report)
    elif not args.html:
        _print_table(report)
    return EXIT_OK if report.rows else EXIT_FINDINGS


def _write_csv(report: Any) -> None:
    """The rows as CSV, formula-safe like every CSV the CLI writes."""
    import csv

    from maidian.collector.cli.output import _cell

    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(report.columns)
    for row in report.rows:
        writer.writerow([_cell(v.isoformat() if isinstance(v, dt.date) else v) for v in row])


def _print_table(report: Any) -> None:
    from maidian.collector.lake.html import _cell

    rows = [[_cell(v) for v in r] for r in report.rows]
    widths = [max([len(c), *(len(r[i]) for r in rows)]) for i, c in enumerate(report.columns)]
    print("  ".join(c.ljust(w) for c, w in zip(report.columns, widths, strict=True)))
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))


@reporting
def _funnel(args: argparse.Namespace) -> int:
    from maidian.collector.lake import report as r

    def run(lake: Any) -> Any:
        if args.step:
            spec = r.adhoc_funnel(args.step, window_s=int(args.window_days * 86_400), identity=args.identity)
        elif args.name:
            spec = r.funnel_of(lake, args.name)
        else:
            raise argparse.ArgumentTypeError("name a funnel of the plan (--name) or give its steps (--step, repeated)")
        return r.funnel(lake, spec, since=args.since, until=args.until)

    return _output(args, run)


@reporting
def _retention(args: argparse.Namespace) -> int:
    from maidian.collector.lake import report as r

    days = [int(d) for d in args.days.split(",") if d.strip()]
    by = None if args.by in ("", "none") else args.by

    def run(lake: Any) -> Any:
        return r.retention(lake, by=by, start=args.start, back=args.back, days=days, since=args.since, until=args.until)

    return _output(args, run)


@reporting
def _channels(args: argparse.Namespace) -> int:
    from maidian.collector.lake import report as r

    return _output(args, lambda lake: r.channels(lake, success=args.success, since=args.since, until=args.until))


@reporting
def _campaign(args: argparse.Namespace) -> int:
    from maidian.collector.lake import report as r

    def run(lake: Any) -> Any:
        return r.campaign(
            lake,
            exposure=args.exposure,
            where=_where(args.where),
            conversion=args.conversion,
            window_s=int(args.window_days * 86_400),
            since=args.since,
            until=args.until,
        )

    return _output(args, run)


def _did(text: str) -> Any:
    from maidian.collector.lake.report import Did

    event, _sep, rest = text.partition(":")
    return Did(event, _where([c for c in rest.split(",") if c]))


@reporting
def _segment(args: argparse.Namespace) -> int:
    from maidian.collector.lake import report as r

    did = [_did(t) for t in args.did or ()]
    did = [r.Did(d.event, d.where, args.since, args.until) for d in did]
    did_not = [_did(t) for t in args.did_not or ()]
    users = [r.UserCondition.parse(u) for u in args.user or ()]
    return _output(args, lambda lake: r.segment(lake, did=did, did_not=did_not, users=users))


@reporting
def _person(args: argparse.Namespace) -> int:
    from maidian.collector.lake import report as r

    return _output(args, lambda lake: r.person(lake, args.person, args.type))


@reporting
def _sql(args: argparse.Namespace) -> int:
    from maidian.collector.lake import report as r

    return _output(args, lambda lake: r.sql(lake, args.query))


@reporting
def _html(args: argparse.Namespace) -> int:
    from maidian.collector.lake import report as r
    from maidian.collector.lake.engine import open_lake
    from maidian.collector.lake.html import render

    plan = _plan(args)
    with open_lake(_data(args), plan) as lake:
        reports = [r.funnel(lake, f, since=args.since, until=args.until) for f in plan.funnels.values()]
        reports.append(r.retention(lake, since=args.since, until=args.until))
        reports.append(r.channels(lake, since=args.since, until=args.until))
    Path(args.out).write_text(render(reports, title=f"{plan.name} {plan.version}"), encoding="utf-8")
    print(f"wrote {args.out}: {len(reports)} reports", file=sys.stderr)
    return EXIT_OK


def _common(p: argparse.ArgumentParser, *, outputs: bool = True) -> None:
    p.add_argument("--data", help="the data directory (or MAIDIAN_DATA)")
    p.add_argument("--plan", help="the tracking plan (or MAIDIAN_PLAN)")
    if outputs:
        fmt = p.add_mutually_exclusive_group()
        fmt.add_argument("--json", action="store_true", help="print the report as JSON")
        fmt.add_argument("--csv", action="store_true", help="print the report as CSV")
        p.add_argument("--html", metavar="FILE", help="also write the report as an offline HTML page")


def _range(p: argparse.ArgumentParser) -> None:
    p.add_argument("--since", type=_date, help="first date (YYYY-MM-DD, the lake's time zone), inclusive")
    p.add_argument("--until", type=_date, help="last date, inclusive")


def add_lake_commands(sub: Any) -> None:
    """Register `maidian lake ...` and `maidian report ...` on the root parser's subparsers."""
    lsub = add_group(
        sub,
        "lake",
        help="turn stored events into typed Parquet (the lake) and print its table definitions",
        description=(
            "The lake: accepted events as Parquet under <data>/lake/, one typed column per planned property,\n"
            "partitioned by event date. docs/collector.md, 'The lake', describes the files."
        ),
        example="maidian lake build --data /var/lib/maidian --plan plan.json",
        dest="lake_command",
    )
    p = add_command(
        lsub,
        "build",
        help="take every event stored since the last pass into the lake",
        description="One pass: new raw-log events into Parquet, identities re-resolved, small files compacted.",
        example="maidian lake build --data /var/lib/maidian --plan plan.json",
        handler=_build,
    )
    _common(p, outputs=False)
    p.add_argument("--timezone", help="the zone event dates are taken in (first pass only; default UTC)")
    p.add_argument("--compact", action="store_true", help="compact every partition that has more than one file")
    p.add_argument("--full", action="store_true", help="delete the lake and build it again from the raw log")
    p = add_command(
        lsub,
        "follow",
        help="run a pass every interval until stopped (T+0: today's events queryable within a minute)",
        description="Follow the raw log: one pass every --interval-s seconds; SIGTERM or Ctrl-C stops after a pass.",
        example="maidian lake follow --data /var/lib/maidian --plan plan.json --interval-s 30",
        handler=_follow,
    )
    _common(p, outputs=False)
    p.add_argument("--interval-s", type=float, default=30.0, help="seconds between passes (default 30)")
    p.add_argument("--timezone", help="the zone event dates are taken in (first pass only; default UTC)")
    p = add_command(
        lsub,
        "ddl",
        help="print the table definitions the plan implies",
        description="CREATE TABLE statements for the lake's tables; for ClickHouse also a Kafka-engine queue.",
        example="maidian lake ddl --plan plan.json --engine clickhouse",
        handler=_ddl,
    )
    p.add_argument("--plan", help="the tracking plan (or MAIDIAN_PLAN)")
    p.add_argument("--engine", choices=("duckdb", "clickhouse", "postgres"), default="duckdb")

    rsub = add_group(
        sub,
        "report",
        help="answer questions from the lake: funnels, retention, channels, campaigns, segments, SQL",
        description="Reports over the lake (run `maidian lake build` first); docs/collector.md, 'Reports'.",
        example="maidian report funnel --data /var/lib/maidian --plan plan.json --name account_open",
        dest="report_command",
    )
    p = add_command(
        rsub,
        "funnel",
        help="persons reaching each step of a funnel",
        description="A funnel of the plan (--name) or one given step by step (--step, in order).",
        example="maidian report funnel --data /var/lib/maidian --plan plan.json --name account_open --json",
        handler=_funnel,
    )
    _common(p)
    _range(p)
    p.add_argument("--name", help="a funnel the plan declares")
    p.add_argument("--step", action="append", help="an event name; repeat in step order")
    p.add_argument("--window-days", type=float, default=7.0, help="for --step: the window from step 1 (default 7)")
    p.add_argument("--identity", default="person", help="for --step: person (default) or an identity type")
    p = add_command(
        rsub,
        "retention",
        help="day-N retention per group of a property (utm_source by default)",
        description="Cohorts by first start event (first event when none given), retained by the return event.",
        example="maidian report retention --data /var/lib/maidian --plan plan.json --by utm_source --days 1,7,30",
        handler=_retention,
    )
    _common(p)
    _range(p)
    p.add_argument("--by", default="utm_source", help="the property that groups persons ('none': one group)")
    p.add_argument("--start", help="the event that starts a cohort (default: any, i.e. new persons)")
    p.add_argument("--back", help="the event that counts as coming back (default: any)")
    p.add_argument("--days", default="1,2,3,7,14,30", help="days after the cohort day, comma-separated")
    p = add_command(
        rsub,
        "channels",
        help="new persons per UTM channel, their success events and retention",
        description="First-touch channels; success events default to the last step of the plan's funnels.",
        example="maidian report channels --data /var/lib/maidian --plan plan.json --success bank_deposit_succeeded",
        handler=_channels,
    )
    _common(p)
    _range(p)
    p.add_argument("--success", action="append", help="a success event (repeat); default: the plan's funnels' ends")
    p = add_command(
        rsub,
        "campaign",
        help="conversion of persons exposed to a campaign against the others",
        description="Exposed: fired the exposure event (--where); converted: fired --conversion within the window.",
        example=(
            "maidian report campaign --data /var/lib/maidian --plan plan.json --exposure push_sent"
            " --where campaign_id=CP2026 --conversion bank_deposit_succeeded"
        ),
        handler=_campaign,
    )
    _common(p)
    _range(p)
    p.add_argument("--exposure", required=True, help="the exposure event (push_sent, push_opened, ...)")
    p.add_argument("--where", action="append", help="PROPERTY=VALUE on the exposure event (VALUE|VALUE: any)")
    p.add_argument("--conversion", required=True, help="the conversion event")
    p.add_argument("--window-days", type=float, default=7.0, help="days after exposure a conversion counts")
    p = add_command(
        rsub,
        "segment",
        help="the person ids matching event and user-property filters",
        description=(
            "--did EVENT[:PROP=VALUE,...] (between --since and --until), --not-did EVENT, --user 'PROP OP VALUE'\n"
            "(OP one of = != >= <= > <); every filter must hold."
        ),
        example=(
            "maidian report segment --data /var/lib/maidian --plan plan.json --user 'registered_at>=2026-01-01'"
            " --did credit_page_view --not-did stock_order_submit --csv"
        ),
        handler=_segment,
    )
    _common(p)
    _range(p)
    p.add_argument("--did", action="append", help="EVENT[:PROP=VALUE,...] the person fired")
    p.add_argument("--not-did", dest="did_not", action="append", help="EVENT[:PROP=VALUE,...] the person never fired")
    p.add_argument("--user", action="append", help="a user property condition, e.g. 'province=浙江'")
    p = add_command(
        rsub,
        "person",
        help="every event of the person who owns an identity",
        description="One person's events from the lake, through the identity graph's attribution.",
        example="maidian report person --data /var/lib/maidian --plan plan.json --person U2025112400123",
        handler=_person,
    )
    _common(p)
    p.add_argument("--person", required=True, help="an identity value of the person")
    p.add_argument("--type", help="the identity type of that value")
    p = add_command(
        rsub,
        "sql",
        help="one read-only SELECT over the lake's views",
        description="Views: events, events_raw, identities, profiles, users. Anything but one SELECT is refused.",
        example=(
            "maidian report sql --data /var/lib/maidian --plan plan.json"
            " 'SELECT event, count(*) FROM events GROUP BY 1'"
        ),
        handler=_sql,
    )
    _common(p)
    p.add_argument("query", help="the SELECT statement")
    p = add_command(
        rsub,
        "html",
        help="one offline HTML page: the plan's funnels, retention by UTM source, channels",
        description="Charts as inline SVG; the page loads nothing from the network.",
        example="maidian report html --data /var/lib/maidian --plan plan.json --out report.html",
        handler=_html,
    )
    _common(p, outputs=False)
    _range(p)
    p.add_argument("--out", required=True, help="the HTML file to write")
