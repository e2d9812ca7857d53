"""A testing aid for app developers: record what your code tracks, check it against the plan.

`Recorder` is a drop-in for `Client` in your unit tests: it has the same
recording methods (`track`, `login`, `profile_set`, ...) and applies the same
enrichment, plan checks and PII tags, but sends nothing: events are kept, in
the form they would take on the wire, for assertions.

    from maidian.sdk.testing import Recorder

    def test_buy_button_tracks_the_order():
        recorder = Recorder(plan="tracking_plan.json")   # strict: a plan violation raises at the call
        buy(recorder, stock_code="600519", quantity=100)    # your code, given the recorder as its client
        recorder.assert_tracked("stock_order_submit", stock_code="600519", quantity=100)

In strict mode (the default with a plan) a violation raises `InvalidEvent` at
the call that caused it, with the plan's reasons. In warn mode events are
recorded anyway and `violations` lists what the collector would quarantine
(the wire-stage check); `assert_valid()` fails on any.

The API is meant to be wrapped by a pytest plugin: everything it needs is
`Recorder(...)`, `events`, `tracked()`, `assert_tracked()`,
`assert_not_tracked()`, `assert_valid()` and `clear()`. The plugin
(`maidian.sdk.pytest_plugin`) also uses `refusals` (strict-mode violations,
remembered even when the code under test swallowed the exception), `problems()`,
`expect_violation()` and `reset()`, which starts a new session without
compiling the plan again.

`sender="app"` adds the one check the collector makes that the plan validator
cannot: an app (a write key) may not send a `trigger: server` event, which the
collector would quarantine with the rule `trigger`. `sender="server"` records
as a signed backend source does (`$server: true`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgspec

from maidian.tracking_plan.envelope import make_source_id

from ._api import BaseClient, _load_plan
from .core import PlanChecks
from .errors import InvalidEvent

if TYPE_CHECKING:
    from maidian.tracking_plan.model import Plan

__all__ = ["Recorder"]

# A fixed key so that hashed values are stable across test runs; never a production key.
TEST_PII_KEY = b"maidian-testing-key"
# The credentials of a recorder that stands in for a signed backend source (sender="server").
_TEST_SOURCE = ("maidian-test-backend", b"maidian-test-backend-secret")
SENDERS = ("app", "server")


class Recorder(BaseClient):
    """A client that records instead of sending; see the module docstring."""

    def __init__(
        self,
        plan: Plan | str | os.PathLike[str] | None = None,
        *,
        mode: str | None = None,
        pii_key: bytes = TEST_PII_KEY,
        sender: str | None = None,
        **kwargs: Any,
    ) -> None:
        if sender is not None and sender not in SENDERS:
            raise ValueError(f"sender must be one of {', '.join(SENDERS)}, got {sender!r}")
        self._events: list[dict[str, Any]] = []
        self._violations: list[tuple[str, Sequence[Any]]] = []
        self._refusals: list[InvalidEvent] = []
        loaded = _load_plan(plan)
        if sender == "server":
            kwargs.setdefault("source", _TEST_SOURCE[0])
            kwargs.setdefault("secret", _TEST_SOURCE[1])
        super().__init__(
            "http://127.0.0.1:9",
            write_key="test",
            plan=loaded,
            mode=mode or ("strict" if plan is not None else None),
            pii_key=pii_key,
            debug=False,
            env={},
            **kwargs,
        )
        self.plan = loaded
        self._wire = self._checks.wire if self._checks is not None else None
        self._server_only: frozenset[str] = frozenset(
            name
            for name, spec in (loaded.events.items() if loaded is not None and sender == "app" else ())
            if spec.trigger == "server"
        )

    def _plan_checks(self, plan: Plan) -> PlanChecks:
        # The recorder judges `trigger: server` events itself, by its `sender` (`_server_only_event`).
        return msgspec.structs.replace(super()._plan_checks(plan), server_only=frozenset())

    # -- recording: remember strict-mode refusals, even when the caller swallows them ------

    def _remember(self, exc: InvalidEvent) -> None:
        if not self._refusals or self._refusals[-1] is not exc:
            self._refusals.append(exc)

    def track(
        self,
        event: str,
        properties: Mapping[str, Any] | None = None,
        *,
        time: datetime | int | None = None,
        identities: Mapping[str, str] | None = None,
    ) -> None:
        if event in self._server_only:
            self._server_only_event(event)
        try:
            super().track(event, properties, time=time, identities=identities)
        except InvalidEvent as exc:
            self._remember(exc)
            raise

    def _server_only_event(self, event: str) -> None:
        from maidian.tracking_plan import Violation

        violation = Violation(
            "trigger",
            "/event",
            f"event {event!r} is marked 'trigger: server' in the plan; only signed server sources may send it",
        )
        if self.config.mode == "strict":
            exc = InvalidEvent(event, [violation])
            self._remember(exc)
            raise exc
        if self.config.mode == "warn":
            self._violations.append((event, [violation]))

    def _record(self, event_type: str, properties: Mapping[str, Any], identities: Mapping[str, str] | None) -> None:
        try:
            super()._record(event_type, properties, identities)
        except InvalidEvent as exc:
            self._remember(exc)
            raise

    def bind(self, identity_type: str, value: str) -> None:
        try:
            super().bind(identity_type, value)
        except InvalidEvent as exc:
            self._remember(exc)
            raise

    def _wake(self) -> None:
        return None

    def _drain(self) -> None:
        buffer = self._core._buffer
        while buffer.pending():
            packed, refs = buffer.take(10_000, 1 << 30)
            for item in packed:
                event = msgspec.msgpack.decode(self._core.whole(item))
                if self._wire is not None and self.config.mode == "warn":
                    problems = self._wire.validate(event)
                    if problems:
                        self._violations.append((event.get("event") or event.get("type"), problems))
                self._events.append(event)
            buffer.settle(refs)

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every recorded event (track, profile, bind), oldest first, as sent on the wire."""
        self._drain()
        return list(self._events)

    @property
    def violations(self) -> list[tuple[str, Sequence[Any]]]:
        """(event name, violations) for every event the plan check flagged (warn mode)."""
        self._drain()
        return list(self._violations)

    def tracked(self, event: str | None = None) -> list[dict[str, Any]]:
        """The track events, all or those named `event`."""
        return [e for e in self.events if e["type"] == "track" and (event is None or e["event"] == event)]

    def assert_tracked(self, event: str, /, count: int | None = None, **properties: Any) -> dict[str, Any]:
        """Assert `event` was tracked with at least these property values; returns the first match.

        With `count`, exactly that many matching events must have been tracked.
        On failure the message lists what was tracked.
        """
        matches = [e for e in self.tracked(event) if _has(e["properties"], properties)]
        if (count is None and not matches) or (count is not None and len(matches) != count):
            want = f"{count} x " if count is not None else ""
            raise AssertionError(f"expected {want}{event!r} with {properties!r}; tracked:\n{self._listing()}")
        return matches[0] if matches else {}

    def assert_not_tracked(self, event: str) -> None:
        if self.tracked(event):
            raise AssertionError(f"{event!r} was tracked; tracked:\n{self._listing()}")

    def assert_valid(self) -> None:
        """Assert no recorded event breaks the plan."""
        found = self.violations
        if found:
            lines = "\n".join(f"  {name}: {'; '.join(str(v) for v in vs)}" for name, vs in found)
            raise AssertionError(f"{len(found)} event(s) break the plan:\n{lines}")

    @property
    def refusals(self) -> list[InvalidEvent]:
        """Every `InvalidEvent` a call raised in strict mode, including those the code under test caught."""
        return list(self._refusals)

    def problems(self) -> list[str]:
        """One line per plan violation recorded so far (strict refusals and warn-mode violations), or none."""
        lines = [f"{exc.event}: {v}" for exc in self._refusals for v in exc.violations]
        lines += [f"{name}: {v}" for name, vs in self.violations for v in vs]
        return lines

    @contextlib.contextmanager
    def expect_violation(self, rule: str | None = None) -> Iterator[list[Any]]:
        """A block that must break the plan (with `rule`, when given); what it broke is then forgotten.

        Yields a list that holds the violations afterwards. In strict mode the
        `InvalidEvent` raised inside the block is caught here.
        """
        refused, flagged = len(self._refusals), len(self.violations)
        found: list[Any] = []
        with contextlib.suppress(InvalidEvent):
            yield found
        new_refusals = self._refusals[refused:]
        new_flagged = self.violations[flagged:]
        found += [v for exc in new_refusals for v in exc.violations]
        found += [v for _name, vs in new_flagged for v in vs]
        del self._refusals[refused:]
        del self._violations[flagged:]
        if not found:
            raise AssertionError(f"expected a tracking-plan violation{f' ({rule})' if rule else ''}; none happened")
        if rule is not None and not any(getattr(v, "rule", None) == rule for v in found):
            shown = "; ".join(str(v) for v in found)
            raise AssertionError(f"expected a {rule!r} violation; got: {shown}")

    def clear(self) -> None:
        """Forget the recorded events, violations and refusals (identities and super properties stay)."""
        self._drain()
        self._events.clear()
        self._violations.clear()
        self._refusals.clear()

    def reset(self) -> None:
        """Start afresh, as a new recorder would: no events, no identities, super properties or timers.

        The compiled plan is kept, so a test suite pays for compiling it once.
        """
        self.clear()
        self._anonymous_id = self.config.anonymous_id or os.urandom(16).hex()
        self._core = self._new_core(self._open_buffer(), make_source_id())

    def flush(self, timeout_s: float = 0.0) -> bool:
        self._drain()
        return True

    def close(self, timeout_s: float = 0.0) -> bool:
        self._drain()
        return True

    def _exit_within(self, deadline: float) -> None:
        return None

    def _listing(self) -> str:
        lines = []
        for e in self.events:
            name = e.get("event") or e.get("type")
            props = {k: v for k, v in e["properties"].items() if not k.startswith("$")}
            lines.append(f"  {name} {props}")
        return "\n".join(lines) or "  (nothing)"


def _has(actual: Mapping[str, Any], expected: Mapping[str, Any]) -> bool:
    return all(k in actual and actual[k] == v for k, v in expected.items())
