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
`assert_not_tracked()`, `assert_valid()` and `clear()`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from ._api import BaseClient

if TYPE_CHECKING:
    from maidian.tracking_plan.model import Plan

__all__ = ["Recorder"]

# A fixed key so that hashed values are stable across test runs; never a production key.
TEST_PII_KEY = b"maidian-testing-key"


class Recorder(BaseClient):
    """A client that records instead of sending; see the module docstring."""

    def __init__(
        self,
        plan: Plan | str | os.PathLike[str] | None = None,
        *,
        mode: str | None = None,
        pii_key: bytes = TEST_PII_KEY,
        **kwargs: Any,
    ) -> None:
        self._events: list[dict[str, Any]] = []
        self._violations: list[tuple[str, Sequence[Any]]] = []
        super().__init__(
            "http://127.0.0.1:9",
            write_key="test",
            plan=plan,
            mode=mode or ("strict" if plan is not None else None),
            pii_key=pii_key,
            debug=False,
            env={},
            **kwargs,
        )
        self._wire = self._checks.wire if self._checks is not None else None

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

    def clear(self) -> None:
        self._drain()
        self._events.clear()
        self._violations.clear()

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
