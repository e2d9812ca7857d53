"""Any interleaving of track, send, failure, lost answers and restarts: nothing lost, nothing duplicated.

The machine drives `SdkCore` over a real disk spool (files in a temporary
directory) with a model collector: a set of stored ids that deduplicates, and
a raw count. "Restart" abandons whatever is in flight and opens a new core on
the same spool, as a process killed and started again would. At the end the
core drains everything and the stored set must equal the tracked set.
"""

from __future__ import annotations

import shutil
import tempfile

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from maidian.sdk._spool import Spool
from maidian.sdk.config import BatchLimits, QueueLimits, RetryPolicy, SpoolConfig
from maidian.sdk.core import Batch, Response, SdkCore
from tests.sdk.fakes import answer, ids, make_core

T0 = 1_763_800_000_000


class DeliveryMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="maidian-spool-")
        self.spool_config = SpoolConfig(self.dir, segment_bytes=2048, fsync_interval_s=0)
        self.now = 0.0
        self.generation = 0
        self.tracked: set[str] = set()
        self.stored: set[str] = set()
        self.raw = 0
        self.in_flight: list[Batch] = []
        self.core = self._open()

    def _open(self) -> SdkCore:
        self.generation += 1
        spool = Spool(self.spool_config, QueueLimits())
        return make_core(
            buffer=spool,
            batch=BatchLimits(max_events=7, max_in_flight=3, linger_s=0.5),
            retry=RetryPolicy(base_s=0.1, cap_s=1.0),
            source_id=f"{self.generation:032x}",
        )

    @rule(n=st.integers(1, 12))
    def track(self, n: int) -> None:
        for _ in range(n):
            self.core.track("stock_order_submit", {"n": len(self.tracked)}, T0)
            self.tracked.add(f"{self.core.source_id}-{self.core.stats().tracked}")

    @rule(dt=st.floats(0.0, 2.0))
    def tick(self, dt: float) -> None:
        self.now += dt

    @rule()
    def flush(self) -> None:
        self.core.request_flush()

    @rule()
    def take(self) -> None:
        batch = self.core.next_batch(self.now, T0)
        if batch is not None:
            self.in_flight.append(batch)

    def _deliver(self, batch: Batch) -> None:
        got = ids(batch)
        self.raw += len(got)
        statuses = ["duplicate" if i in self.stored else "accepted" for i in got]
        self.stored.update(got)
        self.core.on_result(batch, answer(batch, *statuses), self.now, 0)

    @precondition(lambda self: self.in_flight)
    @rule(i=st.integers(0, 10), outcome=st.sampled_from(["ok", "network", "503", "lost_ack"]))
    def answer(self, i: int, outcome: str) -> None:
        batch = self.in_flight.pop(i % len(self.in_flight))
        if outcome == "ok":
            self._deliver(batch)
            return
        if outcome == "lost_ack":
            got = ids(batch)
            self.raw += len(got)
            self.stored.update(got)
        failure = Response(503, retry_after="1") if outcome == "503" else Response(None, error="reset")
        self.core.on_result(batch, failure, self.now, 0)

    @rule()
    def restart(self) -> None:
        # kill -9: in-flight requests vanish with the process, the spool stays.
        self.in_flight.clear()
        self.core._buffer.close()
        self.core = self._open()

    @invariant()
    def nothing_stored_that_was_not_tracked(self) -> None:
        assert self.stored <= self.tracked

    def teardown(self) -> None:
        try:
            for batch in self.in_flight:
                self._deliver(batch)
            self.in_flight.clear()
            self.core.request_flush()
            for _ in range(2_000):
                self.now += 2.0
                batch = self.core.next_batch(self.now, T0)
                if batch is None:
                    if self.core.idle():
                        break
                    continue
                self._deliver(batch)
            lost = self.tracked - self.stored
            assert not lost, f"lost {len(lost)} events"
            assert self.core.stats().dropped == {}
            self.core._buffer.close()
            # Reopening finds nothing left to send: every frame was settled.
            again = Spool(self.spool_config, QueueLimits())
            assert again.pending() == 0
            again.close()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


DeliveryMachine.TestCase.settings = settings(max_examples=500, stateful_step_count=30, deadline=None)
TestDelivery = DeliveryMachine.TestCase
