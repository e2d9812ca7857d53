"""Importing vendor event files through the live pipeline: Sensors log files and Segment archives.

Promises (docs/migration.md, "Moving a Sensors backend's log files", "Segment archives"):

- Each line of a LoggingConsumer / ConcurrentLoggingConsumer file is one
  Sensors record. Records are read in chunks, mapped with the plan's
  `mappings.sensors` by the same mapper as `/sa`, and handed to the same
  `Ingest` as live traffic (`ingest_mapped`): validation, the trigger rule,
  deduplication by the same event ids, the raw log's durability, the
  quarantine with reasons. Importing a file twice stores each record once;
  so does importing a file a server also received live (the ids are the
  same `sensors:h:`/`sensors:t:` ids).
- A line that is not a JSON object is quarantined (`vendor_record`) as it
  was, never skipped silently; a line still being written (no newline yet)
  is left for the next pass when following.
- The project is the record's own `project`, else `--project`; it must be
  served (`[[vendors.sensors.projects]]`), and its binding decides the
  source name and whether server-side events are trusted. The importer
  sends as this machine (127.0.0.1) for `allow_from`.
- With a checkpoint, the byte offset reached in each file is written (atomically)
  after each chunk is durable, so an interrupted import or follow resumes
  where it stopped; without one, re-reading is harmless (deduplication).
- Records older than the deduplication window are quarantined `too_old`
  unless `backfill_since_ms` is given: the window then reaches back to that
  moment, and deduplication knows every id stored since (read from the raw
  log's frame heads at start), so history is imported once.
- Memory is bounded by the chunk and the deduplication state, not by the
  file's size: files are streamed line by line (gzip files, `.gz`, too).
- Segment archives (`vendor="segment"`) are JSON lines of API calls, one
  message per line with its `type`: mapped by `mappings.segment` as `/b`
  would, sent as the `[[write_keys]]` entry `--write-key-name` names.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, TextIO

import msgspec

from maidian.collector.config import with_storage
from maidian.collector.errors import CollectorError
from maidian.collector.http.vendor_routes import ingest_mapped
from maidian.collector.pipeline.auth import Authenticator, Principal
from maidian.collector.service import Collector
from maidian.collector.settings import Config
from maidian.collector.store.log import pid_writer_id
from maidian.collector.vendors.common import Mapped, MappedRecord, VendorRecord
from maidian.collector.vendors.segment import SegmentMapper, SegmentRequest
from maidian.collector.vendors.sensors import SensorsMapper, SensorsRequest

__all__ = ["ImportOptions", "ImportSummary", "import_vendor_files"]

# Records per batch through the pipeline: one durable write each, and well under `limits.max_events`.
CHUNK_RECORDS: Final = 1000
# The importer sends as this machine: projects restricted with `allow_from` must include it.
IMPORT_PEER: Final = "127.0.0.1"
_DAY_MS: Final = 86_400_000
_any = msgspec.json.Decoder()


class LogImportError(CollectorError):
    """The import cannot run: a project not served, an unreadable file or checkpoint."""


@dataclass(frozen=True, slots=True)
class ImportOptions:
    """What to import and how: files (or a directory to follow), the default project, checkpoint, back-fill."""

    files: tuple[Path, ...] = ()
    follow_dir: Path | None = None
    vendor: str = "sensors"
    project: str = "default"
    # Segment: the [[write_keys]] entry the messages are stored as.
    write_key_name: str | None = None
    checkpoint: Path | None = None
    backfill_since_ms: int | None = None
    poll_s: float = 1.0
    progress_every_s: float = 2.0


@dataclass(slots=True)
class ImportSummary:
    """Counts of one import run."""

    files: int = 0
    lines: int = 0
    accepted: int = 0
    duplicate: int = 0
    quarantined: int = 0
    presets_only: int = 0
    elapsed_s: float = 0.0
    by_file: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        rate = self.lines / self.elapsed_s if self.elapsed_s > 0 else 0.0
        return {
            "files": self.files,
            "records": self.lines,
            "accepted": self.accepted,
            "duplicate": self.duplicate,
            "quarantined": self.quarantined,
            "presets_only": self.presets_only,
            "elapsed_s": round(self.elapsed_s, 3),
            "records_per_s": round(rate),
        }


class Checkpoint:
    """Byte offsets reached per file, written atomically; empty without a path."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.offsets: dict[str, int] = {}
        if path is not None and path.exists():
            try:
                self.offsets = {str(k): int(v) for k, v in json.loads(path.read_text("utf-8"))["offsets"].items()}
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                raise LogImportError(f"{path}: not a usable import checkpoint ({type(exc).__name__})") from None

    def get(self, file: Path) -> int:
        return self.offsets.get(str(file.resolve()), 0)

    def set(self, file: Path, offset: int) -> None:
        self.offsets[str(file.resolve())] = offset
        if self.path is None:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as out:
            out.write(json.dumps({"offsets": self.offsets}, indent=1))
            out.flush()
            os.fsync(out.fileno())  # a checkpoint that survives a power cut is a whole one, never an empty file
        os.replace(tmp, self.path)


def _lines(handle: io.BufferedIOBase, *, complete_only: bool) -> Iterator[tuple[bytes, int]]:
    """(line, offset after it) from the handle's position; a last line without newline only when not following."""
    offset = handle.tell()
    for line in handle:
        if not line.endswith(b"\n") and complete_only:
            return
        offset += len(line)
        yield line, offset


def _open(path: Path) -> io.BufferedIOBase:
    """The file's bytes, gunzipped when it ends in `.gz` (offsets are then in the uncompressed stream)."""
    if path.suffix == ".gz":
        return gzip.GzipFile(path, "rb")
    return path.open("rb")


def _record(index: int, line: bytes) -> VendorRecord:
    text = line.strip()
    try:
        value = _any.decode(text)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return VendorRecord(index, None, len(text), "not valid JSON", bytes(text))
    if not isinstance(value, dict):
        return VendorRecord(index, None, len(text), "expected an object", bytes(text))
    return VendorRecord(index, value, len(text))


class _Importer:
    def __init__(self, collector: Collector, options: ImportOptions, out: TextIO) -> None:
        self.collector = collector
        self.options = options
        self.out = out
        self.auth = Authenticator(collector.config.auth)
        self.sensors = SensorsMapper(collector.plan)
        self.segment = SegmentMapper(collector.plan)
        self.segment_sender: Principal | None = None
        if options.vendor == "segment":
            if not options.write_key_name:
                raise LogImportError("a Segment archive needs the write key it is stored as (--write-key-name)")
            self.segment_sender = self.auth.segment_source(options.write_key_name)
        self.summary = ImportSummary()
        self.checkpoint = Checkpoint(options.checkpoint)
        self.started = time.perf_counter()
        self.reported = self.started
        self.pending: tuple[asyncio.Future[Any], Mapped, Path, int] | None = None

    async def file(self, path: Path, *, complete_only: bool) -> int:
        """Import `path` from its checkpoint; the records read."""
        read = 0
        try:
            handle = _open(path)
        except OSError as exc:
            raise LogImportError(f"{path}: cannot read: {exc.strerror}") from None
        with handle:
            start = self.checkpoint.get(path)
            if start and path.suffix != ".gz" and path.stat().st_size < start:
                # Shorter than what was read: the file was replaced or truncated. Read it again from its start;
                # deduplication keeps what was already stored from being stored twice.
                print(f"maidian import: {path.name} is shorter than its checkpoint; reading it again", file=self.out)
                start = 0
            handle.seek(start)
            chunk: list[VendorRecord] = []
            end = handle.tell()
            for line, after in _lines(handle, complete_only=complete_only):
                end = after
                if not line.strip():
                    continue
                chunk.append(_record(len(chunk), line))
                if len(chunk) >= CHUNK_RECORDS:
                    await self.chunk(chunk, path, end)
                    read += len(chunk)
                    chunk = []
            if chunk:
                await self.chunk(chunk, path, end)
                read += len(chunk)
            await self.drain()
            if end != self.checkpoint.get(path):
                self.checkpoint.set(path, end)
        key = str(path)
        self.summary.by_file[key] = self.summary.by_file.get(key, 0) + read
        return read

    async def chunk(self, records: Sequence[VendorRecord], path: Path, end: int) -> None:
        """Map a chunk, then hand it to the pipeline once the previous one is durable.

        At most one chunk is in the pipeline: its write (and fsync, in the
        writer's thread) overlaps the mapping of the next, while batches still
        enter deduplication in file order.
        """
        vendor, principal, mapped = self.mapped(records, path)
        await self.drain()
        assert self.collector.ingest is not None
        stored = ingest_mapped(
            self.collector.ingest,
            vendor,
            mapped,
            principal=principal,
            request_id=f"import-{path.name}"[:64],
            store=True,
            metrics=self.collector,
        )
        self.pending = (asyncio.ensure_future(stored), mapped, path, end)
        await asyncio.sleep(0)  # let it run up to its wait for the disk before mapping the next chunk

    def mapped(self, records: Sequence[VendorRecord], path: Path) -> tuple[str, Principal, Mapped]:
        """The chunk's vendor, sender and mapped records."""
        if self.segment_sender is not None:
            request = SegmentRequest("batch", "", tuple(records))
            now_ms = int(self.collector.clock() * 1000)
            return "segment", self.segment_sender, self.segment.map_request(request, now_ms=now_ms)
        sensors = SensorsRequest(tuple(records), project=self.options.project, field="log")
        projects = sensors.projects or {self.options.project}
        principals = {self.auth.sensors_project(p, IMPORT_PEER) for p in sorted(projects)}
        if len(principals) > 1:
            raise LogImportError(f"{path}: records of projects bound to different write keys in one file")
        return "sensors", principals.pop(), self.sensors.map_request(sensors)

    async def drain(self) -> None:
        """Wait for the chunk in the pipeline; count it and move its file's checkpoint."""
        if self.pending is None:
            return
        task, mapped, path, end = self.pending
        self.pending = None
        _verdicts, outcomes = await task
        s = self.summary
        s.lines += len(mapped.records)
        s.presets_only += sum(1 for r in mapped.records if isinstance(r, MappedRecord) and not r.events)
        for outcome in outcomes:
            s.accepted += outcome.accepted
            s.duplicate += outcome.duplicate
            s.quarantined += outcome.quarantined
        self.checkpoint.set(path, end)
        now = time.perf_counter()
        if now - self.reported >= self.options.progress_every_s:
            self.reported = now
            rate = s.lines / (now - self.started)
            print(f"maidian import: {s.lines} records ({rate:,.0f}/s), now in {path.name}", file=self.out, flush=True)


def _follow_files(directory: Path) -> list[Path]:
    """The directory's log files in name order (LoggingConsumer suffixes its files with the date)."""
    return sorted(p for p in directory.iterdir() if p.is_file() and not p.name.startswith("."))


async def _run(config: Config, options: ImportOptions, out: TextIO, stop: Callable[[], bool]) -> ImportSummary:
    collector = Collector(config)
    collector.open()
    await collector.start()
    importer = _Importer(collector, options, out)
    try:
        for path in options.files:
            await importer.file(path, complete_only=False)
            importer.summary.files += 1
        if options.follow_dir is not None:
            seen: set[Path] = set()
            while not stop():
                for path in _follow_files(options.follow_dir):
                    await importer.file(path, complete_only=True)
                    seen.add(path)
                importer.summary.files = len(seen)
                await asyncio.sleep(options.poll_s)
    finally:
        try:
            await importer.drain()  # a chunk already handed over is finished (and checkpointed) before closing
        finally:
            importer.summary.elapsed_s = time.perf_counter() - importer.started
            await collector.close()
    return importer.summary


def import_config(config: Config, options: ImportOptions, now_ms: int) -> Config:
    """The collector configuration the importer writes with: its own writer id; the back-fill window."""
    config = with_storage(config, writer_id=pid_writer_id("imp"), index_catalog=False)
    if options.backfill_since_ms is not None:
        window_s = max(config.dedup.window_s, (now_ms - options.backfill_since_ms + _DAY_MS) / 1000)
        config = replace(config, dedup=replace(config.dedup, window_s=window_s))
    return config


def import_vendor_files(
    config: Config, options: ImportOptions, *, out: TextIO = sys.stderr, stop: Callable[[], bool] = lambda: True
) -> ImportSummary:
    """Import the files (and follow the directory until `stop()`); the summary. Progress goes to `out`."""
    if options.vendor == "sensors" and not config.auth.sensors_projects:
        raise LogImportError("no Sensors project is served: add [[vendors.sensors.projects]] to the configuration")
    config = import_config(config, options, int(time.time() * 1000))
    return asyncio.run(_run(config, options, out, stop))
