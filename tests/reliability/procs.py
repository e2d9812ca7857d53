"""Real processes for the battery: `maidian serve` and SDK host programs, started, killed and read.

`CollectorProcess` runs `maidian serve` (or the fault-layer launcher,
faultfs.py) in its own session on 127.0.0.1, any free port, with its stderr in
a file (a pipe nobody reads would block it), and knows how long it took to
listen and to be ready. `kill()` sends SIGKILL to the process group it
created (the supervisor and, with `--workers 2`, its workers) and nothing else.

`write_config` writes the TOML file the battery's collectors use: the mini
plan, write keys (hashed), server sources, and fast background intervals.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maidian.collector.settings import hash_key
from tests.conftest import MINI_PLAN, ROOT
from tests.reliability.constants import KEY, SECRET, SOURCE

__all__ = [
    "KEY",
    "SECRET",
    "SOURCE",
    "CollectorProcess",
    "Host",
    "KeySpec",
    "batch_body",
    "free_kib",
    "http_get",
    "http_post",
    "key_headers",
    "proc_status_kib",
    "write_config",
]


_LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+) .*ready_in_s=([0-9.]+)")


@dataclass(frozen=True, slots=True)
class KeySpec:
    name: str
    key: str
    revoked: bool = False
    rate_events_per_s: float = 0.0
    burst_events: float = 0.0


def write_config(
    path: Path,
    data_dir: Path,
    *,
    keys: Iterable[KeySpec] = (KeySpec("current", KEY),),
    sources: Iterable[tuple[str, str, bool]] = ((SOURCE, SECRET, False),),
    storage: dict[str, Any] | None = None,
    plan: Path = MINI_PLAN,
    extra: str = "",
) -> Path:
    lines = [f'plan = "{plan}"', "", "[storage]", f'data_dir = "{data_dir}"']
    st = {"index_interval_s": 0.1, "snapshot_interval_s": 2.0, **(storage or {})}
    for k, v in st.items():
        lines.append(f"{k} = {_toml(v)}")
    lines.append("")
    for spec in keys:
        lines += ["[[write_keys]]", f'name = "{spec.name}"', f'sha256 = "{hash_key(spec.key)}"']
        if spec.revoked:
            lines.append("revoked = true")
        if spec.rate_events_per_s:
            lines.append(f"rate_events_per_s = {spec.rate_events_per_s}")
        if spec.burst_events:
            lines.append(f"burst_events = {spec.burst_events}")
        lines.append("")
    for name, secret, revoked in sources:
        lines += ["[[sources]]", f'name = "{name}"', f'secret = "{secret}"', f"revoked = {str(revoked).lower()}", ""]
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


class CollectorProcess:
    """`maidian serve` as a subprocess (see the module docstring)."""

    def __init__(
        self,
        config: Path,
        *,
        args: Sequence[str] = (),
        launcher: Sequence[str] | None = None,
        log: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.config = config
        self.args = list(args)
        self.launcher = list(launcher) if launcher else [sys.executable, "-m", "maidian.collector.cli"]
        self.log = log or config.with_suffix(".log")
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.url = ""
        self.listen_s = 0.0  # Popen to the listening line
        self.ready_s = 0.0  # Popen to /readyz 200
        self.recovery_s = 0.0  # the collector's own ready_in_s
        self._log_offset = 0

    def start(self, timeout_s: float = 60.0) -> CollectorProcess:
        cmd = [*self.launcher, "serve", "--config", str(self.config), "--port", "0", *self.args]
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(self.env or {}))
        self._log_offset = self.log.stat().st_size if self.log.exists() else 0
        started = time.monotonic()
        with open(self.log, "ab") as err:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=err, stderr=err, env=env, start_new_session=True)
        deadline = started + timeout_s
        while True:
            text = self.log_text()
            m = _LISTENING.search(text)
            if m:
                self.port = int(m.group(1))
                self.recovery_s = float(m.group(2))
                break
            if self.proc.poll() is not None:
                raise RuntimeError(f"the collector exited ({self.proc.returncode}):\n{text[-3000:]}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"the collector did not listen within {timeout_s} s:\n{text[-3000:]}")
            time.sleep(0.01)
        self.listen_s = time.monotonic() - started
        self.url = f"http://127.0.0.1:{self.port}"
        while http_get(self.url + "/readyz")[0] != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("the collector never became ready")
            time.sleep(0.01)
        self.ready_s = time.monotonic() - started
        return self

    def log_text(self, *, whole: bool = False) -> str:
        try:
            data = self.log.read_bytes()
        except FileNotFoundError:
            return ""
        return data[0 if whole else self._log_offset :].decode("utf-8", "replace")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the process group this object started (the server and its workers)."""
        proc = self.proc
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        # Workers of a killed supervisor die with the group; wait until none holds a writer lock.
        deadline = time.monotonic() + 10
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.01)

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM and wait; the exit code."""
        proc = self.proc
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def status_kib(self, field: str) -> int:
        return proc_status_kib(self.pid, field)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def proc_status_kib(pid: int, field: str) -> int:
    """A `VmRSS`/`VmHWM`-style field of /proc/<pid>/status, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def free_kib(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize // 1024


def http_get(url: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
    return http_request(urllib.request.Request(url), timeout_s)


def http_post(url: str, body: bytes, headers: dict[str, str], timeout_s: float = 10.0) -> tuple[int, bytes]:
    return http_request(urllib.request.Request(url, data=body, headers=headers, method="POST"), timeout_s)


def http_request(request: urllib.request.Request, timeout_s: float) -> tuple[int, bytes]:
    """(status, body); status 0 when there was no answer."""
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:  # 127.0.0.1 only
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (OSError, urllib.error.URLError):
        return 0, b""


def batch_body(events: list[dict[str, Any]], *, sent_at: int | None = None) -> bytes:
    """A batch as the SDK sends it: msgpack, zstd."""
    import msgspec
    import zstandard

    batch = {"sent_at": int(time.time() * 1000) if sent_at is None else sent_at, "lib": "battery", "events": events}
    return zstandard.ZstdCompressor(level=1).compress(msgspec.msgpack.encode(batch))


def key_headers(key: str = KEY) -> dict[str, str]:
    return {"Content-Type": "application/msgpack", "Content-Encoding": "zstd", "X-Maidian-Write-Key": key}


class Host:
    """An SDK host program (host.py) as a subprocess; its JSON lines are read by a thread."""

    def __init__(self, mode: str, log: Path, **options: Any) -> None:
        import json
        import queue
        import threading

        cmd = [sys.executable, "-m", "tests.reliability.host", mode]
        for name, value in options.items():
            cmd += [f"--{name.replace('_', '-')}", str(value)]
        self.log = log
        with open(log, "ab") as err:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=err)
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()

        def read() -> None:
            assert self.proc.stdout is not None
            for raw in self.proc.stdout:
                with contextlib.suppress(ValueError):
                    self.lines.put(json.loads(raw))

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()

    def line(self, key: str, timeout_s: float = 60.0) -> dict[str, Any]:
        """The next line that has `key` (earlier lines without it are skipped)."""
        import queue

        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"the host said no {key!r} within {timeout_s} s: {self.stderr()[-2000:]}")
            try:
                got = self.lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    raise RuntimeError(f"the host exited ({self.proc.returncode}): {self.stderr()[-2000:]}") from None
                continue
            if key in got:
                return got

    def stderr(self) -> str:
        try:
            return self.log.read_text("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self._done()

    def wait(self, timeout_s: float = 60.0) -> int:
        code = self.proc.wait(timeout_s)
        self._done()
        return code

    def _done(self) -> None:
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
