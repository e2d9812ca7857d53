"""The SDK's start-up cost: importing it pulls in no HTTP stack and nothing heavy until used.

Wall-clock import time is measured in benchmarks/ (noisy on a shared machine);
here we assert what cannot be noisy: which modules an import loads.
"""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ["aiohttp", "jsonschema_rs", "jsonschema", "zstandard", "requests", "urllib3", "httpx", "asyncio"]


def loaded_after(code: str) -> set[str]:
    probe = f"import sys, json\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return set(json.loads(out.splitlines()[-1]))


def test_import_maidian_sdk_loads_next_to_nothing() -> None:
    modules = loaded_after("import maidian.sdk")
    # The logger, the proxy and TLS settings load with a client, not with the package.
    assert not {m for m in modules if m.split(".")[0] in {*HEAVY, "msgspec", "http", "logging", "ssl"}}
    assert "urllib.request" not in modules
    assert "maidian.tracking_plan.validator" not in modules


def test_a_sync_client_tracking_without_a_plan_needs_no_http_stack_or_validator() -> None:
    modules = loaded_after(
        "from maidian.sdk import Client\n"
        "c = Client('http://127.0.0.1:9', write_key='k')\n"
        "c.track('stock_order_submit', {'stock_code': '600519'})"
    )
    # zstandard may load when the sender builds its first batch; it is a base dependency, not an HTTP stack.
    assert not {m for m in modules if m.split(".")[0] in set(HEAVY) - {"zstandard"}}
    assert "maidian.tracking_plan.validator" not in modules
    assert "maidian.tracking_plan.loader" not in modules
