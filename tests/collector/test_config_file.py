"""Configuration that says no (issue 14, item 11): unknown keys and wrong types refused with file, line and key.

Every configuration the docs show still loads; a typo (`revokd = true`) or a
string where a boolean belongs (`revoked = "ture"`) stops the start, naming
the file, the line and the dotted key; `maidian serve --check-config` says so
without starting, and exits 0 for a usable configuration.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maidian.collector.config import file_shape, read_file, resolve_config
from maidian.collector.config_file import BOOL, INT, NUMBER, STR, Table, Tables, line_of
from maidian.collector.errors import ConfigError
from tests.collector.helpers import KEY
from tests.conftest import MINI_PLAN, ROOT
from tests.reliability.procs import write_config

KEY_HASH = "6a93cff91f803e8d3df62c69747d1afdba977b61702e0ceb88503e2d096920cf"


def _toml_blocks(doc: Path) -> list[str]:
    return re.findall(r"```toml\n(.*?)```", doc.read_text("utf-8"), flags=re.S)


@pytest.mark.parametrize("doc", ["collector.md", "guide-operator.md", "migration.md"])
def test_every_configuration_in_the_docs_passes(doc: str, tmp_path: Path) -> None:
    blocks = [b for b in _toml_blocks(ROOT / "docs" / doc) if "[tool." not in b]  # pyproject.toml is the SDK's
    assert blocks
    for i, block in enumerate(blocks):
        path = tmp_path / f"{i}.toml"
        path.write_text(block, "utf-8")
        read_file(path)  # the shape: every key known, every value of its type


def test_the_battery_and_helpers_configuration_resolves(tmp_path: Path) -> None:
    config = resolve_config(file=write_config(tmp_path / "c.toml", tmp_path / "data"), env={})
    assert config.auth.write_keys


def _config(tmp_path: Path, body: str, top: str = "") -> Path:
    path = tmp_path / "collector.toml"
    text = f'plan = "{MINI_PLAN}"\n{top}\n[[write_keys]]\nname = "app"\nsha256 = "{KEY_HASH}"\n{body}'
    path.write_text(text, "utf-8")
    return path


@pytest.mark.parametrize(
    ("body", "line", "where"),
    [
        ("revokd = true\n", 6, "write_keys[0].revokd"),
        ('revoked = "ture"\n', 6, "write_keys[0].revoked"),
        ('revoked = "true"\n', 6, "write_keys[0].revoked"),
        ("rate_events_per_s = true\n", 6, "write_keys[0].rate_events_per_s"),
        ('\n[server]\nport = "8106"\n', 8, "server.port"),
        ("\n[server]\nmax_in_flight = 2.5\n", 8, "server.max_in_flight"),
        ("\n[server]\nprot = 8106\n", 8, "server.prot"),
        ('\n[limits]\nmax_events = "2000"\n', 8, "limits.max_events"),
        ('\n[live]\nenabled = "yes"\n', 8, "live.enabled"),
        ("\n[storage]\ndurability = 1\n", 8, "storage.durability"),
        ('\n[[sources]]\nname = "orders"\nsecret = "0123456789abcdef"\nrevoked = 0\n', 10, "sources[0].revoked"),
        (
            '\n[[vendors.sensors.projects]]\nname = "broker"\nwrite_key = "app"\ntrusted = "false"\n',
            10,
            "vendors.sensors.projects[0].trusted",
        ),
        ('\n[vendors.sensors]\nproject = "broker"\n', 8, "vendors.sensors.project"),
        ("TOP:server = 1", 2, "server"),
        ('TOP:plna = "x"', 2, "plna"),
    ],
)
def test_unknown_keys_and_wrong_types_are_refused_with_file_line_and_key(
    tmp_path: Path, body: str, line: int, where: str
) -> None:
    path = _config(tmp_path, "", body.removeprefix("TOP:")) if body.startswith("TOP:") else _config(tmp_path, body)
    with pytest.raises(ConfigError) as refused:
        resolve_config(file=path, env={})
    assert str(refused.value).startswith(f"{path}:{line}: {where}: ")


def test_a_boolean_in_text_must_say_true_or_false() -> None:
    """Environment variables and flags are text: "ture" is refused there too, never read as false."""
    from maidian.collector.config import _coerce
    from maidian.collector.settings import LiveConfig

    with pytest.raises(ConfigError, match=r"live\.enabled"):
        _coerce("live", "enabled", "ture", LiveConfig)
    assert _coerce("live", "enabled", "off", LiveConfig) is False
    assert _coerce("live", "enabled", "YES", LiveConfig) is True


def _every_key(shape: Table) -> list[tuple[tuple[str | int, ...], object]]:
    """(path, a value of the right type) for every key of the shape."""
    sample = {BOOL: True, INT: 7, NUMBER: 7.5, STR: "x"}
    out: list[tuple[tuple[str | int, ...], object]] = []
    for key, kind in shape.keys.items():
        if isinstance(kind, Table):
            out += [((key, *p), v) for p, v in _every_key(kind)]
        elif isinstance(kind, Tables):
            out += [((key, 0, *p), v) for p, v in _every_key(kind.entry)]
        else:
            out.append(((key,), sample.get(kind, ["x"])))
    return out


def test_every_key_of_the_shape_is_known_and_located(tmp_path: Path) -> None:
    """Each key, written alone in its table, passes the shape and is found on its line."""
    for path, value in _every_key(file_shape()):
        *tables, key = path
        names = [p for p in tables if isinstance(p, str)]
        header = ""
        if names:
            header = f"[[{'.'.join(names)}]]\n" if any(isinstance(p, int) for p in tables) else f"[{'.'.join(names)}]\n"
        shown = str(value).lower() if isinstance(value, bool) else repr(value).replace("'", '"')
        text = f"# a comment\n{header}{key} = {shown}\n"
        file = tmp_path / "one.toml"
        file.write_text(text, "utf-8")
        read_file(file)
        assert line_of(text, tuple(path)) == 3 if header else 2, (path, text)


@settings(max_examples=100, deadline=None)
@given(filler=st.lists(st.sampled_from(["", "# note", 'name = "a"', "[server]", "port = 1"]), max_size=8))
def test_the_line_is_the_offending_entry_s_own(filler: list[str]) -> None:
    """Among several `[[write_keys]]` tables, the one with the typo is the one named."""
    lines = [f'plan = "{MINI_PLAN}"']
    lines += [f'[[write_keys]]\nname = "k0"\nsha256 = "{KEY_HASH}"']
    lines += [f'[[write_keys]]\nname = "k1"\nsha256 = "{KEY_HASH}"']
    text = "\n".join(lines) + "\nrevokd = true\n"
    expected = text.count("\n")
    assert line_of(text, ("write_keys", 1, "revokd")) == expected
    assert line_of(text, ("write_keys", 0, "name")) == 3
    assert line_of("\n".join([*filler, "[storage]", "data_dir = 1"]), ("storage", "data_dir")) == len(filler) + 2


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "maidian.collector.cli", "serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )


def test_check_config_validates_without_starting(tmp_path: Path) -> None:
    good = _serve("--config", str(_config(tmp_path, "revoked = true\n")), "--check-config", "--port", "1")
    assert good.returncode == 0, good.stderr
    assert "configuration OK" in good.stdout
    assert "listening" not in good.stderr
    bad = _serve("--config", str(_config(tmp_path, "revokd = true\n")), "--check-config")
    assert bad.returncode == 2
    assert f"{tmp_path / 'collector.toml'}:6: write_keys[0].revokd" in bad.stderr
    no_plan = _serve("--check-config", "--plan", str(tmp_path / "missing.json"), "--write-key", KEY)
    assert no_plan.returncode == 2
