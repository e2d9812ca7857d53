"""The ledger oracle and the Jepsen-style set check.

A `Ledger` holds what the sending side knows, by event id:

- `tracked`: `track()` returned (with a spool: the event is on disk);
- `maybe`: a call was in progress when its process was killed, so whether it
  returned is unknown (at most one per kill);
- `acked`: the collector's 200 listed the event as `accepted` or `duplicate`
  *and that answer reached the sender* (the fault proxy records it);
- `indeterminate`: a request carrying the event reached the collector, and no
  answer came back (a lost answer, a reset, a kill).

`check` compares it with what the store holds (a `Stored` from store.py):

    lost        = acked - stored                      must be 0 in every test
    unexpected  = stored - (tracked | maybe)           must be 0
    undelivered = tracked - stored                     0 wherever delivery is promised (spool, retries)
    recovered   = indeterminate & stored               informative: retries that were absorbed
    dup_raw     = events in the raw log - distinct ids (two workers may store a retry twice)
    dup_deduped = what the deduplicated view (`export`) shows more than once: must be 0
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["Check", "Ledger", "Stored", "server_errors"]


@dataclass(frozen=True, slots=True)
class Stored:
    """What a store holds: every raw-log copy of each accepted id, the deduplicated view, the quarantine."""

    raw: list[str]
    deduped: list[str]
    quarantined: set[str] = field(default_factory=set)

    @property
    def ids(self) -> set[str]:
        return set(self.deduped)


@dataclass
class Ledger:
    tracked: set[str] = field(default_factory=set)
    maybe: set[str] = field(default_factory=set)
    acked: set[str] = field(default_factory=set)
    indeterminate: set[str] = field(default_factory=set)
    quarantine_expected: set[str] = field(default_factory=set)

    def track(self, ids: Iterable[str]) -> None:
        self.tracked.update(ids)

    def ack(self, ids: Iterable[str]) -> None:
        self.acked.update(ids)

    def check(self, stored: Stored) -> Check:
        ids = stored.ids
        raw_count = len(stored.raw)
        return Check(
            tracked=len(self.tracked),
            acknowledged=len(self.acked),
            stored=len(ids),
            lost_ids=frozenset(self.acked - ids - self.quarantine_expected),
            unexpected_ids=frozenset(ids - self.tracked - self.maybe),
            undelivered_ids=frozenset(self.tracked - ids - stored.quarantined),
            recovered=len(self.indeterminate & ids),
            dup_raw=raw_count - len(set(stored.raw)),
            dup_deduped=len(stored.deduped) - len(ids),
        )


@dataclass(frozen=True, slots=True)
class Check:
    tracked: int
    acknowledged: int
    stored: int
    lost_ids: frozenset[str]
    unexpected_ids: frozenset[str]
    undelivered_ids: frozenset[str]
    recovered: int
    dup_raw: int
    dup_deduped: int

    @property
    def lost(self) -> int:
        return len(self.lost_ids)

    @property
    def unexpected(self) -> int:
        return len(self.unexpected_ids)

    @property
    def undelivered(self) -> int:
        return len(self.undelivered_ids)

    def assert_clean(self, *, delivered: bool = True, raw_duplicates_allowed: bool = False) -> None:
        """The battery's common criteria; `delivered`: every tracked event must be stored too."""
        assert not self.lost_ids, f"lost {self.lost} acknowledged events, e.g. {sorted(self.lost_ids)[:5]}"
        assert not self.unexpected_ids, (
            f"{self.unexpected} stored events were never tracked: {_some(self.unexpected_ids)}"
        )
        assert self.dup_deduped == 0, f"{self.dup_deduped} duplicates in the deduplicated view"
        if delivered:
            assert not self.undelivered_ids, (
                f"{self.undelivered} tracked events never stored: {_some(self.undelivered_ids)}"
            )
        if not raw_duplicates_allowed:
            assert self.dup_raw == 0, f"{self.dup_raw} duplicates in the raw log"


def _some(ids: frozenset[str]) -> list[str]:
    return sorted(ids)[:5]


def server_errors(statuses: Iterable[int | None]) -> int:
    """5xx answers that are bugs: every 5xx but 503, the protocol's "unavailable, retry after"."""
    return sum(1 for s in statuses if s is not None and s >= 500 and s != 503)
