"""`maidian plan validate`: output formats and exit codes, run as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from maidian.collector.cli import main
from tests.conftest import MINI_PLAN


def event(**props: Any) -> str:
    base = {"stock_code": "600519", "side": "buy", "price": 10.5, "quantity": 100}
    base.update(props)
    return json.dumps(
        {
            "type": "track",
            "event": "stock_order_submit",
            "event_id": "e-1",
            "time": 1_763_800_000_000,
            "identities": {"anonymous_id": "d-1"},
            "properties": base,
        },
        ensure_ascii=False,
    )


@pytest.fixture
def events_file(tmp_path: Path) -> Path:
    path = tmp_path / "events.jsonl"
    path.write_text(
        "\n".join([event(), event(side="hold", price=-1), "", "{broken", event(stock_code="贵州茅台")]) + "\n"
    )
    return path


def test_text_output_gives_a_verdict_per_line_and_a_summary(
    events_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plan", "validate", str(MINI_PLAN), str(events_file)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "line 1: stock_order_submit: ok"
    assert out[1] == "line 2: stock_order_submit: INVALID"
    assert '    /properties/side: expected one of "buy", "sell" [enum]' in out
    assert "    /properties/price: must be > 0 [range]" in out
    assert any(line.startswith("line 4: ?: INVALID") for line in out)
    assert any(line.startswith("line 5: stock_order_submit: INVALID") for line in out)
    assert out[-1] == "4 events: 1 valid, 3 invalid (range 1, enum 1, json 1, pattern 1)"


def test_json_output_is_one_object_per_line(events_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "validate", str(MINI_PLAN), str(events_file), "--format", "json"]) == 1
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert [r["line"] for r in rows] == [1, 2, 4, 5]
    assert [r["valid"] for r in rows] == [True, False, False, False]
    assert rows[1]["event"] == "stock_order_submit"
    assert {e["path"] for e in rows[1]["errors"]} == {"/properties/side", "/properties/price"}
    assert all(set(e) >= {"path", "message"} for r in rows for e in r["errors"])
    assert "4 events: 1 valid, 3 invalid" in captured.err


def test_all_valid_exits_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ok.jsonl"
    path.write_text(event() + "\n" + event(side="sell") + "\n")
    assert main(["plan", "validate", str(MINI_PLAN), str(path), "-q"]) == 0
    assert capsys.readouterr().out == "2 events: 2 valid, 0 invalid\n"


def test_unusable_inputs_exit_two(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "validate", str(tmp_path / "nope.json"), str(tmp_path / "e.jsonl")]) == 2
    assert "file not found" in capsys.readouterr().err
    assert main(["plan", "validate", str(MINI_PLAN), str(tmp_path / "missing.jsonl")]) == 2
    assert "cannot read" in capsys.readouterr().err
    broken = tmp_path / "broken.json"
    broken.write_text('{"maidian_plan": 1}')
    assert main(["plan", "validate", str(broken), str(tmp_path / "e.jsonl")]) == 2
    assert "missing required key 'name'" in capsys.readouterr().err


def test_the_installed_command_reads_standard_input() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "maidian.collector.cli", "plan", "validate", str(MINI_PLAN), "-"],
        input=event(side="hold") + "\n",
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1
    assert "[enum]" in proc.stdout
