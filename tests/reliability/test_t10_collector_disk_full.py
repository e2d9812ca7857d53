"""T10, the collector's disk fills up mid-run, then space comes back.

The data directory lives on an 8 MiB tmpfs when this machine allows mounting
one (root); a file then takes every free byte while the load runs. Otherwise
the collector runs under the fault file layer (faultfs.py), whose capacity
drops to zero (ENOSPC on every log write) and is restored later. Checked:
while full, answers are 503 with Retry-After and never 200 for data that was
not persisted, /readyz is 503 and /healthz 200; once space is back the
collector serves again within 5 s without a restart; every acknowledged
event is stored, and SQLite passes its integrity check.

The commands that read and rewrite a data directory (`events --person`,
`privacy delete`, `rebuild`) on a full disk (the tmpfs filled, or, where no
tmpfs can be mounted, a file-size limit that refuses every write past 4 KiB)
end with the named `DiskError` and exit code 3, never a traceback; `export`,
which writes nothing, still exports everything; once space is back each
command finishes its job.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from maidian.collector.cli.output import EXIT_DISK
from tests.reliability.disks import Filler, small_disk
from tests.reliability.figures import Figures
from tests.reliability.load import Load, order_event
from tests.reliability.procs import CollectorProcess, batch_body, http_get, http_post, key_headers, write_config
from tests.reliability.store import read_store, scan_segments, sqlite_integrity

FULL_FOR_S = 3.0
RATE_EV_S = 2000.0


async def _poll_until(check: object, timeout_s: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if check():  # type: ignore[operator]
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {timeout_s} s")


@contextlib.contextmanager
def _disk(mount: Path, size_bytes: int, disk: str, fallback: str) -> Iterator[bool]:
    """A tmpfs at `mount` for the "tmpfs" variant (skipped where none can be mounted), nothing for the other."""
    with small_disk(mount, size_bytes) if disk == "tmpfs" else contextlib.nullcontext(False) as mounted:
        if disk == "tmpfs" and not mounted:
            pytest.skip(f"mounting a tmpfs is not allowed here; the {fallback} variant covers this machine")
        yield mounted


@pytest.mark.parametrize("disk", ["tmpfs", "injected"])
async def test_disk_full_then_freed(tmp_path: Path, figures: Figures, disk: str) -> None:
    mount = tmp_path / "disk"
    with _disk(mount, 8 << 20, disk, "injected") as mounted:
        data = mount / "data"
        config = write_config(tmp_path / "collector.toml", data)
        capacity = tmp_path / "capacity"
        launcher = None
        if not mounted:
            launcher = [sys.executable, "-m", "tests.reliability.faultfs", "--capacity", str(capacity)]
        filler = Filler(mount / "filler")
        proc = CollectorProcess(config, launcher=launcher)
        try:
            proc.start()
        except RuntimeError as exc:
            pytest.skip(f"neither a tmpfs nor the fault layer could be had: {exc}")
        load = Load(seed=10)
        stop = asyncio.Event()
        answers_while_full: dict[int, int] = {}
        full = [False]

        def note(ok: int) -> None:
            if full[0]:
                answers_while_full[200 if ok else 0] = answers_while_full.get(200 if ok else 0, 0) + 1

        try:
            task = asyncio.create_task(load.run(proc.url, rate_ev_s=RATE_EV_S, stop=stop, on_answer=note))
            await asyncio.sleep(1.0)
            acked_before_full = set(load.ledger.acked)
            if mounted:
                taken = await asyncio.to_thread(filler.fill)
            else:
                capacity.write_text("0")
                taken = 0
            full[0] = True
            await _poll_until(lambda: http_get(proc.url + "/readyz")[0] == 503, 5)
            statuses_at_full = dict(load.statuses)
            await asyncio.sleep(FULL_FOR_S)
            healthz = http_get(proc.url + "/healthz")[0]
            readyz, ready_body = http_get(proc.url + "/readyz")
            acked_while_full = set(load.ledger.acked) - acked_before_full
            answered_503 = load.statuses.get(503, 0) - statuses_at_full.get(503, 0)
            # Space comes back: serving resumes without a restart.
            freed_at = time.monotonic()
            if mounted:
                filler.free()
            else:
                capacity.write_text("inf")
            full[0] = False
            resumed_s = await _poll_until(lambda: http_get(proc.url + "/readyz")[0] == 200, 10)
            acked_now = len(load.ledger.acked)
            await _poll_until(lambda: len(load.ledger.acked) > acked_now, 10)
            first_200_s = time.monotonic() - freed_at
            await asyncio.sleep(0.5)
            stop.set()
            await task
            await load.drain(proc.url)
            _status, metrics = http_get(proc.url + "/metrics")
        finally:
            stop.set()
            code = proc.stop() if proc.alive() else 0
        assert code == 0
        integrity = sqlite_integrity(data)
        segments = scan_segments(data)
        check = load.ledger.check(read_store(data))
    figures.add_check(check)
    figures.inputs += sum(load.statuses.values())
    figures.note(
        f"{'tmpfs 8 MiB, filled' if mounted else 'ENOSPC injected by the fault file layer'} for {FULL_FOR_S:.0f} s "
        f"({taken:,} B filler): {answered_503} answers 503 while full, {len(acked_while_full)} events acknowledged "
        f"in that time (all stored); ready again {resumed_s:.2f} s and serving {first_200_s:.2f} s after space "
        f"came back; /readyz body while full {ready_body.decode()[:80]}"
    )
    check.assert_clean()
    assert answered_503 > 0
    assert load.missing_retry_after == 0
    assert healthz == 200
    assert readyz == 503
    assert b'"reason":"disk"' in ready_body.replace(b" ", b"")
    assert first_200_s <= 5.0
    assert all(v == "ok" for v in integrity.values()), integrity
    assert segments.interior == {}
    assert b"maidian_write_errors_total 0" not in metrics


def _run_cli(args: list[str], *, fsize_limit: int | None = None) -> subprocess.CompletedProcess[bytes]:
    """`maidian ARGS` in a child process; with `fsize_limit`, no file it writes may grow past that many bytes."""

    def limit() -> None:
        if fsize_limit is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_limit, fsize_limit))

    return subprocess.run(
        [sys.executable, "-m", "maidian.collector.cli", *args],
        capture_output=True,
        timeout=120,
        preexec_fn=limit,
        check=False,
    )


@pytest.mark.parametrize("disk", ["tmpfs", "fsize"])
def test_read_and_rewrite_commands_on_a_full_disk(tmp_path: Path, figures: Figures, disk: str) -> None:
    """Commands on a full disk end with DiskError's message and exit 3; reading without writing still works."""
    mount = tmp_path / "disk"
    with _disk(mount, 16 << 20, disk, "fsize") as mounted:
        data = mount / "data"
        config = write_config(tmp_path / "collector.toml", data)
        proc = CollectorProcess(config).start()
        try:
            now = int(time.time() * 1000)
            for b in range(5):
                events = [order_event(f"{b:032x}", i + 1, now, f"dev-{b}") for i in range(100)]
                assert http_post(proc.url + "/v1/batch", batch_body(events), key_headers())[0] == 200
        finally:
            assert proc.stop() == 0
        for derived in data.glob("*.sqlite*"):
            derived.unlink()  # readers must now write the catalog and the identity graph to answer
        filler = Filler(mount / "filler")
        fsize = None
        if mounted:
            filler.fill()
        else:
            fsize = 4096  # no file may grow past one page: every catalog write is refused
        commands = {
            "events --person": ["events", "--data", str(data), "--person", "dev-1"],
            "privacy delete": ["privacy", "delete", "--data", str(data), "--person", "dev-1"],
            "rebuild": ["rebuild", "--data", str(data)],
        }
        outcomes: dict[str, int] = {}
        for name, args in commands.items():
            done = _run_cli(args, fsize_limit=fsize)
            outcomes[name] = done.returncode
            assert b"Traceback" not in done.stderr, (name, done.stderr.decode()[-2000:])
            assert done.returncode == EXIT_DISK, (name, done.returncode, done.stderr.decode())
            assert b"run the command again" in done.stderr, (name, done.stderr.decode())
        exported = _run_cli(["export", "--data", str(data)], fsize_limit=fsize)
        assert exported.returncode == 0, exported.stderr.decode()
        assert len(exported.stdout.splitlines()) == 500
        # Space comes back: the same commands finish the job, and nothing was left half-done.
        filler.free()
        assert _run_cli(commands["privacy delete"]).returncode == 0
        assert _run_cli(commands["events --person"]).returncode == 1  # deleted: no stored event carries it
        assert _run_cli(commands["rebuild"]).returncode == 0
        assert _run_cli(["verify", "--data", str(data)]).returncode == 0
        left = _run_cli(["export", "--data", str(data)])
        assert len(left.stdout.splitlines()) == 400
    figures.inputs += len(commands) + 1
    how = "tmpfs 16 MiB, filled" if mounted else "RLIMIT_FSIZE 4 KiB (EFBIG)"
    figures.note(
        f"read and rewrite commands on a full disk ({how}): exit codes {outcomes} (3 = DiskError), no traceback; "
        "export (reads only) exit 0 with all 500 events; after space came back every command finished its job"
    )
