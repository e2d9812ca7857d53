"""The user guides' worked examples run as written (docs/guide-*.md)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from maidian.collector.config import resolve_config
from maidian.collector.settings import hash_key
from tests.conftest import MINI_PLAN, ROOT

DOCS = ROOT / "docs"
GUIDES = ("guide-app-developer.md", "guide-qa.md", "guide-backend.md", "guide-operator.md", "guide-support.md")
_BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.DOTALL)


def block(guide: str, first_line: str) -> str:
    """The fenced code block of `guide` that starts with `first_line`."""
    for _lang, body in _BLOCK.findall((DOCS / guide).read_text("utf-8")):
        if body.startswith(first_line):
            return str(body)
    raise AssertionError(f"{guide} has no code block starting with {first_line!r}")


def project(pytester: pytest.Pytester, pyproject: str) -> None:
    shutil.copy(MINI_PLAN, pytester.path / "tracking_plan.json")
    # The inner session loads every installed plugin, pytest-asyncio too, which wants its loop scope said.
    text = pyproject.replace(
        "[tool.pytest.ini_options]\n", '[tool.pytest.ini_options]\nasyncio_default_fixture_loop_scope = "function"\n'
    )
    pytester.makepyprojecttoml(text)
    pytester.syspathinsert()


def test_every_guide_is_linked_from_the_readme() -> None:
    readme = (ROOT / "README.md").read_text("utf-8")
    for guide in GUIDES:
        assert f"docs/{guide}" in readme


def test_the_app_developers_example(pytester: pytest.Pytester) -> None:
    project(pytester, block("guide-app-developer.md", "# pyproject.toml"))
    pytester.makepyfile(shop=block("guide-app-developer.md", "# shop.py"))
    pytester.makepyfile(test_shop=block("guide-app-developer.md", "# test_shop.py"))
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*InvalidEvent: event 'stock_order_submit' breaks the tracking plan:",
            '*/properties/side: expected one of "buy", "sell" [[]enum[]]',
        ]
    )


def test_the_backend_example(pytester: pytest.Pytester) -> None:
    project(pytester, block("guide-backend.md", "# pyproject.toml"))
    pytester.makepyfile(orders=block("guide-backend.md", "# orders.py"))
    pytester.makepyfile(test_orders=block("guide-backend.md", "# test_orders.py"))
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_the_operators_configuration(tmp_path: Path) -> None:
    text = block("guide-operator.md", "# /etc/maidian/collector.toml")
    token = re.search(r"maidian keys hash '([^']+)'\n(\w+)", (DOCS / "guide-operator.md").read_text("utf-8"))
    assert token is not None
    assert hash_key(token.group(1)) == token.group(2)
    config_file = tmp_path / "collector.toml"
    config_file.write_text(text.replace("/etc/maidian/plan.json", str(MINI_PLAN)), "utf-8")
    config = resolve_config(file=config_file, env={})
    assert config.live.enabled
    assert config.live.token_sha256 == token.group(2)
    assert not config.live.allow_loopback


def test_the_support_configuration(tmp_path: Path) -> None:
    from maidian.collector.support.access import verify_password

    text = block("guide-support.md", "# /etc/maidian/support.toml")
    config_file = tmp_path / "support.toml"
    config_file.write_text(text.replace("/etc/maidian/plan.json", str(MINI_PLAN)), "utf-8")
    support = resolve_config(file=config_file, env={}).support
    assert support.enabled
    assert [(a.name, a.role) for a in support.accounts] == [("li.na", "agent"), ("wang.qiang", "officer")]
    assert verify_password("correct-horse-0571", support.accounts[0].password_scrypt)
