"""T11, the SDK's spool disk fills up: no exception reaches the app, memory holds the overflow within its cap.

The spool directory sits on a 1 MiB tmpfs that a file fills (when this machine
allows mounting one), or the spool's `os` refuses writes and file creation
with ENOSPC, as a truly full disk does (always, so both paths run here).
While full, the collector is unreachable and the app tracks more events than
the memory fallback holds. Checked: 0 exceptions into the app, the fallback
never above its cap, the loss counter exact (tracked = stored + dropped),
spooling resumes once space is back, and everything not dropped is delivered.

The injected variant fills the disk when the active segment is one frame from
its size cap, so the first event after it must rotate to a new segment file,
which the full disk refuses: the case that once left the spool writing to a
closed file descriptor.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from maidian.sdk import BatchLimits, Client, QueueLimits, SpoolConfig, _spool
from tests.reliability.constants import KEY
from tests.reliability.disks import Filler, small_disk
from tests.reliability.figures import Figures
from tests.reliability.ledger import Ledger, server_errors
from tests.reliability.procs import CollectorProcess
from tests.reliability.proxy import FaultProxy
from tests.reliability.store import read_store

FALLBACK_CAP = 2_000
WHILE_FULL = 5_000
AFTER = 1_000
SEGMENT_BYTES = 32 << 10
ORDER = {"stock_code": "600519", "side": "buy", "price": 1688.5, "quantity": 100}


class _FullDisk:
    """The spool's `os`, refusing writes and new files with ENOSPC while `full`."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self.full = False
        self.refused = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def _refuse(self) -> None:
        self.refused += 1
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def write(self, fd: int, data: Any) -> int:
        if self.full:
            self._refuse()
        n: int = self._real.write(fd, data)
        return n

    def open(self, path: Any, flags: int, mode: int = 0o777) -> int:
        if self.full and flags & os.O_CREAT and not os.path.exists(path):
            self._refuse()
        fd: int = self._real.open(path, flags, mode)
        return fd


@contextlib.contextmanager
def spool_disk(
    kind: str, root: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Callable[[], None], Callable[[], None]]]:
    """(fill, free) for the spool's disk."""
    if kind == "tmpfs":
        with small_disk(root, 1 << 20) as mounted:
            if not mounted:
                pytest.skip("mounting a tmpfs is not allowed here; the injected variant covers this machine")
            filler = Filler(root / "filler")
            yield (lambda: _ignore(filler.fill())), filler.free
        return
    disk = _FullDisk(os)
    monkeypatch.setattr(_spool, "os", disk)
    yield (lambda: setattr(disk, "full", True)), (lambda: setattr(disk, "full", False))


def _frame_bytes(tmp: Path) -> int:
    spool = tmp / "measure"
    with Client("http://127.0.0.1:9", write_key=KEY, spool=str(spool)) as client:
        client.track("stock_order_submit", ORDER)
        return sum(p.stat().st_size for p in spool.glob("*.seg"))


@pytest.mark.parametrize("kind", ["tmpfs", "injected"])
def test_spool_disk_full(
    tmp_path: Path,
    figures: Figures,
    collectors: Callable[..., CollectorProcess],
    proxy: FaultProxy,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
) -> None:
    collector = collectors()
    proxy.set_upstream(None)
    frame = _frame_bytes(tmp_path)
    root = tmp_path / "disk"
    errors: list[str] = []
    with spool_disk(kind, root, monkeypatch) as (fill, free):
        spool_dir = root / "spool"
        client = Client(
            proxy.url,
            write_key=KEY,
            spool=SpoolConfig(str(spool_dir), segment_bytes=SEGMENT_BYTES, fsync_interval_s=0),
            queue=QueueLimits(max_events=FALLBACK_CAP),
            batch=BatchLimits(max_events=500, linger_s=3600),  # nothing is taken while the disk is full
            on_error=errors.append,
        )
        exceptions = 0
        fallback_max = 0
        try:
            # Bring the active segment to one frame short of its cap.
            for _ in range(SEGMENT_BYTES // frame):
                client.track("stock_order_submit", ORDER)
            fill()
            for _ in range(WHILE_FULL):
                try:
                    client.track("stock_order_submit", ORDER)
                except Exception:
                    exceptions += 1
                fallback_max = max(fallback_max, client._core._buffer._fallback.pending())  # type: ignore[attr-defined]
            dropped_while_full = dict(client.stats.dropped)
            free()
            on_disk_before = sum(p.stat().st_size for p in spool_dir.glob("*.seg"))
            for _ in range(AFTER):
                client.track("stock_order_submit", ORDER)
            on_disk_after = sum(p.stat().st_size for p in spool_dir.glob("*.seg"))
            proxy.set_upstream(collector.url)
            assert client.flush(60)
            stats = client.stats
            source = client.source_id
        finally:
            client.close(10)
    ledger = Ledger()
    ledger.track(f"{source}-{i}" for i in range(1, stats.tracked + 1))
    ledger.ack(proxy.acks())
    stored = read_store(collector.config.parent / "data")
    check = ledger.check(stored)
    figures.add_check(check)
    figures.status_5xx += server_errors(proxy.statuses())
    overflow = stats.dropped.get("overflow", 0)
    figures.note(
        f"{kind}: {WHILE_FULL:,} events tracked on a full disk: 0 exceptions, fallback at most {fallback_max:,} "
        f"(cap {FALLBACK_CAP:,}), dropped {dict(stats.dropped)}; spooling resumed "
        f"(+{on_disk_after - on_disk_before:,} B on disk after space came back)"
    )
    assert exceptions == 0
    assert fallback_max <= FALLBACK_CAP
    assert dropped_while_full == stats.dropped == {"overflow": overflow}, (dropped_while_full, stats.dropped, errors)
    assert stats.tracked - check.stored == overflow, "the loss counter is not exact"
    assert check.lost == 0
    assert check.unexpected == 0
    assert check.dup_deduped == 0
    assert on_disk_after - on_disk_before >= AFTER * frame, "spooling did not resume"


def _ignore(_value: object) -> None:
    return None
