"""A support view to test against: the example plan's three customers, a shared branch pad, two staff accounts.

The example events (examples/events.jsonl) are moved to the last day and sent
by a signed source (so `trigger: server` events are accepted too). Added:
- a branch pad (`PAD`) on which customer A opened the app before logging in,
  then logged in; later customer B logged in on the same pad: B's event
  carries the pad's anonymous id but belongs to B;
- a quarantined deposit of customer A (a currency the plan does not allow),
  and one of customer B on the pad;
- customer A's mobile number, hashed with `PII_KEY` as the app would.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from maidian.collector.settings import (
    AuthConfig,
    Config,
    ServerSource,
    StorageConfig,
    SupportAccount,
    SupportConfig,
    WriteKey,
    hash_key,
)
from maidian.collector.support.access import hash_password
from maidian.tracking_plan import Plan, load_plan
from maidian.tracking_plan.pii import hash_value
from tests.collector.helpers import KEY, SECRET, SOURCE, body_of, signed_headers
from tests.conftest import ROOT

EXAMPLE_PLAN = ROOT / "examples" / "securities_app.plan.json"
PII_KEY = b"support-test-pii-key"
PII_ENV = "MAIDIAN_TEST_SUPPORT_PII_KEY"
MOBILE = "13812345678"
PAD = "pad-branch-0571-01"
A_LOGIN, A_CUSTOMER, A_FUND, A_ANON = (
    "U2025112300871",
    "3100871234",
    "310087123401",
    "5c0f7a2e-93d1-4b8e-a6f4-1e2d3c4b5a69",
)
B_LOGIN = "U2019061100042"
AGENT, AGENT_PASSWORD = "li.na", "agent-password-0571"
OFFICER, OFFICER_PASSWORD = "wang.qiang", "officer-password-0571"
AGENT2, AGENT2_PASSWORD = "zhao.lei", "agent2-password-0571"
# Cheaper than the default (N=2**17): the lowest cost verify_password accepts, so logins in tests stay fast.
TEST_SCRYPT_N = 2**14
MAX_FAILURES = 3


def _example_events() -> list[dict[str, Any]]:
    lines = (ROOT / "examples" / "events.jsonl").read_text("utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def customer_events(now_ms: int) -> list[dict[str, Any]]:
    """The example customers, the shared pad and a quarantined event, ending a minute before `now_ms`."""
    events = _example_events()
    shift = now_ms - 60_000 - max(e["time"] for e in events)
    for e in events:
        e["time"] += shift
        ids = e.get("identities", {})
        if "mobile_hash" in ids:
            ids["mobile_hash"] = hash_value(MOBILE, PII_KEY)
    by_name = {e.get("event"): e for e in events}
    first = min(e["time"] for e in events)

    def on_pad(seq: int, t: int, ids: dict[str, str], name: str = "stock_quote_view") -> dict[str, Any]:
        base = copy.deepcopy(by_name[name])
        base.update(event_id=f"0193padbranch057101-{seq}", time=t, identities=ids)
        return base

    pad = [
        on_pad(1, first + 1_000, {"anonymous_id": PAD}, "app_launch"),
        on_pad(2, first + 2_000, {"anonymous_id": PAD, "login_id": A_LOGIN}),
        on_pad(3, first + 3_000, {"anonymous_id": PAD, "login_id": B_LOGIN}),
    ]
    bad = copy.deepcopy(by_name["bank_deposit_submit"])
    bad.update(event_id="019ab3bf2d50d90b17e3c5a4f6082b7e-99", time=first + 4_000)
    bad["properties"]["currency"] = "XYZ"
    b_bad = on_pad(4, first + 5_000, {"anonymous_id": PAD, "login_id": B_LOGIN}, "bank_deposit_submit")
    b_bad["properties"]["currency"] = "XYZ"
    return [*events, *pad, bad, b_bad]


def live_deposit(seq: int, now_ms: int) -> dict[str, Any]:
    """Customer A retrying a deposit on the phone, now."""
    event = copy.deepcopy(next(e for e in _example_events() if e.get("event") == "bank_deposit_submit"))
    event.update(event_id=f"019ab3bf2d50d90b17e3c5a4f6082b7e-{100 + seq}", time=now_ms)
    return event


@functools.cache
def example_plan() -> Plan:
    return load_plan(EXAMPLE_PLAN)


def make_support_app(config: Config) -> Any:
    """The collector app for `config`, with the example plan loaded once per test run."""
    from maidian.collector.http.app import make_app
    from maidian.collector.service import Collector

    return make_app(config, Collector(config, plan=example_plan()))


@functools.cache
def accounts(n: int = TEST_SCRYPT_N) -> tuple[SupportAccount, ...]:
    return (
        SupportAccount(AGENT, "agent", password_scrypt=hash_password(AGENT_PASSWORD, n=n)),
        SupportAccount(AGENT2, "agent", password_scrypt=hash_password(AGENT2_PASSWORD, n=n)),
        SupportAccount(OFFICER, "officer", password_scrypt=hash_password(OFFICER_PASSWORD, n=n)),
    )


def support_config(data_dir: Path, **support: Any) -> Config:
    settings = SupportConfig(enabled=True, accounts=accounts(), pii_key_env=PII_ENV, max_failures=MAX_FAILURES)
    return Config(
        plan=EXAMPLE_PLAN,
        storage=replace(StorageConfig(), data_dir=data_dir, index_interval_s=0.05),
        auth=AuthConfig(write_keys=(WriteKey("app", hash_key(KEY)),), sources=(ServerSource(SOURCE, SECRET),)),
        support=replace(settings, **support),
    )


def signed_batch(events: list[dict[str, Any]]) -> tuple[bytes, dict[str, str]]:
    body = body_of(events)
    return body, signed_headers(body)


def config_toml(data_dir: Path) -> str:
    """The same configuration as a file, for a real `maidian serve`."""
    lines = [
        f'plan = "{EXAMPLE_PLAN}"',
        "[storage]",
        f'data_dir = "{data_dir}"',
        "index_interval_s = 0.05",
        "[[write_keys]]",
        'name = "app"',
        f'sha256 = "{hash_key(KEY)}"',
        "[[sources]]",
        f'name = "{SOURCE}"',
        f'secret = "{SECRET.decode()}"',
        "[support]",
        "enabled = true",
        f'pii_key_env = "{PII_ENV}"',
        f"max_failures = {MAX_FAILURES}",
    ]
    for a in accounts():
        lines += ["[[support.accounts]]", f'name = "{a.name}"', f'role = "{a.role}"']
        lines.append(f'password_scrypt = "{a.password_scrypt}"')
    return "\n".join(lines) + "\n"


class SupportServer:
    """`maidian serve --config` with the support view, as a subprocess on 127.0.0.1; its log kept in a file."""

    def __init__(self, tmp: Path) -> None:
        self.data_dir = tmp / "data"
        self.config = tmp / "maidian.toml"
        self.config.write_text(config_toml(self.data_dir), "utf-8")
        self.log = tmp / "server.log"
        cmd = [sys.executable, "-m", "maidian.collector.cli", "serve", "--config", str(self.config), "--port", "0"]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", PII_ENV: PII_KEY.decode()}
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.port = self._port()
        self.url = f"http://127.0.0.1:{self.port}"

    def _port(self, timeout_s: float = 30.0) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            text = self.log.read_text("utf-8", "replace")
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", text)
            if m:
                return int(m.group(1))
            if self.proc.poll() is not None:
                raise RuntimeError("the server exited:\n" + text)
            time.sleep(0.05)
        raise RuntimeError("the server did not start listening:\n" + self.log.read_text("utf-8", "replace"))

    def post(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        import urllib.request

        body, headers = signed_batch(events)
        request = urllib.request.Request(self.url + "/v1/batch", data=body, headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=15) as response:
            result: dict[str, Any] = json.loads(response.read())
        return result

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)
