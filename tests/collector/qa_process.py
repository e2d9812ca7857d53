"""`maidian qa` as a tester runs it: a real subprocess, its banner parsed, stopped with Ctrl-C (SIGINT)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import MINI_PLAN


@dataclass
class QaSession:
    proc: subprocess.Popen[str]
    banner: str
    endpoint: str
    live_url: str
    write_key: str
    data_dir: Path

    def get_json(self, path: str) -> Any:
        with urllib.request.urlopen(self.endpoint + path, timeout=10) as resp:
            return json.loads(resp.read().decode("utf-8"))

    def wait_for(self, path: str, check: Any, timeout_s: float = 20.0) -> Any:
        """Poll `path` until `check(json)` holds (with a deadline): the collector indexes and answers on its own."""
        deadline = time.monotonic() + timeout_s
        while True:
            doc = self.get_json(path)
            if check(doc):
                return doc
            if time.monotonic() > deadline:
                raise AssertionError(f"{path} never satisfied the check; last answer: {doc}")
            time.sleep(0.05)

    def stop(self, timeout_s: float = 30.0) -> str:
        """Ctrl-C, as a tester stops it; returns what it printed after the banner."""
        self.proc.send_signal(signal.SIGINT)
        out, _err = self.proc.communicate(timeout=timeout_s)
        return out


def start_qa(*args: str, plan: Path = MINI_PLAN, timeout_s: float = 30.0) -> QaSession:
    cmd = [sys.executable, "-m", "maidian.collector.cli", "qa", "--plan", str(plan), "--port", "0", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8")
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            err = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"maidian qa exited early: {''.join(lines)}{err}")
        lines.append(line)
        if line.startswith("Stop with Ctrl-C"):
            break
    banner = "".join(lines)

    def field(name: str) -> str:
        found = re.search(rf"^  {name}\s+(\S+)", banner, re.MULTILINE)
        assert found, f"no {name!r} in the banner:\n{banner}"
        return found.group(1)

    return QaSession(
        proc=proc,
        banner=banner,
        endpoint=field("endpoint"),
        live_url=field("live page"),
        write_key=field("write key"),
        data_dir=Path(field("data")),
    )
