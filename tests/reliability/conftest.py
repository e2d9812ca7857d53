"""The reliability battery's fixtures, and the figures table at the end of the run.

Fixtures:
- `profile`: the CI profile, or the long one under `pytest --long` (profile.py);
- `figures`: the current test's row of the battery table (figures.py);
- `collectors`: starts `maidian serve` processes and kills whatever is left at teardown;
- `proxy`: a started fault proxy (proxy.py), stopped at teardown.

`pytest_terminal_summary` prints the table of every battery test that ran and
writes it to test-artifacts/reliability-<profile>.json; docs/reliability.md
records the figures of the last full runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.reliability.figures import Figures, Registry, render
from tests.reliability.procs import CollectorProcess, write_config
from tests.reliability.profile import CI, LONG, Profile
from tests.reliability.proxy import FaultProxy

REGISTRY = Registry()
_PROFILE: list[Profile] = [CI]


def pytest_configure(config: pytest.Config) -> None:
    _PROFILE[0] = LONG if config.getoption("--long", default=False) else CI


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under --long, the battery's tests get the long profile's timeout (unless they set their own)."""
    if _PROFILE[0] is not LONG:
        return
    here = Path(__file__).parent
    for item in items:
        if item.path.is_relative_to(here) and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(LONG.test_timeout_s))


@pytest.fixture(scope="session")
def profile() -> Profile:
    return _PROFILE[0]


def _test_id(item: pytest.Item) -> str:
    module = item.module.__name__.rsplit(".", 1)[-1] if item.module is not None else ""  # type: ignore[attr-defined]
    # test_t07_lost_acks -> T7
    parts = module.split("_")
    if len(parts) > 1 and parts[1].startswith("t") and parts[1][1:].isdigit():
        return f"T{int(parts[1][1:])}"
    return "T?"


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[Figures]:
    item = request.node
    name = item.name.removeprefix("test_")
    row = REGISTRY.for_test(item.nodeid, _test_id(item), name)
    started = time.monotonic()
    yield row
    row.seconds += time.monotonic() - started


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    report = yield
    row = REGISTRY.rows.get(item.nodeid)
    if row is not None:
        if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
            if hasattr(report, "wasxfail"):
                row.verdict = "xfailed" if report.skipped else "xpassed"
            else:
                row.verdict = report.outcome
        elif report.when == "teardown" and report.outcome == "failed":
            row.verdict = "failed (teardown)"
    return report


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    rows = REGISTRY.ordered()
    if not rows:
        return
    profile = _PROFILE[0]
    terminalreporter.section(f"reliability battery: {profile.name} profile")
    for line in render(rows):
        terminalreporter.write_line(line)
    path = ROOT / "test-artifacts" / f"reliability-{profile.name}.json"
    REGISTRY.write_json(path, profile.name)
    terminalreporter.write_line(f"figures written to {path.relative_to(ROOT)}")


@pytest.fixture
def collectors(tmp_path: Path) -> Iterator[Callable[..., CollectorProcess]]:
    """`start(config=None, data_dir=None, **kw)`: a started collector; all are killed at teardown."""
    started: list[CollectorProcess] = []

    def start(config: Path | None = None, *, data_dir: Path | None = None, **kw: Any) -> CollectorProcess:
        if config is None:
            config = write_config(tmp_path / "collector.toml", data_dir or tmp_path / "data")
        proc = CollectorProcess(config, **kw)
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        if proc.alive():
            proc.kill()


@pytest.fixture
def proxy() -> Iterator[FaultProxy]:
    with FaultProxy(seed=1) as running:
        yield running


@pytest.fixture
def proxied(collectors: Callable[..., CollectorProcess], proxy: FaultProxy) -> CollectorProcess:
    """A started collector with the fault proxy routed to it: where most battery tests begin."""
    collector = collectors()
    proxy.set_upstream(collector.url)
    return collector
