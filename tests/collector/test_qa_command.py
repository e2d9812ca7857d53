"""`maidian qa` end to end: the banner's settings work for an SDK build, the page follows, Ctrl-C cleans up."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from maidian.sdk import Client
from tests.collector.qa_process import start_qa
from tests.conftest import MINI_PLAN

ORDER = {"stock_code": "600519", "side": "buy", "price": 1688.5, "quantity": 200}


def test_a_qa_session_from_start_to_stop() -> None:
    qa = start_qa("--tag", "qa-build-42")
    try:
        assert qa.live_url == qa.endpoint + "/live"
        assert qa.write_key.startswith("wk_qa_")
        assert "(temporary: deleted when you stop)" in qa.banner
        assert f"MAIDIAN_ENDPOINT={qa.endpoint} MAIDIAN_WRITE_KEY={qa.write_key}" in qa.banner
        assert 'client.register_super_properties({"$test_tag": "qa-build-42"})' in qa.banner
        assert "token" not in qa.banner  # on 127.0.0.1 this machine's browsers need none

        # The build under test, configured exactly as the banner says.
        assert "pii_key=YOUR_PII_KEY" in qa.banner  # the plan hashes an identity
        build = Client(qa.endpoint, write_key=qa.write_key, plan=str(MINI_PLAN), pii_key=b"the-apps-pii-key")
        build.register_super_properties({"$test_tag": "qa-build-42"})
        build.login("用户_张三")
        build.track("stock_order_submit", {**ORDER, "mobile": "13812345678"})  # the SDK masks it
        build.track("stock_order_submit", {**ORDER, "side": "hold"})
        assert build.flush(10)
        build.close(5)

        info = qa.wait_for("/live/info", lambda d: d["counts"]["accepted"] + d["counts"]["quarantined"] >= 3)
        assert info["counts"] == {"accepted": 2, "quarantined": 1, "duplicate": 0}  # the bind, one order; one bad
        assert info["tags"] == ["qa-build-42"]
        coverage = qa.get_json("/live/coverage?format=json&tag=qa-build-42")
        assert (coverage["totals"]["seen"], coverage["totals"]["invalid"], coverage["totals"]["expected_seen"]) == (
            2,
            1,
            1,
        )
        with urllib.request.urlopen(qa.live_url, timeout=10) as resp:
            assert resp.status == 200
            assert "maidian live" in resp.read().decode("utf-8")

        # The same numbers from the data directory, while the session runs.
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "maidian.collector.cli",
                "coverage",
                "--plan",
                str(MINI_PLAN),
                "--data",
                str(qa.data_dir),
                "--tag",
                "qa-build-42",
                "--format",
                "json",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert json.loads(out)["totals"] == coverage["totals"]
        assert qa.data_dir.is_dir()
    finally:
        tail = qa.stop()
    assert qa.proc.returncode == 0
    assert "this session received 2 events (1 accepted, 1 quarantined); planned events seen: 1 of 3" in tail
    assert "never seen: stock_order_filled, account_login" in tail
    assert not qa.data_dir.exists()


def test_a_kept_data_directory_and_the_builds_own_write_key(tmp_path: Path) -> None:
    data = tmp_path / "qa-data"
    qa = start_qa("--data", str(data), "--write-key", "wk_build_own_key")
    try:
        assert qa.write_key == "wk_build_own_key"
        assert "temporary" not in qa.banner
        build = Client(qa.endpoint, write_key="wk_build_own_key")
        build.track("account_login", {"method": "sms"})
        assert build.flush(10)
        build.close(5)
        qa.wait_for("/live/info", lambda d: d["counts"]["accepted"] == 1)
    finally:
        qa.stop()
    assert (data / "raw").is_dir()  # kept


def test_a_plan_that_cannot_be_used_stops_it_with_the_plans_problems(tmp_path: Path) -> None:
    broken = tmp_path / "broken.plan.json"
    broken.write_text('{"maidian_plan": 1}', "utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "maidian.collector.cli", "qa", "--plan", str(broken), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "broken.plan.json" in proc.stdout + proc.stderr


def test_the_live_pages_data_is_refused_to_other_host_names() -> None:
    qa = start_qa()
    try:
        request = urllib.request.Request(qa.endpoint + "/live/info", headers={"Host": "rebound.example"})
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=10)
        assert info.value.code == 401
        info.value.close()
    finally:
        qa.stop()


def test_listening_for_phones_on_the_network_prints_the_token(tmp_path: Path) -> None:
    # Checked on the banner alone: tests never listen beyond 127.0.0.1.
    from maidian.collector.run.qa import QaOptions, _banner, _Session, qa_config
    from maidian.tracking_plan import load_plan

    options = QaOptions(plan=MINI_PLAN, host="0.0.0.0", port=8106)
    session = _Session(qa_config(options, tmp_path, ("wk_1",), "tok-123"), "wk_1", "tok-123", "t", temporary=True)
    text = _banner(load_plan(MINI_PLAN), session, 8106, moved=False)
    assert "live page   http://127.0.0.1:8106/live" in text
    assert "a browser on another machine opens the live page there with the token tok-123" in text
    moved = _banner(load_plan(MINI_PLAN), session, 40123, moved=True)
    assert "(port 8106 was taken: this session listens on 40123)" in moved
