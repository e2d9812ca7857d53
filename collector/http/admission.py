"""Admission: which requests may hold one of the collector's request slots, shared fairly between senders.

A request holds a slot from admission until it is answered: while its body
arrives, while it is decoded and judged, and while it waits for its fsync.
Slots are what a slow sender would hold to shut the others out, so:

- a request names its sender in its head, and the credentials are checked
  there, before any body byte is read (`auth.Authenticator.claim`); a request
  with no credentials or a wrong key is answered 401/403 and never holds a
  slot;
- each sender (a write key, a signed source) holds at most
  `max_in_flight_per_sender` slots, and all senders together at most
  `max_in_flight`: one key's slow or flooding clients cannot take the slots of
  another key;
- requests whose sender is only known from their body (Sensors records, whose
  SDKs send no credential; Segment requests with the write key in the body)
  share `max_in_flight_unauthenticated` slots of their own, outside the
  others, so they cannot starve authenticated senders either;
- a body must arrive whole within `body_timeout_s` of admission (a total
  deadline: a byte now and then does not renew it), so a held slot is freed
  within that time whatever the sender does.

Over a limit the answer is 503 with `Retry-After: 1`. `/readyz` answers 503
(`"reason": "overloaded"`) while every authenticated slot is taken, which is
when an authenticated request would be refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from maidian.collector.errors import Unavailable
from maidian.collector.pipeline.ingest import Ingest
from maidian.collector.service import Collector

__all__ = ["UNAUTHENTICATED", "Admission", "Gate", "SlotLimits"]

# The pool of requests whose sender is not known before their body is read.
UNAUTHENTICATED: Final = ""


@dataclass(frozen=True, slots=True)
class SlotLimits:
    """How many requests may be in flight: in all, per sender, and before the sender is known."""

    max_in_flight: int
    per_sender: int
    unauthenticated: int


class Admission:
    """Slot counts per sender, and the rule for taking one."""

    def __init__(self, limits: SlotLimits) -> None:
        self.limits = limits
        self.held: dict[str, int] = {}
        self.authenticated = 0
        self.refused: dict[str, int] = {"sender": 0, "total": 0, "unauthenticated": 0}

    def take(self, sender: str) -> None:
        """Count a request of `sender` (UNAUTHENTICATED: not known yet) in flight, or raise 503."""
        limits = self.limits
        held = self.held.get(sender, 0)
        if sender == UNAUTHENTICATED:
            if held >= limits.unauthenticated:
                self.refused["unauthenticated"] += 1
                raise Unavailable("too many requests without credentials in flight", retry_after_s=1)
        else:
            if self.authenticated >= limits.max_in_flight:
                self.refused["total"] += 1
                raise Unavailable("the collector is overloaded", retry_after_s=1)
            if held >= limits.per_sender:
                self.refused["sender"] += 1
                raise Unavailable("this sender has too many requests in flight", retry_after_s=1)
            self.authenticated += 1
        self.held[sender] = held + 1

    def give(self, sender: str) -> None:
        """A request of `sender` was answered."""
        held = self.held[sender] - 1
        if held:
            self.held[sender] = held
        else:
            del self.held[sender]
        if sender != UNAUTHENTICATED:
            self.authenticated -= 1

    def full(self) -> bool:
        """True when an authenticated request would be refused for want of a slot."""
        return self.authenticated >= self.limits.max_in_flight

    def senders(self) -> int:
        return len(self.held)


class Gate:
    """Readiness and slots, for the native and the vendor handlers alike."""

    def __init__(self, collector: Collector, admission: Admission) -> None:
        self.collector = collector
        self.admission = admission

    def check_ready(self) -> Ingest:
        """The pipeline, or 503 while the collector starts or stops."""
        collector = self.collector
        ingest = collector.ingest
        if not collector.is_ready() and (collector.stopping or not collector.ready):
            raise Unavailable("the collector is starting or stopping", retry_after_s=1)
        if ingest is None:
            raise Unavailable("the collector is starting", retry_after_s=1)
        return ingest

    def enter(self, sender: str) -> Ingest:
        """Admit a request of `sender`: the pipeline, with a slot held until `leave(sender)`; 503 when refused."""
        ingest = self.check_ready()
        self.admission.take(sender)
        self.collector.enter()
        return ingest

    def leave(self, sender: str) -> None:
        self.admission.give(sender)
        self.collector.leave()
