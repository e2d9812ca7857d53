"""The SDK's sans-I/O core: events in, request bodies out, answers in, decisions out.

`SdkCore` does everything that is not waiting: it enriches an event with the
client's identities and presets, checks it against the plan, applies the PII
tags, mints its id, packs it once to msgpack and puts the bytes in a buffer
(`track`); it cuts batches from the buffer, joins the packed events into one
body without re-encoding them, compresses it and signs it (`next_batch`); it
reads the collector's answer, settles what is done, schedules what must be
retried and reports what was refused (`on_result`); and it says when it next
needs to be called (`next_deadline`).

Like h11, it never touches a socket, a thread or an event loop. Time comes in
as arguments (`now`, monotonic seconds, for scheduling; `wall_ms`, epoch
milliseconds, for stamps), randomness from an injected `random.Random`, nonces
from an injected function, so tests drive it with fakes and no sleeps. The two
shells (`Client`: a thread; `AsyncClient`: an asyncio task) are loops around it.

Rules:
- `track()` and the other recording calls are the host's path. They may be
  called from any thread at any time; they touch only the buffer (a deque
  append), an id counter (`itertools.count`, atomic under the GIL) and
  immutable snapshots, and return whether a full batch is waiting so the shell
  can wake its sender. Outside strict mode they never raise.
- Everything else (`next_batch`, `on_result`, `next_deadline`, `stats`,
  `request_flush`) is the sender's and is called under the shell's lock.
- An event's id is minted once, in `track()`, and travels inside its packed
  bytes; a retried batch resends the same bytes.
- The collector's answer decides (`retry.classify`): accepted and duplicate
  events are done; quarantined events are reported and never resent.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext, suppress
from typing import TYPE_CHECKING, Any, Final

import msgspec

from maidian.tracking_plan import envelope
from maidian.tracking_plan.pii import apply_pii, hash_value, mask_value
from maidian.tracking_plan.signing import make_nonce, sign

from ._buffer import Buffer
from ._presets import LIB, LIB_VERSION, presets
from .config import Config
from .errors import InvalidEvent
from .retry import backoff_s, classify, parse_retry_after

if TYPE_CHECKING:
    from maidian.tracking_plan.model import Plan
    from maidian.tracking_plan.validator import Validator

__all__ = ["Batch", "Callbacks", "PlanChecks", "Response", "SdkCore", "Stats", "compile_plan"]

# Drop reasons, as counted in `Stats.dropped` and passed to `on_drop`.
OVERFLOW: Final = "overflow"  # the buffer or spool was full (QueueLimits.overflow says which end)
EXPIRED: Final = "expired"  # older than the spool's age cap
UNENCODABLE: Final = "unencodable"  # a value msgpack cannot carry (an object, a set, ...)
INVALID: Final = "invalid"  # refused before an id was minted (not a string name, junk identity)
TOO_LARGE: Final = "too_large"  # one event larger than a whole batch may be
REJECTED_BATCH: Final = "rejected_batch"  # the collector refused the whole body (400/415): a bug, reported
UNSENT: Final = "unsent"  # still in memory when the client closed or the process exited (no spool to keep it)
OPTED_OUT: Final = "opted_out"  # waiting when the device opted out: purged, never to be sent

# The SDK's logger: quiet unless the host configures logging. One line per refused batch, per
# credentials refusal and per new drop report; never an event's properties or identities.
log: Final = logging.getLogger("maidian.sdk")
log.addHandler(logging.NullHandler())

_EVENTS_KEY: Final = msgspec.msgpack.encode("events")
_ACCEPTED_RESULT: Final = {"status": envelope.ACCEPTED}


class Callbacks(msgspec.Struct, frozen=True):
    """The host's hooks. Each is called from whichever thread noticed; exceptions in them are swallowed."""

    # (reason, count): events that will never be delivered.
    on_drop: Callable[[str, int], None] | None = None
    # (event name or type, violations): the plan says no (warn mode).
    on_violation: Callable[[str, Sequence[Any]], None] | None = None
    # (event_id, event name or type, reasons): the collector stored the event in quarantine.
    on_quarantine: Callable[[str, str, Sequence[Any]], None] | None = None
    # A one-line message for anything else worth a log line (auth refused, bad answer).
    on_error: Callable[[str], None] | None = None


class PlanChecks(msgspec.Struct, frozen=True):
    """A plan compiled for the SDK, once per client (and shared with forked children)."""

    plan_version: str
    source: Validator | None  # strict: the plan's own schemas, before PII tags apply
    wire: Validator | None  # warn: the collector's verdict, on the packed event
    event_names: frozenset[str]
    accept_unknown: bool
    pii_by_event: Mapping[str, Mapping[tuple[str, ...], str]]
    pii_common: Mapping[tuple[str, ...], str]
    pii_profile: Mapping[tuple[str, ...], str]
    pii_identities: Mapping[str, str]
    # Events the plan marks `trigger: server`: only signed sources may send them.
    server_only: frozenset[str] = frozenset()


def compile_plan(plan: Plan, mode: str) -> PlanChecks:
    """Compile what `mode` needs: a source-stage validator (strict) or a wire-stage one (warn)."""
    from maidian.tracking_plan.validator import Validator

    return PlanChecks(
        plan_version=plan.version,
        source=Validator(plan, stage="source") if mode == "strict" else None,
        wire=Validator(plan, stage="wire") if mode == "warn" else None,
        event_names=frozenset(plan.events),
        accept_unknown=plan.settings.unknown_events == "accept",
        pii_by_event={name: plan.pii_paths(name) for name in plan.events},
        pii_common=plan.pii_paths("\x00no event\x00"),
        pii_profile=plan.pii_paths(None),
        pii_identities=plan.identity_pii(),
        server_only=frozenset(name for name, spec in plan.events.items() if spec.trigger == "server"),
    )


class Response(msgspec.Struct, frozen=True):
    """What the transport got: an HTTP status, or `status=None` and an `error` when there was no answer."""

    status: int | None
    body: bytes = b""
    retry_after: str | None = None
    error: str | None = None


class Batch(msgspec.Struct, eq=False):
    """Events on their way: packed once, re-wrapped (new `sent_at`, nonce) on each attempt.

    `events` are as the buffer holds them: use `SdkCore.whole` for an event's complete bytes.
    """

    events: list[Any]
    refs: list[Any]
    path: str = envelope.BATCH_PATH
    body: bytes = b""
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    attempt: int = 0
    epoch: int = 0  # the core's purge count when the batch was cut: a purge (opt-out) voids older batches

    def __len__(self) -> int:
        return len(self.events)


class Stats(msgspec.Struct, frozen=True):
    """Counters since the client started (a fork's child starts again from zero)."""

    tracked: int  # accepted by track() and friends into the buffer
    sent: int  # put on the wire at least once
    acknowledged: int  # answered accepted or duplicate: done
    duplicates: int  # of which the collector already had
    quarantined: int  # stored by the collector in quarantine, with reasons; not resent
    dropped: Mapping[str, int]  # never to be delivered, by reason
    retries: int  # request attempts after the first, over all batches
    violations: int  # events the plan check flagged (warn mode) or refused (strict mode)
    queued: int  # waiting in the buffer
    in_flight: int  # in requests without an answer yet, or waiting to be retried


_EMPTY: Final[Mapping[str, Any]] = {}
# What encoding or checking a value can raise: a refusal of that value, never an error of the host's.
UNENCODABLE_ERRORS: Final = (TypeError, ValueError, OverflowError, RecursionError)


def _map_header(n: int) -> bytes:
    if n < 16:
        return bytes((0x80 | n,))
    if n < 0x10000:
        return b"\xde" + n.to_bytes(2, "big")
    return b"\xdf" + n.to_bytes(4, "big")


def _header_size(first: int) -> int:
    return 1 if first < 0xDE else (3 if first == 0xDE else 5)


class _PresetsSuffix:
    """The presets, packed once, as map entries that end every track event.

    A track event is packed as its five envelope fields, then `properties`,
    whose map header counts the caller's properties plus the presets and whose
    entries are the caller's. The preset entries themselves are appended to the
    event's bytes when its batch is built (or when it is spooled), so the
    buffer holds ~170 fewer bytes per event and `track()` neither merges nor
    re-encodes the presets. `properties` is the event's last field, which is
    what makes the append valid msgpack.
    """

    __slots__ = ("_headers", "count", "entries", "size")

    def __init__(self, packed_presets: bytes, count: int) -> None:
        self.entries = packed_presets[_header_size(packed_presets[0]) :]
        self.count = count
        self.size = len(self.entries)
        self._headers = [_map_header(n + count) for n in range(16)]

    def header(self, n: int) -> bytes:
        """The map header of a properties map with `n` entries of the caller's, plus the presets."""
        return self._headers[n] if n < 16 else _map_header(n + self.count)


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes((0x90 | n,))
    if n < 0x10000:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def is_identity_map(identities: object) -> bool:
    """A mapping of non-empty identity type names to strings (values are judged for junk elsewhere)."""
    if not isinstance(identities, Mapping):
        return False
    return all(type(k) is str and k and type(v) is str for k, v in identities.items())


def _validate(validator: Validator, candidate: Mapping[str, Any]) -> list[Any]:
    """The plan's verdict; a value the validator cannot even read is a violation too."""
    try:
        return list(validator.validate(candidate))
    except UNENCODABLE_ERRORS as exc:
        return [f"a value cannot be checked against the plan ({type(exc).__name__})"]


def _server_only_violation(event: str) -> Any:
    from maidian.tracking_plan import Violation

    return Violation(
        "trigger",
        "/event",
        f"event {event!r} is marked 'trigger: server' in the plan; only signed server sources may send it",
    )


def _safe(callback: Callable[..., None] | None, *args: Any) -> None:
    if callback is None:
        return
    with suppress(Exception):  # a broken host callback must not break tracking
        callback(*args)


class SdkCore:
    """The sans-I/O engine shared by `Client` and `AsyncClient`."""

    def __init__(
        self,
        config: Config,
        *,
        buffer: Buffer,
        source_id: str,
        anonymous_id: str,
        checks: PlanChecks | None = None,
        callbacks: Callbacks | None = None,
        rng: random.Random | None = None,
        nonce: Callable[[], str] = make_nonce,
        lock: AbstractContextManager[Any] | None = None,
        first_seq: int = 1,
        dropped_before: Mapping[str, int] | None = None,
    ) -> None:
        self.config = config
        self.source_id = source_id
        self._buffer = buffer
        self._checks = checks
        self._cb = callbacks or Callbacks()
        self._rng = rng or random.Random()
        self._nonce = nonce
        self._count_lock: AbstractContextManager[Any] = lock or nullcontext()
        self._encode = msgspec.msgpack.Encoder(decimal_format="number").encode
        self._seq = itertools.count(first_seq)
        # Drops of earlier lives of this source (a persisted spool slot): the report to the
        # collector is cumulative per source, so it carries them too; `stats` counts this life's.
        self._dropped_before: dict[str, int] = dict(dropped_before or {})
        self._accepted_count = itertools.count()
        self._prefix = source_id + "-"
        self._strict = config.mode == "strict" and checks is not None and checks.source is not None
        self._warn = config.mode == "warn" and checks is not None and checks.wire is not None
        self._max_events = config.batch.max_events
        # Never more per request than the collector accepts, whatever max_events says.
        self._batch_events = min(config.batch.max_events, envelope.DEFAULT_LIMITS.max_events)
        self._presets = presets(config.app_name, config.app_version, server=config.source is not None)
        self._preset_names = frozenset(self._presets)
        self._presets_suffix = _PresetsSuffix(self._encode(self._presets), len(self._presets))
        self._small_headers = [self._presets_suffix.header(n) for n in range(16)]
        # A memory buffer keeps track events without their presets (a third of their bytes);
        # a spool keeps whole events, so that a later client resumes them as they were.
        self._short = getattr(buffer, "holds_short_events", False)
        # A memory buffer's deque, for `track`'s fast path: C calls only while below the cap.
        self._queue: Any = getattr(buffer, "queue", None)
        self._queue_cap = config.queue.max_events
        self._max_short_bytes = config.batch.max_bytes - self._presets_suffix.size
        self._supers: dict[str, Any] = {}
        self._raw_ids: dict[str, str] = {"anonymous_id": anonymous_id}
        self._ids: dict[str, str] = {"anonymous_id": anonymous_id}
        self._timers: dict[str, int] = {}
        # Sender state: touched only under the shell's lock.
        self._zstd: Any = None
        self._retry: list[Batch] = []
        self._in_flight = 0
        self._in_flight_events = 0
        self._blocked_until = 0.0
        self._failures = 0
        self._holding = False
        self._flushing = False
        self._pending_since: float | None = None  # when the sender first saw the oldest waiting event
        self._sent = 0
        self._acknowledged = 0
        self._duplicates = 0
        self._quarantined = 0
        self._retries = 0
        self._violations = 0
        self._dropped: dict[str, int] = {}
        self._logged_drops: dict[str, int] = {}
        self._epoch = 0  # purges so far

    # -- the host's path -------------------------------------------------------

    def track(
        self,
        event: str,
        properties: Mapping[str, Any] | None,
        wall_ms: int,
        time_ms: int | None = None,
        identities: Mapping[str, str] | None = None,
    ) -> bool:
        """Record one track event. True when a full batch is waiting (wake the sender).

        Positional on purpose: this is the host's hot path, and keyword passing costs.
        """
        if type(event) is not str or not event:
            return self._refuse("track", INVALID, [f"the event name must be a non-empty string, got {_kind(event)}"])
        if time_ms is not None and (type(time_ms) is not int or time_ms < 0):
            return self._refuse(event, INVALID, ["time must be a datetime or non-negative epoch milliseconds"])
        if identities is not None and not is_identity_map(identities):
            return self._refuse(event, INVALID, ["identities must map identity type names to strings"])
        props: Mapping[str, Any]
        if properties is None:
            props = _EMPTY
        elif type(properties) is dict:
            props = properties
        elif isinstance(properties, Mapping):
            props = dict(properties)
        else:  # packed as the properties map, anything else would corrupt the whole batch
            return self._refuse(  # type: ignore[unreachable]  # callers are not always typed
                event, INVALID, [f"properties must be a mapping, got {type(properties).__name__}"]
            )
        if self._supers:
            props = {**self._supers, **props}
        if self._timers:
            started = self._timers.pop(event, None)
            if started is not None:
                props = {**props, "$duration_ms": max(0, wall_ms - started)}
        checks = self._checks
        if checks is not None:
            if (self._strict or self._warn) and not self._cheap_check(event, props, identities, wall_ms, time_ms):
                return False
            paths = checks.pii_by_event.get(event, checks.pii_common)
            if paths:
                props = apply_pii(dict(props), paths, self._pii_key())
        encode = self._encode
        try:
            if self._preset_names.isdisjoint(props):
                # The head ends with "properties": nil; the nil byte gives way to the properties,
                # whose preset entries are appended when the batch is built (`_PresetsSuffix`).
                head = encode(
                    {
                        "type": "track",
                        "event": event,
                        "event_id": self._prefix + str(next(self._seq)),
                        "time": wall_ms if time_ms is None else time_ms,
                        "identities": self._ids if identities is None else self._transform_ids(identities),
                        "properties": None,
                    }
                )
                n = len(props)
                body = encode(props)
                if n < 16:
                    packed: bytes | bytearray = b"".join((head[:-1], self._small_headers[n], body[1:]))
                else:
                    header = self._presets_suffix.header(n)
                    packed = b"".join((head[:-1], header, body[_header_size(body[0]) :]))
                if not self._short:
                    packed += self._presets_suffix.entries
            else:  # the caller overrides a preset: pack the event whole
                packed = bytearray(
                    encode(
                        {
                            "type": "track",
                            "event": event,
                            "event_id": self._prefix + str(next(self._seq)),
                            "time": wall_ms if time_ms is None else time_ms,
                            "identities": self._ids if identities is None else self._transform_ids(identities),
                            "properties": {**self._presets, **props},
                        }
                    )
                )
        except UNENCODABLE_ERRORS as exc:
            return self._refuse(event, UNENCODABLE, [f"a property cannot be encoded: {type(exc).__name__}"])
        queue = self._queue
        if queue is not None and len(packed) <= self._max_short_bytes and len(queue) < self._queue_cap:
            queue.append(packed)
            next(self._accepted_count)
            waiting = len(queue)
            return waiting == 1 or waiting % self._max_events == 0
        return self._put(packed, event)

    def record(
        self,
        event_type: str,
        properties: Mapping[str, Any],
        wall_ms: int,
        *,
        identities: Mapping[str, str] | None = None,
    ) -> bool:
        """Record a profile operation or a bind/unbind (`envelope.PROFILE_TYPES`, `bind`, `unbind`)."""
        if not isinstance(properties, Mapping):
            return self._refuse(  # type: ignore[unreachable]  # callers are not always typed
                event_type, INVALID, [f"properties must be a mapping, got {type(properties).__name__}"]
            )
        if identities is not None and not is_identity_map(identities):
            return self._refuse(event_type, INVALID, ["identities must map identity type names to strings"])
        props: Mapping[str, Any] = properties
        checks = self._checks
        ids = self._raw_ids if identities is None else identities
        if checks is not None:
            if self._strict and checks.source is not None:
                candidate = self._envelope(
                    event_type, event=None, event_id="x-0", time_ms=wall_ms, ids=ids, props=props
                )
                violations = _validate(checks.source, candidate)
                if violations:
                    self._count_violation()
                    raise InvalidEvent(event_type, violations)
            if event_type in envelope.PROFILE_TYPES and checks.pii_profile:
                props = apply_pii(dict(props), checks.pii_profile, self._pii_key())
        wire_ids = self._ids if identities is None else self._transform_ids(identities)
        seq = next(self._seq)
        try:
            packed = bytearray(
                self._encode(
                    self._envelope(
                        event_type,
                        event=None,
                        event_id=self._prefix + str(seq),
                        time_ms=wall_ms,
                        ids=wire_ids,
                        props=props,
                    )
                )
            )
        except UNENCODABLE_ERRORS as exc:
            return self._refuse(event_type, UNENCODABLE, [f"a property cannot be encoded: {type(exc).__name__}"])
        return self._put(packed, event_type)

    def _put(self, packed: bytes | bytearray, name: str) -> bool:
        if len(packed) + self._presets_suffix.size > self.config.batch.max_bytes:
            return self._refuse(name, TOO_LARGE, [f"the event packs to {len(packed)} bytes"])
        dropped = self._buffer.put(packed if self._short else bytes(packed))  # type: ignore[arg-type]
        # (the fast path in `track` appends to a memory buffer's deque directly)
        if dropped:
            self._drop(OVERFLOW, dropped)
            if dropped and self.config.queue.overflow == "drop_newest":
                return False
        next(self._accepted_count)
        waiting = self._buffer.pending()
        return waiting == 1 or waiting % self._max_events == 0

    @staticmethod
    def _envelope(
        event_type: str,
        *,
        event: str | None,
        event_id: str,
        time_ms: int,
        ids: Mapping[str, str],
        props: Mapping[str, Any],
    ) -> dict[str, Any]:
        out: dict[str, Any] = {"type": event_type}
        if event is not None:
            out["event"] = event
        out["event_id"] = event_id
        out["time"] = time_ms
        out["identities"] = ids
        out["properties"] = props
        return out

    def _cheap_check(
        self,
        event: str,
        props: Mapping[str, Any],
        identities: Mapping[str, str] | None,
        wall_ms: int,
        time_ms: int | None,
    ) -> bool:
        checks = self._checks
        assert checks is not None
        if self._strict and checks.source is not None:
            candidate = self._envelope(
                "track",
                event=event,
                event_id="x-0",
                time_ms=wall_ms if time_ms is None else time_ms,
                ids=self._raw_ids if identities is None else identities,
                props={**self._presets, **props},
            )
            violations = _validate(checks.source, candidate)
            if event in checks.server_only and self.config.source is None:
                violations = [*violations, _server_only_violation(event)]
            if violations:
                self._count_violation()
                raise InvalidEvent(event, violations)
            return True
        if event in checks.server_only and self.config.source is None:
            # The collector quarantines it (rule `trigger`); said and counted at once, sent anyway.
            self._count_violation()
            _safe(self._cb.on_violation, event, [_server_only_violation(event)])
        if event not in checks.event_names and not checks.accept_unknown:
            # Said at once; counted by the full check in the sender. Sent anyway: the
            # collector stores it in quarantine, where it can be replayed.
            _safe(self._cb.on_violation, event, [f"event {event!r} is not in the tracking plan [unknown_event]"])
        return True

    def _refuse(self, name: str, reason: str, problems: list[str]) -> bool:
        if self._strict:
            raise InvalidEvent(name, problems)
        self._drop(reason, 1)
        _safe(self._cb.on_error, f"{name}: {problems[0]}")
        return False

    def _pii_key(self) -> bytes:
        key = self.config.pii_key
        if key is None:  # compile-time check in the shell makes this unreachable with hash tags
            raise InvalidEvent("pii", ["a property is tagged 'hash' but no pii_key is configured"])
        return key

    def _transform_ids(self, identities: Mapping[str, str]) -> dict[str, str]:
        tags = self._checks.pii_identities if self._checks is not None else {}
        if not tags:
            return dict(identities)
        out = {}
        for name, value in identities.items():
            tag = tags.get(name)
            if tag == "hash":
                out[name] = hash_value(value, self._pii_key())
            elif tag == "mask":
                out[name] = mask_value(value)
            else:
                out[name] = value
        return out

    def _count_violation(self) -> None:
        with self._count_lock:
            self._violations += 1

    def _drop(self, reason: str, count: int) -> None:
        with self._count_lock:
            self._dropped[reason] = self._dropped.get(reason, 0) + count
        _safe(self._cb.on_drop, reason, count)

    # -- identities, super properties, timers (host's path, rare) ---------------

    @property
    def identities(self) -> dict[str, str]:
        """The identities attached to events, as given (before PII tags apply)."""
        return dict(self._raw_ids)

    def set_identity(self, name: str, value: str | None) -> None:
        """Attach (or with None, detach) an identity to every later event."""
        raw = dict(self._raw_ids)
        if value is None:
            raw.pop(name, None)
        else:
            raw[name] = value
        self._raw_ids = raw
        self._ids = self._transform_ids(raw)

    def clear_identities(self) -> None:
        """Keep only the anonymous id (logout)."""
        self._raw_ids = {"anonymous_id": self._raw_ids["anonymous_id"]}
        self._ids = self._transform_ids(self._raw_ids)

    def register_super_properties(self, properties: Mapping[str, Any]) -> bool:
        """Add properties to every later track event; refused (counted) unless a str-keyed, encodable mapping."""
        if not isinstance(properties, Mapping) or not all(type(k) is str and k for k in properties):
            return self._refuse("register_super_properties", INVALID, ["super properties must map names to values"])
        try:
            self._encode(properties)
        except UNENCODABLE_ERRORS as exc:
            return self._refuse(
                "register_super_properties", UNENCODABLE, [f"a property cannot be encoded: {type(exc).__name__}"]
            )
        self._supers = {**self._supers, **properties}
        return False

    def unregister_super_property(self, name: str) -> bool:
        if type(name) is not str:
            return self._refuse("unregister_super_property", INVALID, ["a property name must be a string"])
        self._supers = {k: v for k, v in self._supers.items() if k != name}
        return False

    def time_event(self, name: str, wall_ms: int) -> bool:
        if type(name) is not str or not name:
            return self._refuse("time_event", INVALID, ["the event name must be a non-empty string"])
        self._timers[name] = wall_ms
        return False

    def refuse_identity(self, what: str, value: object) -> bool:
        """Report a junk identity value: raise in strict mode, else count and call back."""
        return self._refuse(
            what, INVALID, [f"{what} got a value that cannot identify anybody ({type(value).__name__})"]
        )

    # -- the sender's path (under the shell's lock) -----------------------------

    def request_flush(self) -> None:
        """Send what waits now, without waiting for batches to fill."""
        self._flushing = True

    def stalled_past(self, deadline: float) -> bool:
        """True when nothing is in flight and no attempt is allowed before `deadline` (backing off)."""
        return self._in_flight == 0 and self._blocked_until > deadline

    def idle(self) -> bool:
        """Nothing waits, nothing is in flight, nothing waits for a retry."""
        return self._buffer.pending() == 0 and self._in_flight == 0 and not self._retry

    def next_deadline(self, now: float) -> float:
        """The latest monotonic time at which the shell should call `next_batch` again.

        The shell must also call it after every answer (an answer frees a slot) and
        when `track()` returns True (the first event after a quiet spell, or a full batch).
        """
        idle_s = self.config.batch.linger_s or 1.0
        if self._in_flight >= self._slots():
            return now + idle_s
        if now < self._blocked_until:
            return self._blocked_until
        pending = self._buffer.pending()
        if self._retry or (self._flushing and pending) or pending >= self._max_events:
            return now
        if pending:
            since = self._pending_since if self._pending_since is not None else now
            return max(now, since + self.config.batch.linger_s)
        return now + idle_s

    def _slots(self) -> int:
        """Requests allowed in flight: one probe at a time while the collector is failing.

        During an outage the sender keeps retrying what it holds, one request at a
        time, and takes nothing new from the buffer until the collector answers: the
        events stay where the overflow policy and the spool's caps govern them, the
        sender's memory stays bounded, and a recovering collector is not met by
        every slot at once. The first success restores `max_in_flight`.
        """
        if self._failures or self._holding:
            return 1
        return self.config.batch.max_in_flight

    def next_batch(self, now: float, wall_ms: int) -> Batch | None:
        """The next request to send, or None (nothing due, or enough in flight)."""
        if self._in_flight >= self._slots() or now < self._blocked_until:
            return None
        if self._retry:
            batch = self._retry.pop(0)
        else:
            pending = self._buffer.pending()
            if pending == 0:
                if self._in_flight == 0:
                    self._flushing = False
                return None
            limits = self.config.batch
            if pending < limits.max_events and not self._flushing:
                # A batch that is not full waits until its oldest event has lingered.
                if self._pending_since is None:
                    self._pending_since = now
                if now < self._pending_since + limits.linger_s:
                    return None
            events, refs = self._buffer.take(self._batch_events, limits.max_bytes)
            if not events:
                return None
            if not self._buffer.pending():
                self._pending_since = None  # what is left, if anything, is as old as what was taken
            batch = Batch(events, refs, epoch=self._epoch)
            self._sent += len(events)
            if self._warn:
                self._validate_in_background(events)
        batch.attempt += 1
        self._wrap(batch, wall_ms)
        self._in_flight += 1
        self._in_flight_events += len(batch)
        return batch

    def _wrap(self, batch: Batch, wall_ms: int) -> None:
        if self._zstd is None:
            import zstandard

            self._zstd = zstandard.ZstdCompressor(level=self.config.batch.zstd_level)
        head: dict[str, Any] = {
            "sent_at": wall_ms,
            "lib": LIB,
            "lib_version": LIB_VERSION,
            "plan_version": self._checks.plan_version if self._checks is not None else None,
        }
        if self._dropped:
            counts = dict(self._dropped_before)
            for reason, n in self._dropped.items():
                counts[reason] = counts.get(reason, 0) + n
            head["dropped"] = {"source": self.source_id, "counts": counts}
            self._log_drops()
        encoded = self._encode(head)
        # The head is a fixmap; one more entry, "events", follows as the array of packed events.
        parts: list[bytes | bytearray] = [bytes((encoded[0] + 1,)), encoded[1:], _EVENTS_KEY]
        parts.append(_array_header(len(batch.events)))
        events = batch.events
        if not self._short:
            parts.extend(events)
        elif bytearray not in set(map(type, events)):  # all short: one C-level join
            suffix = self._presets_suffix.entries
            parts.append(suffix.join(events))
            parts.append(suffix)
        else:
            suffix = self._presets_suffix.entries
            for packed in events:
                parts.append(packed)
                if type(packed) is bytes:
                    parts.append(suffix)
        body = b"".join(parts)
        batch.body = self._zstd.compress(body)
        headers = {
            "Content-Type": envelope.CONTENT_TYPE_MSGPACK,
            "Content-Encoding": "zstd",
        }
        config = self.config
        if config.source is not None and config.secret is not None:
            timestamp = wall_ms // 1000
            nonce = self._nonce()
            headers[envelope.HEADER_SOURCE] = config.source
            headers[envelope.HEADER_TIMESTAMP] = str(timestamp)
            headers[envelope.HEADER_NONCE] = nonce
            headers[envelope.HEADER_SIGNATURE] = sign(
                config.secret, timestamp=timestamp, nonce=nonce, method="POST", path=batch.path, body=batch.body
            )
        elif config.write_key is not None:
            headers[envelope.HEADER_WRITE_KEY] = config.write_key
        batch.headers = headers

    def _validate_in_background(self, events: list[bytes]) -> None:
        checks = self._checks
        assert checks is not None
        assert checks.wire is not None
        decode = msgspec.msgpack.decode
        for packed in events:
            event = decode(self.whole(packed))
            violations = checks.wire.validate(event)
            if violations:
                self._count_violation()
                _safe(self._cb.on_violation, event.get("event") or event.get("type"), violations)

    def on_result(self, batch: Batch, response: Response, now: float, wall_s: float) -> None:
        """Settle, retry or drop the batch's events according to the collector's answer."""
        self._in_flight -= 1
        self._in_flight_events -= len(batch)
        decision = classify(response.status, response.error)
        action = decision.action
        if batch.epoch != self._epoch and action not in ("done", "drop"):
            # In flight when the device opted out: never resent.
            self._buffer.settle(batch.refs)
            self._drop(OPTED_OUT, len(batch))
            return
        if action == "done":
            results = self._results(response.body, len(batch))
            if results is None:
                action = "retry"
                _safe(self._cb.on_error, "the collector's 200 answer does not list one result per event; retrying")
            else:
                self._settle(batch, results)
                self._failures = 0
                self._holding = False
                self._blocked_until = 0.0
                return
        if action == "retry":
            self._failures += 1
            wait = backoff_s(self._failures, self.config.retry.base_s, self.config.retry.cap_s, self._rng)
            advised = parse_retry_after(response.retry_after, wall_s, self.config.retry.max_retry_after_s)
            if advised is not None:
                wait = max(wait, advised)
            self._blocked_until = max(self._blocked_until, now + wait)
            self._retries += 1
            self._retry.append(batch)
        elif action == "hold":
            if not self._holding:
                _safe(self._cb.on_error, f"the collector refused the credentials ({decision.reason}); events are kept")
                log.warning(
                    "the collector refused the credentials (%s); events are kept and retried every %.0f s",
                    decision.reason,
                    self.config.retry.auth_retry_s,
                )
            self._holding = True
            self._blocked_until = max(self._blocked_until, now + self.config.retry.auth_retry_s)
            self._retries += 1
            self._retry.append(batch)
        elif action == "split":
            if len(batch) > 1:
                half = len(batch) // 2
                refs = batch.refs
                self._retry[:0] = [
                    Batch(batch.events[:half], refs[:half], attempt=batch.attempt, epoch=batch.epoch),
                    Batch(batch.events[half:], refs[half:], attempt=batch.attempt, epoch=batch.epoch),
                ]
            else:
                self._buffer.settle(batch.refs)
                self._drop(TOO_LARGE, 1)
        else:
            self._buffer.settle(batch.refs)
            self._drop(REJECTED_BATCH, len(batch))
            log.error("the collector refused a whole batch of %d events (%s): dropped", len(batch), decision.reason)
            _safe(
                self._cb.on_error, f"the collector refused a whole batch ({decision.reason}): {response.body[:200]!r}"
            )

    @staticmethod
    def _results(body: bytes, count: int) -> list[Any] | None:
        try:
            answer = msgspec.json.decode(body)
        except msgspec.DecodeError:
            return None
        results = answer.get("results") if isinstance(answer, dict) else None
        if not isinstance(results, list) or len(results) != count:
            return None
        return results

    def _settle(self, batch: Batch, results: list[Any]) -> None:
        if results.count(_ACCEPTED_RESULT) == len(results):  # the common answer: compared in C
            self._acknowledged += len(results)
            self._buffer.settle(batch.refs)
            return
        for i, result in enumerate(results):
            status = result.get("status") if isinstance(result, dict) else None
            if status == envelope.ACCEPTED:
                self._acknowledged += 1
            elif status == envelope.DUPLICATE:
                self._acknowledged += 1
                self._duplicates += 1
            else:
                self._quarantined += 1
                reasons = result.get("reasons", []) if isinstance(result, dict) else [f"unknown status {status!r}"]
                event = msgspec.msgpack.decode(self.whole(batch.events[i]))
                _safe(self._cb.on_quarantine, event.get("event_id"), event.get("event") or event.get("type"), reasons)
        self._buffer.settle(batch.refs)

    def whole(self, packed: bytes | bytearray) -> bytes:
        """An event's complete packed form, presets included."""
        if self._short and type(packed) is bytes:
            return packed + self._presets_suffix.entries
        return bytes(packed)

    def verdicts(self, batch: Batch, response: Response) -> list[tuple[str, list[Any]]]:
        """Debug mode: (status, reasons) per event of a `/v1/debug` answer; raises nothing."""
        results = self._results(response.body, len(batch)) if response.status == 200 else None
        if results is None:
            return [(f"error: {classify(response.status, response.error).reason}", [])] * len(batch)
        return [(str(r.get("status")), list(r.get("reasons", []))) for r in results]

    # -- lifecycle ---------------------------------------------------------------

    def take_debug_batch(self, wall_ms: int) -> Batch | None:
        """Debug mode: everything waiting, as one request to the validate-only endpoint."""
        events, refs = self._buffer.take(self.config.batch.max_events, self.config.batch.max_bytes)
        if not events:
            return None
        batch = Batch(events, refs, path=envelope.DEBUG_PATH)
        self._sent += len(events)
        batch.attempt = 1
        self._wrap(batch, wall_ms)
        return batch

    def forked(
        self,
        buffer: Buffer,
        source_id: str,
        lock: AbstractContextManager[Any] | None,
        first_seq: int = 1,
        dropped_before: Mapping[str, int] | None = None,
    ) -> SdkCore:
        """A core for a forked child: same identities and super properties, a new source, nothing pending."""
        child = SdkCore(
            self.config,
            buffer=buffer,
            source_id=source_id,
            anonymous_id=self._raw_ids["anonymous_id"],
            checks=self._checks,
            callbacks=self._cb,
            lock=lock,
            first_seq=first_seq,
            dropped_before=dropped_before,
        )
        child._raw_ids, child._ids = self._raw_ids, self._ids
        child._supers = self._supers
        return child

    def next_seq(self) -> int:
        """The sequence number the next event will get."""
        # itertools.count exposes its next value only through pickling support.
        return int(self._seq.__reduce__()[1][0])

    def dropped_total(self) -> dict[str, int]:
        """Drops of this source over all its lives, as the collector is told."""
        counts = dict(self._dropped_before)
        for reason, n in self._dropped.items():
            counts[reason] = counts.get(reason, 0) + n
        return counts

    def _log_drops(self) -> None:
        """One line when this life's drop counts changed since the last line (at most once per batch)."""
        if self._dropped == self._logged_drops:
            return
        self._logged_drops = dict(self._dropped)
        counts = ", ".join(f"{reason}={n}" for reason, n in sorted(self._dropped.items()))
        log.warning("events dropped by this client so far, by reason: %s", counts)

    def give_up_unsent(self) -> int:
        """At close: count what only memory holds (no spool keeps it) as dropped, `unsent`; returns the count.

        Events in flight or waiting for a retry are counted too unless the buffer
        is a spool, which keeps them for its slot's next owner.
        """
        buffer = self._buffer
        memory_only = getattr(buffer, "memory_pending", None)
        if memory_only is None:
            lost = buffer.pending() + self._in_flight_events + sum(len(b) for b in self._retry)
            clear = getattr(buffer, "clear", None)
            if clear is not None:
                clear()
        else:  # the spool keeps its frames; what came from its memory fallback (no ref) is lost
            lost = memory_only() + sum(1 for b in self._retry for ref in b.refs if ref is None)
        self._retry = []
        if lost:
            self._drop(UNSENT, lost)
        self._log_drops()
        return lost

    def purge(self) -> int:
        """Opt-out: delete everything waiting, in memory and on disk; count it as dropped, `opted_out`."""
        buffer = self._buffer
        purge = getattr(buffer, "purge", None)
        if purge is not None:
            gone = int(purge())
        else:
            gone = buffer.pending()
            getattr(buffer, "clear", lambda: None)()
        gone += sum(len(b) for b in self._retry)
        for batch in self._retry:
            buffer.settle(batch.refs)
        self._retry = []
        self._epoch += 1
        if gone:
            self._drop(OPTED_OUT, gone)
        return gone

    def stats(self) -> Stats:
        # itertools.count exposes its next value only through pickling support.
        tracked = int(self._accepted_count.__reduce__()[1][0])
        return Stats(
            tracked=tracked,
            sent=self._sent,
            acknowledged=self._acknowledged,
            duplicates=self._duplicates,
            quarantined=self._quarantined,
            dropped=dict(self._dropped),
            retries=self._retries,
            violations=self._violations,
            queued=self._buffer.pending(),
            in_flight=self._in_flight_events + sum(len(b) for b in self._retry),
        )


def _kind(value: object) -> str:
    """What a refused value is, without its repr (which could be deep, huge, or personal data)."""
    if isinstance(value, str):
        return "an empty string"
    return type(value).__name__
