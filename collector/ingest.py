"""The ingest pipeline after decoding: judge, deduplicate, append, and say what happened.

    judge (judge.py) -> dedupe (dedup.py) -> append (storage.py) -> wait for the commit -> mark seen -> results

Stitching identities happens off the request path: every accepted frame's head
carries its identity observations, and the catalog indexer (catalog.py) feeds
them to the identity graph as it follows the log.

Promises kept here:
- a request is answered only after every frame it appended is durable under
  the configured durability mode; if a commit fails the request fails with 503
  and none of its events is marked seen, so the sender's retry stores them.
- an event id is marked seen only after its frame is durable. While it is in
  flight it is *pending*: another request carrying the same id waits for that
  commit and answers `duplicate` (or 503 if the commit failed). The checks and
  the pending marks happen synchronously on the event loop, with no await in
  between, so two requests can never both store one event.
- `duplicate` within one request: the first occurrence is judged, the others
  answer `duplicate`.
- quarantined events are stored in the quarantine log (with every reason)
  before the answer says `quarantined`; a retried quarantined event is answered
  `quarantined` again but stored once.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from .auth import Principal
from .decode import Batch
from .dedup import SeenIds, id_ranges, split_event_id, to_ranges
from .frames import encode_frame
from .judge import Judge, event_summary, reason_dicts
from .metrics import Metrics
from .storage import Appended, LogWriter

__all__ = ["Ingest", "Outcome", "build_accepted_frame"]

_ACCEPTED: Final = {"status": "accepted"}
_DUPLICATE: Final = {"status": "duplicate"}
_msgpack = msgspec.msgpack.Encoder()
_json = msgspec.json.Encoder()
_ACCEPTED_JSON: Final = _json.encode(_ACCEPTED)
_DUPLICATE_JSON: Final = _json.encode(_DUPLICATE)


@dataclass(frozen=True, slots=True)
class Outcome:
    """A request's answer: counts and one result per event, in request order."""

    accepted: int
    duplicate: int
    quarantined: int
    results: list[dict[str, Any]]

    def to_json(self) -> bytes:
        """The response body; the two common results are spliced in as bytes, not encoded each time."""
        parts = [
            _ACCEPTED_JSON if r is _ACCEPTED else _DUPLICATE_JSON if r is _DUPLICATE else _json.encode(r)
            for r in self.results
        ]
        head = f'{{"accepted":{self.accepted},"duplicate":{self.duplicate},"quarantined":{self.quarantined},"results":['
        return head.encode() + b",".join(parts) + b"]}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "duplicate": self.duplicate,
            "quarantined": self.quarantined,
            "results": self.results,
        }


def _head(batch: Batch, principal: Principal, request_id: str, received_ms: int) -> dict[str, Any]:
    head = {
        "rid": request_id,
        "at": received_ms,
        "src": principal.name,
        "kind": principal.kind,
        "trusted": principal.trusted,
        "sent_at": batch.sent_at,
        "lib": batch.lib,
        "lib_version": batch.lib_version,
        "plan_version": batch.plan_version,
    }
    if batch.dropped is not None:
        head["dropped"] = batch.dropped  # the sender's loss report; the catalog keeps the largest counts
    return head


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
    observations: dict[Any, list[Any]] = {}
    ops: list[list[Any]] = []
    names: dict[str, int] = {}
    times: list[int] = []
    flags: dict[str, list[str]] = {}
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
    head = dict(head)
    head.update(
        n=len(stored),
        seq=ranges,
        oid=opaque,
        obs=[*observations.values(), *ops],
        names=names,
        tmin=min(times) if times else 0,
        tmax=max(times) if times else 0,
    )
    body = {"e": [raw for _e, raw, _t, _f in stored], "t": times, "f": flags}
    return encode_frame(head, body)


class Ingest:
    """The stateful part of the pipeline: what is seen and pending, and the two logs."""

    def __init__(
        self,
        judge: Judge,
        *,
        raw: LogWriter,
        quarantine: LogWriter,
        seen: SeenIds,
        quarantined: SeenIds,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.judge = judge
        self.raw = raw
        self.quarantine = quarantine
        self.seen = seen
        self.quarantined = quarantined
        self.metrics = metrics
        self.clock = clock
        self.pending: dict[str, asyncio.Future[None]] = {}
        self.pending_quarantine: dict[str, asyncio.Future[None]] = {}
        # Frames appended whose ids are not marked seen yet: (log, segment, offset).
        self._inflight: dict[int, tuple[str, str, int]] = {}
        self._next_ticket = 0

    def uncommitted(self, log: str) -> dict[str, int]:
        """Per segment of `log`, the offset of the first frame whose ids are not yet marked seen."""
        out: dict[str, int] = {}
        for lg, seg, off in self._inflight.values():
            if lg == log:
                out[seg] = min(out.get(seg, off), off)
        return out

    def _encoded(self, batch: Batch, event: dict[str, Any], raw: msgspec.Raw) -> Any:
        if batch.format == "msgpack":
            return raw
        return msgspec.Raw(_msgpack.encode(event))

    async def ingest(self, batch: Batch, principal: Principal, request_id: str, *, store: bool = True) -> Outcome:
        """Judge, deduplicate and (when `store`) durably append a batch; the per-event outcome."""
        received_ms = int(self.clock() * 1000)
        verdicts = self.judge.judge(batch, trusted=principal.trusted, received_ms=received_ms)
        results: list[dict[str, Any]] = [_ACCEPTED] * verdicts.count
        seen, pending = self.seen, self.pending
        has = seen.has
        split = split_event_id
        waits: list[asyncio.Future[None]] = []
        local: set[str] = set()
        to_store: list[tuple[dict[str, Any], Any, int, list[str] | None]] = []
        ids: list[str] = []
        seqs: dict[str, list[int]] = {}
        opaque: list[str] = []
        duplicates = 0
        msgpack = batch.format == "msgpack"
        for index, event, raw, corrected, flags in verdicts.valid:
            eid = event["event_id"]
            pair = split(eid)
            if eid in local or (seen.has_opaque(eid) if pair is None else has(pair[0], pair[1])):
                results[index] = _DUPLICATE
                duplicates += 1
                continue
            waiting = pending.get(eid)
            if waiting is not None:
                waits.append(waiting)
                results[index] = _DUPLICATE
                duplicates += 1
                continue
            local.add(eid)
            ids.append(eid)
            if pair is None:
                opaque.append(eid)
            else:
                got = seqs.get(pair[0])
                if got is None:
                    seqs[pair[0]] = [pair[1]]
                else:
                    got.append(pair[1])
            if not store:
                results[index] = {"status": "accepted", "time": corrected, **({"flags": flags} if flags else {})}
            elif msgpack:
                to_store.append((event, raw, corrected, flags))
            else:
                to_store.append((event, self._encoded(batch, event, raw), corrected, flags))
        q_records: list[tuple[Any, msgspec.Raw, int, list[dict[str, Any]]]] = []
        q_ids: list[str] = []
        for index, event, raw, corrected, reasons in verdicts.invalid:
            shown = reason_dicts(reasons)
            results[index] = {"status": "quarantined", "reasons": shown}
            eid, _name = event_summary(event)
            if eid is not None:
                if eid in self.quarantined or eid in self.pending_quarantine or eid in local:
                    continue
                local.add(eid)
                q_ids.append(eid)
            q_records.append((event, raw, corrected, shown))
        accepted = len(ids)
        outcome = Outcome(accepted, duplicates, len(verdicts.invalid), results)
        if not store:
            return outcome
        head = _head(batch, principal, request_id, received_ms)
        commits: list[asyncio.Future[None]] = []
        appended: Appended | None = None
        ranges: dict[str, list[int]] = {}
        q_appended: Appended | None = None
        # From here to the first await no other request runs: the pending marks are atomic with the checks.
        tickets: list[int] = []
        try:
            if q_records:
                q_appended = self.quarantine.append(_quarantine_frame(head, q_records, q_ids, batch.format))
                tickets.append(self._track("quarantine", q_appended))
                if q_appended.committed is not None:
                    commits.append(q_appended.committed)
                    for eid in q_ids:
                        self.pending_quarantine[eid] = q_appended.committed
            if to_store:
                ranges = to_ranges(seqs)
                appended = self.raw.append(build_accepted_frame(head, to_store, ranges, opaque))
                tickets.append(self._track("raw", appended))
                if appended.committed is not None:
                    commits.append(appended.committed)
                    for eid in ids:
                        pending[eid] = appended.committed
            if commits:
                await asyncio.gather(*commits)
        finally:
            for eid in ids:
                pending.pop(eid, None)
            for eid in q_ids:
                self.pending_quarantine.pop(eid, None)
            if sys.exc_info()[0] is not None:
                for ticket in tickets:
                    self._inflight.pop(ticket, None)
        # Durable: now, and only now, the ids count as seen.
        if appended is not None:
            seen.add_head(ranges, opaque, received_ms)
        if q_appended is not None:
            self.quarantined.add(q_ids, received_ms)
        for ticket in tickets:
            self._inflight.pop(ticket, None)
        if waits:
            await asyncio.gather(*waits)  # the first request's failure is ours too: 503, retry
        m = self.metrics.events
        m["accepted"] += accepted
        m["duplicate"] += duplicates
        m["quarantined"] += len(verdicts.invalid)
        return outcome

    def _track(self, log: str, appended: Appended) -> int:
        self._next_ticket += 1
        self._inflight[self._next_ticket] = (log, appended.segment, appended.offset)
        return self._next_ticket


def _quarantine_frame(
    head: dict[str, Any],
    records: list[tuple[Any, msgspec.Raw, int, list[dict[str, Any]]]],
    q_ids: list[str],
    fmt: str,
) -> bytes:
    ranges, opaque = id_ranges(q_ids)
    summary = []
    for event, _raw, _t, reasons in records:
        eid, name = event_summary(event)
        summary.append([eid, name, sorted({r["rule"] for r in reasons})])
    head = dict(head, n=len(records), seq=ranges, oid=opaque, q=summary, fmt=fmt)
    body = {
        "e": [bytes(raw) for _e, raw, _t, _r in records],
        "t": [t for _e, _raw, t, _r in records],
        "r": [r for _e, _raw, _t, r in records],
    }
    return encode_frame(head, body)
