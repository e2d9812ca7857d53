"""The collector's state and lifecycle, without HTTP: open, recover, run the background work, close.

Start-up (`Collector.open`), in this order:
1. lock this process's writer id in `raw/` and `quarantine/`, and truncate the
   torn tail of each of its segments (only bytes after the last snapshot's
   verified offsets are read);
2. restore deduplication from the snapshot and the frame heads written after
   it, in every writer's segments, so a restart is ready in well under 2 s;
3. start a new segment; start the group-commit tasks.
The catalog catches up in the background; readers catch it up themselves.

Background work (`run_background`): the catalog indexer and identity feed
every `index_interval_s`, following other writers' frames into this process's
deduplication state (two processes on one data directory), expiring old ids,
writing the dedup snapshot every `snapshot_interval_s`, and probing the disk
while a write has failed, so readiness comes back without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final, TypeVar

import msgspec

from maidian.collector.errors import DataDirError
from maidian.collector.identity.graph import IdentityGraph
from maidian.collector.metrics import Metrics
from maidian.collector.pipeline.ingest import Ingest
from maidian.collector.pipeline.judge import Judge
from maidian.collector.pipeline.recovery import DedupState, follow_segments, load_dedup_state
from maidian.collector.pipeline.redact import QuarantinePii
from maidian.collector.settings import Config
from maidian.collector.store.catalog import Catalog
from maidian.collector.store.durable import DurableLog
from maidian.collector.store.feed import IdentityFeed
from maidian.collector.store.log import DataDir, LogWriter, Recovered, write_atomically
from maidian.collector.store.suppression import load_suppression
from maidian.tracking_plan import Plan, Validator, load_plan

T = TypeVar("T")

__all__ = ["Collector"]

log = logging.getLogger("maidian.collector")

_LOGS: Final = ("raw", "quarantine")
_PROBE_BYTES: Final = 64 << 10


class Collector:
    """One collector process's state: plan, logs, deduplication, catalog and metrics."""

    def __init__(self, config: Config, *, plan: Plan | None = None, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.plan = plan or load_plan(config.plan)
        self.validator = Validator(self.plan, limits=config.limits)
        self.data = DataDir(Path(config.storage.data_dir)).create()
        st = config.storage
        self.writer_id = st.writer_id
        common: dict[str, Any] = {
            "durability": st.durability,
            "sync_interval_s": st.sync_interval_ms / 1000,
            "segment_max_bytes": st.segment_max_bytes,
            "segment_max_age_s": st.segment_max_age_s,
            "max_unsynced_bytes": st.max_unsynced_bytes,
            "clock": clock,
        }
        self.raw: DurableLog
        self.quarantine: DurableLog
        if config.sink.kind == "kafka":
            from maidian.collector.cluster.kafka_log import kafka_logs

            self.raw, self.quarantine = kafka_logs(config.sink, st.writer_id)
        else:
            self.raw = LogWriter(self.data.raw, st.writer_id, **common)
            self.quarantine = LogWriter(self.data.quarantine, st.writer_id, **common)
        self.metrics = Metrics()
        self.judge = Judge(
            self.plan,
            self.validator,
            config.limits,
            window_s=config.dedup.window_s,
            future_tolerance_s=config.time.future_tolerance_s,
        )
        self.dedup: DedupState | None = None
        self.ingest: Ingest | None = None
        self.recovered: dict[str, Recovered] = {}
        self.catalog_lag_bytes = 0
        # Events senders reported dropped, by reason (the catalog's sdk_drop_totals; w0 keeps it).
        self.sdk_drop_totals: dict[str, int] = {}
        # Damaged frames the catalog met while indexing (w0 keeps it, like sdk_drop_totals).
        self.damaged_frames = 0
        self.ready = False
        self.stopping = False
        self.in_flight = 0
        self._idle: asyncio.Event | None = None
        self.started_s = 0.0
        self.ready_after_s = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        # The catalog and the identity graph are used from this one thread, one job at a time.
        self._index_pool = ThreadPoolExecutor(1, thread_name_prefix="maidian-index")
        self._feed: IdentityFeed | None = None
        self._catalog: Catalog | None = None

    # -- opening ---------------------------------------------------------------------

    def open(self) -> None:
        """Recover the logs and restore deduplication (synchronous; run before serving)."""
        self.started_s = time.perf_counter()
        now_ms = int(self.clock() * 1000)
        verified = self._verified_offsets()
        try:
            self.recovered["raw"] = self.raw.open(verified.get("raw"))
            self.recovered["quarantine"] = self.quarantine.open(verified.get("quarantine"))
        except DataDirError:
            self.raw.close_sync()
            raise
        for log_name, rec in self.recovered.items():
            for seg, n in rec.torn_bytes.items():
                log.warning("recovery: truncated a torn tail of %d bytes from %s/%s", n, log_name, seg)
            for damage in rec.damaged:
                log.error(
                    "recovery: a damaged frame in %s/%s at offset %d (%d bytes, %s events%s) was skipped; the frames"
                    " after it are kept (maidian verify lists every damaged frame)",
                    log_name,
                    damage.segment,
                    damage.offset,
                    damage.length,
                    "unknown" if damage.events is None else damage.events,
                    f", first id {damage.event_ids[0]}" if damage.event_ids else "",
                )
        self._note_recovered_damage()
        self.dedup = load_dedup_state(self.data, self.writer_id, self.config.dedup.window_s, now_ms)
        self.ingest = Ingest(
            self.judge,
            raw=self.raw,
            quarantine=self.quarantine,
            seen=self.dedup.seen,
            quarantined=self.dedup.quarantined,
            metrics=self.metrics,
            clock=self.clock,
        )
        suppression = load_suppression(self.data)
        if suppression.pseudonyms:
            self.ingest.suppress = suppression.covers
        self.ingest.redact = QuarantinePii.for_plan(self.plan, self.data)
        self._register_metrics()
        self.ready_after_s = time.perf_counter() - self.started_s

    def _note_recovered_damage(self) -> None:
        """Damage recovery met goes into the catalog (and so into `maidian_log_damaged_frames`)."""
        if not any(rec.damaged for rec in self.recovered.values()):
            return
        try:
            catalog = Catalog(self.data)
            try:
                for log_name, rec in self.recovered.items():
                    catalog.note_damaged(log_name, rec.damaged)
            finally:
                catalog.close()
        except DataDirError as exc:  # the catalog is rebuilt from the logs; the log lines above stand
            log.warning("recovery: could not record the damaged frames in the catalog (%s)", exc)

    def _verified_offsets(self) -> dict[str, dict[str, int]]:
        try:
            snap = msgspec.msgpack.decode(self.data.snapshot(self.writer_id).read_bytes())
        except (FileNotFoundError, msgspec.DecodeError, OSError):
            return {}
        out: dict[str, dict[str, int]] = {}
        for lg, seg, off in snap.get("offsets", ()):
            if seg.startswith(self.writer_id + "-"):
                out.setdefault(lg, {})[seg] = int(off)
        return out

    async def start(self) -> None:
        """Start the writers' commit tasks and the background work; the collector is then ready."""
        await self.raw.start()
        await self.quarantine.start()
        self._tasks.append(asyncio.create_task(self._background(), name="maidian-background"))
        self.ready = True

    # -- background work ---------------------------------------------------------------

    async def _background(self) -> None:
        st = self.config.storage
        last_snapshot = time.monotonic()
        while True:
            await asyncio.sleep(st.index_interval_s)
            try:
                self._follow_others()
                loop = asyncio.get_running_loop()
                if st.index_catalog:
                    await loop.run_in_executor(self._index_pool, self._index)
                if not (self.raw.healthy and self.quarantine.healthy):
                    await loop.run_in_executor(self._index_pool, self._probe_disk)
                if time.monotonic() - last_snapshot >= st.snapshot_interval_s:
                    last_snapshot = time.monotonic()
                    await self.write_snapshot()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("background work failed; retrying in %.1f s", st.index_interval_s)

    def _follow_others(self) -> None:
        assert self.dedup is not None
        follow_segments(self.data, self.dedup, self.writer_id)

    async def catch_up_catalog(self) -> None:
        """Index the log into the catalog and feed the identity graph now (on the indexer thread)."""
        await asyncio.get_running_loop().run_in_executor(self._index_pool, self._index)

    async def read_catalog(self, fn: Callable[[Catalog, IdentityGraph], T]) -> T:
        """`fn(catalog, identity graph)` on the indexer thread, both brought up to date first.

        Readers inside the server (the support view) share the one catalog and
        identity graph the indexer keeps: no second feed opens the same files.
        """

        def run() -> T:
            self._index()
            catalog, feed = self._catalog, self._feed
            if catalog is None or feed is None:  # _index opens both
                raise DataDirError("the catalog could not be opened")
            return fn(catalog, feed.graph)

        return await asyncio.get_running_loop().run_in_executor(self._index_pool, run)

    def _index(self) -> None:
        if self._catalog is None:
            self._catalog = Catalog(self.data)
            self._feed = IdentityFeed.for_plan(self.data, self.plan)
        done = self._catalog.catch_up(self._feed)
        for refusal in done.refusals:
            counter = self.metrics.refusals_withdrawn if refusal.withdrawn else self.metrics.refusals
            counter[refusal.rule] = counter.get(refusal.rule, 0) + 1
        self.catalog_lag_bytes = self._catalog.lag_bytes()
        self.sdk_drop_totals = self._catalog.sdk_drop_totals()
        self.damaged_frames = self._catalog.damaged_count()

    def _probe_disk(self) -> None:
        """Can the disk take a write again? Then let requests try (and /readyz say so)."""
        if self.config.sink.kind != "local":
            return  # the Kafka log's health follows the brokers (cluster/kafka_log.py)
        probe = self.data.state / "probe"
        try:
            write_atomically(probe, bytes(_PROBE_BYTES))
            probe.unlink()
        except OSError:
            return
        self.raw.healthy = self.quarantine.healthy = True

    def snapshot_bytes(self) -> bytes:
        """The dedup state and the offsets it covers (frames still being committed are not covered)."""
        assert self.dedup is not None
        assert self.ingest is not None
        self.dedup.seen.expire(int(self.clock() * 1000))
        self.dedup.quarantined.expire(int(self.clock() * 1000))
        offsets = dict(self.dedup.offsets)
        for log_name, writer in (("raw", self.raw), ("quarantine", self.quarantine)):
            for seg, end in writer.synced_ends.items():
                offsets[(log_name, seg)] = end
            for seg, start in self.ingest.uncommitted(log_name).items():
                offsets[(log_name, seg)] = min(offsets.get((log_name, seg), start), start)
        return msgspec.msgpack.encode(
            {
                "seen": self.dedup.seen.snapshot(),
                "quarantined": self.dedup.quarantined.snapshot(),
                "offsets": [[lg, seg, off] for (lg, seg), off in sorted(offsets.items())],
            }
        )

    async def write_snapshot(self, *, logs_synced: bool = False) -> None:
        """Write the dedup snapshot; `logs_synced`: the logs are closed and synced already (shutdown).

        In `write` durability an id counts as seen once its frame is written,
        before the frame's fsync. A snapshot must not claim an id whose frame a
        power cut could still take away (a retry would then be answered
        `duplicate` and never stored), so in that mode the logs are synced past
        the moment the snapshot was taken before it is written.
        """
        data = self.snapshot_bytes()
        if self.config.storage.durability == "write" and not logs_synced:
            targets = [(w, w.written_bytes) for w in (self.raw, self.quarantine)]
            for writer, _target in targets:
                await writer.sync_once()
            if any(writer.synced_bytes < target for writer, target in targets):
                log.warning("the logs could not be synced; the dedup snapshot was not updated")
                return
        await asyncio.to_thread(write_atomically, self.data.snapshot(self.writer_id), data)

    # -- metrics -----------------------------------------------------------------------

    def _register_metrics(self) -> None:
        m = self.metrics
        m.gauge("maidian_in_flight_requests", "Requests being handled.", lambda: self.in_flight)
        m.gauge(
            "maidian_queue_depth_events",
            "Events appended and waiting for their fsync.",
            lambda: sum(map(len, self.ingest.pending.values())) if self.ingest else 0,
        )
        m.gauge("maidian_unsynced_bytes", "Log bytes written but not yet fsynced.", lambda: self.raw.unsynced_bytes)
        m.gauge(
            "maidian_catalog_lag_bytes", "Log bytes the catalog has not indexed yet.", lambda: self.catalog_lag_bytes
        )
        m.gauge("maidian_ready", "1 when the collector accepts and persists events.", lambda: int(self.is_ready()))
        m.gauge("maidian_fsync_seconds_max", "The longest fsync so far.", lambda: self.raw.fsync_seconds_max)
        m.gauge(
            "maidian_dedup_sources",
            "Sources and opaque ids in the dedup state.",
            lambda: len(self.dedup.seen) if self.dedup else 0,
        )
        m.gauge(
            "maidian_log_damaged_frames",
            "Frames in the logs that fail their checks, skipped by every reader (maidian verify lists them).",
            lambda: self.damaged_frames,
        )
        m.counter("maidian_fsync_total", "fsync calls on the raw log.", lambda: self.raw.fsync_count)
        m.counter("maidian_fsync_seconds_total", "Time spent in fsync on the raw log.", lambda: self.raw.fsync_seconds)
        m.counter(
            "maidian_write_errors_total",
            "Failed writes or fsyncs (disk full, I/O errors).",
            lambda: self.raw.write_errors + self.quarantine.write_errors,
        )
        m.counter("maidian_log_bytes_total", "Bytes appended to the raw log.", lambda: self.raw.written_bytes)
        m.counter(
            "maidian_suppressed_events_total",
            "Events of suppressed identities: answered as usual, not stored.",
            lambda: self.ingest.suppressed if self.ingest else 0,
        )
        m.read_family(
            "maidian_sdk_dropped_events_total",
            "Events senders reported they dropped (largest count per sender, summed), by reason.",
            ("reason",),
            lambda: {(reason,): n for reason, n in self.sdk_drop_totals.items()},
        )

    def enter(self) -> None:
        """A request starts."""
        self.in_flight += 1
        if self._idle is not None:
            self._idle.clear()

    def leave(self) -> None:
        """A request ends."""
        self.in_flight -= 1
        if self.in_flight == 0 and self._idle is not None:
            self._idle.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no request is in flight (or the timeout passes); True when idle."""
        if self.in_flight == 0:
            return True
        self._idle = asyncio.Event()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def is_ready(self) -> bool:
        return self.ready and not self.stopping and self.raw.healthy and self.quarantine.healthy

    # -- closing -----------------------------------------------------------------------

    async def close(self) -> None:
        """Stop the background work, sync and close the logs, write the snapshot, catch the catalog up."""
        self.stopping = True
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self.raw.close()
        await self.quarantine.close()
        if self.dedup is not None and self.ingest is not None:
            try:
                await self.write_snapshot(logs_synced=True)
            except OSError as exc:
                log.warning("could not write the dedup snapshot (%s); the next start reads the log", exc.strerror)
        loop = asyncio.get_running_loop()
        try:
            if self.config.storage.index_catalog:
                await loop.run_in_executor(self._index_pool, self._index)
        except Exception:
            log.exception("the catalog could not catch up at shutdown; the next reader will")
        await loop.run_in_executor(self._index_pool, self._close_catalog)
        self._index_pool.shutdown(wait=True)

    def _close_catalog(self) -> None:
        if self._catalog is not None:
            self._catalog.close()
            self._catalog = None
        if self._feed is not None:
            self._feed.close()
            self._feed = None
