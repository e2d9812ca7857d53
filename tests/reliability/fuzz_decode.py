"""Fuzz targets for the collector's decode path (docs/reliability.md, T20), for atheris and for hypothesis.

Two targets, each a function of bytes that raises only on a finding:

- `body`: what `/v1/batch` does with a request body before anything is
  stored: the first byte picks the content coding (zstd, gzip, none) and the
  format (msgpack, JSON); the rest is the body. `decompress` then
  `decode_batch` may refuse it with a `RequestError` (the 4xx answers); any
  other exception is a finding.
- `judge`: a decoded batch all the way to the bytes that would be appended:
  `decode_batch`, `Judge.judge` against the mini plan, then the raw-log frame
  of the accepted events and the quarantine frame of the others, decoded back.
  Every event must come out in exactly one of the two frames, with its bytes
  unchanged: an event that could be answered `accepted` but not stored is a
  finding.

Run by atheris (`python -m tests.reliability.fuzz_decode <target> [libFuzzer
flags]`, which test_t20_generative.py does with `-max_total_time`, `-timeout=1`
and `-rss_limit_mb=256`), or called by hypothesis's byte strategies in the
same test module: the stand-in where atheris has no wheel.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import zstandard

try:
    import atheris
except ImportError:  # hypothesis drives the targets instead
    atheris = None

_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))


def _imports() -> tuple[Any, ...]:
    from maidian.collector.errors import RequestError
    from maidian.collector.pipeline import decode, judge
    from maidian.collector.pipeline.ingest import _quarantine_frame, build_accepted_frame
    from maidian.collector.pipeline.scan import scan_msgpack
    from maidian.collector.store import frames
    from maidian.collector.store.ids import id_ranges
    from maidian.tracking_plan import Validator, load_plan

    return (
        decode,
        frames,
        judge,
        id_ranges,
        RequestError,
        _quarantine_frame,
        build_accepted_frame,
        Validator,
        load_plan,
        scan_msgpack,
    )


if atheris is not None and __name__ == "__main__":
    with atheris.instrument_imports(include=["maidian"]):
        _MODULES = _imports()
else:
    _MODULES = _imports()

(
    decode,
    frames,
    judge_mod,
    id_ranges,
    RequestError,
    quarantine_frame,
    build_accepted_frame,
    Validator,
    load_plan,
    scan_msgpack,
) = _MODULES

_PLAN = load_plan(_ROOT / "tests" / "data" / "mini.plan.json")
_LIMITS = decode.Limits()
_JUDGE = judge_mod.Judge(_PLAN, Validator(_PLAN), _LIMITS, window_s=8 * 86400, future_tolerance_s=3600)
_CODINGS = ("zstd", "gzip", "identity")
_FORMATS = ("msgpack", "json")
_RECEIVED_MS = 1_763_800_000_000
_HEAD = {"rid": "fuzz", "at": _RECEIVED_MS, "src": "fuzz", "kind": "key", "trusted": False}


def body_target(data: bytes) -> None:
    if not data:
        return
    coding = _CODINGS[data[0] % 3]
    fmt = _FORMATS[(data[0] // 3) % 2]
    try:
        plain = decode.decompress(data[1:], coding, _LIMITS.max_decoded_bytes)
        decode.decode_batch(plain, fmt, _LIMITS)
    except RequestError:
        return


def judge_target(data: bytes) -> None:
    if not data:
        return
    fmt = _FORMATS[data[0] % 2]
    trusted = bool(data[0] & 2)
    try:
        batch = decode.decode_batch(data[1:], fmt, _LIMITS)
    except RequestError:
        return
    verdicts = _JUDGE.judge(batch, trusted=trusted, received_ms=_RECEIVED_MS)
    indexes = sorted([i for i, *_ in verdicts.valid] + [i for i, *_ in verdicts.invalid])
    assert indexes == list(range(len(batch.events))), "an event has no verdict, or two"
    # What Ingest.ingest stores: each id once (later copies are answered `duplicate`), JSON re-encoded.
    local: set[str] = set()
    accepted = []
    for _i, event, raw, t, flags in verdicts.valid:
        if event["event_id"] in local:
            continue
        local.add(event["event_id"])
        encoded = raw if fmt == "msgpack" else msgspec.Raw(msgspec.msgpack.encode(event))
        # One event, one meaning: the bytes stored decode to what was judged, with no key written twice.
        assert msgspec.msgpack.decode(encoded) == event, "a stored event decodes to something else"
        assert not scan_msgpack(bytes(encoded), 1 << 20, 64).duplicate_key, "a stored event repeats a key"
        accepted.append((event, encoded, t, flags))
    refused = []
    q_ids = []
    for _i, event, raw, t, reasons in verdicts.invalid:
        eid, _name = judge_mod.event_summary(event)
        if eid is not None:
            if eid in local:
                continue
            local.add(eid)
            q_ids.append(eid)
        refused.append((event, raw, t, judge_mod.reason_dicts(reasons)))
    if accepted:
        ranges, opaque = id_ranges([e["event_id"] for e, *_ in accepted])
        frame = build_accepted_frame(dict(_HEAD), accepted, ranges, opaque)
        back = _round_trip(frame, len(accepted))
        stored_ids = [e["event_id"] for e in back]
        assert stored_ids == [e["event_id"] for e, *_ in accepted], "an accepted event is not in its frame"
    if refused:
        frame = quarantine_frame(dict(_HEAD), refused, q_ids, fmt)
        back = _round_trip(frame, len(refused))
        assert back == [bytes(raw) for _e, raw, _t, _r in refused], "a quarantined event changed on its way"


def _round_trip(frame: bytes, count: int) -> list[Any]:
    found, _end = frames.scan_frames(frames.MAGIC + frame, "fuzz")
    assert len(found) == 1, "a frame the collector wrote does not read back"
    events = frames.decode_body(found[0]).events
    assert len(events) == count, "a frame lost events"
    return events


TARGETS: dict[str, Callable[[bytes], None]] = {"body": body_target, "judge": judge_target}


def seeds() -> dict[str, list[bytes]]:
    """Valid inputs for each target, so the fuzzer starts past the decoders' first checks."""
    now = _RECEIVED_MS
    events = [
        {
            "type": "track",
            "event": "stock_order_submit",
            "event_id": f"seed-{i}",
            "time": now - i,
            "identities": {"anonymous_id": "anon-seed", "login_id": "u1"},
            "properties": {"stock_code": "600519", "side": "buy", "price": 10.5, "quantity": 100},
        }
        for i in range(3)
    ]
    events.append({**events[0], "event_id": "seed-bad", "properties": {"side": "hold"}})
    batch = {"sent_at": now, "lib": "fuzz", "events": events, "dropped": {"source": "s", "counts": {"overflow": 2}}}
    packed = msgspec.msgpack.encode(batch)
    text = msgspec.json.encode(batch)
    import gzip

    body = [
        bytes([0]) + zstandard.ZstdCompressor().compress(packed),
        bytes([1]) + gzip.compress(packed),
        bytes([2]) + packed,
        bytes([5]) + text,
        bytes([3]) + zstandard.ZstdCompressor(write_content_size=False).compress(text),
    ]
    judged = [bytes([0]) + packed, bytes([1]) + text, bytes([2]) + packed]
    return {"body": body, "judge": judged}


def main() -> None:
    assert atheris is not None, "atheris is not installed"
    target = TARGETS[sys.argv[1]]
    started = time.monotonic()
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()
    print(f"fuzzed for {time.monotonic() - started:.1f} s")  # not reached: libFuzzer exits


if __name__ == "__main__":
    main()
