"""`generate_module`: typed, deterministic, clean under mypy --strict and ruff, and equal to hand-written calls."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.plangen import generate_plan
from maidian.collector.cli import main
from maidian.tracking_plan import Plan, Validator, load_plan, parse_plan
from maidian.tracking_plan.codegen import LINE_WIDTH, generate_module
from tests.conftest import MINI_PLAN, ROOT

MINI = load_plan(MINI_PLAN)

# A plan that tries every awkward corner: keywords and unusable names, CJK text,
# quotes and backslashes, nested objects, arrays of objects, nullable and mixed types.
ODD_DOC: dict[str, Any] = {
    "maidian_plan": 1,
    "name": '怪 "plan" \\ x',
    "version": "0.3.0",
    "business_lines": {"stock": {"owner": "股票团队"}, "class": {}},
    "common_properties": {
        "type": "object",
        "properties": {"$app_version": {"type": "string"}, "utm_source": {"type": "string"}, "from": {}},
    },
    "events": {
        "stock_order_submit": {
            "description": "用户提交买入或卖出委托。这是一段很长的中文描述，"
            "用来测试文档字符串的换行是否按照显示宽度处理，"
            '而不是按照字符数处理，否则 ruff 会报告行太长。He said "hi" and \\ left."',
            "fires_when": "委托确认对话框点击“确定”之后。",
            "properties": {
                "type": "object",
                "properties": {
                    "class": {"type": "string", "description": "关键字属性"},
                    "time": {"type": "integer"},
                    "time_": {"type": "integer"},
                    "2fa": {"type": "boolean"},
                    "a-b": {"type": ["string", "null"]},
                    "mixed": {"enum": ["a", 1, True, None]},
                    "floaty": {"enum": [1.5, 2]},
                    "quote": {"const": 'it\'s "q"'},
                    "legs": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {"code": {"type": "string"}, "for": {"type": "integer"}},
                            "required": ["code"],
                        },
                    },
                    "pos": {
                        "type": "object",
                        "properties": {"code": {"type": "string"}, "str": {"type": "number"}},
                        "required": ["code"],
                        "additionalProperties": False,
                    },
                    "bag": {"type": "object", "additionalProperties": True},
                    "anything": {},
                    "list": {"type": "array"},
                },
                "required": ["class", "time", "legs"],
            },
        },
        "class_import": {"description": "line\nbreaks\r\nand\ttabs \u0007 bell"},
        "stock_x": {},
    },
    "user_properties": {"type": "object", "properties": {"nick": {"type": "string"}, "in": {"type": "integer"}}},
}
ODD = parse_plan(json.dumps(ODD_DOC, ensure_ascii=False))


def import_module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def write(plan: Plan, path: Path) -> ModuleType:
    path.write_text(generate_module(plan, source=path.stem + ".plan.json"), "utf-8")
    return import_module(path)


class Recorder:
    """A client that records what it is asked to track."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any] | None, int | None]] = []

    def track(self, event: str, properties: Any = None, *, time: int | None = None) -> int:
        self.calls.append((event, None if properties is None else dict(properties), time))
        return len(self.calls)


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("generated")
    for name, plan in (("mini_events", MINI), ("odd_events", ODD)):
        (folder / f"{name}.py").write_text(generate_module(plan, source=f"{name}.plan.json"), "utf-8")
    doc, _ = generate_plan(200)
    (folder / "gen200_events.py").write_text(generate_module(parse_plan(json.dumps(doc)), source="gen200.json"))
    return folder


USAGE_OK = """
from __future__ import annotations

from collections.abc import Mapping

import mini_events as ev
import odd_events as odd


class Sync:
    def track(self, event: str, properties: Mapping[str, object] | None = None, *, time: int | None = None) -> None:
        return None


class Async:
    async def track(
        self, name: str, props: Mapping[str, object] | None = None, *, time: int | None = None
    ) -> bool:
        return True


async def main() -> None:
    done: None = ev.stock_order_submit(Sync(), stock_code="600519", side="buy", price=1.5, quantity=100)
    sent: bool = await ev.account_login(Async(), method="sms", time=1)
    ev.stock_order_submit(Sync(), stock_code="1", side="sell", price=2, quantity=1, mobile="x", id_card=ev.UNSET)
    odd.stock_order_submit(Sync(), class_="c", time_=1, legs=[{"code": "a", "for": 1}], a_b=None, mixed=True)
    odd.stock_order_submit(Sync(), class_="c", time_=1, legs=[], pos={"code": "x", "str": 1.5}, floaty=2.0)
    profile: ev.UserProperties = {"risk_level": "C3", "tags": ["a"]}
    common: odd.CommonProperties = {"from": 1, "utm_source": "wechat"}
    print(done, sent, profile, common, ev.EVENT_NAMES, ev.PLAN_VERSION)
"""

# Each line is a mistake the type checker must catch.
USAGE_BAD = """
import mini_events as ev

from usage_ok import Sync

ev.stock_order_submit(Sync(), stock_code="600519", side="hold", price=1.5, quantity=100)
ev.stock_order_submit(Sync(), stock_code="600519", side="buy", price=1.5)
ev.stock_order_submit(Sync(), stock_code="600519", side="buy", price=1.5, quantity=100, colour="red")
ev.stock_order_submit(Sync(), stock_code=600519, side="buy", price=1.5, quantity=100)
ev.stock_order_submit(Sync(), stock_code="600519", side="buy", price="1.5", quantity=100)
ev.account_login(Sync(), "sms")
ev.account_login(object())
profile: ev.UserProperties = {"risk_level": "C9"}
"""


def test_generated_modules_pass_mypy_strict_and_it_catches_misuse(generated: Path, tmp_path: Path) -> None:
    (generated / "usage_ok.py").write_text(USAGE_OK)
    (generated / "usage_bad.py").write_text(USAGE_BAD)
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--cache-dir", str(tmp_path / "cache")),
            *("mini_events.py", "odd_events.py", "gen200_events.py", "usage_ok.py", "usage_bad.py"),
        ],
        cwd=generated,
        capture_output=True,
        text=True,
        check=False,
    )
    errors = [line for line in proc.stdout.splitlines() if ": error:" in line]
    assert all(line.startswith("usage_bad.py:") for line in errors), proc.stdout
    flagged = {int(line.split(":")[1]) for line in errors}
    mistakes = {i + 1 for i, line in enumerate(USAGE_BAD.splitlines()) if line.startswith(("ev.", "profile"))}
    assert flagged == mistakes, proc.stdout


def ruff() -> str:
    path = shutil.which("ruff", path=str(ROOT / ".venv" / "bin")) or shutil.which("ruff")
    assert path is not None
    return path


@pytest.mark.parametrize(
    "config", [["--config", str(ROOT / "pyproject.toml")], ["--isolated"]], ids=["project", "defaults"]
)
def test_generated_modules_pass_ruff(generated: Path, config: list[str]) -> None:
    files = ["mini_events.py", "odd_events.py", "gen200_events.py"]
    check = subprocess.run(
        [ruff(), "check", *config, *files], cwd=generated, capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    fmt = subprocess.run(
        [ruff(), "format", "--diff", *config, *files], cwd=generated, capture_output=True, text=True, check=False
    )
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_the_output_is_deterministic_and_independent_of_event_order() -> None:
    doc: dict[str, Any] = json.loads(MINI_PLAN.read_text())
    reordered = copy.deepcopy(doc)
    reordered["events"] = dict(reversed(list(doc["events"].items())))
    first = generate_module(load_plan(MINI_PLAN), source="mini.plan.json")
    assert first == generate_module(load_plan(MINI_PLAN), source="mini.plan.json")
    assert generate_module(parse_plan(json.dumps(reordered)), source="mini.plan.json") == first
    doc["events"]["account_login"]["description"] = "Changed."
    changed = generate_module(parse_plan(json.dumps(doc)), source="mini.plan.json")
    digest = [line for line in changed.splitlines() if line.startswith("PLAN_DIGEST")]
    assert digest != [line for line in first.splitlines() if line.startswith("PLAN_DIGEST")]


def test_the_header_says_generated_from_which_plan() -> None:
    text = generate_module(MINI, source="tests/data/mini.plan.json")
    assert text.startswith(
        "# Generated by `maidian plan codegen` from tests/data/mini.plan.json.\n"
        "# Plan 'Mini broker', version 1.0.0. Do not edit: change the plan and generate again.\n"
    )


MINI_CALLS: list[tuple[str, dict[str, Any]]] = [
    ("stock_order_submit", {"stock_code": "600519", "side": "buy", "price": 1688.5, "quantity": 200}),
    (
        "stock_order_submit",
        {"stock_code": "000001", "side": "sell", "price": 1, "quantity": 100, "mobile": "13812345678"},
    ),
    ("stock_order_filled", {"stock_code": "600519", "filled_quantity": 3}),
    ("account_login", {}),
    ("account_login", {"method": "face"}),
]


def test_generated_calls_equal_hand_written_ones(tmp_path: Path) -> None:
    ev = write(MINI, tmp_path / "mini_calls.py")
    generated, by_hand = Recorder(), Recorder()
    for name, properties in MINI_CALLS:
        assert getattr(ev, name)(generated, **properties) == len(generated.calls)
        by_hand.track(name, properties)
    ev.stock_order_filled(generated, stock_code="600519", filled_quantity=1, time=1_763_800_000_000)
    by_hand.track("stock_order_filled", {"stock_code": "600519", "filled_quantity": 1}, time=1_763_800_000_000)
    assert generated.calls == by_hand.calls
    validator = Validator(MINI, stage="source")
    for name, properties, time in generated.calls:
        event = {
            "type": "track",
            "event": name,
            "event_id": "s-1",
            "time": time or 1,
            "identities": {"anonymous_id": "d-1"},
            "properties": properties,
        }
        assert validator.validate(event) == []


def test_optional_properties_are_left_out_unless_given_and_none_is_sent(tmp_path: Path) -> None:
    ev = write(ODD, tmp_path / "odd_calls.py")
    client = Recorder()
    ev.stock_order_submit(client, class_="c", time_=5, legs=[{"code": "x"}], a_b=None, p_2fa=False)
    [(name, properties, time)] = client.calls
    assert (name, time) == ("stock_order_submit", None)
    assert properties == {"class": "c", "time": 5, "legs": [{"code": "x"}], "a-b": None, "2fa": False}
    ev.class_import(client, time=7)
    assert client.calls[-1] == ("class_import", {}, 7)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_any_subset_of_optional_properties_is_sent_exactly(tmp_path_factory: Any, data: st.DataObject) -> None:
    ev = sys.modules.get("mini_any") or write(MINI, tmp_path_factory.mktemp("any") / "mini_any.py")
    given_props = {"stock_code": "600519", "side": data.draw(st.sampled_from(["buy", "sell"])), "price": 2.5}
    given_props["quantity"] = data.draw(st.integers(1, 10)) * 100
    for optional in ("mobile", "id_card"):
        if data.draw(st.booleans()):
            given_props[optional] = data.draw(st.text(max_size=12))
    client = Recorder()
    ev.stock_order_submit(client, **given_props)
    assert client.calls == [("stock_order_submit", given_props, None)]


def test_docstrings_carry_the_plan_text_including_cjk(tmp_path: Path) -> None:
    ev = write(ODD, tmp_path / "odd_docs.py")
    doc = ev.stock_order_submit.__doc__
    assert doc is not None
    flat = "".join(doc.split())
    assert "用户提交买入或卖出委托。" in flat
    assert "委托确认对话框点击“确定”之后。" in flat
    assert 'Hesaid"hi"and\\left."' in flat
    assert "Owner:股票团队." in flat
    assert "class_:关键字属性Sentas'class'." in flat
    assert "Trigger:client." in flat
    text = (tmp_path / "odd_docs.py").read_text("utf-8")
    widths = [sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in line) for line in text.splitlines()]
    assert max(widths) <= LINE_WIDTH + 12  # only code lines with long names may pass the docstring width


def test_mini_module_reads_as_documented() -> None:
    text = generate_module(MINI, source="mini.plan.json")
    expected = '''def stock_order_filled(
    _client: TrackingClient[_R],
    /,
    *,
    stock_code: str,
    filled_quantity: int,
    time: int | None = None,
) -> _R:
    """The exchange fills an order.

    Business line: stock. Trigger: server. Owner: stock-team.

    Args:
        stock_code: Six-digit exchange code. Matching ^[0-9]{6}$.
        filled_quantity: >= 1.
        time: When it happened, in epoch milliseconds (default: now).
    """
    _props: dict[str, object] = {
        "stock_code": stock_code,
        "filled_quantity": filled_quantity,
    }
    return _client.track(
        "stock_order_filled",
        _props,
        time=time,
    )
'''
    assert expected in text


@given(
    st.lists(
        st.text(alphabet=st.sampled_from("ab 委托确认，。\"'\\"), max_size=30) | st.sampled_from(["x" * 50, "\n"]),
        max_size=12,
    ),
    st.integers(10, 60),
)
def test_wrapping_keeps_every_character_and_the_width(parts: list[str], width: int) -> None:
    from maidian.tracking_plan.codegen import _width, _wrap

    text = " ".join(parts)
    lines = _wrap(text, width)
    assert "".join("".join(lines).split()) == "".join(text.split())
    for line in lines:
        assert line == line.rstrip()
        assert _width(line) <= width or (" " not in line.strip() and line.isascii())


def test_docstring_args_wrap_once_under_their_name(tmp_path: Path) -> None:
    """Each Args entry starts `name:` at 8 spaces and its continuation lines sit at 12."""
    out = tmp_path / "events.py"
    assert main(["plan", "codegen", str(ROOT / "examples" / "securities_app.plan.json"), "-o", str(out)]) == 0
    in_args = False
    checked = 0
    for line in out.read_text().splitlines():
        if line.strip() == "Args:":
            in_args = True
            continue
        if in_args and (not line.strip() or line.strip() == '"""'):
            in_args = False
        if in_args:
            checked += 1
            assert re.match(r"^ {8}[a-z_][a-z0-9_]*: |^ {12}\S", line), line
    assert checked > 500
