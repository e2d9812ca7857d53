"""Judging a batch's events: decode, check the limits, validate, check the trigger, correct the time.

This stage decides each event's fate on its own merits (deduplication, which
needs the collector's state, comes after it in `ingest.py`). It is pure: the
plan, the sender and the receive time go in, verdicts come out.

Time (docs/reliability.md, T12): when the sender's clock is more than
`_SKEW_TOLERANCE_MS` away from the collector's (`sent_at` against the receive
time), the corrected time is `received_at - (sent_at - time)`, the event's age
on the device's clock added to the collector's clock, so a device whose clock
is days off still gets its events placed correctly. A clock within the
tolerance is trusted as it is: correcting it would only add the request's
network and queueing delay, a few milliseconds that differ from request to
request, and reorder a customer's events that came from different senders (an
order from the app and its fill from the backend). Without `sent_at` the
device time is kept. An
event more than `future_tolerance_s` ahead of the collector is clamped to the
receive time and flagged `future`; an event older than the dedup window is
quarantined (`too_old`), because its id may already be forgotten. The
device's own time stays in the stored event.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from maidian.collector.pipeline.decode import Batch, decode_event, event_too_large, kept_bytes
from maidian.collector.pipeline.limits import check_decoded_limits, check_limits
from maidian.tracking_plan import Plan, Validator, Violation
from maidian.tracking_plan.envelope import Limits

__all__ = ["SERVER_PRESETS", "Judge", "Verdicts", "event_summary", "reason_dicts"]

# Presets that carry trust: the collector derives them (`$ip` from the connection on the vendor routes)
# or a signed source sets them (`$server`); from any other sender they are refused.
_SERVER_PRESET: Final = "$server"
SERVER_PRESETS: Final = frozenset({_SERVER_PRESET})

FLAG_FUTURE: Final = "future"
FLAG_SKEW: Final = "clock_skew"
FLAG_NO_SENT_AT: Final = "no_sent_at"
# A device clock more than a minute off is worth flagging; less is ordinary drift.
_SKEW_FLAG_MS: Final = 60_000
# T12 asks for corrected times within 1 s of the truth; a clock this close is already within it.
_SKEW_TOLERANCE_MS: Final = 1_000

# A too-old event's corrected time is kept at least this: frames hold int64 times, and readers
# without bounds (read.export_events) read from -2**62.
_OLDEST_MS: Final = -(2**62)


@dataclass(slots=True)
class Verdicts:
    """The outcome for each event of a batch, before deduplication.

    `valid` holds (index, event, raw, corrected time, flags) for events that
    pass; `invalid` holds (index, event or None, raw, corrected time, reasons).
    """

    count: int
    valid: list[tuple[int, dict[str, Any], msgspec.Raw, int, list[str] | None]] = field(default_factory=list)
    invalid: list[tuple[int, Any, msgspec.Raw, int, list[Violation]]] = field(default_factory=list)


class Judge:
    """The plan compiled for judging events from one sender at a time."""

    def __init__(
        self, plan: Plan, validator: Validator, limits: Limits, *, window_s: float, future_tolerance_s: float
    ) -> None:
        self.plan = plan
        self.validator = validator
        self.limits = limits
        self.window_ms = int(window_s * 1000)
        self.future_ms = int(future_tolerance_s * 1000)
        self.server_events = frozenset(name for name, spec in plan.events.items() if spec.trigger == "server")
        # What only the collector or a signed source may write: trust-bearing presets, server-only user properties.
        self.server_user_properties = plan.server_user_properties()
        self.server_properties = SERVER_PRESETS | self.server_user_properties
        # Events of a `json_checked` batch encoded in at most this many bytes break no limit
        # (`check_decoded_limits`): they have no room for a long string or too many properties.
        self.small_bytes = min(limits.max_string_bytes, 2 * limits.max_properties + 1, limits.max_event_bytes)

    def judge(self, batch: Batch, *, trusted: bool, received_ms: int) -> Verdicts:
        """Each event's verdict, in request order."""
        out = Verdicts(count=len(batch.events))
        fmt = batch.format
        limits = self.limits
        is_valid = self.validator.is_valid
        server_events = self.server_events
        sent_at = batch.sent_at
        skew = sent_at - received_ms if isinstance(sent_at, int) and sent_at > 0 else None
        base_flags: list[str] | None = None
        if skew is None:
            base_flags = [FLAG_NO_SENT_AT]
        elif abs(skew) > _SKEW_FLAG_MS:
            base_flags = [FLAG_SKEW]
        latest = received_ms + self.future_ms
        oldest = received_ms - self.window_ms
        shift = 0 if skew is None or abs(skew) <= _SKEW_TOLERANCE_MS else skew
        values = batch.values
        max_event_bytes = limits.max_event_bytes
        checked = batch.json_checked
        small_bytes = self.small_bytes if checked else -1
        check_trigger = bool(server_events) and not trusted
        untrusted = not trusted
        profile_guard = untrusted and bool(self.server_user_properties)
        server_user = self.server_user_properties
        valid = out.valid
        problems = batch.problems
        for index, raw in enumerate(batch.events):
            if problems is not None and index in problems:
                # Refused while decoding (size, undecodable, a repeated key): the bytes are kept as they came.
                refused = problems[index]
                kept = kept_bytes(raw, refused, limits)
                out.invalid.append((index, None if values is None else values[index], kept, received_ms, [refused]))
                continue
            if values is None:
                event, problem = decode_event(raw, fmt, limits)
            else:
                event = values[index]
                size = len(raw)
                if size <= small_bytes:
                    problem = None
                elif size > max_event_bytes:
                    problem = event_too_large(size, limits)
                elif checked:
                    problem = check_decoded_limits(event, limits, size)
                else:
                    problem = check_limits(event, limits, size)
            if problem is not None:
                out.invalid.append((index, event, kept_bytes(raw, problem, limits), received_ms, [problem]))
                continue
            if is_valid(event):
                # The plan's schema has checked the envelope: a dict with an integer time.
                corrected = event["time"] - shift
                if (
                    corrected < oldest
                    or corrected > latest
                    or (check_trigger and event["type"] == "track" and event["event"] in server_events)
                    or (untrusted and _SERVER_PRESET in event.get("properties", ()))
                    or (
                        profile_guard
                        and event["type"] != "track"
                        and not server_user.isdisjoint(event.get("properties", ()))
                    )
                ):
                    self._judge_slowly(
                        out,
                        index=index,
                        event=event,
                        raw=raw,
                        reasons=[],
                        corrected=corrected,
                        flags=base_flags,
                        trusted=trusted,
                        received_ms=received_ms,
                    )
                else:
                    valid.append((index, event, raw, corrected, base_flags))
                continue
            reasons = self.validator.validate(event)
            device = event.get("time") if type(event) is dict else None
            if type(device) is not int:
                if not trusted:
                    reasons += self._trigger(event)
                out.invalid.append((index, event, raw, received_ms, reasons or _envelope_time()))
                continue
            self._judge_slowly(
                out,
                index=index,
                event=event,
                raw=raw,
                reasons=reasons,
                corrected=device - shift,
                flags=base_flags,
                trusted=trusted,
                received_ms=received_ms,
            )
        return out

    def _trigger(self, event: Any) -> list[Violation]:
        """The `trigger` violations for what only signed sources may send, coming from an untrusted sender.

        A `trigger: server` event; a trust-bearing preset (`$server`, `$ip`:
        the collector sets them, a sender never does); a user property the
        plan marks `"x-trigger": "server"` (suitability, investor type).
        """
        if type(event) is not dict:
            return []
        props = event.get("properties")
        out = []
        if type(props) is dict:
            for prop in sorted(self.server_properties.intersection(props)):
                out.append(
                    Violation(
                        "trigger",
                        f"/properties/{prop}",
                        f"property {prop!r} is set by the collector or a signed server source only",
                    )
                )
        if event.get("type") != "track":
            return out
        name = event.get("event")
        if type(name) is not str or name not in self.server_events:
            return out
        return [
            *out,
            Violation(
                "trigger",
                "/event",
                f"event {name!r} is marked 'trigger: server' in the plan; only signed server sources may send it",
            ),
        ]

    def _judge_slowly(
        self,
        out: Verdicts,
        *,
        index: int,
        event: dict[str, Any],
        raw: msgspec.Raw,
        reasons: list[Violation],
        corrected: int,
        flags: list[str] | None,
        trusted: bool,
        received_ms: int,
    ) -> None:
        """The rest of the verdict for an event that is invalid, server-only, or far off in time."""
        if not trusted:
            reasons += self._trigger(event)
        if corrected > received_ms + self.future_ms:
            corrected = received_ms
            flags = [*(flags or ()), FLAG_FUTURE]
        elif corrected < received_ms - self.window_ms:
            # A sent_at near 2**64 put the corrected time below what a frame can encode (int64): a 500.
            corrected = max(corrected, _OLDEST_MS)
            reasons.append(
                Violation(
                    "too_old",
                    "/time",
                    f"the event is older than the deduplication window ({self.window_ms // 86_400_000} days)",
                )
            )
        if reasons:
            out.invalid.append((index, event, raw, corrected, reasons))
        else:
            out.valid.append((index, event, raw, corrected, flags))


def _envelope_time() -> list[Violation]:
    return [Violation("envelope", "/time", "the event time must be an integer (epoch milliseconds)")]


def reason_dicts(reasons: list[Violation]) -> list[dict[str, Any]]:
    """Reasons as the protocol shows them: rule, path, message (never a value)."""
    return [{"rule": v.rule, "path": v.path, "message": v.message} for v in reasons]


def event_summary(event: Any) -> tuple[str | None, str | None]:
    """(event_id, name) of a possibly malformed event, for indexes; None where it has none."""
    if not isinstance(event, Mapping):
        return None, None
    eid = event.get("event_id")
    name = event.get("event") if event.get("type") == "track" else event.get("type")
    return (eid if isinstance(eid, str) else None), (name if isinstance(name, str) else None)
