"""The collector's folders are its architecture: import contracts, no circles, a cheap face (ARCHITECTURE.md).

The contracts themselves live in pyproject.toml (`[tool.importlinter]`) and run
here; each is also shown to fail on a deliberate violation, so a contract that
silently stopped checking anything would be noticed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import ROOT

CLI = ["maidian.collector", "maidian.collector.cli", *(f"maidian.collector.cli.{m}" for m in ("commands", "output"))]


def modules_after(*args: str) -> set[str]:
    """The maidian.collector modules loaded by running `maidian ARGS` (which exits through argparse)."""
    probe = textwrap.dedent(
        f"""
        import json, sys
        from maidian.collector.cli import main
        try:
            main({list(args)!r})
        except SystemExit:
            pass
        print(json.dumps(sorted(m for m in sys.modules if m.startswith("maidian.collector"))))
        """
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return set(json.loads(out.splitlines()[-1]))


def test_plan_help_loads_no_collector_module_beyond_the_cli() -> None:
    loaded = modules_after("plan", "--help")
    assert {m for m in loaded if not m.startswith("maidian.collector.cli")} == {"maidian.collector"}


def test_help_loads_neither_the_pipeline_nor_the_vendor_decoders() -> None:
    loaded = modules_after("--help")
    heavy = ("pipeline", "vendors", "store", "identity", "http", "read", "service", "privacy", "qa")
    assert not {m for m in loaded if m.split(".")[2:3] and m.split(".")[2] in heavy}, loaded


def copy_tree(tmp_path: Path, module: str, line: str) -> Path:
    """The three packages copied under tmp_path/tree/maidian, with `line` added to one collector module."""
    import shutil

    copy = tmp_path / "tree"
    (copy / "maidian").mkdir(parents=True)
    for package in ("collector", "tracking_plan", "sdk"):
        shutil.copytree(ROOT / package, copy / "maidian" / package)
    target = copy / "maidian" / "collector" / module
    target.write_text(target.read_text() + f"\n{line}  # noqa\n")
    return copy


def lint_imports(root: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The import contracts of pyproject.toml, checked against the installed tree or a copy at `root`."""
    exe = Path(sys.executable).with_name("lint-imports")
    env = None if root is None else {"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [str(exe), "--no-cache", str(ROOT / "pyproject.toml")],
        cwd=root or ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def test_the_import_contracts_hold() -> None:
    proc = lint_imports()
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("module", "line"),
    [
        ("store/frames.py", "from maidian.collector.pipeline import ingest as _up"),  # an upward import
        ("pipeline/judge.py", "import aiohttp as _edge"),  # aiohttp outside the edge
    ],
)
def test_the_contracts_fail_on_a_violation(tmp_path: Path, module: str, line: str) -> None:
    """Copy the packages, add one bad import, and the linter must say so."""
    proc = lint_imports(copy_tree(tmp_path, module, line))
    assert proc.returncode != 0, proc.stdout
    assert "BROKEN" in proc.stdout


CYCLES = textwrap.dedent(
    """
    import json, sys
    import grimp

    graph = grimp.build_graph("maidian.collector", cache_dir=None)
    edges = {m: graph.find_modules_directly_imported_by(m) & graph.modules for m in graph.modules}
    index, low, stack, on_stack, circles = {}, {}, [], set(), []
    sys.setrecursionlimit(10_000)

    def visit(m):
        index[m] = low[m] = len(index)
        stack.append(m)
        on_stack.add(m)
        for n in edges[m]:
            if n not in index:
                visit(n)
                low[m] = min(low[m], low[n])
            elif n in on_stack:
                low[m] = min(low[m], index[n])
        if low[m] == index[m]:
            part = []
            while True:
                n = stack.pop()
                on_stack.discard(n)
                part.append(n)
                if n == m:
                    break
            if len(part) > 1:
                circles.append(sorted(part))

    for m in sorted(graph.modules):
        if m not in index:
            visit(m)
    print(json.dumps(circles))
    """
)


def import_circles(root: Path | None = None) -> list[list[str]]:
    """Groups of collector modules that import each other, directly or through others (TYPE_CHECKING included)."""
    env = None if root is None else {"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", CYCLES], capture_output=True, text=True, check=True, env=env)
    circles: list[list[str]] = json.loads(proc.stdout)
    return circles


def test_no_two_collector_modules_import_each_other() -> None:
    assert import_circles() == []


def test_a_circle_is_found(tmp_path: Path) -> None:
    copy = copy_tree(tmp_path, "identity/types.py", "from maidian.collector.identity import graph as _circle")
    circles = import_circles(copy)
    assert any({"maidian.collector.identity.types", "maidian.collector.identity.graph"} <= set(c) for c in circles)
