"""Identity stitching (ID mapping): which identities belong to one person.

This module is the seam between the ingest pipeline and the identity graph.
The pipeline calls `IdentityGraph.observe_many` once per request with the
identities of the events it has just stored; readers call `person_of`,
`identities_of`, `find` and `attribute`. docs/identity.md is the long form.

Rules (the defaults protect a bank; `IdentityPolicy` sets them):
- an anonymous id binds to at most one login id (shared devices in branches):
  the first binding by (event time, event_id) holds, later ones are refused;
- a person holds at most `max_devices_per_login` anonymous ids;
- two identified persons never merge silently: a person holds at most one
  value of each identity type marked `unique` in the plan (login_id always),
  and a link that would join two of them is refused;
- junk ids (`envelope.is_junk_identity`: "null", "undefined", "0", empty, ...)
  and types the plan does not declare are refused;
- an `unbind` from a signed source severs the pair it names; the latest
  explicit word on a pair (bind or unbind, by event time) is the one that holds.

Every refusal enters a record kept with the graph, and `observe_many` returns
the changes to that record (a `Refusal`, or one with `withdrawn=True` when a
late event reversed an earlier decision). Messages name identity types, never
values.

The result depends on the set of observations, not on their arrival order or
batching: the graph is defined as the links taken in (time, event_id) order;
a late link makes its cluster replay in that order. An event whose identities
were already seen together, no earlier, changes nothing and costs a dict
lookup: no SQLite work.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Final

from maidian.collector.identity.rules import Key, unusable
from maidian.collector.identity.store import DEFAULT_BUSY_TIMEOUT_S, Store
from maidian.collector.identity.types import (
    ANONYMOUS_ALREADY_BOUND,
    BIND,
    DEVICE_CAP,
    JUNK_ID,
    RULES,
    SIGNED_ONLY,
    UNBIND,
    UNIQUE_CONFLICT,
    UNKNOWN_TYPE,
    UNTRUSTED_UNBIND,
    Forgotten,
    IdentityGraphError,
    IdentityPolicy,
    Observation,
    PersonId,
    Refusal,
)
from maidian.collector.identity.unit import Change

__all__ = [
    "RULES",
    "Forgotten",
    "IdentityGraph",
    "IdentityGraphError",
    "IdentityPolicy",
    "Observation",
    "PersonId",
    "Refusal",
    "observations_from",
]


# Links remembered for the fast path, in two generations of half this size each.
# An entry costs about 0.5 KB (two 36-character ids and the key), so the default
# holds the active devices of a large app in about 100 MB.
DEFAULT_CACHE_LINKS: Final = 200_000

_EXPLICIT: Final = frozenset({BIND, UNBIND})


def _message(change: Change, policy: IdentityPolicy) -> str:
    t = change.identity_type
    rule = change.rule
    if rule == JUNK_ID:
        return (
            f"the {t} holds a placeholder value that identifies nobody (see envelope.JUNK_IDENTITY_VALUES); not linked"
        )
    if rule == UNKNOWN_TYPE:
        return f"identity type {t} is not declared in the tracking plan; it was not linked"
    if rule == ANONYMOUS_ALREADY_BOUND:
        return (
            f"the anonymous id is already bound to another login id (the first binding by event time holds);"
            f" the {t} was not linked"
        )
    if rule == DEVICE_CAP:
        return (
            f"the person already has {policy.max_devices_per_login} anonymous ids"
            f" (max_devices_per_login); this {t} was not linked"
        )
    if rule == UNIQUE_CONFLICT:
        return (
            f"the {t} belongs to a person with a different {change.detail}, which is unique;"
            f" the two persons were not merged"
        )
    if rule == SIGNED_ONLY:
        return (
            f"only signed sources may tie a {change.detail} to a person (introduced_by: signed in the plan);"
            f" the {t} of this unsigned event was not linked"
        )
    if rule == UNTRUSTED_UNBIND:
        return "unbind is accepted only from signed server sources (unbind_requires_trusted); nothing was unbound"
    return f"the {t} was not linked ({rule})"


class IdentityGraph:
    """The identity graph, persisted in `path` (a SQLite file, WAL mode) when given, else in memory.

    Safe to share between threads (one lock). After `os.fork` the child opens
    its own connection on first use; several processes may share one file.
    """

    def __init__(
        self,
        path: Path | str | None = None,
        policy: IdentityPolicy | None = None,
        *,
        cache_links: int = DEFAULT_CACHE_LINKS,
        busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S,
    ) -> None:
        self.path = None if path is None else Path(path)
        self.policy = policy or IdentityPolicy()
        self._half = max(1, cache_links // 2)
        self._young: dict[object, Key] = {}
        self._old: dict[object, Key] = {}
        self._lock = threading.Lock()
        self._store = Store(self.path, self.policy, busy_timeout_s)
        self._generation = self._store.meta("generation")
        # Changes from replaying the store under a new policy, reported by the next observe_many.
        self._pending = self._store.pending
        self._stats = {"observed": 0, "fast": 0, "slow": 0}

    # -- writing -------------------------------------------------------------------

    def observe_many(self, observations: Iterable[Observation], *, checkpoint: str | None = None) -> list[Refusal]:
        """Take in the identities of stored events; return the changes to the refusal record.

        Idempotent: observing the same event again changes nothing, so recovery
        may replay the log tail. Everything from one call is committed in one
        transaction, together with `checkpoint` when given (read it back with
        `checkpoint()` to know where a replay must start). If this raises,
        nothing from the call was applied.
        """
        with self._lock:
            store = self._ready()
            todo, seen = self._sort_out(observations)
            self._stats["observed"] += seen
            self._stats["fast"] += seen - len(todo)
            self._stats["slow"] += len(todo)
            if not todo and checkpoint is None:
                return self._take_pending()
            changes, cacheable = store.ingest(todo, checkpoint)
            young = self._young
            for obs, first in cacheable:
                young[tuple(obs.identities.items())] = first
            if len(young) > self._half:
                self._old, self._young = young, {}
            return self._take_pending() + [self._refusal(c) for c in changes]

    def forget(self, person: PersonId) -> Forgotten:
        """Delete a person's identities from the graph, with every link that carries one.

        For deletion on request: the caller deletes the events stored under the
        returned identities. Identities that were only ever seen next to the
        person's (a refused login on their device) go too. The deleted rows are
        overwritten and the WAL is checkpointed, so no value stays in the files.
        """
        with self._lock:
            store = self._ready()
            removed, changes = store.forget(person)
            self._young.clear()
            self._old.clear()
            self._generation = store.meta("generation")
            out: dict[str, set[str]] = {}
            for t, v in removed:
                out.setdefault(t, set()).add(v)
            return Forgotten(person, out, [self._refusal(c) for c in changes])

    # -- reading -------------------------------------------------------------------

    def person_of(self, identity_type: str, value: str) -> PersonId | None:
        """The person an identity belongs to, or None when it was never observed."""
        with self._lock:
            return self._ready().person_of(identity_type, value)

    def identities_of(self, person: PersonId) -> dict[str, set[str]]:
        """Every identity of a person, by type (the list a data-subject request needs)."""
        with self._lock:
            rows = self._ready().identities_of(person)
        out: dict[str, set[str]] = {}
        for t, v in rows:
            out.setdefault(t, set()).add(v)
        return out

    def first_seen(self, person: PersonId) -> dict[tuple[str, str], int]:
        """When each identity of a person was first seen (the earliest event time that carried it), in ms."""
        with self._lock:
            rows = self._ready().identities_seen(person)
        return {(t, v): first for t, v, first in rows}

    def cluster_members(self, identities: Iterable[tuple[str, str]]) -> list[tuple[str, str, PersonId]]:
        """(type, value, person) of every identity connected, by any link made or refused, to the given ones.

        What a copy of the graph kept elsewhere (cluster mode's PostgreSQL table) must rewrite after the
        given identities were observed: a late link can move any identity of its cluster to another person.
        """
        with self._lock:
            return self._ready().cluster_members(identities)

    def all_persons(self) -> dict[tuple[str, str], PersonId]:
        """Every identity's person: (type, value) -> person id."""
        with self._lock:
            return self._ready().all_persons()

    def find(self, value: str, identity_type: str | None = None) -> PersonId | None:
        """The person that any identity with this value (of this type, if given) belongs to.

        When several types share the value, the highest-priority type decides.
        """
        if identity_type is not None:
            return self.person_of(identity_type, value)
        with self._lock:
            rows = self._ready().find(value)
        if not rows:
            return None
        rules = self._store.rules
        return min(rows, key=lambda r: (rules.priority(r[0]), r[0]))[1]

    def attribute(self, identities: Mapping[str, object], *, trusted: bool = True) -> PersonId | None:
        """The person one event belongs to: the person of its highest-priority known identity.

        Every person-scoped reader and writer keeps an event only when it is
        attributed to that person, so the events of a second login on a
        shared (already bound) device stay with the login that sent them, and
        a refused link never moves an event. An unsigned event (`trusted`
        False) is never attributed through a type only signed sources may
        introduce: the app's other identities decide.
        """
        rules = self._store.rules
        skip = frozenset() if trusted else rules.signed_only
        for t in sorted(identities, key=lambda t: (rules.priority(t), t)):
            value = identities[t]
            if t in skip or not isinstance(value, str):
                continue
            person = self.person_of(t, value)
            if person is not None:
                return person
        return None

    def refusals(self) -> list[Refusal]:
        """The refusal record as it stands: independent of the order events arrived in."""
        with self._lock:
            rows = self._ready().refusals()
        return [self._refusal(Change(e, t, r, d, withdrawn=False)) for e, t, r, d in rows]

    def refusal_counts(self) -> dict[str, int]:
        """Refusals in the record, by rule."""
        out: dict[str, int] = {}
        for r in self.refusals():
            out[r.rule] = out.get(r.rule, 0) + 1
        return out

    def checkpoint(self) -> str | None:
        """The `checkpoint` given with the last committed `observe_many` call that had one."""
        with self._lock:
            return self._ready().meta("checkpoint")

    @property
    def stats(self) -> dict[str, int]:
        """Counters since this graph was opened, for metrics.

        `observed` events, of which `fast` were settled by the cache and `slow`
        went to SQLite; `replays` of clusters after late events, and the
        `replayed_links` they went through (a replay costs about 20-50 µs per
        link of its cluster: a steady climb here means late events into a large
        cluster, see docs/identity.md).
        """
        store = self._store
        return {**self._stats, "replays": store.replays, "replayed_links": store.replayed_links}

    def counts(self) -> dict[str, int]:
        """Rows per table (identities are `node`, distinct identity sets `link`), for metrics."""
        with self._lock:
            return self._ready().counts()

    def check(self) -> list[str]:
        """Problems in the stored graph's own bookkeeping; empty when healthy (a full scan)."""
        with self._lock:
            return self._ready().check()

    def close(self) -> None:
        """Close the store; the graph cannot be used afterwards."""
        with self._lock:
            self._store.close()
            self._young.clear()
            self._old.clear()

    def __enter__(self) -> IdentityGraph:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------

    def _ready(self) -> Store:
        """The store, reopened after fork; caches dropped when another process forgot someone."""
        store = self._store
        if store.pid != os.getpid():
            self._young.clear()
            self._old.clear()
        store.ensure()
        if self.path is not None:
            generation = store.meta("generation")
            if generation != self._generation:
                self._young.clear()
                self._old.clear()
                self._generation = generation
        return store

    def _sort_out(self, observations: Iterable[Observation]) -> tuple[list[Observation], int]:
        """The observations that need the store, and how many were looked at.

        An event whose identities, in the same order, were seen together no
        later than it changes nothing and is dropped here: the hot path.
        """
        young = self._young
        young_get, old_get = young.get, self._old.get
        explicit = _EXPLICIT
        slow: dict[object, Observation] = {}
        odd: list[Observation] = []
        seen = 0
        for obs in observations:
            seen += 1
            if obs.kind in explicit:
                odd.append(obs)
                continue
            try:
                key: object = tuple(obs.identities.items())
                first = young_get(key)
            except TypeError:  # an unhashable value: the store refuses it as junk
                odd.append(obs)
                continue
            if first is None:
                first = old_get(key)
                if first is not None:
                    young[key] = first
            if first is not None:
                t = obs.time
                if t > first[0] or (t == first[0] and obs.event_id >= first[1]):
                    continue
            # Of several clean events with the same identities, only the earliest can matter.
            other = slow.get(key)
            if other is None:
                slow[key] = obs
                continue
            later = obs
            if (obs.time, obs.event_id) < (other.time, other.event_id):
                slow[key], later = obs, other
            if not self._clean(later):
                odd.append(later)
        return [*slow.values(), *odd], seen

    def _clean(self, obs: Observation) -> bool:
        """True when no identity of the event is refused on its own (no per-event refusal to file)."""
        policy = self.policy
        return all(unusable(policy, t, v) is None for t, v in obs.identities.items())

    def _take_pending(self) -> list[Refusal]:
        pending, self._pending = self._pending, []
        return [self._refusal(c) for c in pending]

    def _refusal(self, change: Change) -> Refusal:
        return Refusal(
            change.event_id, change.rule, change.identity_type, _message(change, self.policy), change.withdrawn
        )


def observations_from(events: Sequence[Mapping[str, object]], *, trusted: bool = False) -> list[Observation]:
    """Observations for decoded wire events (helper for tests and replays)."""
    out = []
    for e in events:
        ids = e.get("identities")
        if isinstance(ids, Mapping):
            out.append(
                Observation(
                    event_id=str(e.get("event_id")),
                    time=int(e.get("time", 0)),  # type: ignore[call-overload]
                    kind=str(e.get("type")),
                    identities={str(k): str(v) for k, v in ids.items()},
                    trusted=trusted,
                )
            )
    return out
