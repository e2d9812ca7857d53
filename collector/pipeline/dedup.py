"""Deduplication: which event ids are already stored.

The SDK's ids are `<source>-<seq>` (envelope.py): one instance counts up from 1,
so the ids of one source stored so far are almost always one range `1..N`, a
few more after a gap. `SeenIds` keeps them as sorted, disjoint ranges per source
(a few integers per device instead of one entry per event) and any other id
(server sources, imports) in a plain set with its last-seen time.

Rules:
- an id is marked seen only once the frame that stores it is durable (the
  handler marks after the log's commit); until then it is *pending*, and a
  second request carrying it waits for the first one's commit and then answers
  `duplicate` (or 503 if that commit failed). The pending map is checked and
  filled synchronously on the event loop, so two concurrent requests can never
  both store one event.
- the state is implied by the log: every frame's head lists its ids, so the
  state is rebuilt from the log, and a snapshot (`snapshot`/`restore`) records
  the offsets it covers so start-up reads only the log after them.
- ids are scoped by sender (`ScopedSeenIds`): the scope is the write key's
  name or the signed source's name, recorded in every frame head (`src`,
  `kind`), so an id repeats only within one scope, and no sender can make
  another's events look stored by sending their ids first. Frames written
  before scopes existed carry the same head fields, so old data directories
  are scoped by replaying their heads; a snapshot from before scopes is set
  aside and the log is read from its start once (recovery.py).
- sources and opaque ids not seen for `window_s` are forgotten (`expire`); the
  window is at least the SDK's spool age plus a day (docs/reliability.md), and
  events older than it are quarantined, so an expired id cannot come back.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Mapping
from typing import Any, Final

from maidian.collector.store.ids import id_ranges, split_event_id

__all__ = ["SCOPED_SNAPSHOT", "ScopedSeenIds", "SeenIds", "head_scope", "scope_of"]


class _Ranges:
    """Sorted disjoint closed ranges of integers."""

    __slots__ = ("his", "last_seen_ms", "los")

    def __init__(self) -> None:
        self.los: list[int] = []
        self.his: list[int] = []
        self.last_seen_ms = 0

    def __contains__(self, n: int) -> bool:
        los = self.los
        if not los:
            return False
        if n >= los[-1]:
            return n <= self.his[-1]
        i = bisect_right(los, n) - 1
        return i >= 0 and n <= self.his[i]

    def add(self, lo: int, hi: int) -> None:
        los, his = self.los, self.his
        if los and lo >= los[-1]:  # the common case: counting up
            if lo <= his[-1] + 1:
                his[-1] = max(his[-1], hi)
                return
            los.append(lo)
            his.append(hi)
            return
        i = bisect_right(los, lo) - 1
        if i >= 0 and lo <= his[i] + 1:
            start = i
            lo = los[i]
        else:
            start = i + 1
        j = start
        while j < len(los) and los[j] <= hi + 1:
            hi = max(hi, his[j])
            j += 1
        los[start:j] = [lo]
        his[start:j] = [hi]

    def flat(self) -> list[int]:
        out: list[int] = []
        for lo, hi in zip(self.los, self.his, strict=True):
            out += (lo, hi)
        return out


class SeenIds:
    """Event ids stored within the dedup window."""

    def __init__(self, window_s: float) -> None:
        self.window_ms = int(window_s * 1000)
        self._sources: dict[str, _Ranges] = {}
        self._opaque: dict[str, int] = {}

    def __contains__(self, event_id: str) -> bool:
        pair = split_event_id(event_id)
        if pair is None:
            return event_id in self._opaque
        ranges = self._sources.get(pair[0])
        return ranges is not None and pair[1] in ranges

    def has(self, source: str, seq: int) -> bool:
        """Whether the SDK-form id (source, seq) is seen (no parsing)."""
        ranges = self._sources.get(source)
        return ranges is not None and seq in ranges

    def all_below(self, source: str, seq: int) -> bool:
        """Whether every sequence number of `source` seen so far is below `seq` (none seen: True)."""
        ranges = self._sources.get(source)
        return ranges is None or not ranges.his or ranges.his[-1] < seq

    def has_opaque(self, event_id: str) -> bool:
        return event_id in self._opaque

    def __len__(self) -> int:
        """Sources plus opaque ids: the size of the state, not the number of ids."""
        return len(self._sources) + len(self._opaque)

    @property
    def range_count(self) -> int:
        return sum(len(r.los) for r in self._sources.values())

    def add(self, event_ids: Iterable[str], now_ms: int) -> None:
        ranges, opaque = id_ranges(event_ids)
        self.add_head(ranges, opaque, now_ms)

    def add_head(self, ranges: Mapping[str, list[int]], opaque: Iterable[str], now_ms: int) -> None:
        """Mark the ids of one frame head (`id_ranges` form) seen."""
        for source, flat in ranges.items():
            r = self._sources.get(source)
            if r is None:
                r = self._sources[source] = _Ranges()
            for k in range(0, len(flat) - 1, 2):
                r.add(flat[k], flat[k + 1])
            r.last_seen_ms = max(r.last_seen_ms, now_ms)
        for eid in opaque:
            if self._opaque.get(eid, -1) < now_ms:
                self._opaque[eid] = now_ms

    def entry(self, key: str) -> tuple[int, list[int]] | None:
        """(last seen ms, flat ranges) of one SDK source, or (last seen ms, []) of one opaque id; None if unseen."""
        ranges = self._sources.get(key)
        if ranges is not None:
            return ranges.last_seen_ms, ranges.flat()
        seen = self._opaque.get(key)
        return None if seen is None else (seen, [])

    def opaque_count(self) -> int:
        return len(self._opaque)

    def expire(self, now_ms: int) -> int:
        """Forget sources and ids not seen within the window; returns how many were forgotten."""
        cutoff = now_ms - self.window_ms
        old = [s for s, r in self._sources.items() if r.last_seen_ms < cutoff]
        for s in old:
            del self._sources[s]
        stale = [e for e, t in self._opaque.items() if t < cutoff]
        for e in stale:
            del self._opaque[e]
        return len(old) + len(stale)

    def snapshot(self) -> dict[str, Any]:
        """The state as plain data (msgpack-able)."""
        return {
            "sources": {s: [r.last_seen_ms, r.flat()] for s, r in self._sources.items()},
            "opaque": dict(self._opaque),
        }

    def restore(self, data: Mapping[str, Any]) -> None:
        """Merge a `snapshot()` into this state."""
        for source, (last_seen, flat) in data.get("sources", {}).items():
            self.add_head({source: flat}, (), int(last_seen))
        for eid, t in data.get("opaque", {}).items():
            self.add_head({}, (eid,), int(t))


def scope_of(name: str, kind: str) -> str:
    """The dedup scope of a sender: `s:<source>` for a signed server source, `k:<write key name>` otherwise.

    Vendor traffic (`sensors`, `segment`) resolves to a write key and shares
    its scope. Names are configured, so the number of scopes is bounded.
    """
    return ("s:" if kind == "source" else "k:") + name


def head_scope(head: Mapping[str, Any]) -> str:
    """The scope of the sender that wrote a frame, from its head (`src`, `kind`; every frame ever written has both)."""
    return scope_of(str(head.get("src", "")), str(head.get("kind", "key")))


# The snapshot layout with one state per scope; a snapshot without it predates scopes.
SCOPED_SNAPSHOT: Final = 2


class ScopedSeenIds:
    """Event ids stored within the dedup window, one `SeenIds` per sender scope.

    An id is a duplicate only of an id stored by the same scope, so no write
    key can make another key's (or a signed source's) events look already
    stored by sending their ids first.
    """

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._scopes: dict[str, SeenIds] = {}

    def of(self, scope: str) -> SeenIds:
        """The ids of one scope (created empty when new)."""
        seen = self._scopes.get(scope)
        if seen is None:
            seen = self._scopes[scope] = SeenIds(self.window_s)
        return seen

    def contains(self, scope: str, event_id: str) -> bool:
        seen = self._scopes.get(scope)
        return seen is not None and event_id in seen

    def add(self, scope: str, event_ids: Iterable[str], now_ms: int) -> None:
        self.of(scope).add(event_ids, now_ms)

    def add_frame(self, head: Mapping[str, Any]) -> None:
        """Mark the ids of one frame head seen, in the scope of its sender."""
        self.of(head_scope(head)).add_head(head.get("seq", {}), head.get("oid", ()), int(head.get("at", 0)))

    def __len__(self) -> int:
        return sum(len(s) for s in self._scopes.values())

    @property
    def range_count(self) -> int:
        return sum(s.range_count for s in self._scopes.values())

    def opaque_count(self) -> int:
        return sum(s.opaque_count() for s in self._scopes.values())

    def expire(self, now_ms: int) -> int:
        forgotten = sum(s.expire(now_ms) for s in self._scopes.values())
        for scope in [k for k, s in self._scopes.items() if not len(s)]:
            del self._scopes[scope]
        return forgotten

    def snapshot(self) -> dict[str, Any]:
        return {"v": SCOPED_SNAPSHOT, "scopes": {k: s.snapshot() for k, s in self._scopes.items()}}

    def restore(self, data: Mapping[str, Any]) -> None:
        """Merge a `snapshot()`; a snapshot from before scopes raises `ValueError` (rebuild from the log)."""
        if data.get("v") != SCOPED_SNAPSHOT:
            raise ValueError("a dedup snapshot without sender scopes")
        for scope, state in data.get("scopes", {}).items():
            self.of(scope).restore(state)
