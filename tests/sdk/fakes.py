"""Helpers for driving `SdkCore` by hand: a config, a core, and answers a collector would give."""

from __future__ import annotations

import random
from typing import Any

import msgspec
import zstandard

from maidian.sdk._buffer import Buffer, MemoryBuffer
from maidian.sdk.config import BatchLimits, QueueLimits, RetryPolicy, resolve_config
from maidian.sdk.core import Batch, Callbacks, PlanChecks, Response, SdkCore

SOURCE = "0193a5b2c3d4e5f60718293a4b5c6d7e"


def make_core(
    *,
    batch: BatchLimits | None = None,
    queue: QueueLimits | None = None,
    retry: RetryPolicy | None = None,
    buffer: Buffer | None = None,
    checks: PlanChecks | None = None,
    callbacks: Callbacks | None = None,
    source_id: str = SOURCE,
    **config: Any,
) -> SdkCore:
    config.setdefault("write_key", "wk_test")
    cfg = resolve_config(
        "http://127.0.0.1:9",
        env={},
        batch=batch or BatchLimits(max_events=10, linger_s=1.0),
        queue=queue,
        retry=retry,
        has_plan=checks is not None,
        **config,
    )
    q = cfg.queue
    return SdkCore(
        cfg,
        buffer=buffer if buffer is not None else MemoryBuffer(q.max_events, q.overflow),
        source_id=source_id,
        anonymous_id="device-1",
        checks=checks,
        callbacks=callbacks,
        rng=random.Random(7),
        nonce=iter(f"{n:032x}" for n in range(1, 10**6)).__next__,
    )


def decode(batch: Batch) -> dict[str, Any]:
    """The batch as the collector reads it."""
    plain = zstandard.ZstdDecompressor().decompress(batch.body)
    out: dict[str, Any] = msgspec.msgpack.decode(plain)
    return out


def ids(batch: Batch) -> list[str]:
    return [e["event_id"] for e in decode(batch)["events"]]


def answer(batch: Batch, *statuses: str, reasons: list[Any] | None = None) -> Response:
    """A 200 with one result per event; `statuses` defaults to all accepted."""
    chosen = list(statuses) or ["accepted"] * len(batch)
    results = [{"status": s, **({"reasons": reasons or []} if s == "quarantined" else {})} for s in chosen]
    return Response(200, msgspec.json.encode({"results": results}))


def send_now(core: SdkCore, now: float = 0.0, wall_ms: int = 1_763_800_000_000) -> Batch | None:
    """The next batch without waiting for the linger (as `flush()` asks)."""
    core.request_flush()
    return core.next_batch(now, wall_ms)
