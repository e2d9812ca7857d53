"""Coverage from a data directory: exact numbers for a known session, filters, replays, and the three formats."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path
from typing import Any

import pytest

from maidian.collector.cli import main
from maidian.collector.qa.coverage import Scope, Tally, build_report, coverage_of_data
from maidian.collector.qa.report import render_html, render_text
from maidian.collector.read import replay_quarantine
from maidian.tracking_plan import load_plan, parse_plan
from tests.collector.conftest import ClientFactory
from tests.collector.helpers import body_of, headers_for, now_ms, order, statuses
from tests.collector.qa_data import session
from tests.conftest import MINI_PLAN

PLAN = load_plan(MINI_PLAN)


async def store_session(start: ClientFactory) -> None:
    client = await start()
    resp = await client.post("/v1/batch", data=body_of(session()), headers=headers_for())
    assert resp.status == 200
    got = statuses(await resp.json())
    assert got.count("accepted") == 6
    assert got.count("quarantined") == 5
    assert got.count("duplicate") == 1
    await client.close()


def event_of(report: dict[str, Any], name: str) -> dict[str, Any]:
    for line in report["lines"]:
        for ev in line["events"]:
            if ev["name"] == name:
                return ev  # type: ignore[no-any-return]
    return next(e for e in report["unplanned"] if e["name"] == name)  # type: ignore[no-any-return]


def presence(ev: dict[str, Any]) -> dict[str, tuple[int, float | None, bool, bool]]:
    return {p["name"]: (p["present"], p["rate"], p["declared"], p["required"]) for p in ev["properties"]}


async def test_the_numbers_of_a_known_session_are_exact(start: ClientFactory, data_dir: Path) -> None:
    await store_session(start)
    report = coverage_of_data(data_dir, PLAN).to_dict()
    assert report["totals"] == {
        "seen": 10,
        "accepted": 5,
        "invalid": 5,
        "invalid_rate": 0.5,
        "expected": 3,
        "expected_seen": 3,
        "coverage": 1.0,
        "never_seen": 0,
        "unplanned": 1,
        "unplanned_seen": 2,
        "malformed": 0,
    }
    lines = {line["prefix"]: line for line in report["lines"]}
    stock, account = lines["stock"], lines["account"]
    assert (stock["expected"], stock["expected_seen"], stock["seen"], stock["invalid"]) == (2, 2, 6, 3)
    assert stock["invalid_rate"] == 0.5
    assert (account["expected"], account["expected_seen"], account["seen"], account["invalid"]) == (1, 1, 2, 0)
    assert account["invalid_rate"] == 0.0

    submit = event_of(report, "stock_order_submit")
    assert (submit["seen"], submit["accepted"], submit["invalid"], submit["invalid_rate"]) == (5, 3, 2, 0.4)
    assert [(r["rule"], r["path"], r["count"]) for r in submit["reasons"]] == [
        ("enum", "/properties/side", 1),
        ("required", "/properties/quantity", 1),
    ]
    assert presence(submit) == {
        "stock_code": (5, 1.0, True, True),
        "side": (5, 1.0, True, True),
        "price": (5, 1.0, True, True),
        "quantity": (4, 0.8, True, True),
        "mobile": (1, 0.2, True, False),
        "id_card": (0, 0.0, True, False),
    }
    login = event_of(report, "account_login")
    assert (login["seen"], login["invalid"], login["invalid_rate"]) == (2, 0, 0.0)
    assert presence(login) == {"method": (1, 0.5, True, False)}
    filled = event_of(report, "stock_order_filled")
    assert (filled["seen"], filled["invalid"], filled["trigger"]) == (1, 1, "server")
    assert [(r["rule"], r["path"], r["count"]) for r in filled["reasons"]] == [("trigger", "/event", 1)]

    teleport = event_of(report, "stock_teleport")
    assert (teleport["planned"], teleport["line"], teleport["seen"], teleport["invalid"]) == (False, "stock", 2, 2)
    assert [(r["rule"], r["count"]) for r in teleport["reasons"]] == [("unknown_event", 2)]
    assert presence(teleport) == {"stock_name": (1, 0.5, False, False)}
    assert report["other_types"] == {"profile_set": {"accepted": 1, "invalid": 0}}


async def test_a_tag_keeps_its_events_and_shows_what_it_never_fired(start: ClientFactory, data_dir: Path) -> None:
    await store_session(start)
    report = coverage_of_data(data_dir, PLAN, tag="t2").to_dict()
    assert report["scope"]["tag"] == "t2"
    totals = report["totals"]
    assert (totals["seen"], totals["accepted"], totals["invalid"]) == (3, 1, 2)
    assert (totals["expected_seen"], totals["never_seen"]) == (1, 2)
    never = [n for line in report["lines"] for n in line["never_seen"]]
    assert never == ["stock_order_filled", "account_login"]
    assert report["other_types"] == {}  # the profile operation carries no tag


async def test_the_time_window_bounds_corrected_times(start: ClientFactory, data_dir: Path) -> None:
    client = await start()
    t0 = now_ms() - 3_600_000
    events = [order(i, t=t0 + i * 1000) for i in range(1, 6)] + [order(9, t=t0 + 9000, side="hold")]
    resp = await client.post("/v1/batch", data=body_of(events, sent_at=0), headers=headers_for())  # no sent_at
    assert resp.status == 200
    await client.close()
    inside = coverage_of_data(data_dir, PLAN, since_ms=t0 + 2000, until_ms=t0 + 4000)
    assert (inside.seen, inside.accepted, inside.invalid) == (2, 2, 0)
    late = coverage_of_data(data_dir, PLAN, since_ms=t0 + 5000)
    assert (late.seen, late.accepted, late.invalid) == (2, 1, 1)
    none = coverage_of_data(data_dir, PLAN, until_ms=t0)
    assert none.seen == 0


async def test_an_event_replayed_after_the_plan_was_fixed_counts_once_as_accepted(
    start: ClientFactory, data_dir: Path, tmp_path: Path
) -> None:
    await store_session(start)
    doc = json.loads(MINI_PLAN.read_text("utf-8"))
    doc["events"]["stock_order_submit"]["properties"]["properties"]["side"]["enum"].append("hold")
    fixed = parse_plan(json.dumps(doc), "fixed.plan.json")
    assert replay_quarantine(data_dir, fixed).moved == 1
    report = coverage_of_data(data_dir, PLAN).to_dict()
    assert (report["totals"]["seen"], report["totals"]["accepted"], report["totals"]["invalid"]) == (10, 6, 4)
    submit = event_of(report, "stock_order_submit")
    assert (submit["seen"], submit["accepted"], submit["invalid"]) == (5, 4, 1)


def test_an_empty_tally_reports_every_expected_event_as_never_seen() -> None:
    report = build_report(PLAN, Tally(), Scope("nothing"))
    assert (report.seen, report.expected, report.expected_seen, report.coverage) == (0, 3, 0, 0.0)
    assert report.never_seen == ["stock_order_submit", "stock_order_filled", "account_login"]
    assert report.invalid_rate is None


def test_deprecated_and_planned_events_are_reported_but_not_expected() -> None:
    doc = json.loads(MINI_PLAN.read_text("utf-8"))
    doc["events"]["stock_order_filled"]["status"] = "deprecated"
    doc["events"]["account_login"]["status"] = "planned"
    report = build_report(parse_plan(json.dumps(doc), "p.json"), Tally(), Scope("nothing"))
    assert (report.expected, report.never_seen) == (1, ["stock_order_submit"])


async def test_text_json_and_html_from_the_command(
    start: ClientFactory, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await store_session(start)
    assert main(["coverage", "--plan", str(MINI_PLAN), "--data", str(data_dir)]) == 0
    text = capsys.readouterr().out
    assert "planned events seen: 3 of 3 (100.0%)" in text
    assert "stock_order_submit" in text
    assert "enum /properties/side ×1" in text
    assert "seen but not planned:" in text
    assert "stock_teleport" in text

    assert main(["coverage", "--plan", str(MINI_PLAN), "--data", str(data_dir), "--format", "json", "--tag", "t2"]) == 0
    assert json.loads(capsys.readouterr().out)["totals"]["seen"] == 3

    out = tmp_path / "cov.html"
    assert (
        main(["coverage", "--plan", str(MINI_PLAN), "--data", str(data_dir), "--format", "html", "-o", str(out)]) == 0
    )
    page = out.read_text("utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert "<svg" in page
    assert "<style>" in page
    assert "http://" not in page.replace("http://www.w3.org", "")
    assert "https://" not in page
    assert "<script" not in page

    code = main(["coverage", "--plan", str(MINI_PLAN), "--data", str(data_dir), "--tag", "t2", "--fail-under", "50"])
    assert code == 1
    assert "under --fail-under 50%" in capsys.readouterr().err


async def test_values_are_escaped_and_cjk_lines_up(tmp_path: Path) -> None:
    doc = json.loads(MINI_PLAN.read_text("utf-8"))
    doc["business_lines"]["stock"]["title"] = "股票交易 <b>"
    plan = parse_plan(json.dumps(doc, ensure_ascii=False), "p.json")
    tally = Tally()
    tally.add("track", "stock_<script>", ("名字",), [{"rule": "unknown_event", "path": "/event", "message": "<x>"}])
    report = build_report(plan, tally, Scope("<src>"))
    page = render_html(report)
    assert "<script>" not in page
    assert "&lt;script&gt;" in page
    assert "&lt;src&gt;" in page
    assert "股票交易 &lt;b&gt;" in page
    text = render_text(report)
    table = [line for line in text.splitlines() if line.startswith(("business line", "stock", "account"))][:3]
    # Every column is padded to one display width (the last right-aligned), so the rows end together
    # although 股票交易 is 4 characters and 8 columns wide.
    widths = {sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in line) for line in table}
    assert len(table) == 3
    assert len(widths) == 1


def test_a_data_directory_that_is_not_one_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["coverage", "--plan", str(MINI_PLAN), "--data", str(tmp_path)]) == 2
    assert "not a maidian data directory" in capsys.readouterr().err
