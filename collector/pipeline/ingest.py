"""The ingest pipeline after decoding: judge, deduplicate, append, and say what happened.

    judge (judge.py) -> dedupe (dedup.py) -> append (store/log.py) -> wait for the commit -> mark seen -> results

Stitching identities happens off the request path: every accepted frame's head
carries its identity observations, and the catalog indexer (store/catalog.py) feeds
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

Already-decoded events (vendor traffic mapped onto the envelope, the vendor
routes) enter through the same `ingest`: `decode.decoded_batch` encodes them
once into a batch, and records that no event could be made of come along as
`Refused`, judged already, so they land in the quarantine log with their
reasons under the same durability as everything else.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from maidian.collector.metrics import Metrics
from maidian.collector.pipeline.auth import Principal
from maidian.collector.pipeline.decode import Batch
from maidian.collector.pipeline.dedup import ScopedSeenIds, SeenIds, scope_of
from maidian.collector.pipeline.judge import Judge, event_summary, reason_dicts
from maidian.collector.store.durable import DurableLog
from maidian.collector.store.frames import encode_frame
from maidian.collector.store.heads import build_accepted_frame
from maidian.collector.store.ids import id_ranges, split_event_id, split_one_source, to_ranges
from maidian.collector.store.log import Appended
from maidian.tracking_plan import Violation

__all__ = ["Ingest", "Outcome", "Refused"]

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
        head = f'{{"accepted":{self.accepted},"duplicate":{self.duplicate},"quarantined":{self.quarantined},"results":['
        if self.accepted == len(self.results):  # every event accepted: the usual answer
            return head.encode() + (_ACCEPTED_JSON + b",") * (self.accepted - 1) + _ACCEPTED_JSON + b"]}"
        parts = [
            _ACCEPTED_JSON if r is _ACCEPTED else _DUPLICATE_JSON if r is _DUPLICATE else _json.encode(r)
            for r in self.results
        ]
        return head.encode() + b",".join(parts) + b"]}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "duplicate": self.duplicate,
            "quarantined": self.quarantined,
            "results": self.results,
        }


@dataclass(frozen=True, slots=True)
class Refused:
    """A record refused before it became an event, with the reasons: kept in the quarantine log as it is.

    `record` is what the quarantine keeps (its `event_id`, when it has one,
    deduplicates it like a quarantined event); `raw` is it encoded in the
    batch's format.
    """

    record: Any
    raw: msgspec.Raw
    reasons: Sequence[Violation]


def _head(
    batch: Batch, principal: Principal, request_id: str, received_ms: int, sources: Container[str]
) -> dict[str, Any]:
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
    if batch.dropped is not None and batch.dropped["source"] in sources:
        # The sender's loss report, about a device whose events this frame holds: a sender cannot speak
        # for devices it sends nothing of. The catalog keeps the largest counts.
        head["dropped"] = batch.dropped
    return head


class Ingest:
    """The stateful part of the pipeline: what is seen and pending, and the two logs."""

    def __init__(
        self,
        judge: Judge,
        *,
        raw: DurableLog,
        quarantine: DurableLog,
        seen: ScopedSeenIds,
        quarantined: ScopedSeenIds,
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
        # Ids in flight, per sender scope (dedup.scope_of), like `seen`.
        self.pending: dict[str, dict[str, asyncio.Future[None]]] = {}
        self.pending_quarantine: dict[str, dict[str, asyncio.Future[None]]] = {}
        # Frames appended whose ids are not marked seen yet: (log, segment, offset).
        self._inflight: dict[int, tuple[str, str, int]] = {}
        self._next_ticket = 0
        # The live view's hook (qa/live.py): called with each request's verdicts while a page watches, else None.
        self.observer: Callable[[Batch, Principal, Outcome, bool, int], None] | None = None
        # The suppression list (store/suppression.py): events it covers are answered as usual, never stored.
        self.suppress: Callable[[Any], bool] | None = None
        # The plan's PII tags for quarantined records (redact.py): (record, raw, format) -> the bytes to store.
        self.redact: Callable[[Any, msgspec.Raw, str], msgspec.Raw] | None = None
        self.suppressed = 0

    def uncommitted(self, log: str) -> dict[str, int]:
        """Per segment of `log`, the offset of the first frame whose ids are not yet marked seen."""
        out: dict[str, int] = {}
        for lg, seg, off in self._inflight.values():
            if lg == log:
                out[seg] = min(out.get(seg, off), off)
        return out

    def _fresh(
        self,
        valid: list[tuple[int, dict[str, Any], msgspec.Raw, int, list[str] | None]],
        seen: SeenIds,
        pending: dict[str, asyncio.Future[None]],
    ) -> tuple[list[str], set[str], str, list[int]] | None:
        """(ids, their set, source, seqs) when the valid events are new ids of one SDK source, else None.

        That is an SDK's usual batch: its ids count up past everything seen from
        its source, none repeats and none is pending in another request, so
        there is nothing to deduplicate and the per-event checks can be skipped.
        """
        if not valid:
            return None
        ids = [event["event_id"] for _i, event, _r, _t, _f in valid]
        one = split_one_source(ids)
        if one is None or not seen.all_below(one[0], min(one[1])):
            return None
        local = set(ids)
        if len(local) != len(ids) or not pending.keys().isdisjoint(ids):
            return None
        return ids, local, one[0], one[1]

    def _encoded(self, batch: Batch, event: dict[str, Any], raw: msgspec.Raw) -> Any:
        if batch.format == "msgpack":
            return raw
        return msgspec.Raw(_msgpack.encode(event))

    async def ingest(
        self,
        batch: Batch,
        principal: Principal,
        request_id: str,
        *,
        store: bool = True,
        refused: Sequence[Refused] = (),
    ) -> Outcome:
        """Judge, deduplicate and (when `store`) durably append a batch; the per-event outcome.

        `refused` records are quarantined with their reasons; their results
        follow the batch's events, in order.
        """
        received_ms = int(self.clock() * 1000)
        verdicts = self.judge.judge(batch, trusted=principal.trusted, received_ms=received_ms)
        if refused:
            verdicts.invalid.extend(
                (verdicts.count + k, r.record, r.raw, received_ms, list(r.reasons)) for k, r in enumerate(refused)
            )
            verdicts.count += len(refused)
        results: list[dict[str, Any]] = [_ACCEPTED] * verdicts.count
        scope = scope_of(principal.name, principal.kind)
        seen = self.seen.of(scope)
        pending = self.pending.get(scope)
        if pending is None:
            pending = self.pending[scope] = {}
        q_seen = self.quarantined.of(scope)
        q_pending = self.pending_quarantine.get(scope)
        if q_pending is None:
            q_pending = self.pending_quarantine[scope] = {}
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
        suppress = self.suppress
        suppressed = 0
        fresh = self._fresh(verdicts.valid, seen, pending) if store and msgpack and suppress is None else None
        if fresh is not None:
            # The same outcome as the loop below for a batch with nothing to deduplicate.
            ids, local, source, source_seqs = fresh
            seqs[source] = source_seqs
            to_store = [(event, raw, corrected, flags) for _i, event, raw, corrected, flags in verdicts.valid]
        one_by_one = verdicts.valid if fresh is None else []
        for index, event, raw, corrected, flags in one_by_one:
            if suppress is not None and suppress(event["identities"]):
                suppressed += 1  # answered `accepted`, not stored (the person asked to be deleted)
                continue
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
        suppressed_invalid = 0
        for index, event, raw, corrected, reasons in verdicts.invalid:
            shown = reason_dicts(reasons)
            results[index] = {"status": "quarantined", "reasons": shown}
            if suppress is not None and isinstance(event, dict) and suppress(event.get("identities")):
                suppressed_invalid += 1  # answered `quarantined`, not stored
                continue
            eid, _name = event_summary(event)
            if eid is not None:
                if eid in q_seen or eid in q_pending or eid in local:
                    continue
                local.add(eid)
                q_ids.append(eid)
            kept = raw if self.redact is None else self.redact(event, raw, batch.format)
            q_records.append((event, kept, corrected, shown))
        accepted = len(ids)
        self.suppressed += suppressed + suppressed_invalid
        outcome = Outcome(accepted + suppressed, duplicates, len(verdicts.invalid), results)
        if not store:
            if self.observer is not None:
                self.observer(batch, principal, outcome, False, received_ms)
            return outcome
        head = _head(batch, principal, request_id, received_ms, seqs)
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
                        q_pending[eid] = q_appended.committed
            if to_store:
                ranges = to_ranges(seqs)
                appended = self.raw.append(build_accepted_frame(head, to_store, ranges, opaque))
                tickets.append(self._track("raw", appended))
                if appended.committed is not None:
                    commits.append(appended.committed)
                    pending.update(dict.fromkeys(ids, appended.committed))
            if commits:
                await asyncio.gather(*commits)
        finally:
            for eid in ids:
                pending.pop(eid, None)
            for eid in q_ids:
                q_pending.pop(eid, None)
            if sys.exc_info()[0] is not None:
                for ticket in tickets:
                    self._inflight.pop(ticket, None)
        # Durable: now, and only now, the ids count as seen.
        if appended is not None:
            seen.add_head(ranges, opaque, received_ms)
        if q_appended is not None:
            q_seen.add(q_ids, received_ms)
        for ticket in tickets:
            self._inflight.pop(ticket, None)
        if waits:
            await asyncio.gather(*waits)  # the first request's failure is ours too: 503, retry
        m = self.metrics.events
        m["accepted"] += accepted
        m["duplicate"] += duplicates
        m["quarantined"] += len(verdicts.invalid)
        if self.observer is not None:
            self.observer(batch, principal, outcome, True, received_ms)
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
