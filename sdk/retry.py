"""What to do with a request's answer: one pure decision, and the wait before the next try.

`classify(status, error)` maps an HTTP status (or a transport error) onto an
`Action`, following the protocol's error table (docs/protocol.md):

| answer | action | why |
|---|---|---|
| 200 | `done` | per-event results follow |
| network error, timeout, 408, 429, 5xx | `retry` | indeterminate or transient; the collector deduplicates |
| 401, 403, 407 | `hold` | keep the events (a key or proxy login fixed later must not lose them), retry slowly |
| 413 | `split` | halve the batch; a single event that is still too large is dropped, counted |
| 400, 415, other 4xx | `drop` | the body itself is wrong: a bug; dropped, counted and reported |

`backoff_s` is exponential backoff with full jitter; `parse_retry_after`
reads seconds or an HTTP date. Retry-After is a minimum, never a maximum, and is
capped (600 s by default); garbage falls back to plain backoff.
"""

from __future__ import annotations

import random
from typing import Final, Literal

import msgspec

__all__ = ["Action", "Decision", "backoff_s", "classify", "parse_retry_after"]

Action = Literal["done", "retry", "hold", "split", "drop"]

_RETRY_STATUSES: Final = frozenset({408, 429})


class Decision(msgspec.Struct, frozen=True):
    """The action for one answer, and a short reason for stats and callbacks."""

    action: Action
    reason: str


def classify(status: int | None, error: str | None = None) -> Decision:
    """The action for an HTTP status, or for a transport error when `status` is None."""
    if status is None:
        return Decision("retry", f"network: {error or 'no answer'}")
    if status == 200:
        return Decision("done", "ok")
    if status in _RETRY_STATUSES or status >= 500:
        return Decision("retry", f"http {status}")
    if status in (401, 403, 407):
        return Decision("hold", f"http {status}")
    if status == 413:
        return Decision("split", "http 413")
    return Decision("drop", f"http {status}")


def parse_retry_after(value: str | None, now_s: float, cap_s: float) -> float | None:
    """Seconds to wait from `now_s` (epoch seconds), capped; None when absent or unreadable."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isdigit():
        return min(float(text), cap_s)
    from email.utils import parsedate_to_datetime  # rare: keep it off the import path

    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT
        return None
    return min(max(0.0, when.timestamp() - now_s), cap_s)


def backoff_s(failures: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**(failures - 1))]."""
    ceiling = min(cap_s, base_s * (2 ** min(max(failures - 1, 0), 30)))
    return rng.uniform(0.0, ceiling)
