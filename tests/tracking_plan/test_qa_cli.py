"""`maidian plan lint`, `diff` and `codegen`: output formats and exit codes, run as a user runs them."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from maidian.collector.cli import main
from tests.conftest import MINI_PLAN

MINI: dict[str, Any] = json.loads(MINI_PLAN.read_text())


def plan_file(tmp_path: Path, name: str, change: Any = None) -> Path:
    doc = copy.deepcopy(MINI)
    if change is not None:
        change(doc)
    path = tmp_path / name
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False), "utf-8")
    return path


def untidy(doc: dict[str, Any]) -> None:
    doc["events"]["stock_order_submit"]["properties"]["properties"]["orderId"] = {"type": "string"}
    doc["events"]["stock_order_filled"]["trigger"] = "client"


# -- lint ------------------------------------------------------------------------------------------


def test_lint_clean_plan_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "lint", str(MINI_PLAN)]) == 0
    assert capsys.readouterr().out == f"{MINI_PLAN}: 0 findings\n"


def test_lint_prints_one_finding_per_line_with_position_pointer_and_rule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = plan_file(tmp_path, "plan.json", untidy)
    assert main(["plan", "lint", str(path)]) == 1
    out = capsys.readouterr().out.splitlines()
    text = path.read_text().splitlines()
    line = next(i for i, t in enumerate(text, 1) if '"orderId"' in t)
    column = text[line - 1].index('"orderId"') + 1
    assert out[0].startswith(f"{path}:{line}:{column}: property name 'orderId' is not snake_case")
    assert out[0].endswith("at /events/stock_order_submit/properties/properties/orderId [snake-case]")
    assert out[1].endswith("at /events/stock_order_filled/trigger [success-trigger]")
    assert out[2] == f"{path}: 2 findings (snake-case 1, success-trigger 1)"
    assert len(out) == 3


def test_lint_json_is_a_list_of_rule_path_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = plan_file(tmp_path, "plan.json", untidy)
    assert main(["plan", "lint", str(path), "--format", "json"]) == 1
    captured = capsys.readouterr()
    rows = json.loads(captured.out)
    assert {(r["rule"], r["path"]) for r in rows} >= {
        ("snake-case", "/events/stock_order_submit/properties/properties/orderId"),
        ("success-trigger", "/events/stock_order_filled/trigger"),
    }
    assert all({"rule", "path", "message", "line", "column"} <= set(r) for r in rows)
    assert "finding" in captured.err


def test_lint_ignore_is_repeatable_and_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = plan_file(tmp_path, "plan.json", lambda d: d["events"]["stock_order_filled"].update({"trigger": "client"}))
    assert main(["plan", "lint", str(path), "--ignore", "success-trigger", "--ignore", "snake-case"]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(["plan", "lint", str(path), "--ignore", "no-such-rule"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_lint_unusable_plans_exit_two_with_the_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "lint", str(tmp_path / "missing.json")]) == 2
    assert "file not found" in capsys.readouterr().err
    broken = tmp_path / "broken.json"
    broken.write_text('{"maidian_plan": 1,\n "name": "x",,}')
    assert main(["plan", "lint", str(broken)]) == 2
    assert f"error: {broken}:2:14: invalid JSON" in capsys.readouterr().err
    meta = plan_file(tmp_path, "meta.json", lambda d: d["events"]["account_login"].update({"trigger": "app"}))
    assert main(["plan", "lint", str(meta)]) == 2
    err = capsys.readouterr().err
    assert 'expected one of "client", "server" at /events/account_login/trigger [meta-schema]' in err


def test_lint_reports_what_the_loader_refuses_as_findings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = plan_file(tmp_path, "plan.json", lambda d: d["events"].update({"fund_buy": {"description": "x"}}))
    assert main(["plan", "validate", str(path), "-"]) == 2
    capsys.readouterr()
    assert main(["plan", "lint", str(path), "--ignore", "missing-owner"]) == 1
    assert "at /events/fund_buy [prefix-registered]" in capsys.readouterr().out


# -- diff ------------------------------------------------------------------------------------------


def test_diff_identical_plans_exit_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "diff", str(MINI_PLAN), str(MINI_PLAN)]) == 0
    assert capsys.readouterr().out == "0 changes: 0 breaking, 0 compatible\nversion 1.0.0 -> 1.0.0: ok (no changes)\n"


def test_diff_breaking_change_exits_one_even_with_a_major_bump(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def change(d: dict[str, Any]) -> None:
        d["version"] = "2.0.0"
        d["events"].pop("account_login")
        d["events"]["account_logout"] = {"description": "x"}

    new = plan_file(tmp_path, "new.json", change)
    assert main(["plan", "diff", str(MINI_PLAN), str(new)]) == 1
    assert capsys.readouterr().out.splitlines() == [
        "breaking   /events/account_login: event 'account_login' removed",
        "compatible /events/account_logout: event 'account_logout' added",
        "2 changes: 1 breaking, 1 compatible",
        "version 1.0.0 -> 2.0.0: ok (breaking changes need 2.0.0 or later)",
    ]
    assert main(["plan", "diff", str(MINI_PLAN), str(new), "--allow-breaking"]) == 0
    assert "breaking changes allowed (--allow-breaking)" in capsys.readouterr().out


def test_diff_allow_breaking_still_needs_the_major_bump(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    new = plan_file(tmp_path, "new.json", lambda d: (d.update({"version": "1.1.0"}), d["events"].pop("account_login")))
    assert main(["plan", "diff", str(MINI_PLAN), str(new), "--allow-breaking", "--format", "json"]) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["ok"] is False
    assert result["version"]["expected"] == "2.0.0"
    assert result["changes"] == [
        {
            "kind": "breaking",
            "semver": "major",
            "path": "/events/account_login",
            "message": "event 'account_login' removed",
        }
    ]


def test_diff_compatible_changes_need_their_bump(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def add(d: dict[str, Any]) -> None:
        d["events"]["account_logout"] = {"description": "x"}

    same_version = plan_file(tmp_path, "same.json", add)
    assert main(["plan", "diff", str(MINI_PLAN), str(same_version)]) == 1
    assert "version 1.0.0 -> 1.0.0: additions need 1.1.0 or later" in capsys.readouterr().out
    bumped = plan_file(tmp_path, "bumped.json", lambda d: (add(d), d.update({"version": "1.1.0"})))
    assert main(["plan", "diff", str(MINI_PLAN), str(bumped)]) == 0
    capsys.readouterr()


def test_diff_unusable_plan_exits_two(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "diff", str(MINI_PLAN), str(tmp_path / "nope.json")]) == 2
    assert "file not found" in capsys.readouterr().err


# -- codegen ---------------------------------------------------------------------------------------


def test_codegen_writes_checks_and_prints(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "tracking_events.py"
    assert main(["plan", "codegen", str(MINI_PLAN), "-o", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    text = out.read_text("utf-8")
    assert "def stock_order_submit(" in text
    assert main(["plan", "codegen", str(MINI_PLAN), "-o", str(out), "--check"]) == 0
    capsys.readouterr()
    out.write_text(text.replace("stock-team", "someone"), "utf-8")
    assert main(["plan", "codegen", str(MINI_PLAN), "-o", str(out), "--check"]) == 1
    assert "out of date" in capsys.readouterr().err
    assert main(["plan", "codegen", str(MINI_PLAN)]) == 0
    assert capsys.readouterr().out == text
    assert main(["plan", "codegen", str(tmp_path / "nope.json"), "-o", str(out)]) == 2


def test_the_installed_command_lints(tmp_path: Path) -> None:
    untidy_plan = plan_file(tmp_path, "untidy.json", untidy)
    proc = subprocess.run(
        [sys.executable, "-m", "maidian.collector.cli", "plan", "lint", str(untidy_plan), "--format", "json"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    assert {r["rule"] for r in json.loads(proc.stdout)} == {"snake-case", "success-trigger"}
    assert proc.stderr == f"{untidy_plan}: 2 findings (snake-case 1, success-trigger 1)\n"
