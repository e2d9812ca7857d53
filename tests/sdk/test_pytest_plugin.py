"""The pytest plugin, run as an app developer runs it: a project with one line of configuration (pytester)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tests.conftest import MINI_PLAN

APP = '''
"""The app under test: it tracks through a module-level client, as apps do."""
from maidian.sdk import Client

client = Client("http://127.0.0.1:9", write_key="wk_app")


def buy(code, quantity, side="buy"):
    client.track("stock_order_submit", {"stock_code": code, "side": side, "price": 10.5, "quantity": quantity})


def buy_quietly(code, side):
    try:
        buy(code, 100, side)
    except Exception:
        pass  # tracking must never break the purchase
'''


# The inner sessions load every installed plugin, pytest-asyncio too, which wants its loop scope said.
ASYNCIO = "asyncio_default_fixture_loop_scope = function\n"


def ini(pytester: pytest.Pytester, lines: str = "") -> None:
    pytester.makeini(f"[pytest]\n{ASYNCIO}{lines}")


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    ini(pytester, f"maidian_plan = {MINI_PLAN}\n")
    pytester.makepyfile(shop=APP)
    pytester.syspathinsert()
    return pytester


def test_a_passing_test_and_assert_tracked(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_shop="""
        import shop

        def test_buy_tracks_the_order(maidian_recorder, monkeypatch):
            monkeypatch.setattr(shop, "client", maidian_recorder)
            shop.buy("600519", 200)
            maidian_recorder.assert_tracked("stock_order_submit", stock_code="600519", quantity=200)
            maidian_recorder.assert_not_tracked("account_login")

        def test_each_test_starts_empty(maidian_recorder):
            assert maidian_recorder.events == []
        """
    )
    project.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=2)


def test_a_violating_event_fails_the_test_with_the_plans_reason(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_shop="""
        def test_sell_with_a_bad_side(maidian_recorder):
            order = {"stock_code": "600519", "side": "hold", "price": 1, "quantity": 100}
            maidian_recorder.track("stock_order_submit", order)
        """
    )
    result = project.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*InvalidEvent*", "*/properties/side: expected one of*buy*sell* [[]enum[]]*"])


def test_one_config_line_makes_the_apps_own_client_record_and_a_swallowed_violation_still_fails(
    project: pytest.Pytester,
) -> None:
    ini(project, f"maidian_plan = {MINI_PLAN}\nmaidian_client = shop.client\n")
    project.makepyfile(
        test_shop="""
        import shop

        def test_buy(maidian_recorder):
            shop.buy("600519", 100)
            maidian_recorder.assert_tracked("stock_order_submit", quantity=100)

        def test_a_test_that_never_asks_for_the_fixture_is_checked_too():
            shop.buy_quietly("600519", "hold")

        def test_a_violation_on_purpose(maidian_recorder):
            with maidian_recorder.expect_violation("enum"):
                shop.buy("600519", 100, side="hold")
        """
    )
    result = project.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*test_a_test_that_never_asks_for_the_fixture_is_checked_too*",
            "*maidian: what this test tracked breaks the tracking plan (*mini.plan.json 1.0.0):",
            "*stock_order_submit: /properties/side: expected one of*[[]enum[]]",
        ]
    )


def test_warn_mode_server_sender_and_the_trigger_rule(project: pytest.Pytester) -> None:
    ini(project, f"maidian_plan = {MINI_PLAN}\nmaidian_mode = warn\n")
    project.makepyfile(
        test_shop="""
        import pytest

        FILLED = {"stock_code": "600519", "filled_quantity": 100}

        def test_an_app_may_not_send_a_server_event(maidian_recorder):
            maidian_recorder.track("stock_order_filled", FILLED)

        @pytest.mark.maidian(sender="server")
        def test_a_backend_may(maidian_recorder):
            maidian_recorder.track("stock_order_filled", FILLED, identities={"login_id": "u_1"})
            event = maidian_recorder.assert_tracked("stock_order_filled")
            assert event["properties"]["$server"] is True

        def test_warn_mode_fails_after_the_test(maidian_recorder):
            order = {"stock_code": "6005", "side": "buy", "price": 1, "quantity": 100}
            maidian_recorder.track("stock_order_submit", order)
            assert len(maidian_recorder.events) == 1  # recorded anyway, as the SDK sends it anyway
        """
    )
    result = project.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines_random(
        [
            "*stock_order_filled: /event: event 'stock_order_filled' is marked 'trigger: server'*[[]trigger[]]",
            "*stock_order_submit: /properties/stock_code: *[[]pattern[]]",
        ]
    )


def test_the_command_line_option_and_a_plan_that_cannot_be_used(pytester: pytest.Pytester) -> None:
    ini(pytester)
    pytester.makepyfile(
        test_x="""
        def test_x(maidian_recorder):
            maidian_recorder.track("account_login", {"method": "sms"})
            maidian_recorder.assert_tracked("account_login", method="sms")
        """
    )
    pytester.runpytest("-p", "no:cacheprovider", f"--maidian-plan={MINI_PLAN}").assert_outcomes(passed=1)
    broken = pytester.path / "broken.plan.json"
    broken.write_text("{", "utf-8")
    result = pytester.runpytest("-p", "no:cacheprovider", f"--maidian-plan={broken}")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*maidian: the tracking plan cannot be used*", "*broken.plan.json:1:2: invalid JSON*"])


def test_without_a_plan_it_records_without_checks(pytester: pytest.Pytester) -> None:
    ini(pytester)
    pytester.makepyfile(
        test_x="""
        def test_x(maidian_recorder):
            maidian_recorder.track("anything_at_all", {"x": 1})
            maidian_recorder.assert_tracked("anything_at_all", x=1)
        """
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_loading_the_plugin_imports_nothing_heavy() -> None:
    code = textwrap.dedent(
        """
        import sys
        import maidian.sdk.pytest_plugin
        heavy = [m for m in ("maidian.sdk.testing", "maidian.sdk._api", "msgspec", "jsonschema_rs", "aiohttp")
                 if m in sys.modules]
        print(heavy)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
