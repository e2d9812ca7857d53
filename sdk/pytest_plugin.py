"""The maidian pytest plugin: a wrong event fails the unit test that sent it, with the plan's reason.

Installed with maidian and loaded by pytest through the `pytest11` entry point,
it does nothing until a test asks for its fixture or the configuration names a
client to replace. One line in the project's pytest configuration is enough:

    [tool.pytest.ini_options]
    maidian_plan = "tracking_plan.json"

and a test gets a `maidian_recorder` (a `maidian.sdk.testing.Recorder` for that
plan, strict by default) to hand to the code under test:

    def test_buy_tracks_the_order(maidian_recorder):
        buy(maidian_recorder, stock_code="600519", quantity=100)
        maidian_recorder.assert_tracked("stock_order_submit", stock_code="600519")

To make the app's own client record in every test without touching the code
under test, name it (a dotted path to the object the app tracks through):

    maidian_client = ["myapp.analytics.client"]

Rules:
- A plan violation fails the test with the plan's reasons: in strict mode the
  call raises `InvalidEvent` at once; and whatever happened to that exception
  (app code may catch everything), the test fails after its body if any event
  it tracked broke the plan. A test that breaks the plan on purpose says so
  with `maidian_recorder.expect_violation("enum")`.
- Settings, strongest first: the `maidian` marker (`plan=`, `mode=`,
  `sender=`), the command line (`--maidian-plan`), the ini keys
  (`maidian_plan`, `maidian_mode`, `maidian_sender`, `maidian_client`). A
  relative plan path is relative to the ini file's folder (the command line's:
  to the current folder).
- `sender = "app"` (the default) also fails a `trigger: server` event, which
  the collector would refuse from an app; `"server"` records as a signed
  backend source.
- The plan is loaded and compiled once per session; each test gets the
  recorder reset (no events, identities or super properties).
- Loading this module imports nothing but pytest: it is loaded in every pytest
  session where maidian is installed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import Generator

    from .testing import Recorder

__all__ = ["maidian_recorder"]

_RECORDER = pytest.StashKey["Recorder"]()
_CACHE = pytest.StashKey[dict[tuple[str | None, str, str], "Recorder"]]()
_MODES = ("strict", "warn")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("maidian", "maidian tracking-plan checks")
    group.addoption(
        "--maidian-plan", dest="maidian_plan", default=None, help="the tracking plan the maidian_recorder checks"
    )
    parser.addini("maidian_plan", "the tracking plan the maidian_recorder fixture checks events against", default="")
    parser.addini("maidian_mode", "strict (raise at the call; default) or warn (fail after the test)", default="")
    parser.addini("maidian_sender", "app (default: write key) or server (signed backend source)", default="")
    parser.addini(
        "maidian_client",
        "dotted paths of the app's client objects to replace with the maidian_recorder in every test",
        type="linelist",
        default=[],
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "maidian(plan=None, mode=None, sender=None): settings of the maidian_recorder for this test"
    )
    if config.getini("maidian_client"):
        config.pluginmanager.register(_EveryTest(), "maidian-every-test")


class _EveryTest:
    """Registered only when `maidian_client` names clients: every test then records through the plugin."""

    @pytest.fixture(autouse=True)
    def _maidian_client_swap(self, maidian_recorder: Recorder) -> None:
        return None


def _settings(request: pytest.FixtureRequest) -> tuple[str | None, str, str]:
    config = request.config
    marker = request.node.get_closest_marker("maidian")
    wanted: dict[str, Any] = dict(marker.kwargs) if marker is not None else {}
    plan = wanted.get("plan")
    base = config.inipath.parent if config.inipath is not None else config.rootpath
    if plan is not None:
        plan = str(Path(base, plan))
    elif config.getoption("maidian_plan"):
        plan = os.path.abspath(config.getoption("maidian_plan"))
    elif config.getini("maidian_plan"):
        plan = str(Path(base, config.getini("maidian_plan")))
    mode = str(wanted.get("mode") or config.getini("maidian_mode") or "strict")
    sender = str(wanted.get("sender") or config.getini("maidian_sender") or "app")
    if mode not in _MODES:
        raise pytest.UsageError(f"maidian_mode must be strict or warn, not {mode!r}")
    if sender not in ("app", "server"):
        raise pytest.UsageError(f"maidian_sender must be app or server, not {sender!r}")
    return plan, mode, sender


def _recorder(config: pytest.Config, settings: tuple[str | None, str, str]) -> Recorder:
    from maidian.tracking_plan.errors import PlanLoadError

    from .testing import Recorder

    cache = config.stash.setdefault(_CACHE, {})
    recorder = cache.get(settings)
    if recorder is None:
        plan, mode, sender = settings
        try:
            recorder = Recorder(plan, mode=mode if plan is not None else None, sender=sender)
        except PlanLoadError as exc:
            raise pytest.UsageError(f"maidian: the tracking plan cannot be used:\n{exc}") from None
        cache[settings] = recorder
    return recorder


@pytest.fixture
def maidian_recorder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Generator[Recorder]:
    """A `Recorder` for the configured plan, fresh for this test; names in `maidian_client` point at it."""
    recorder = _recorder(request.config, _settings(request))
    recorder.reset()
    for target in request.config.getini("maidian_client"):
        monkeypatch.setattr(target, recorder)
    request.node.stash[_RECORDER] = recorder
    yield recorder
    del request.node.stash[_RECORDER]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    result = yield  # the test's own failure, if any, goes up unchanged
    recorder = item.stash.get(_RECORDER, None)
    if recorder is not None:
        problems = recorder.problems()
        if problems:
            plan = recorder.plan
            where = f" ({plan.source} {plan.version})" if plan is not None else ""
            lines = "\n".join(f"  {p}" for p in problems)
            pytest.fail(f"maidian: what this test tracked breaks the tracking plan{where}:\n{lines}", pytrace=False)
    return result
