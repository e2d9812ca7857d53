"""Privacy operations on a data directory: delete one person, export one person, retention.

Data-subject requests (PIPL Art. 45 access and copy, Art. 47 deletion) and the
retention limit (Art. 19) need every trace of a person or of old data gone
from the files, while the logs stay append-only for everything else.

How a segment changes (docs/collector.md, "Deleting and exporting"): a
segment is copied to a new file with the chosen events left out, synced,
renamed over the old one and the directory synced, so a crash (kill -9 at any
moment) leaves each segment whole, old or new. Every rewritten frame keeps its
exact length and position: the head is rebuilt for the events that stay and
padded to the old size (`pad`). So every (segment, offset) that derived state
holds (the catalog's identity index, dedup snapshots, the quarantine replay
marks) still names the same frame, and readers never see a frame move. In
quarantine frames, a removed record keeps its index as a tombstone (an empty
record, no reasons), because replays and the quarantine index refer to
records by index.

Derived state then follows: the catalog drops the rows that name removed data
(secure_delete on, WAL truncated), the identity graph forgets the person
(`IdentityGraph.forget`), and with `suppress` the person's identities go into
the suppression list (`state/suppressed.json`: keyed hashes only, never
values) that a starting collector loads; the collector then answers the
person's new events as usual and stores none of them.

These operations refuse to run while a collector (or any writer) holds the
data directory: they take every writer lock first, so a collector cannot
start meanwhile either. A rewrite of a segment the running collector is
appending to would lose its later frames; stopping the collector for the
seconds a deletion takes is the price (docs/decisions.md).

A re-run repeats only what is left: segments already rewritten hold nothing
to remove, catalog clean-up is by content, and the graph forgets last, so
until the end the person's identities can still be found from any of them.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgspec

from maidian.collector.errors import PrivacyError
from maidian.collector.store.catalog import Catalog, IdentityFeed
from maidian.collector.store.log import DataDir
from maidian.collector.store.rewrite import (
    Cleared,
    held_exclusively,
    open_data_dir,
    remove_leftovers,
    rewrite_logs,
)
from maidian.collector.store.suppression import Suppression, add_suppressed, load_suppression
from maidian.tracking_plan import Plan

__all__ = [
    "Cleared",
    "PrivacyError",
    "Suppression",
    "delete_person",
    "export_person",
    "load_suppression",
    "retain",
]

_DAY_MS: Final = 86_400_000

_encoder = msgspec.msgpack.Encoder()


# -- the operations ----------------------------------------------------------------------------


def _identity_feed(data: DataDir, plan: Plan | None) -> IdentityFeed:
    from maidian.collector.identity.types import IdentityPolicy

    return IdentityFeed.for_plan(data, plan) if plan is not None else IdentityFeed(data, IdentityPolicy())


@contextlib.contextmanager
def _session(data_dir: Path, plan: Plan | None) -> Iterator[tuple[DataDir, Catalog, IdentityFeed, Cleared]]:
    """The data directory held exclusively, an interrupted run's files removed, the catalog and graph caught up."""
    data = open_data_dir(data_dir)
    cleared = Cleared()
    with held_exclusively(data):
        cleared.leftovers = remove_leftovers(data)
        catalog = Catalog(data)
        feed = _identity_feed(data, plan)
        try:
            catalog.catch_up(feed)
            yield data, catalog, feed, cleared
        finally:
            catalog.close()
            feed.close()


def _person_identities(catalog: Catalog, feed: IdentityFeed, value: str) -> tuple[Any, set[tuple[str, str]]]:
    person = feed.graph.find(value)
    found: set[tuple[str, str]] = set()
    if person is not None:
        found = {(t, v) for t, values in feed.graph.identities_of(person).items() for v in values}
    found.update((t, value) for t in catalog.identity_types_of(value))
    return person, found


@dataclass(frozen=True, slots=True)
class _Match:
    """Whether a stored record is the person's: it carries one of their identities.

    A record that is not an event with identities (a quarantined record that
    does not decode) matches when its bytes contain any of the values. When
    nothing indexed knows `value`, it matches under any identity type.
    """

    identities: frozenset[tuple[str, str]]
    value: str

    def __call__(self, record: Any) -> bool:
        if isinstance(record, dict) and isinstance(record.get("identities"), dict):
            ids = record["identities"]
            if not self.identities:
                return any(str(v) == self.value for v in ids.values())
            return any((str(t), str(v)) in self.identities for t, v in ids.items())
        if isinstance(record, dict) and isinstance(record.get("undecodable_base64"), str):
            record = base64.b64decode(record["undecodable_base64"])
        blob = record if isinstance(record, bytes) else _encoder.encode(record)
        values = {v for _t, v in self.identities} or {self.value}
        return any(v.encode() in blob for v in values)


def delete_person(data_dir: Path, value: str, *, suppress: bool = False, plan: Plan | None = None) -> Cleared:
    """Remove every stored trace of the person who owns identity `value`; see the module docstring."""
    with _session(data_dir, plan) as (data, catalog, feed, cleared):
        person, identities = _person_identities(catalog, feed, value)
        match = _Match(frozenset(identities), value)
        if suppress:
            cleared.suppressed = add_suppressed(data, identities)
        erased_ids: set[str] = set()

        def drop(event: Any, _t: int) -> bool:
            hit = match(event)
            if hit and isinstance(event, dict) and isinstance(event.get("event_id"), str):
                erased_ids.add(event["event_id"])
            return hit

        scan = rewrite_logs(
            data, drop, cleared, raw_needs=lambda head: any(match({"identities": o[3]}) for o in head.get("obs", ()))
        )
        cleared.catalog_rows = catalog.forget_removed(
            scan, identities=frozenset(identities), event_ids=frozenset(erased_ids)
        )
        if person is not None:
            forgotten = feed.graph.forget(person)
            cleared.identities = sum(len(v) for v in forgotten.identities.values())
            catalog.record_refusals(forgotten.refusals)
            catalog.truncate_wal()
    return cleared


def retain(data_dir: Path, days: float, *, now_ms: int, plan: Plan | None = None) -> Cleared:
    """Remove every event whose corrected time is more than `days` before `now_ms`, and nothing newer.

    Whole segments older than the cutoff are deleted (except each writer's
    newest, which is emptied instead so its name is never reused); a segment
    that straddles the cutoff is rewritten. The identity graph keeps its
    links: a login seen 40 days ago still ties yesterday's anonymous events to
    the person (docs/decisions.md).
    """
    if days <= 0:
        raise PrivacyError(f"--days must be positive, got {days}")
    cutoff = now_ms - int(days * _DAY_MS)
    with _session(data_dir, plan) as (data, catalog, _, cleared):
        scan = rewrite_logs(data, lambda _event, t: t < cutoff, cleared, cutoff_ms=cutoff)
        cleared.catalog_rows = catalog.forget_removed(scan)
    cleared.notes.append(f"cutoff: events with a corrected time before {cutoff} (epoch ms) were removed")
    return cleared


def export_person(
    data_dir: Path, value: str, *, plan: Plan | None = None, quarantined: bool = False
) -> list[dict[str, Any]]:
    """Every stored event of the person who owns `value`, deduplicated, in time order (`events --person`).

    With `quarantined`, their quarantined records follow, in log order, as
    `export --quarantined` prints them (`quarantined: true`, the reasons, the
    record as sent).
    """
    from maidian.collector.read import export_events, person_events

    records = person_events(data_dir, value, plan=plan)
    if quarantined:
        data = open_data_dir(data_dir)
        catalog = Catalog(data)
        feed = _identity_feed(data, plan)
        try:
            _person, identities = _person_identities(catalog, feed, value)
        finally:
            catalog.close()
            feed.close()
        match = _Match(frozenset(identities), value)
        records += [r for r in export_events(data_dir, quarantined=True, accepted=False) if match(r["event"])]
    return records
