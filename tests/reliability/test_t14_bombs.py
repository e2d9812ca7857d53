"""T14, decompression bombs and size caps against a real `maidian serve` process.

tests/collector/test_limits.py already proves, in-process, that each bomb is
answered 413 and that decompression is capped. This module adds what only a
separate process shows, with docs/reliability.md's numbers: every hostile body is
refused (413, or 400 for a chain of codings) within 200 ms, the collector's
peak RSS (VmHWM) grows by at most 64 MiB over the whole run, its event loop
never stalls for more than 100 ms (`/healthz` asked every 20 ms meanwhile,
probe.py), no answer is a 5xx, and the process is alive and storing
afterwards.

The bombs: zstd 16 KiB -> 512 MiB with and without a declared content size,
64 zstd frames of 8 MiB, gzip ~520 KB -> 512 MiB and ~2 MB -> 2 GiB (members
of 64 MiB zeros: `_gunzip` inflates a multi-member body as one capped
stream), `Content-Encoding: gzip, zstd`, an identity body of the wire cap + 1
byte, and a chunked body over the cap. Each is sent `ROUNDS` times.
"""

from __future__ import annotations

import gzip
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from functools import cache

import msgspec
import zstandard

from maidian.tracking_plan.envelope import Limits
from tests.collector.test_limits import zstd_bomb
from tests.reliability.figures import Figures
from tests.reliability.load import order_event
from tests.reliability.probe import LoopProbe, Reply, percentile, post
from tests.reliability.procs import CollectorProcess, batch_body, key_headers

MiB = 1 << 20
ROUNDS = 3
REFUSE_WITHIN_S = 0.200
RSS_GROWTH_KIB = 64 * 1024
LOOP_LAG_S = 0.100
WIRE_CAP = Limits().max_body_bytes


@cache
def _gzip_member_64mib() -> bytes:
    obj = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(MiB)
    return b"".join([*(obj.compress(zeros) for _ in range(64)), obj.flush()])


def _chunks_over_cap() -> Iterator[bytes]:
    for _ in range(WIRE_CAP // (64 << 10) + 2):
        yield bytes(64 << 10)


def _headers(encoding: str) -> dict[str, str]:
    return {**key_headers(), "Content-Encoding": encoding}


def bombs() -> dict[str, tuple[bytes | Callable[[], Iterator[bytes]], str, frozenset[int]]]:
    """name -> (body or a maker of chunks, Content-Encoding, the statuses that are right)."""
    too_large = frozenset({413})
    return {
        "zstd 16 KiB -> 512 MiB": (zstd_bomb(512 * MiB), "zstd", too_large),
        "zstd 512 MiB, no content size": (zstd_bomb(512 * MiB, content_size=False), "zstd", too_large),
        "zstd 64 frames x 8 MiB": (zstd_bomb(512 * MiB, frames=64), "zstd", too_large),
        "gzip ~520 KB -> 512 MiB": (_gzip_member_64mib() * 8, "gzip", too_large),
        "gzip ~2 MB -> 2 GiB": (_gzip_member_64mib() * 32, "gzip", too_large),
        "Content-Encoding: gzip, zstd": (gzip.compress(batch_body([])), "gzip, zstd", frozenset({400})),
        "identity body, cap + 1 byte": (bytes(WIRE_CAP + 1), "identity", too_large),
        "chunked body over the cap": (_chunks_over_cap, "identity", too_large),
    }


def test_bombs_and_size_caps(figures: Figures, collectors: Callable[..., CollectorProcess]) -> None:
    collector = collectors()
    good = batch_body([order_event("t14", 1, 0, "anon-t14")])
    assert post(collector.url, "/v1/batch", good, key_headers()).status == 200  # warm: the first request's costs
    hwm_before = collector.status_kib("VmHWM")
    replies: dict[str, list[Reply]] = {}
    wrong: list[str] = []
    with LoopProbe(collector.url) as probe:
        for name, (body, encoding, right) in bombs().items():
            for _ in range(ROUNDS):
                data = body if isinstance(body, bytes) else body()
                reply = post(collector.url, "/v1/batch", data, _headers(encoding))
                replies.setdefault(name, []).append(reply)
                if reply.status not in right:
                    wrong.append(f"{name}: {reply.status} {reply.body[:200]!r}")
    hwm_growth = collector.status_kib("VmHWM") - hwm_before
    after = post(collector.url, "/v1/batch", batch_body([order_event("t14", 2, 0, "anon-t14")]), key_headers())
    all_replies = [r for rs in replies.values() for r in rs]
    slowest = {name: max(r.seconds for r in rs) for name, rs in replies.items()}
    figures.inputs += len(all_replies)
    figures.status_5xx += sum(1 for r in all_replies if r.status >= 500)
    figures.note(
        f"{len(replies)} bombs x {ROUNDS}: slowest refusal {max(slowest.values()) * 1000:.0f} ms "
        f"(p50 {percentile([r.seconds for r in all_replies], 50) * 1000:.0f} ms); collector VmHWM "
        f"+{hwm_growth / 1024:.1f} MiB; loop lag max {probe.max_s * 1000:.0f} ms over {len(probe.latencies_s)} probes"
    )
    assert not wrong, wrong
    assert figures.status_5xx == 0
    assert all(s <= REFUSE_WITHIN_S for s in slowest.values()), {k: round(v * 1000) for k, v in slowest.items()}
    assert hwm_growth <= RSS_GROWTH_KIB
    assert probe.failures == 0
    assert probe.max_s <= LOOP_LAG_S, f"the event loop stalled {probe.max_s * 1000:.0f} ms"
    assert collector.alive()
    assert after.status == 200, after


# -- decode amplification (issue 14, item 2) ---------------------------------------------------------------

DECODED_CAP = Limits().max_decoded_bytes
_enc = msgspec.msgpack.encode


def _mp_map(pairs: list[tuple[bytes, bytes]]) -> bytes:
    return b"\xde" + struct.pack(">H", len(pairs)) + b"".join(k + v for k, v in pairs)


def _mp_array(items: int, item: bytes) -> bytes:
    return b"\xdd" + struct.pack(">I", items) + item * items


def _event_with(eid: str, properties: bytes) -> bytes:
    good = order_event("t14", 0, int(time.time() * 1000), "anon-t14")
    return _mp_map(
        [
            (_enc("type"), _enc("track")),
            (_enc("event"), _enc("stock_order_submit")),
            (_enc("event_id"), _enc(eid)),
            (_enc("time"), _enc(good["time"])),
            (_enc("identities"), _enc(good["identities"])),
            (_enc("properties"), properties),
        ]
    )


def _good(eid: str) -> bytes:
    return _enc(order_event("t14", 0, int(time.time() * 1000), "anon-t14") | {"event_id": eid})


def _batch(events: list[bytes], **fields: bytes) -> bytes:
    pairs = [
        (_enc("sent_at"), _enc(int(time.time() * 1000))),
        (_enc("events"), b"\xdd" + struct.pack(">I", len(events)) + b"".join(events)),
    ]
    pairs += [(_enc(k), v) for k, v in fields.items()]
    return _mp_map(pairs)


def amplification_bombs(eid: Callable[[], str]) -> dict[str, tuple[bytes, str, frozenset[int]]]:
    """name -> (zstd body, Content-Type, the statuses that are right): each at most 16 MiB decoded."""
    cctx = zstandard.ZstdCompressor(level=19)
    fill = DECODED_CAP - 64
    per_event = Limits().max_event_bytes - 200
    many = fill // (per_event + 100)
    json_arrays = b'{"sent_at": 1, "events": [' + b"[]," * (fill // 3 - 20) + b"[]]}"
    bodies: dict[str, tuple[bytes, str, frozenset[int]]] = {
        "16M empty arrays as events": (
            _mp_map([(_enc("events"), _mp_array(fill - 16, b"\x90"))]),
            "application/msgpack",
            frozenset({413}),
        ),
        "16M empty arrays in `dropped`": (
            _batch([_good(eid())], dropped=_mp_array(fill - 200, b"\x90")),
            "application/msgpack",
            frozenset({200}),
        ),
        "16M empty arrays in an unknown batch field": (
            _batch([_good(eid())], junk=_mp_array(fill - 200, b"\x90")),
            "application/msgpack",
            frozenset({200}),
        ),
        "one 16 MiB event of empty arrays": (
            _batch([_good(eid()), _event_with(eid(), _mp_map([(_enc("side"), _mp_array(fill - 400, b"\x90"))]))]),
            "application/msgpack",
            frozenset({200}),
        ),
        f"{many} events of 32 KiB empty arrays": (
            _batch([_event_with(eid(), _mp_map([(_enc("side"), _mp_array(per_event, b"\x90"))])) for _ in range(many)]),
            "application/msgpack",
            frozenset({413}),
        ),
        f"{many} events of 32 KiB empty maps": (
            _batch([_event_with(eid(), _mp_map([(_enc("side"), _mp_array(per_event, b"\x80"))])) for _ in range(many)]),
            "application/msgpack",
            frozenset({413}),
        ),
        f"{many} events of 32 KiB small negative integers": (
            _batch([_event_with(eid(), _mp_map([(_enc("side"), _mp_array(per_event, b"\xf0"))])) for _ in range(many)]),
            "application/msgpack",
            frozenset({413}),
        ),
        "JSON: 5M empty arrays as events": (json_arrays, "application/json", frozenset({413})),
    }
    return {name: (cctx.compress(body), ctype, right) for name, (body, ctype, right) in bodies.items()}


def loop_cpu_s(pid: int) -> float:
    """CPU seconds of a process's main thread (its event loop), in nanoseconds' resolution (schedstat)."""
    with open(f"/proc/{pid}/task/{pid}/schedstat") as f:
        return int(f.read().split()[0]) / 1e9


def test_decode_amplification(figures: Figures, collectors: Callable[..., CollectorProcess]) -> None:
    """Bodies of at most 16 MiB decoded that a whole-batch decode turned into gigabytes of Python and seconds of loop.

    Memory: the collector's VmHWM over the whole run. The loop: the CPU time
    of its event loop's thread per request (schedstat), which is how long the
    request held the loop whatever else runs on the host; `/healthz` asked
    every 20 ms meanwhile gives the wall-clock lag beside it (a loaded host
    stretches that, so it is bounded only against hangs).
    """
    collector = collectors()
    counter = iter(range(1, 1 << 30))
    bodies = amplification_bombs(lambda: f"t14a-{next(counter)}")
    good = batch_body([order_event("t14a", 0, 0, "anon-t14")])
    assert post(collector.url, "/v1/batch", good, key_headers()).status == 200
    hwm_before = collector.status_kib("VmHWM")
    wrong: list[str] = []
    replies: dict[str, list[Reply]] = {}
    loop_s: dict[str, float] = {}
    with LoopProbe(collector.url) as probe:
        for name, (body, ctype, right) in bodies.items():
            for _ in range(ROUNDS):
                before = loop_cpu_s(collector.pid)
                reply = post(collector.url, "/v1/batch", body, {**_headers("zstd"), "Content-Type": ctype})
                loop_s[name] = max(loop_s.get(name, 0.0), loop_cpu_s(collector.pid) - before)
                replies.setdefault(name, []).append(reply)
                if reply.status not in right:
                    wrong.append(f"{name}: {reply.status} {reply.body[:200]!r}")
    hwm_growth = collector.status_kib("VmHWM") - hwm_before
    all_replies = [r for rs in replies.values() for r in rs]
    worst = max(loop_s, key=loop_s.__getitem__)
    figures.inputs += len(all_replies)
    figures.status_5xx += sum(1 for r in all_replies if r.status >= 500)
    figures.note(
        f"{len(bodies)} amplification bodies (<= 16 MiB decoded, zstd {min(len(b) for b, _c, _r in bodies.values())}-"
        f"{max(len(b) for b, _c, _r in bodies.values())} bytes) x {ROUNDS}: collector VmHWM +{hwm_growth / 1024:.1f} "
        f"MiB; event loop CPU per request max {loop_s[worst] * 1000:.0f} ms ({worst}); /healthz lag max "
        f"{probe.max_s * 1000:.0f} ms over {len(probe.latencies_s)} probes"
    )
    assert not wrong, wrong
    assert figures.status_5xx == 0
    assert hwm_growth <= RSS_GROWTH_KIB
    assert probe.failures == 0
    assert loop_s[worst] <= LOOP_LAG_S, f"{worst} held the event loop {loop_s[worst] * 1000:.0f} ms"
    assert probe.max_s <= 2.0, f"the event loop stalled {probe.max_s * 1000:.0f} ms"
    assert collector.alive()
