"""Every command documents itself: help with a description and a worked example."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from maidian.collector.cli import build_parser, main


def walk(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk(sub, (*path, name))


COMMANDS = list(walk(build_parser()))


def test_there_are_commands() -> None:
    names = {" ".join(p) for p, _ in COMMANDS}
    assert {"plan", "plan validate"} <= names


@pytest.mark.parametrize(("path", "parser"), COMMANDS, ids=[" ".join(p) or "maidian" for p, _ in COMMANDS])
def test_help_has_a_description_and_an_example(path: tuple[str, ...], parser: argparse.ArgumentParser) -> None:
    text = parser.format_help()
    assert parser.description, f"maidian {' '.join(path)} has no description"
    assert "example:\n  maidian " in text, f"maidian {' '.join(path)} --help shows no example"
    example = text.split("example:\n  ", 1)[1].splitlines()[0]
    assert example.startswith("maidian " + " ".join(path)), example


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("maidian ")
