"""The lake tests' data and their brute-force answers.

`store` writes wire events into a data directory's raw log the way the
collector does (accepted frames, one per batch); the `bf_*` functions answer
every report with plain Python over the same events, persons taken from the
identity graph's `attribute` (the definition the lake must follow).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maidian.collector.identity import IdentityGraph, IdentityPolicy
from maidian.collector.pipeline.dedup import id_ranges
from maidian.collector.pipeline.ingest import build_accepted_frame
from maidian.collector.store.log import DataDir, LogWriter
from maidian.tracking_plan import Plan, load_plan
from maidian.tracking_plan.model import Funnel
from tests.conftest import DATA

LAKE_PLAN_PATH = DATA / "lake.plan.json"
DAY_MS = 86_400_000
# 2026-01-05 00:00 UTC
T0 = 1_767_571_200_000


def lake_plan() -> Plan:
    return load_plan(LAKE_PLAN_PATH)


def event(
    seq: int,
    source: int,
    name: str,
    t: int,
    identities: Mapping[str, str],
    properties: Mapping[str, Any] | None = None,
    kind: str = "track",
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": kind,
        "event_id": f"{source:032x}-{seq}",
        "time": t,
        "identities": dict(identities),
        "properties": dict(properties or {}),
    }
    if kind == "track":
        out["event"] = name
    return out


def store(data_dir: Path, batches: Iterable[Sequence[dict[str, Any]]], *, writer: str = "w0") -> None:
    """Append each batch as one accepted frame, received at its last event's time."""
    data = DataDir(data_dir).create()
    log = LogWriter(data.raw, writer)
    log.open()
    try:
        for batch in batches:
            if not batch:
                continue
            stored = [(e, e, int(e["time"]), None) for e in batch]
            ranges, opaque = id_ranges([e["event_id"] for e in batch])
            head = {"at": max(int(e["time"]) for e in batch) + 1000, "src": "test-app", "kind": "key", "trusted": True}
            log.append_sync(build_accepted_frame(head, stored, ranges, opaque))
    finally:
        log.close_sync()


@dataclass(frozen=True, slots=True)
class Row:
    """One stored event as the brute force sees it."""

    person: str | None
    time: int
    event_id: str
    event: str
    kind: str
    properties: Mapping[str, Any]
    identities: Mapping[str, str]

    @property
    def date(self) -> dt.date:
        return dt.date(1970, 1, 1) + dt.timedelta(days=self.time // DAY_MS)

    @property
    def order(self) -> tuple[int, str]:
        return self.time, self.event_id


def rows_of(data_dir: Path, plan: Plan, events: Iterable[dict[str, Any]]) -> list[Row]:
    """The events with their person as the data directory's identity graph attributes them now."""
    graph = IdentityGraph(DataDir(data_dir).identity, IdentityPolicy.from_plan(plan))
    try:
        seen: set[str] = set()
        out = []
        for e in events:
            if e["event_id"] in seen:
                continue
            seen.add(e["event_id"])
            out.append(
                Row(
                    graph.attribute(e["identities"]),
                    int(e["time"]),
                    e["event_id"],
                    e.get("event") or e["type"],
                    e["type"],
                    e["properties"],
                    e["identities"],
                )
            )
        return out
    finally:
        graph.close()


def _by_person(rows: Iterable[Row]) -> dict[str, list[Row]]:
    out: dict[str, list[Row]] = {}
    for r in rows:
        if r.person is not None and r.kind == "track":
            out.setdefault(r.person, []).append(r)
    for v in out.values():
        v.sort(key=lambda r: r.order)
    return out


def _matches(r: Row, event: str, where: Mapping[str, Any]) -> bool:
    if r.event != event:
        return False
    for prop, want in where.items():
        values = want if isinstance(want, list | tuple) else [want]
        if r.properties.get(prop) not in values:
            return False
    return True


def bf_funnel(rows: Iterable[Row], spec: Funnel, since: dt.date | None = None) -> list[int]:
    """Persons reaching each step (report.py's definition, step by step)."""
    n = len(spec.steps)
    best: dict[str, int] = {}
    window = spec.window_s * 1000
    for person, events in _by_person(rows).items():
        for i, start in enumerate(events):
            first = spec.steps[0]
            if not _matches(start, first.event, first.where) or (since is not None and start.date < since):
                continue
            reached, last = 1, i
            for step in spec.steps[1:]:
                nxt = next(
                    (j for j in range(last + 1, len(events)) if _matches(events[j], step.event, step.where)), None
                )
                if nxt is None or events[nxt].time > start.time + window:
                    break
                reached, last = reached + 1, nxt
            best[person] = max(best.get(person, 0), reached)
    return [sum(1 for b in best.values() if b >= k) for k in range(1, n + 1)]


def bf_retention(rows: Sequence[Row], by: str, days: Sequence[int]) -> dict[Any, tuple[int, list[tuple[int, int]]]]:
    """group -> (persons, [(retained, base) per day])."""
    tracked = [r for r in rows if r.kind == "track"]
    last = max(r.date for r in tracked)
    out: dict[Any, list[Any]] = {}
    for events in _by_person(tracked).values():
        first = events[0]
        group = first.properties.get(by, "(none)")
        dates = {e.date for e in events}
        entry = out.setdefault(group, [0, [[0, 0] for _ in days]])
        entry[0] += 1
        for i, d in enumerate(days):
            target = first.date + dt.timedelta(days=d)
            if target <= last:
                entry[1][i][1] += 1
            if target in dates:
                entry[1][i][0] += 1
    return {g: (v[0], [(a, b) for a, b in v[1]]) for g, v in out.items()}


def bf_channels(rows: Sequence[Row], success: Sequence[str]) -> dict[tuple[Any, ...], list[Any]]:
    """(source, medium, campaign) -> [persons, per success event count, d1 (n, base), d7 (n, base)]."""
    tracked = [r for r in rows if r.kind == "track"]
    last = max(r.date for r in tracked)
    out: dict[tuple[Any, ...], list[Any]] = {}
    for events in _by_person(tracked).values():
        touch = next((e for e in events if e.properties.get("utm_source") is not None), None)
        if touch is None:
            continue
        key = tuple(touch.properties.get(k) for k in ("utm_source", "utm_medium", "utm_campaign"))
        d0 = events[0].date
        dates = {e.date for e in events}
        names = {e.event for e in events}
        entry = out.setdefault(key, [0, [0] * len(success), [0, 0], [0, 0]])
        entry[0] += 1
        for i, s in enumerate(success):
            entry[1][i] += s in names
        if d0 + dt.timedelta(days=1) <= last:
            entry[2][1] += 1
        entry[2][0] += d0 + dt.timedelta(days=1) in dates
        if d0 + dt.timedelta(days=7) <= last:
            entry[3][1] += 1
        entry[3][0] += any(d0 < d <= d0 + dt.timedelta(days=7) for d in dates)
    return out


def bf_campaign(
    rows: Sequence[Row], exposure: str, where: Mapping[str, Any], conversion: str, window_ms: int
) -> dict[str, tuple[int, int]]:
    """group -> (persons, converted)."""
    out = {"exposed": [0, 0], "not_exposed": [0, 0]}
    for events in _by_person(rows).values():
        exposed = [e for e in events if _matches(e, exposure, where)]
        group, ref = ("exposed", exposed[0]) if exposed else ("not_exposed", events[0])
        out[group][0] += 1
        out[group][1] += any(
            e.event == conversion and e.order > ref.order and e.time <= ref.time + window_ms for e in events
        )
    return {k: (v[0], v[1]) for k, v in out.items()}


def bf_users(rows: Sequence[Row]) -> dict[str, dict[str, Any]]:
    """person -> user properties after their profile_set events (the latest value of each)."""
    latest: dict[str, dict[str, tuple[tuple[int, str], Any]]] = {}
    for r in rows:
        if r.kind != "profile_set" or r.person is None:
            continue
        for k, v in r.properties.items():
            mine = latest.setdefault(r.person, {})
            if k not in mine or r.order > mine[k][0]:
                mine[k] = (r.order, v)
    return {p: {k: v for k, (_o, v) in props.items()} for p, props in latest.items()}


def bf_segment(rows: Sequence[Row], did: str, did_not: str, province: str) -> list[str]:
    persons = _by_person(rows)
    users = bf_users(rows)
    return sorted(
        p
        for p, events in persons.items()
        if any(e.event == did for e in events)
        and not any(e.event == did_not for e in events)
        and users.get(p, {}).get("province") == province
    )
