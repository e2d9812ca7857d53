"""Frame heads for accepted events: what derived state is rebuilt from without decompressing a body.

The head of a raw-log frame (frames.py) lists the event ids (`seq` ranges per
SDK source and `oid` opaque ids, as `dedup.id_ranges` makes them), one
identity observation per distinct identity set (`obs`), the event-name
counts (`names`) and the time range (`tmin`, `tmax`). The ingest pipeline
builds it for every request it stores; the quarantine replay and the privacy
rewrites build it again for the events a frame keeps. One builder for all.
"""

from __future__ import annotations

from collections import Counter
from operator import itemgetter
from typing import Any, Final

import msgspec

from maidian.collector.store.frames import encode_frame

__all__ = ["TimeSpan", "build_accepted_frame"]


class TimeSpan(msgspec.Struct):
    """A raw-log head's time range (corrected times, ms) and event-name counts, and nothing else of it."""

    tmin: int = 0
    tmax: int = 0
    names: dict[str, int] = msgspec.field(default_factory=dict)


def build_accepted_frame(
    head: dict[str, Any],
    stored: list[tuple[dict[str, Any], Any, int, list[str] | None]],
    ranges: dict[str, list[int]],
    opaque: list[str],
) -> bytes:
    """A raw-log frame for accepted events: (event, encoded event, corrected time, flags) each.

    The head lists the ids (`ranges`/`opaque`, as `dedup.id_ranges` makes
    them), one identity observation per distinct identity set (the earliest
    event with it; every non-track event), the event-name counts and the time
    range, so derived state is rebuilt from heads alone.
    """
    head = dict(head)
    head.update(n=len(stored), seq=ranges, oid=opaque)
    summary = _one_identity_set(stored)
    if summary is not None:
        head.update(summary)
        times = head.pop("times")
        flags = {str(i): f for i, (_e, _r, _t, f) in enumerate(stored) if f}
        return encode_frame(head, {"e": [raw for _e, raw, _t, _f in stored], "t": times, "f": flags})
    observations: dict[Any, list[Any]] = {}
    ops: list[list[Any]] = []
    names: dict[str, int] = {}
    times = []
    flags = {}
    last_ids: Any = None
    last: list[Any] = []
    for i, (event, _raw, corrected, event_flags) in enumerate(stored):
        times.append(corrected)
        if event_flags:
            flags[str(i)] = event_flags
        identities = event["identities"]
        if event["type"] == "track":
            name = event["event"]
            names[name] = names.get(name, 0) + 1
            # Events of one batch usually share one identity set: compare with the last one first.
            if identities != last_ids:
                key = tuple(identities.items())
                entry = observations.get(key)
                if entry is None:
                    entry = observations[key] = [corrected, event["event_id"], "track", identities]
                last_ids, last = identities, entry
            if corrected <= last[0] and (corrected, event["event_id"]) < (last[0], last[1]):
                last[0], last[1] = corrected, event["event_id"]
        else:
            kind = event["type"]
            names[kind] = names.get(kind, 0) + 1
            ops.append([corrected, event["event_id"], kind, identities])
    head.update(
        obs=[*observations.values(), *ops],
        names=names,
        tmin=min(times) if times else 0,
        tmax=max(times) if times else 0,
    )
    body = {"e": [raw for _e, raw, _t, _f in stored], "t": times, "f": flags}
    return encode_frame(head, body)


_EVENT: Final = itemgetter(0)
_TIME: Final = itemgetter(2)
_NAME: Final = itemgetter("event")
_TYPE: Final = itemgetter("type")
_IDENTITIES: Final = itemgetter("identities")


def _one_identity_set(stored: list[tuple[dict[str, Any], Any, int, list[str] | None]]) -> dict[str, Any] | None:
    """The head's summary when every event is a track event with one identity set (an SDK's usual batch).

    The same summary `build_accepted_frame`'s loop makes (one observation: the
    earliest (time, id) and the first event's identities), computed with C-level
    passes over the batch; None for any other batch.
    """
    if not stored:
        return None
    events = list(map(_EVENT, stored))
    if list(map(_TYPE, events)).count("track") != len(events):
        return None
    identities = events[0]["identities"]
    if list(map(_IDENTITIES, events)).count(identities) != len(events):
        return None
    times = list(map(_TIME, stored))
    tmin = min(times)
    # The earliest (time, id): the smallest id among the events at the earliest time.
    if times.count(tmin) == 1:
        first_id = events[times.index(tmin)]["event_id"]
    else:
        first_id = min(e["event_id"] for e, t in zip(events, times, strict=True) if t == tmin)
    return {
        "obs": [[tmin, first_id, "track", identities]],
        "names": dict(Counter(map(_NAME, events))),
        "tmin": tmin,
        "tmax": max(times),
        "times": times,
    }
