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
- sources and opaque ids not seen for `window_s` are forgotten (`expire`); the
  window is at least the SDK's spool age plus a day (RELIABILITY.md), and
  events older than it are quarantined, so an expired id cannot come back.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Mapping
from operator import itemgetter
from typing import Any, Final

__all__ = ["SeenIds", "id_ranges", "split_event_id", "split_one_source", "to_ranges"]

_SOURCE_LEN: Final = 32
# Nineteen digits fit in a signed 64-bit integer (envelope's `_SOURCE_RE`).
_MAX_SEQ_DIGITS: Final = 19


def split_event_id(event_id: str) -> tuple[str, int] | None:
    """(source, seq) for an SDK-form id, None for an opaque one.

    Cheaper than `envelope.parse_event_id` (no regular expression on the hot
    path) and still one-to-one: the source is the first 32 characters and the
    sequence is canonical ASCII digits (no leading zero), so a pair maps back
    to exactly one id.
    """
    if len(event_id) < _SOURCE_LEN + 2 or event_id[_SOURCE_LEN] != "-":
        return None
    digits = event_id[_SOURCE_LEN + 1 :]
    if len(digits) > _MAX_SEQ_DIGITS or digits[0] == "0" or not digits.isdigit() or not digits.isascii():
        return None
    return event_id[:_SOURCE_LEN], int(digits)


_PREFIX: Final = itemgetter(slice(0, _SOURCE_LEN + 1))
_DIGITS: Final = itemgetter(slice(_SOURCE_LEN + 1, None))
_FIRST: Final = itemgetter(0)


def split_one_source(event_ids: list[str]) -> tuple[str, list[int]] | None:
    """(source, seqs) when every id is an SDK-form id of one source (an SDK's batch), else None.

    The same answer as `split_event_id` on each id, with the checks done over
    the whole list at once in C (slices, one `isdigit` on the joined digits)
    rather than one Python call per id.
    """
    if not event_ids:
        return None
    first = event_ids[0]
    if len(first) < _SOURCE_LEN + 2 or first[_SOURCE_LEN] != "-":
        return None
    prefix = first[: _SOURCE_LEN + 1]
    if list(map(_PREFIX, event_ids)).count(prefix) != len(event_ids):
        return None
    digits = list(map(_DIGITS, event_ids))
    lengths = list(map(len, digits))
    if min(lengths) < 1 or max(lengths) > _MAX_SEQ_DIGITS:
        return None
    joined = "".join(digits)
    if not joined.isdigit() or not joined.isascii() or "0" in map(_FIRST, digits):
        return None
    return first[:_SOURCE_LEN], list(map(int, digits))


def to_ranges(seqs: dict[str, list[int]]) -> dict[str, list[int]]:
    """Sequence numbers per source as flat [lo, hi, lo, hi, ...] ranges (sorts the lists in place)."""
    ranges: dict[str, list[int]] = {}
    for source, values in seqs.items():
        values.sort()
        lo = hi = values[0]
        if values[-1] - lo == len(values) - 1:  # one run with no gap or repeat: the usual batch
            ranges[source] = [lo, values[-1]]
            continue
        flat: list[int] = []
        for v in values[1:]:
            if v <= hi + 1:
                hi = max(hi, v)
            else:
                flat += (lo, hi)
                lo = hi = v
        flat += (lo, hi)
        ranges[source] = flat
    return ranges


def id_ranges(event_ids: Iterable[str]) -> tuple[dict[str, list[int]], list[str]]:
    """Ids grouped as a frame head stores them: flat [lo, hi, lo, hi, ...] per source, and opaque ids."""
    seqs: dict[str, list[int]] = {}
    opaque: list[str] = []
    for eid in event_ids:
        pair = split_event_id(eid)
        if pair is None:
            opaque.append(eid)
        else:
            seqs.setdefault(pair[0], []).append(pair[1])
    return to_ranges(seqs), opaque


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
