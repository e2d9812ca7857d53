"""Privacy operations on a data directory: delete one person, export one person, retention.

Data-subject requests (PIPL Art. 45 access and copy, Art. 47 deletion) and the
retention limit (Art. 19) need every trace of a person or of old data gone
from the files, while the logs stay append-only for everything else.

Which events go is decided here; how a segment changes is the store's
(store/rewrite.py, docs/collector.md "Deleting and exporting"): each segment
is rewritten whole and renamed in, every frame keeping its length and
position, so a crash leaves each segment old or new and derived state never
sees a frame move.

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
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgspec

from maidian.collector.errors import NoSuchPerson, PrivacyError
from maidian.collector.read import Attribution, PersonView, person_view
from maidian.collector.store.catalog import Catalog
from maidian.collector.store.feed import IdentityFeed
from maidian.collector.store.log import DataDir
from maidian.collector.store.rewrite import (
    Cleared,
    held_exclusively,
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
    "export_person_records",
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
    data = DataDir.existing(data_dir)
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


def normalised(value: object) -> str:
    """An identity value as deletion matches it: NFKC, no surrounding whitespace (a stray space, full-width digits)."""
    return unicodedata.normalize("NFKC", value if isinstance(value, str) else str(value)).strip()


@dataclass(frozen=True, slots=True)
class _Match:
    """Whether a stored record carries one of the person's own values, matched after `normalised`.

    Any identity of the record counts, whatever its type (a declared one, an
    unknown one, a misspelt key), and so does any string inside a quarantined
    record (a value sent in the wrong place). A record that does not decode
    matches when its bytes contain a value.
    """

    values: frozenset[str]

    def __call__(self, record: Any, *, anywhere: bool) -> bool:
        if not self.values:
            return False
        if isinstance(record, dict) and isinstance(record.get("undecodable_base64"), str):
            record = base64.b64decode(record["undecodable_base64"])
        if isinstance(record, bytes):
            return any(v.encode() in record for v in self.values)
        ids = record.get("identities") if isinstance(record, dict) else None
        if isinstance(ids, dict) and any(normalised(v) in self.values for v in ids.values()):
            return True
        return anywhere and any(normalised(v) in self.values for v in _strings(record))


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)


def _own_values(view: PersonView, value: str) -> frozenset[str]:
    """The person's own identity values, normalised; the value asked for too unless it is shared."""
    shared = {normalised(v) for _t, v in view.shared}
    own = {normalised(v) for _t, v in view.own}
    if normalised(value) not in shared:
        own.add(normalised(value))
    return frozenset(own - shared - {""})


def _lake_of(data: DataDir) -> Any:
    """The lake's privacy functions when the data directory has a lake (lake/privacy.py), else None."""
    if not (data.root / "lake" / "state.json").exists():
        return None
    try:
        from maidian.collector.lake import privacy
    except ImportError as exc:
        raise PrivacyError(
            f"{data.root}/lake holds the lake, which needs the lake extra to be changed: pip install 'maidian[lake]'"
        ) from exc
    return privacy


def delete_person(data_dir: Path, value: str, *, suppress: bool = False, plan: Plan | None = None) -> Cleared:
    """Remove every stored trace of the person who owns identity `value`; see the module docstring.

    The raw events removed are the ones the identity graph attributes to the
    person, and any other carrying one of their own identity values; the
    quarantined records removed are the ones carrying such a value anywhere,
    matched after `normalised`. Identities that other persons' events carry
    too (a shared branch pad) stay in those events, and are not suppressed.
    """
    with _session(data_dir, plan) as (data, catalog, feed, cleared):
        view = person_view(data, catalog, feed.graph, value)
        person = view.person
        cleared.person = person or ""
        match = _Match(_own_values(view, value))
        members = view.members
        attribute = Attribution(feed.graph)
        if suppress:
            cleared.suppressed = add_suppressed(data, view.own)
        erased_ids: set[str] = set()

        def drop(event: Any, _t: int, head: Mapping[str, Any]) -> bool:
            ids = event.get("identities") if isinstance(event, dict) else None
            mine = person is not None and attribute(ids, bool(head.get("trusted"))) == person
            hit = mine or match(event, anywhere=head.get("q") is not None)
            if hit and isinstance(event, dict) and isinstance(event.get("event_id"), str):
                erased_ids.add(event["event_id"])
            return hit

        def raw_needs(head: Mapping[str, Any]) -> bool:
            return any(
                (t, v) in members or normalised(v) in match.values for o in head.get("obs", ()) for t, v in o[3].items()
            )

        scan = rewrite_logs(data, drop, cleared, raw_needs=raw_needs)
        cleared.catalog_rows = catalog.forget_removed(scan, identities=members, event_ids=frozenset(erased_ids))
        lake = _lake_of(data)
        if lake is not None:
            cleared.notes.append(f"lake: {lake.forget(data.root, view.own, erased_ids)} rows removed")
        if person is not None:
            forgotten = feed.graph.forget(person)
            cleared.identities = sum(len(v) for v in forgotten.identities.values())
            catalog.record_refusals(forgotten.refusals)
            # Others' events that carried a forgotten identity (a shared pad) link it again, as if never deleted.
            removed = {(t, v) for t, values in forgotten.identities.items() for v in values}
            again = catalog.observations_carrying(removed)
            if again:
                catalog.record_refusals(feed.graph.observe_many(again))
            cleared.identities -= len({(t, v) for o in again for t, v in o.identities.items()} & removed)
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
        scan = rewrite_logs(data, lambda _event, t, _head: t < cutoff, cleared, cutoff_ms=cutoff)
        cleared.catalog_rows = catalog.forget_removed(scan)
        lake = _lake_of(data)
        if lake is not None:
            cleared.notes.append(f"lake: {lake.retain(data.root, cutoff)} rows removed")
    cleared.notes.append(f"cutoff: events with a corrected time before {cutoff} (epoch ms) were removed")
    return cleared


def export_person(
    data_dir: Path, value: str, *, plan: Plan | None = None, quarantined: bool = False
) -> list[dict[str, Any]]:
    """Every stored event attributed to the person who owns `value`, deduplicated, in order (`events --person`).

    With `quarantined`, the quarantined records that carry one of their own
    identity values follow, in log order, as `export --quarantined` prints
    them (`quarantined: true`, the reasons, the record as sent).
    """
    return export_person_records(data_dir, value, plan=plan, quarantined=quarantined)[1]


def export_person_records(
    data_dir: Path, value: str, *, plan: Plan | None = None, quarantined: bool = False
) -> tuple[str | None, list[dict[str, Any]]]:
    """`export_person` with the person id it exported (for the audit log)."""
    from maidian.collector.read import export_events

    data = DataDir.existing(data_dir)
    catalog = Catalog(data)
    feed = _identity_feed(data, plan)
    try:
        catalog.catch_up(feed)
        view = person_view(data, catalog, feed.graph, value)
    finally:
        catalog.close()
        feed.close()
    if not view.events and view.person is None:
        raise NoSuchPerson("no stored event carries that identity")
    records = list(view.events)
    if quarantined:
        match = _Match(_own_values(view, value))
        records += [
            r for r in export_events(data_dir, quarantined=True, accepted=False) if match(r["event"], anywhere=True)
        ]
    return view.person, records
