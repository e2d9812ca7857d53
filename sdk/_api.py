"""The recording API shared by `Client` and `AsyncClient`: everything but waiting.

Both shells inherit these methods, so they cannot drift apart: `track`,
`login`, `bind`, the `profile_*` operations, super properties and timers all
end in one call into `SdkCore` plus, when the core says a batch is full, a
nudge to the shell's sender (`_wake`). What differs between the shells is only
how they wait: a thread or an asyncio task.

Outside strict mode none of these methods raises into the host: a bug here is
counted (`Stats.dropped["internal"]`) and reported through `on_error`.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from maidian.tracking_plan.envelope import is_junk_identity, make_source_id

from . import _lifecycle
from ._buffer import Buffer, MemoryBuffer
from .config import BatchLimits, Config, QueueLimits, RetryPolicy, SpoolConfig, Timeouts, resolve_config
from .core import Batch, Callbacks, PlanChecks, SdkCore, Stats, compile_plan
from .errors import ConfigError, InvalidEvent, ServerRejected

if TYPE_CHECKING:
    from maidian.tracking_plan.model import Plan

__all__ = ["BaseClient"]

INTERNAL = "internal"
CLOSED = "closed"


_time_ns = time.time_ns


def _wall_ms() -> int:
    return _time_ns() // 1_000_000


def _to_ms(value: datetime | int) -> int:
    """Epoch milliseconds; -1 for anything else, which the core refuses (raising only in strict mode)."""
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return -1


def _load_plan(plan: Plan | str | os.PathLike[str] | None) -> Plan | None:
    if plan is None or not isinstance(plan, (str, os.PathLike)):
        return plan
    from maidian.tracking_plan.loader import load_plan

    return load_plan(plan)


class BaseClient:
    """Configuration, the core, and the recording API. Subclasses add a sender."""

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        write_key: str | None = None,
        source: str | None = None,
        secret: str | bytes | None = None,
        plan: Plan | str | os.PathLike[str] | None = None,
        mode: str | None = None,
        pii_key: str | bytes | None = None,
        anonymous_id: str | None = None,
        app_name: str | None = None,
        app_version: str | None = None,
        debug: bool | None = None,
        batch: BatchLimits | None = None,
        retry: RetryPolicy | None = None,
        queue: QueueLimits | None = None,
        spool: SpoolConfig | str | os.PathLike[str] | None = None,
        timeouts: Timeouts | None = None,
        on_drop: Callable[[str, int], None] | None = None,
        on_violation: Callable[[str, Sequence[Any]], None] | None = None,
        on_quarantine: Callable[[str, str, Sequence[Any]], None] | None = None,
        on_error: Callable[[str], None] | None = None,
        opted_out: bool | None = None,
        proxy: str | None = None,
        ca_bundle: str | os.PathLike[str] | None = None,
        client_cert: str | os.PathLike[str] | None = None,
        client_key: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        loaded = _load_plan(plan)
        self.config: Config = resolve_config(
            endpoint,
            write_key=write_key,
            source=source,
            secret=secret,
            mode=mode,
            has_plan=loaded is not None,
            pii_key=pii_key,
            anonymous_id=anonymous_id,
            app_name=app_name,
            app_version=app_version,
            debug=debug,
            batch=batch,
            retry=retry,
            queue=queue,
            spool=spool,
            timeouts=timeouts,
            proxy=proxy,
            ca_bundle=ca_bundle,
            client_cert=client_cert,
            client_key=client_key,
            env=env,
        )
        self._checks: PlanChecks | None = None
        if loaded is not None:
            self._checks = self._plan_checks(loaded)
            tags = {
                *self._checks.pii_common.values(),
                *self._checks.pii_profile.values(),
                *self._checks.pii_identities.values(),
            }
            for paths in self._checks.pii_by_event.values():
                tags.update(paths.values())
            if "hash" in tags and not self.config.pii_key:
                raise ConfigError("the plan tags properties 'hash': pass pii_key= (or set MAIDIAN_PII_KEY)")
        if self.config.ca_bundle is not None or self.config.client_cert is not None:
            self._check_tls()
        self._callbacks = Callbacks(on_drop, on_violation, on_quarantine, on_error)
        self._anonymous_id = self.config.anonymous_id or os.urandom(16).hex()
        self._count_lock = threading.Lock()
        self._closed = False
        # True when a call must take the slow path: closed, debug, or a forked child not yet restarted.
        self._slow = self.config.debug
        self._opted_out = self._read_opt_out() if opted_out is None else opted_out
        buffer = self._open_buffer()
        self._core = self._resume_core(buffer)
        if self._opted_out:
            self._slow = True
            self._core.purge()
        self._start()
        _lifecycle.register(self)

    def _plan_checks(self, plan: Plan) -> PlanChecks:
        """The plan compiled for this client's mode (a subclass hook)."""
        return compile_plan(plan, self.config.mode)

    def _start(self) -> None:
        """Set up the shell's sender (a subclass hook, called once at the end of construction)."""

    # -- construction ------------------------------------------------------------

    def _open_buffer(self) -> Buffer:
        spool = self.config.spool
        if spool is None or self.config.debug:
            return MemoryBuffer(self.config.queue.max_events, self.config.queue.overflow)
        from ._spool import Spool

        return Spool(spool, self.config.queue, on_drop=self._core_drop)

    def _resume_core(self, buffer: Buffer, lock: Any = None, parent: SdkCore | None = None) -> SdkCore:
        """A core over `buffer`, continuing the source its spool slot remembers (or a new source)."""
        record = getattr(buffer, "record", None)
        if record is None:
            source, first, before = make_source_id(), 1, {}
        else:
            source, first, before = record.source, record.next_seq, record.dropped
        if parent is not None:
            return parent.forked(buffer, source, lock, first, before)
        return self._new_core(buffer, source, first, before)

    def _release_buffer(self) -> None:
        """At close: count what only memory held, and leave the slot's record for its next owner."""
        core = self._core
        core.give_up_unsent()
        buffer = core._buffer
        if hasattr(buffer, "record"):
            from ._spool import SourceRecord

            buffer.close(SourceRecord(core.source_id, core.next_seq(), core.dropped_total()))  # type: ignore[call-arg]
        else:
            buffer.close()

    def _check_tls(self) -> None:
        """Load the CA bundle and client certificate now, so that a bad file fails the constructor."""
        import ssl

        from ._http import tls_context

        try:
            tls_context(self.config)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"TLS settings cannot be loaded: {exc}") from exc

    def _read_opt_out(self) -> bool:
        spool = self.config.spool
        if spool is None:
            return False
        from ._spool import read_opt_out

        return read_opt_out(spool.path)

    def _core_drop(self, reason: str, count: int) -> None:
        # The spool drops at its caps from whichever thread is appending.
        self._core._drop(reason, count)

    def _new_core(
        self, buffer: Buffer, source_id: str, first_seq: int = 1, dropped_before: Mapping[str, int] | None = None
    ) -> SdkCore:
        return SdkCore(
            self.config,
            buffer=buffer,
            source_id=source_id,
            anonymous_id=self._anonymous_id,
            checks=self._checks,
            callbacks=self._callbacks,
            lock=self._count_lock,
            first_seq=first_seq,
            dropped_before=dropped_before,
        )

    def _wake(self) -> None:
        """A full batch waits: nudge the sender."""
        raise NotImplementedError

    # -- recording -------------------------------------------------------------------

    def track(
        self,
        event: str,
        properties: Mapping[str, Any] | None = None,
        *,
        time: datetime | int | None = None,
        identities: Mapping[str, str] | None = None,
    ) -> None:
        """Record `event` with `properties`. Never blocks; raises only in strict mode.

        `time` (a datetime or epoch milliseconds) defaults to now; `identities`
        replaces the client's own for this one event (a backend service
        tracking on behalf of many users).
        """
        if self._slow:
            self._track_slow(event, properties, time, identities)
            return
        try:
            if self._core.track(
                event, properties, _time_ns() // 1_000_000, None if time is None else _to_ms(time), identities
            ):
                self._wake()
        except InvalidEvent:
            raise
        except Exception as exc:
            self._internal(exc)

    def _track_slow(
        self,
        event: str,
        properties: Mapping[str, Any] | None,
        time: datetime | int | None,
        identities: Mapping[str, str] | None,
    ) -> None:
        self._slow_path()
        if self._closed or self._opted_out:
            return
        try:
            if self._core.track(event, properties, _wall_ms(), None if time is None else _to_ms(time), identities):
                self._wake()
        except InvalidEvent:
            raise
        except Exception as exc:
            self._internal(exc)
        if self.config.debug:
            self._send_debug()

    def _record(self, event_type: str, properties: Mapping[str, Any], identities: Mapping[str, str] | None) -> None:
        if self._slow:
            self._slow_path()
            if self._closed or self._opted_out:
                return
        try:
            if self._core.record(event_type, properties, _wall_ms(), identities=identities):
                self._wake()
        except InvalidEvent:
            raise
        except Exception as exc:
            self._internal(exc)
        if self.config.debug:
            self._send_debug()

    def profile_set(self, properties: Mapping[str, Any], *, identities: Mapping[str, str] | None = None) -> None:
        """Set user-profile properties."""
        self._record("profile_set", properties, identities)

    def profile_set_once(self, properties: Mapping[str, Any], *, identities: Mapping[str, str] | None = None) -> None:
        """Set user-profile properties that are not set yet."""
        self._record("profile_set_once", properties, identities)

    def profile_increment(
        self, properties: Mapping[str, int | float], *, identities: Mapping[str, str] | None = None
    ) -> None:
        """Add to numeric user-profile properties."""
        self._record("profile_increment", properties, identities)

    def profile_append(
        self, properties: Mapping[str, Sequence[Any]], *, identities: Mapping[str, str] | None = None
    ) -> None:
        """Append to array user-profile properties."""
        if not isinstance(properties, Mapping) or not all(isinstance(v, (list, tuple)) for v in properties.values()):
            self._refuse_call("profile_append", "profile_append takes a mapping of names to lists")
            return
        self._record("profile_append", {k: list(v) for k, v in properties.items()}, identities)

    def profile_unset(self, names: Iterable[str], *, identities: Mapping[str, str] | None = None) -> None:
        """Remove user-profile properties."""
        listed = [names] if isinstance(names, str) else names
        try:
            props = dict.fromkeys(listed, True)
        except TypeError:  # not iterable, or unhashable names
            props = None
        if props is None or not all(type(k) is str and k for k in props):
            self._refuse_call("profile_unset", "profile_unset takes property names (strings)")
            return
        self._record("profile_unset", props, identities)

    def profile_delete(self, *, identities: Mapping[str, str] | None = None) -> None:
        """Delete the user's whole profile."""
        self._record("profile_delete", {}, identities)

    # -- identities --------------------------------------------------------------------

    @property
    def anonymous_id(self) -> str:
        return self._anonymous_id

    @property
    def identities(self) -> dict[str, str]:
        """The identities every event carries now (as given, before PII tags apply)."""
        return self._core.identities

    def login(self, login_id: str) -> None:
        """Attach `login_id` to later events and record the link with this device's anonymous id."""
        self.bind("login_id", login_id)

    def logout(self) -> None:
        """Detach the login id and every bound identity; later events carry the anonymous id only."""
        self._core.clear_identities()

    def bind(self, identity_type: str, value: str) -> None:
        """Attach an identity (`login_id` or a plan's identity type) to later events, and record the binding."""
        if type(identity_type) is not str or not identity_type:
            self._refuse_call("bind", "the identity type must be a non-empty string")
            return
        if is_junk_identity(value):
            if self._core.refuse_identity(identity_type, value):
                self._wake()
            return
        previous = self._core.identities.get(identity_type)
        if previous == value:
            return
        self._core.set_identity(identity_type, value)
        try:
            self._record("bind", {}, None)
        except InvalidEvent:  # strict mode: a refused binding must not stick to later events
            self._core.set_identity(identity_type, previous)
            raise

    def unbind(self, identity_type: str, value: str | None = None) -> None:
        """Record that an identity no longer belongs to this user, and detach it from later events."""
        if type(identity_type) is not str or not identity_type:
            self._refuse_call("unbind", "the identity type must be a non-empty string")
            return
        if value is not None and is_junk_identity(value):
            if self._core.refuse_identity(identity_type, value):
                self._wake()
            return
        current = self._core.identities
        value = value if value is not None else current.get(identity_type)
        if value is None:
            return  # nothing bound: nothing to record
        self._record("unbind", {}, {"anonymous_id": self._anonymous_id, identity_type: value})
        if current.get(identity_type) == value:
            self._core.set_identity(identity_type, None)

    # -- super properties and timers ---------------------------------------------------

    def register_super_properties(self, properties: Mapping[str, Any]) -> None:
        """Properties added to every later track event (a call's own properties win)."""
        self._core.register_super_properties(properties)

    def unregister_super_property(self, name: str) -> None:
        self._core.unregister_super_property(name)

    def time_event(self, name: str) -> None:
        """Start a timer: the next `track(name)` carries `$duration_ms`."""
        self._core.time_event(name, _wall_ms())

    # -- consent -----------------------------------------------------------------------

    def opt_out(self) -> None:
        """Stop tracking on this device: later calls record nothing, and what waits is deleted.

        The events waiting in memory and in the spool are purged (counted in
        `stats.dropped["opted_out"]`); requests already on the wire may still
        arrive. With a spool the choice is persisted next to it, so a restarted
        app stays opted out until `opt_in()`; without one, persist it yourself
        and pass `opted_out=True` to the constructor.
        """
        self._opted_out = True
        self._slow = True
        try:
            with self._sender_lock():
                self._core.purge()
            self._persist_opt_out(True)
        except Exception as exc:
            self._internal(exc)

    def opt_in(self) -> None:
        """Track again after `opt_out()` (and persist the choice with the spool)."""
        self._opted_out = False
        self._slow = self._closed or self.config.debug or self._needs_restart()
        try:
            self._persist_opt_out(False)
        except Exception as exc:
            self._internal(exc)

    @property
    def opted_out(self) -> bool:
        """True after `opt_out()` (or when the device opted out in an earlier run)."""
        return self._opted_out

    def _persist_opt_out(self, value: bool) -> None:
        spool = self.config.spool
        if spool is not None and not self.config.debug:
            from ._spool import write_opt_out

            write_opt_out(spool.path, value)

    def _needs_restart(self) -> bool:
        """True while the shell's sender must be (re)started by the slow path."""
        return False

    def _sender_lock(self) -> Any:
        """The lock that guards the core's sender state (a null context where one thread owns it)."""
        return contextlib.nullcontext()

    # -- state -----------------------------------------------------------------------

    @property
    def stats(self) -> Stats:
        """A snapshot of the counters (`core.Stats`)."""
        return self._core.stats()

    @property
    def source_id(self) -> str:
        """This client's source id: the `<source>` of its event ids (new in a forked child)."""
        return self._core.source_id

    # -- shared machinery -------------------------------------------------------------

    def _refuse_call(self, what: str, problem: str) -> None:
        """A call whose arguments cannot be used: raise in strict mode, else count and report (`invalid`)."""
        from .core import INVALID

        if self._core._refuse(what, INVALID, [problem]):
            self._wake()

    def _timeout_s(self, value: object, default: float) -> float:
        """A usable timeout: a finite, non-negative number of seconds; anything else is refused (counted)."""
        import math

        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
            return min(float(value), threading.TIMEOUT_MAX / 2)
        self._refuse_call("timeout", f"a timeout must be a non-negative number of seconds, got {type(value).__name__}")
        return default

    def _internal(self, exc: BaseException) -> None:
        self._core._drop(INTERNAL, 1)
        try:
            if self._callbacks.on_error is not None:
                self._callbacks.on_error(f"internal error in maidian.sdk: {type(exc).__name__}: {exc}")
        except Exception:  # noqa: S110  # the host's callback failing must not reach the host's call
            pass

    def _report_bug(self, exc: BaseException) -> None:
        """A sender-side bug: report it through on_error (nothing is dropped by it)."""
        try:
            if self._callbacks.on_error is not None:
                self._callbacks.on_error(f"internal error in maidian.sdk's sender: {type(exc).__name__}: {exc}")
        except Exception:  # noqa: S110  # the host's callback failing must not stop the sender
            pass

    def _slow_path(self) -> None:
        """Called before recording when `_slow` is set. Subclasses restart after fork here."""
        if self._closed:
            self._core._drop(CLOSED, 1)

    def _send_debug(self) -> None:
        """Debug mode: send what was just recorded to the validate-only endpoint and show the verdict now."""
        from ._http import HttpTransport

        core = self._core
        batch = core.take_debug_batch(_wall_ms())
        if batch is None:
            return
        transport = HttpTransport.for_config(self.config)
        try:
            response = transport.send(batch.path, batch.body, batch.headers)
        finally:
            transport.close()
        core._buffer.settle(batch.refs)
        self._show_verdicts(batch, core.verdicts(batch, response))

    def _show_verdicts(self, batch: Batch, verdicts: list[tuple[str, list[Any]]]) -> None:
        import msgspec

        for packed, (status, reasons) in zip(batch.events, verdicts, strict=True):
            event = msgspec.msgpack.decode(self._core.whole(packed))
            name = event.get("event") or event.get("type")
            line = f"maidian debug: {name} {event.get('event_id')}: {status}"
            for reason in reasons:
                where = reason.get("path", "") if isinstance(reason, dict) else ""
                what = reason.get("message", reason) if isinstance(reason, dict) else reason
                line += f"\n    {where or '/'}: {what}"
            print(line, file=sys.stderr)
            if status != "accepted" and self.config.mode == "strict":
                raise ServerRejected(line, status=200 if not status.startswith("error") else None, reasons=reasons)

    def _drain_sync(self, deadline: float) -> None:
        """Send what is left with the standard-library transport, until done or `deadline` (monotonic)."""
        from ._http import HttpTransport

        core = self._core
        transport = HttpTransport.for_config(self.config)
        core.request_flush()
        try:
            while time.monotonic() < deadline and not core.idle():
                now = time.monotonic()
                batch = core.next_batch(now, _wall_ms())
                if batch is None:
                    if core.stalled_past(deadline):
                        return  # backing off past the budget: the rest stays in the spool, if any
                    time.sleep(max(0.0, min(core.next_deadline(now), deadline) - now))
                    continue
                response = self._send_bounded(transport, batch, deadline)
                core.on_result(batch, response, time.monotonic(), time.time())
        finally:
            transport.close()

    @staticmethod
    def _send_bounded(transport: Any, batch: Batch, deadline: float) -> Any:
        timer = threading.Timer(max(0.0, deadline - time.monotonic()), transport.abort)
        timer.daemon = True
        timer.start()
        try:
            return transport.send(batch.path, batch.body, batch.headers)
        finally:
            timer.cancel()

    def _exit_budget_s(self) -> float:
        return self.config.timeouts.exit_s

    def _exit_within(self, deadline: float) -> None:
        raise NotImplementedError

    def _after_fork(self) -> None:
        """In a forked child: its own source, an empty buffer (its own spool slot, if any), no sender yet.

        The parent's spool descriptors are closed without unlocking (the parent
        still owns its slot); the child claims a slot of its own under the same path.
        """
        self._count_lock = threading.Lock()
        abandon = getattr(self._core._buffer, "abandon", None)
        if abandon is not None:
            abandon()
        try:
            buffer = self._open_buffer()
        except Exception as exc:  # the child must not die of its spool: memory, said once
            buffer = MemoryBuffer(self.config.queue.max_events, self.config.queue.overflow)
            self._report_bug(exc)
        self._core = self._resume_core(buffer, self._count_lock, self._core)
