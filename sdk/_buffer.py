"""Where tracked events wait: the in-memory buffer, and the interface the disk spool shares.

A buffer holds packed events (msgpack bytes, encoded once in `track()`), never
dicts. `put` is called from the host's threads and must stay cheap: a deque
append, atomic under the GIL, so app threads never wait for the sender. The
sender takes events in batches; what it took is in flight and no longer in the
buffer. `refs` are the buffer's own handles for the events it handed out (the
spool's segment and frame numbers), given back in `settle` once the collector
has decided about them so the spool can record that they need not be resent.

Overflow is explicit: at the cap, `drop_oldest` removes the oldest waiting event
and `drop_newest` refuses the new one; `put` returns how many events it dropped
so the core can count them exactly.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any, Protocol

__all__ = ["Buffer", "MemoryBuffer"]


class Buffer(Protocol):
    """What the core needs from a place where packed events wait."""

    def put(self, packed: bytes) -> int:
        """Add one event; return how many events were dropped to respect the cap (0 or more)."""
        ...

    def take(self, max_events: int, max_bytes: int) -> tuple[list[bytes], list[Any]]:
        """Remove up to `max_events` events totalling at most `max_bytes` (always at least one if any wait)."""
        ...

    def settle(self, refs: Sequence[Any]) -> None:
        """The collector decided about these events (or they were dropped): never resend them."""
        ...

    def pending(self) -> int:
        """Events waiting to be taken."""
        ...

    def close(self) -> None:
        """Release files and locks; called once."""
        ...


class MemoryBuffer:
    """A bounded deque of packed events.

    `queue` is public so that the core's `track()` can append to it directly
    while it is below the cap (C calls only); at the cap it calls `put`.
    """

    __slots__ = ("_drop_oldest", "_max_events", "queue")

    # Track events may wait without their preset entries (core._PresetsSuffix).
    holds_short_events = True

    def __init__(self, max_events: int, overflow: str) -> None:
        self.queue: deque[Any] = deque()
        self._max_events = max_events
        self._drop_oldest = overflow == "drop_oldest"

    def put(self, packed: Any) -> int:
        queue = self.queue
        if len(queue) < self._max_events:
            queue.append(packed)
            return 0
        if not self._drop_oldest:
            return 1
        try:
            queue.popleft()
        except IndexError:  # the sender emptied it meanwhile: nothing to drop
            queue.append(packed)
            return 0
        queue.append(packed)
        return 1

    def take(self, max_events: int, max_bytes: int) -> tuple[list[bytes], list[Any]]:
        queue = self.queue
        out: list[bytes] = []
        size = 0
        popleft = queue.popleft
        while len(out) < max_events:
            try:
                packed = popleft()
            except IndexError:
                break
            if out and size + len(packed) > max_bytes:
                queue.appendleft(packed)
                break
            out.append(packed)
            size += len(packed)
        return out, []

    def settle(self, refs: Sequence[Any]) -> None:
        return None

    def pending(self) -> int:
        return len(self.queue)

    def clear(self) -> None:
        self.queue.clear()

    def close(self) -> None:
        return None
