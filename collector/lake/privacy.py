"""Deletion on request and retention, applied to the lake's files (the privacy operations call these).

Promises:
- `forget` removes every `events` and `profiles` row that carries any of the
  given identities (the same rule the raw log's deletion applies), and every
  `identities` row of those identities or of the persons they belonged to;
  after it, no report shows the person.
- `retain` removes every row whose corrected time is before the cutoff: a
  partition wholly before it is deleted, one that straddles it is rewritten.
- a rewritten file replaces the old one atomically (temporary name, fsync,
  rename); a file left with no rows is deleted. Both hold the lake's lock, so
  no pass writes meanwhile, and both are safe to re-run after a crash.
- with no lake in the data directory they do nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from maidian.collector.store.log import sync_dir

from .layout import LakeDir, LakeState, locked
from .writer import read_identities, write_identities, write_table

__all__ = ["forget", "retain"]


def _rewrite(path: Path, keep: pa.Array) -> int:
    """Keep the rows `keep` marks; the number removed."""
    removed = len(keep) - int(pc.sum(keep).as_py() or 0)
    if removed == 0:
        return 0
    if removed == len(keep):
        path.unlink()
    else:
        write_table(pq.read_table(path).filter(keep), path)
    sync_dir(path.parent)
    return removed


def _files(lake: LakeDir) -> Iterable[Path]:
    for table in lake.tables():
        for partition in lake.partitions(table):
            yield from lake.files(partition)


def _drop_empty_partitions(lake: LakeDir) -> None:
    for table in lake.tables():
        for partition in lake.partitions(table):
            if not os.listdir(partition):
                partition.rmdir()


def forget(data_dir: Path, identities: Iterable[tuple[str, str]], event_ids: Iterable[str] = ()) -> int:
    """Remove a person's rows from the lake; the number of event and profile rows removed.

    `event_ids` are the events the privacy operation removed from the logs (the
    ones the identity graph attributes to the person, whatever identities they
    carry); `identities` are the person's own values, never one a shared
    device's other users carry too, so no one else's row goes.
    """
    lake = LakeDir.of(Path(data_dir))
    if not lake.exists():
        return 0
    erased = pa.array(sorted(set(event_ids)), pa.string())
    wanted: dict[str, set[str]] = {}
    for t, v in identities:
        wanted.setdefault(t, set()).add(v)
    removed = 0
    with locked(lake):
        for path in list(_files(lake)):
            names = set(pq.read_schema(path).names)
            columns = [t for t in wanted if t in names]
            by_id = bool(erased) and "event_id" in names
            if not columns and not by_id:
                continue
            table = pq.read_table(path, columns=columns + (["event_id"] if by_id else []))
            hit = pa.array([False] * table.num_rows, pa.bool_())
            if by_id:
                hit = pc.fill_null(pc.is_in(table["event_id"], value_set=erased), False)
            for t in columns:
                hit = pc.or_(hit, pc.fill_null(pc.is_in(table[t], value_set=pa.array(sorted(wanted[t]))), False))
            removed += _rewrite(path, pc.invert(hit))
        _drop_empty_partitions(lake)
        known = read_identities(lake)
        persons = {entry[1] for pair, entry in known.items() if pair[1] in wanted.get(pair[0], ())}
        persons.discard(None)
        kept = {
            pair: entry
            for pair, entry in known.items()
            if pair[1] not in wanted.get(pair[0], ()) and entry[1] not in persons
        }
        if len(kept) != len(known):
            write_identities(lake, kept)
    return removed


def retain(data_dir: Path, cutoff_ms: int) -> int:
    """Remove every lake row whose corrected time is before `cutoff_ms`; the number removed."""
    lake = LakeDir.of(Path(data_dir))
    if not lake.exists():
        return 0
    removed = 0
    cutoff = pa.scalar(cutoff_ms, pa.int64()).cast(pa.timestamp("ms"))
    with locked(lake):
        LakeState.load(lake)  # refuses a checkpoint of another version before anything changes
        for path in list(_files(lake)):
            times = pq.read_table(path, columns=["time"])["time"]
            removed += _rewrite(path, pc.fill_null(pc.greater_equal(times, cutoff), True).combine_chunks())
        _drop_empty_partitions(lake)
    return removed
