"""The distribution's layout: every package folder is listed, and the namespace maps onto the folders."""

from __future__ import annotations

import tomllib
from pathlib import Path

from tests.conftest import ROOT

FOLDERS = {"tracking_plan": "maidian.tracking_plan", "sdk": "maidian.sdk", "collector": "maidian.collector"}


def test_every_package_folder_is_listed_in_pyproject() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = set()
    for folder, package in FOLDERS.items():
        assert config["package-dir"][package] == folder
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([package, *rel.parts]))
    assert found == listed


def test_every_package_is_typed() -> None:
    for folder in FOLDERS:
        for init in (ROOT / folder).rglob("__init__.py"):
            assert (init.parent / "py.typed").exists(), init.parent


def test_typecheck_links_point_at_the_folders() -> None:
    for folder in FOLDERS:
        link = ROOT / ".typecheck" / "maidian" / folder
        assert link.is_symlink()
        assert link.resolve() == (ROOT / folder).resolve()


def test_the_plan_package_imports_no_sibling() -> None:
    for path in Path(ROOT / "tracking_plan").rglob("*.py"):
        text = path.read_text()
        assert "maidian.sdk" not in text, path
        assert "maidian.collector" not in text, path


def test_the_collector_never_imports_the_sdk() -> None:
    for path in Path(ROOT / "collector").rglob("*.py"):
        assert "maidian.sdk" not in path.read_text(), path


def _name(requirement: str) -> str:
    """The normalised distribution name of a requirement line (PEP 503)."""
    import re

    head = re.split(r"[\s;<>=!~\[(]", requirement.strip(), maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", head).lower()


def test_the_lock_pins_every_dependency_of_every_extra() -> None:
    """A dependency added to pyproject.toml without `scripts/lock` would install unpinned: fail instead."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r) for r in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        wanted |= {_name(r) for r in extra if not r.startswith("maidian[")}
    pinned = {}
    for text in (ROOT / "constraints.txt").read_text().splitlines():
        line = text.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pinned[_name(name)] = version
    assert wanted - pinned.keys() == set(), "run scripts/lock"
    assert all(pinned.values()), "every line of constraints.txt pins one version"


def test_ci_and_the_readme_install_from_the_lock() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install -c constraints.txt -e '.[dev]' && .venv/bin/pytest" in readme
    assert "-c constraints.txt -e '.[dev]'" in ci
