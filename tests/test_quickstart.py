"""The README's first command: the quickstart runs a real collector, feeds it with the SDK and shows a journey."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def test_quickstart_stores_the_sessions_and_quarantines_the_mistakes(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py"), "--once", "--port", "0", "--data", "data"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "38 stored, 3 quarantined with the plan's reasons." in out
    assert "journey, pre-login browsing included (24 events" in out
    assert "app_launch" in out  # browsing before the account existed belongs to the customer
    assert "quarantine list --data data" in out
    assert (tmp_path / "data" / "raw").is_dir()
    assert "stopped" in proc.stderr
