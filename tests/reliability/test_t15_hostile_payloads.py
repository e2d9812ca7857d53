"""T15, the hostile payload corpus against a real `maidian serve` process.

tests/collector/test_limits.py checks a sample of these in-process (one of
each kind). Here the whole corpus docs/reliability.md lists goes to a separate
collector process, with its numbers: every ext code from -128 to 127, NaN and
both infinities, uint64 max, int64 min and min - 1, a 5,000-digit integer,
invalid UTF-8, lone surrogates, NUL, non-string and duplicate keys, 10,000-deep
arrays, map and array headers claiming a million entries, and the hostile
names (`__proto__`, `$set`, `a.b`, SQL, 101 characters, bidi controls) as
property names, event names and identity types. msgpack and JSON both.

Every request carries one good event next to the hostile one. Checked: every
answer is a 4xx or a 200 that quarantines the hostile event (0 x 5xx, the
process alive); each good event that was acknowledged is stored, and the
quarantine holds exactly as many events as were answered `quarantined`
(nothing accepted-but-not-stored, nothing silently dropped); p99 handling time
<= 50 ms; the collector's VmHWM +<= 64 MiB.

A map with a duplicate key (msgpack or JSON) is quarantined with the rule
`duplicate_key`, whatever its values: readers would disagree on which value
the event holds.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import zstandard

from maidian.collector.read import export_events, quarantine_records
from maidian.collector.store.frames import decode_body, read_frames, segment_files
from tests.reliability.figures import Figures
from tests.reliability.load import order_event
from tests.reliability.probe import percentile, post
from tests.reliability.procs import CollectorProcess, key_headers
from tests.reliability.store import read_store

P99_S = 0.050
RSS_GROWTH_KIB = 64 * 1024
HOSTILE_NAMES = ("__proto__", "$set", "a.b", "x'; DROP TABLE events;--", "a" * 101, "side\u202e", "")
DUPLICATE_KEYS = "duplicate keys"
_cctx = zstandard.ZstdCompressor(level=1)
_enc = msgspec.msgpack.encode


def _map(entries: list[bytes], count: int | None = None) -> bytes:
    """A msgpack map of already-encoded key/value pairs (`count` may lie)."""
    n = len(entries) // 2 if count is None else count
    head = bytes([0x80 | n]) if n < 16 else b"\xde" + struct.pack(">H", n)
    return head + b"".join(entries)


def _event_parts(eid: str, event: str = "stock_order_submit") -> dict[str, bytes]:
    good = order_event("t15", 0, int(time.time() * 1000), "anon-t15")
    return {
        "type": _enc("track"),
        "event": _enc(event),
        "event_id": _enc(eid),
        "time": _enc(good["time"]),
        "identities": _enc(good["identities"]),
        "properties": _enc(good["properties"]),
    }


def _event(parts: dict[str, bytes]) -> bytes:
    return _map([x for k, v in parts.items() for x in (_enc(k), v)])


def _with_property(eid: str, key: bytes, value: bytes) -> bytes:
    parts = _event_parts(eid)
    props = msgspec.msgpack.decode(parts["properties"])
    parts["properties"] = _map([x for k, v in props.items() for x in (_enc(k), _enc(v))] + [key, value])
    return _event(parts)


def msgpack_corpus(eid: Callable[[], str]) -> Iterator[tuple[str, bytes]]:
    """(name, one hostile event as raw msgpack)."""
    for code in range(-128, 128):
        yield f"ext code {code}", _with_property(eid(), _enc("side"), b"\xd4" + struct.pack(">b", code) + b"\x01")
    values = {
        "NaN": b"\xcb" + struct.pack(">d", float("nan")),
        "+Inf": b"\xcb" + struct.pack(">d", float("inf")),
        "-Inf": b"\xcb" + struct.pack(">d", float("-inf")),
        "float32 NaN": b"\xca" + struct.pack(">f", float("nan")),
        "uint64 max": b"\xcf" + b"\xff" * 8,
        "int64 min": b"\xd3\x80" + b"\x00" * 7,
        "invalid UTF-8": b"\xa2\xff\xfe",
        "lone surrogate (CESU bytes)": b"\xa3\xed\xa0\x80",
        "NUL in a string": _enc("bu\x00y"),
        "10,000-deep arrays": b"\x91" * 10_000 + b"\xc0",
        "10,000-deep maps": (b"\x81\xa1k") * 10_000 + b"\xc0",
        "array header claiming 10^6": b"\xdd" + struct.pack(">I", 1_000_000),
        "map header claiming 10^6": b"\xdf" + struct.pack(">I", 1_000_000),
        "bin 8": b"\xc4\x03abc",
        "truncated str 32": b"\xdb\xff\xff\xff\xff",
        "never-used byte 0xc1": b"\xc1",
    }
    for name, value in values.items():
        key = "quantity" if "int" in name else "price" if "Inf" in name or "NaN" in name else "side"
        yield f"value {name}", _with_property(eid(), _enc(key), value)
    for name, key in {
        "integer key": b"\x01",
        "nil key": b"\xc0",
        "array key": b"\x91\x01",
        "bin key": b"\xc4\x01k",
        "float key": b"\xcb" + struct.pack(">d", 1.5),
    }.items():
        yield name, _with_property(eid(), key, _enc("x"))
    parts = _event_parts(eid())
    parts["properties"] = _map([_enc("side"), _enc("buy"), _enc("side"), _enc("sell")], 2)
    yield DUPLICATE_KEYS + " (properties, valid values)", _event(parts)
    parts = _event_parts(eid())
    parts["properties"] = _map([_enc("price"), _enc(1.0), _enc("price"), _enc("NaN-as-text")], 2)
    yield DUPLICATE_KEYS + " (properties, invalid last value)", _event(parts)
    for name in HOSTILE_NAMES:
        yield f"property name {name[:24]!r}", _with_property(eid(), _enc(name), _enc(1))
        yield f"event name {name[:24]!r}", _event(_event_parts(eid(), event=name))
        parts = _event_parts(eid())
        parts["identities"] = _enc({"anonymous_id": "anon-t15", name: "x"})
        yield f"identity type {name[:24]!r}", _event(parts)
    parts = _event_parts(eid())
    parts["event_id"] = _enc(1)
    yield "integer event id", _event(parts)
    parts = _event_parts(eid())
    parts["event_id"] = b"\xa2\xff\xfe"
    yield "invalid UTF-8 event id", _event(parts)


def json_corpus(eid: Callable[[], str]) -> Iterator[tuple[str, str]]:
    """(name, one hostile event as JSON text)."""

    def event(**props: str) -> str:
        good = order_event("t15", 0, int(time.time() * 1000), "anon-t15")
        good["event_id"] = eid()
        text = json.dumps(good)
        for key, raw in props.items():
            text = text.replace(f'"{key}": ' + json.dumps(good["properties"][key]), f'"{key}": {raw}', 1)
        return text

    yield "5,000-digit integer", event(quantity="9" * 5000)
    yield "int64 min - 1", event(quantity=str(-(2**63) - 1))
    yield "uint64 max + 1", event(quantity=str(2**64))
    yield "exponent 1e999", event(price="1e999")
    yield "NaN literal", event(price="NaN")
    yield "Infinity literal", event(price="Infinity")
    yield "-Infinity literal", event(price="-Infinity")
    yield "lone high surrogate", event(side='"\\ud800"')
    yield "lone low surrogate", event(side='"\\udfff"')
    yield "NUL escape", event(side='"bu\\u0000y"')
    yield "10,000-deep arrays", event(side="[" * 10_000 + "]" * 10_000)
    yield "10,000-deep objects", event(side='{"a":' * 10_000 + "1" + "}" * 10_000)
    yield DUPLICATE_KEYS + " (properties)", event(side='"buy", "side": "sell"')
    for name in HOSTILE_NAMES:
        yield f"json property name {name[:24]!r}", event(side=f'"buy", {json.dumps(name)}: 1')


def _bodies(eid: Callable[[], str]) -> Iterator[tuple[str, bytes, dict[str, str], str]]:
    """(name, body, headers, the good event's id) for every case."""
    for name, hostile in msgpack_corpus(eid):
        good = eid()
        event = _enc(order_event("t15", 0, int(time.time() * 1000), "anon-t15") | {"event_id": good})
        batch = _map([_enc("sent_at"), _enc(int(time.time() * 1000)), _enc("events"), b"\x92" + event + hostile])
        yield name, _cctx.compress(batch), key_headers(), good
    for name, hostile_text in json_corpus(eid):
        good = eid()
        event = json.dumps(order_event("t15", 0, int(time.time() * 1000), "anon-t15") | {"event_id": good})
        text = f'{{"sent_at": {int(time.time() * 1000)}, "events": [{event}, {hostile_text}]}}'
        headers = {**key_headers(), "Content-Type": "application/json", "Content-Encoding": "identity"}
        yield name, text.encode("utf-8", "surrogatepass"), headers, good
    # Invalid UTF-8 in the raw JSON text itself.
    good = eid()
    event = json.dumps(order_event("t15", 0, int(time.time() * 1000), "anon-t15") | {"event_id": good})
    raw = f'{{"sent_at": 1, "events": [{event}, {{"event": "'.encode() + b"\xff\xfe" + b'"}]}'
    yield "raw invalid UTF-8 in JSON", raw, {**key_headers(), "Content-Type": "application/json"}, good


def quarantine_count(data_dir: Path) -> int:
    return sum(
        len(decode_body(frame).events)
        for path in segment_files(data_dir / "quarantine")
        for frame in read_frames(path)[0]
    )


def test_hostile_payload_corpus(figures: Figures, collectors: Callable[..., CollectorProcess]) -> None:
    collector = collectors()
    data_dir = collector.config.parent / "data"
    counter = iter(range(1, 1 << 30))

    def eid() -> str:
        return f"t15-{next(counter)}"

    bodies = list(_bodies(eid))
    hwm_before = collector.status_kib("VmHWM")
    seconds: list[float] = []
    wrong: list[str] = []
    acked_good: set[str] = set()
    quarantined = 0
    refused = 0
    status_5xx = 0
    for name, body, headers, good in bodies:
        reply = post(collector.url, "/v1/batch", body, headers)
        seconds.append(reply.seconds)
        if reply.status >= 500 or reply.status == 0:
            status_5xx += reply.status >= 500
            wrong.append(f"{name}: {reply.status} {reply.body[:300]!r}")
            continue
        if reply.status != 200:
            refused += 1
            if not 400 <= reply.status < 500:
                wrong.append(f"{name}: {reply.status}")
            continue
        results = json.loads(reply.body)["results"]
        if results[0]["status"] in ("accepted", "duplicate"):
            acked_good.add(good)
        else:
            wrong.append(f"{name}: the good event was {results[0]}")
        status = results[1]["status"]
        rules = {r["rule"] for r in results[1].get("reasons", ())}
        if status == "quarantined" and (not name.startswith(DUPLICATE_KEYS) or "duplicate_key" in rules):
            quarantined += 1
        else:
            wrong.append(f"{name}: the hostile event was {results[1]}")
    hwm_growth = collector.status_kib("VmHWM") - hwm_before
    alive = collector.alive()
    stored = read_store(data_dir)
    in_quarantine = quarantine_count(data_dir)
    # The collector's own readers read every quarantined event back (undecodable ones as base64).
    exported = sum(1 for e in export_events(data_dir, quarantined=True) if e.get("quarantined"))
    indexed = len(quarantine_records(data_dir))
    p99 = percentile(seconds, 99)
    figures.inputs += len(bodies)
    figures.acknowledged += len(acked_good)
    figures.stored += len(stored.ids)
    figures.lost += len(acked_good - stored.ids)
    figures.status_5xx += status_5xx
    figures.note(
        f"{len(bodies)} hostile batches: {quarantined} quarantined per event (duplicate keys included), "
        f"{refused} refused 4xx, 0 accepted; p99 {p99 * 1000:.1f} ms, "
        f"max {max(seconds) * 1000:.0f} ms; VmHWM +{hwm_growth / 1024:.1f} MiB; "
        f"quarantine holds {in_quarantine} events"
    )
    assert not wrong, wrong[:20]
    assert status_5xx == 0
    assert alive
    assert acked_good <= stored.ids, "acknowledged but not stored"
    assert in_quarantine == quarantined, "quarantined answers and the quarantine log disagree"
    assert exported == indexed == quarantined, (exported, indexed, quarantined)
    assert p99 <= P99_S
    assert hwm_growth <= RSS_GROWTH_KIB
