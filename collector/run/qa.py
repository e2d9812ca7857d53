"""`maidian qa`: a throw-away collector and its live page, for testing one build against the plan.

A tester runs one command and gets a collector on this machine with a write
key of its own, a temporary data directory, and the live page at /live; the
command prints the URL and the exact SDK settings to point the build at. When
the tester stops it (Ctrl-C), it prints the session's coverage and deletes the
temporary data (unless `--data` named a directory to keep).

Choices, and why:
- It listens on 127.0.0.1 unless told otherwise, and the live page then needs
  no token (only browsers on this machine reach it). With `--host 0.0.0.0`
  (a phone on the office network sending to the laptop), browsers elsewhere
  need the token it prints; browsers on this machine still do not.
- Durability is `write`, not `fsync`: the data is thrown away, and the
  tester's disk should not pay for a promise nobody needs here.
- The hub observes from the start (`observe_always`), so the page's coverage
  covers the whole session, not only the time a page was open.
- Port 8106 by default, so a build configured once keeps working; when it is
  taken, any free port (and the banner says which).
"""

from __future__ import annotations

import asyncio
import errno
import secrets
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, TextIO

from maidian.collector.config import check_config
from maidian.collector.settings import AuthConfig, Config, LiveConfig, ServerConfig, StorageConfig, WriteKey, hash_key
from maidian.tracking_plan import Plan, load_plan

if TYPE_CHECKING:
    from maidian.collector.qa.coverage import CoverageReport

__all__ = ["QaOptions", "qa_config", "run_qa"]

DEFAULT_QA_PORT: Final = 8106
# Loopback addresses whose browsers the live page lets in without the token.
_LOOPBACK_HOSTS: Final = frozenset({"127.0.0.1", "localhost", "::1"})


@dataclass(frozen=True, slots=True)
class QaOptions:
    """What `maidian qa` was asked for."""

    plan: Path
    host: str = "127.0.0.1"
    port: int = DEFAULT_QA_PORT
    data_dir: Path | None = None
    write_keys: tuple[str, ...] = ()
    tag: str | None = None


@dataclass(frozen=True, slots=True)
class _Session:
    config: Config
    write_key: str
    token: str
    tag: str
    temporary: bool


def qa_config(options: QaOptions, data_dir: Path, write_keys: tuple[str, ...], token: str) -> Config:
    """The collector configuration of a QA session."""
    keys = tuple(WriteKey(f"qa{i}", hash_key(k)) for i, k in enumerate(write_keys))
    return check_config(
        Config(
            plan=options.plan,
            server=ServerConfig(host=options.host, port=options.port, shutdown_timeout_s=5.0),
            storage=StorageConfig(data_dir=data_dir, durability="write"),
            auth=AuthConfig(write_keys=keys),
            live=LiveConfig(enabled=True, token_sha256=hash_key(token), allow_loopback=True, observe_always=True),
        )
    )


def _banner(plan: Plan, session: _Session, port: int, moved: bool) -> str:
    host = session.config.server.host
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104  # naming, not binding
    base = f"http://{'[' + shown + ']' if ':' in shown else shown}:{port}"
    plan_path = session.config.plan
    hashes = "hash" in plan.identity_pii().values() or any(
        "hash" in plan.pii_paths(name).values() for name in plan.events
    )
    pii = ", pii_key=YOUR_PII_KEY" if hashes else ""
    lines = [
        f"maidian qa: a throw-away collector for {plan.name} {plan.version} ({len(plan.events)} planned events)",
        "",
        f"  live page   {base}/live",
        f"  endpoint    {base}",
        f"  write key   {session.write_key}",
        f"  test tag    {session.tag}   (set it on the build: its events can then be filtered and counted)",
        f"  data        {session.config.storage.data_dir}"
        + ("   (temporary: deleted when you stop)" if session.temporary else ""),
    ]
    if moved:
        lines.append(f"  (port {session.config.server.port} was taken: this session listens on {port})")
    if host not in _LOOPBACK_HOSTS:
        lines += [
            "",
            f"  Listening on {host}: devices on your network send to http://<this machine's address>:{port};",
            f"  a browser on another machine opens the live page there with the token {session.token}",
        ]
    lines += [
        "",
        "Point the build under test at it:",
        f"  environment  MAIDIAN_ENDPOINT={base} MAIDIAN_WRITE_KEY={session.write_key}",
        f'  Python       client = Client("{base}", write_key="{session.write_key}", plan="{plan_path}"{pii})',
        f'               client.register_super_properties({{"$test_tag": "{session.tag}"}})',
        "",
        "Coverage of this session: the live page's Coverage tab, or",
        f"  maidian coverage --plan {plan_path} --data {session.config.storage.data_dir} --tag {session.tag}",
        "Stop with Ctrl-C.",
    ]
    return "\n".join(lines) + "\n"


async def _serve(plan: Plan, session: _Session, out: TextIO) -> CoverageReport:
    from aiohttp import web

    from maidian.collector.http.app import make_app
    from maidian.collector.http.live_routes import LIVE
    from maidian.collector.service import Collector

    config = session.config
    app = make_app(config, Collector(config, plan=plan))
    runner = web.AppRunner(
        app, handle_signals=False, access_log=None, shutdown_timeout=config.server.shutdown_timeout_s
    )
    await runner.setup()
    moved = False
    try:
        site = web.TCPSite(runner, config.server.host, config.server.port)
        try:
            await site.start()
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or config.server.port != DEFAULT_QA_PORT:
                raise
            site = web.TCPSite(runner, config.server.host, 0)
            await site.start()
            moved = True
        server = getattr(site, "_server", None)
        port = server.sockets[0].getsockname()[1] if server is not None and server.sockets else config.server.port
        out.write(_banner(plan, session, port, moved))
        out.flush()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        return app[LIVE].coverage()
    finally:
        await runner.cleanup()


def _summary(report: CoverageReport, session: _Session) -> str:
    never = report.never_seen
    text = (
        f"\nmaidian qa: this session received {report.seen} events ({report.accepted} accepted, "
        f"{report.invalid} quarantined); planned events seen: {report.expected_seen} of {report.expected}"
    )
    if never:
        shown = ", ".join(never[:8]) + (f", ... ({len(never) - 8} more)" if len(never) > 8 else "")
        text += f"\n  never seen: {shown}"
    if report.unplanned:
        text += f"\n  seen but not planned: {', '.join(e.name for e in report.unplanned[:8])}"
    if session.temporary:
        text += f"\n  deleted {session.config.storage.data_dir}"
    return text + "\n"


def run_qa(options: QaOptions, out: TextIO = sys.stdout) -> int:
    """Run a QA session until SIGINT or SIGTERM; the exit code."""
    plan = load_plan(options.plan)
    temporary = options.data_dir is None
    data_dir = Path(tempfile.mkdtemp(prefix="maidian-qa-")) if options.data_dir is None else options.data_dir
    keys = options.write_keys or (f"wk_qa_{secrets.token_hex(8)}",)
    token = secrets.token_urlsafe(12)
    tag = options.tag or time.strftime("qa-%Y%m%d-%H%M")
    try:
        session = _Session(qa_config(options, data_dir, keys, token), keys[0], token, tag, temporary)
        report = asyncio.run(_serve(plan, session, out))
    finally:
        if temporary:
            shutil.rmtree(data_dir, ignore_errors=True)
    out.write(_summary(report, session))
    out.flush()
    return 0
