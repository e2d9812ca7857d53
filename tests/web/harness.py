"""The web migration harness: the vendors' browser SDKs from npm, a page origin, and a real collector on another.

- `sdks()`: the pinned SDKs (tests/web/sdks/package-lock.json), installed by
  `scripts/web-sdks` into `.cache/web-sdks` (or `$MAIDIAN_WEB_SDKS`).
- `PageServer`: 127.0.0.1 on one port serving tests/web/pages and the SDKs,
  so the collector (another port) is a different origin and every request is
  cross-origin, as on a real site.
- `Collector`: `maidian serve` as a subprocess on a fixed port, so it can be
  stopped (SIGKILL) and started again at the same address while a page keeps
  sending; the stored events are read with the `maidian` command.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from maidian.collector.cli import main
from maidian.collector.settings import hash_key
from tests.collector.vendor_helpers import securities_vendor_plan
from tests.conftest import ROOT

ARTIFACTS = ROOT / "test-artifacts" / "web"
PAGES = Path(__file__).resolve().parent / "pages"
BROKER_KEY = "mk_broker_web_0001"  # the maidian write key the Sensors project "broker" is bound to
SEGMENT_KEY = "wk_broker_web_0001"  # the page's Segment write key


def sdks() -> Path:
    """The installed SDKs' node_modules (installed now when missing); raises with npm's words when it cannot."""
    env_dir = os.environ.get("MAIDIAN_WEB_SDKS")
    dest = Path(env_dir) if env_dir else ROOT / ".cache" / "web-sdks"
    if shutil.which("npm") is None and not (dest / "node_modules").is_dir():
        raise RuntimeError("the web tests need npm to install the vendors' SDKs: apt-get install npm")
    done = subprocess.run(
        [str(ROOT / "scripts" / "web-sdks"), str(dest)], capture_output=True, text=True, timeout=300, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"scripts/web-sdks failed:\n{done.stderr}")
    return dest / "node_modules"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Files(_Quiet):
    """tests/web/pages at `/`, the SDKs at `/sdks/`."""

    modules: Path

    def translate_path(self, path: str) -> str:
        clean = path.split("?", 1)[0].split("#", 1)[0]
        if clean.startswith("/sdks/"):
            return str(self.modules / clean.removeprefix("/sdks/"))
        return str(PAGES / clean.lstrip("/"))


class PageServer:
    """The site's own origin: a threaded static server on 127.0.0.1."""

    def __init__(self, modules: Path) -> None:
        handler = type("Files", (_Files,), {"modules": modules})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler))
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


CONFIG = """
plan = "{plan}"

[storage]
data_dir = "{data}"
index_interval_s = 0.05

[[write_keys]]
name = "broker-web"
sha256 = "{broker}"

[[write_keys]]
name = "broker-web-segment"
sha256 = "{segment}"

[[vendors.sensors.projects]]
name = "broker"
write_key = "broker-web"
"""

# Web pages send presets the example plan's mappings do not name; these make an ordinary page map cleanly.
WEB_MAPPINGS: dict[str, Any] = {
    "sensors": {
        "events": {"$pageview": {"event": "app_page_view", "properties": {"PageId": "page_id"}}},
        "properties": {"AppName": None},
    },
    "segment": {
        "events": {
            # analytics.js adds the page's path and query, already in `$url`, and page() its category.
            "$page": {
                "event": "app_page_view",
                "properties": {"pageId": "page_id", "path": None, "search": None, "category": None},
            }
        },
    },
}


def web_plan(directory: Path) -> Path:
    """The securities example plan with the vendor mappings the e2e tests use, plus the web pages' own."""
    path = securities_vendor_plan(directory)
    doc = json.loads(path.read_text("utf-8"))
    for vendor, extra in WEB_MAPPINGS.items():
        for section, names in extra.items():
            doc["mappings"][vendor].setdefault(section, {}).update(names)
    path.write_text(json.dumps(doc, ensure_ascii=False, indent=1), "utf-8")
    return path


@dataclass
class Collector:
    """`maidian serve` on a fixed 127.0.0.1 port; stderr drained into `log`."""

    root: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[str] | None = None
    log: list[str] = field(default_factory=list)
    _reader: threading.Thread | None = None

    def __post_init__(self) -> None:
        self.plan = web_plan(self.root)
        self.data = self.root / "data"
        self.config = self.root / "maidian.toml"
        self.config.write_text(
            CONFIG.format(plan=self.plan, data=self.data, broker=hash_key(BROKER_KEY), segment=hash_key(SEGMENT_KEY))
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        cmd = [sys.executable, "-m", "maidian.collector.cli", "serve", "--config", str(self.config)]
        cmd += ["--port", str(self.port)]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
        self.proc = proc
        listening = threading.Event()

        def drain() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                self.log.append(line)
                if re.search(r"listening on http://", line):
                    listening.set()
            listening.set()

        self._reader = threading.Thread(target=drain, daemon=True)
        self._reader.start()
        if not listening.wait(60) or proc.poll() is not None:
            self.stop()
            raise RuntimeError("the collector did not start:\n" + "".join(self.log))

    def stop(self, *, kill: bool = False) -> int:
        """Stop the process (SIGTERM, or SIGKILL for a crash); its exit code."""
        proc, self.proc = self.proc, None
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        code = proc.wait(60)
        if self._reader is not None:
            self._reader.join(10)
        assert proc.stderr is not None
        proc.stderr.close()
        return code

    def cli(self, *argv: str, check: bool = True) -> list[dict[str, Any]]:
        """`maidian ARGV --data DATA`, in this process, as JSON lines (none when it fails and not `check`)."""
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([*argv, "--data", str(self.data)])
        if code != 0 and not check:
            return []
        assert code == 0, out.getvalue() + err.getvalue()
        return [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]

    def stored(self) -> list[dict[str, Any]]:
        """Every stored event, quarantined ones included (`export --quarantined` marks them)."""
        return self.cli("export", "--quarantined")

    def events(self, person: str) -> list[dict[str, Any]]:
        """The person's events, or none yet (the command fails while no stored event names them)."""
        return self.cli("events", "--person", person, "--plan", str(self.plan), check=False)

    def requests_by_path(self) -> dict[str, int]:
        """`maidian_requests_total` summed per path, from the running collector's /metrics."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        out: dict[str, int] = {}
        for m in re.finditer(r'^maidian_requests_total\{[^}]*path="([^"]+)"[^}]*\} (\d+)', text, re.MULTILINE):
            out[m.group(1)] = out.get(m.group(1), 0) + int(m.group(2))
        return out

    def errors(self) -> list[str]:
        return [line for line in self.log if "bug:" in line or "Traceback" in line]


@contextlib.contextmanager
def collector_process(root: Path) -> Iterator[Collector]:
    server = Collector(root)
    server.start()
    try:
        yield server
    finally:
        server.stop()
