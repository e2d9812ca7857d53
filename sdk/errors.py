"""Errors raised by `maidian.sdk`, each saying whose fault it is.

    MaidianSdkError                    root of this package's errors
     ├── CallerError                   the host application used the SDK wrongly
     │    ├── ConfigError              bad configuration (also: a spool path that cannot be opened)
     │    └── InvalidEvent             an event breaks the plan or is not encodable (strict mode only)
     └── RemoteError                   the collector or the network
          ├── TransportError           no answer: connection refused, reset, timed out (indeterminate)
          └── ServerRejected           the collector answered, and said no (debug mode raises it)

In production (`mode="warn"` or `"off"`) `track()` and the other recording calls
never raise: problems are counted in `Client.stats` and reported through the
callbacks. Only strict mode and debug mode raise at the call site, so that a
developer sees a plan violation while writing the code that causes it.
Constructors raise `ConfigError` at once: a client that cannot work should not
pretend to.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "CallerError",
    "ConfigError",
    "InvalidEvent",
    "MaidianSdkError",
    "RemoteError",
    "ServerRejected",
    "TransportError",
]


class MaidianSdkError(Exception):
    """Root of the errors raised by `maidian.sdk`."""


class CallerError(MaidianSdkError):
    """The host application used the SDK wrongly."""


class ConfigError(CallerError):
    """The configuration cannot work; the message names the setting."""


class InvalidEvent(CallerError):
    """An event breaks the tracking plan (strict mode) or cannot be encoded.

    `violations` are the plan's reasons (`maidian.tracking_plan.Violation`
    objects, or plain strings for encoding problems); messages never quote
    property values.
    """

    def __init__(self, event: str, violations: Sequence[Any]) -> None:
        self.event = event
        self.violations = tuple(violations)
        lines = "\n".join(f"  {v}" for v in self.violations)
        # A name that is not a string is named by its type: its repr could be anything (deep, huge, a value).
        shown = repr(event) if isinstance(event, str) else f"of type {type(event).__name__}"
        super().__init__(f"event {shown} breaks the tracking plan:\n{lines}")


class RemoteError(MaidianSdkError):
    """The collector or the network failed or refused."""


class TransportError(RemoteError):
    """The request got no HTTP answer; whether it arrived is unknown, so it is retried."""


class ServerRejected(RemoteError):
    """The collector answered with a refusal: an error status, or a quarantine verdict in debug mode."""

    def __init__(self, message: str, *, status: int | None = None, reasons: Sequence[Any] = ()) -> None:
        self.status = status
        self.reasons = tuple(reasons)
        super().__init__(message)
