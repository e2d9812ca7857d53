"""T18, PII and log hygiene: canaries planted everywhere, every error path forced, then grepped for.

Canaries: a mobile number, an ID card number, a bank account number, a real
name, and a write key. Two parts:

1. Against a real `maidian serve` process: every error path the collector has
   (401 unknown key, the key in the URL, 403 revoked, 400 undecodable zstd,
   gzip and JSON, 400 not-a-batch, 413 too many events and over the wire cap,
   415, 429, 401 bad signatures and replays, per-event quarantine for every
   kind of plan violation, the debug endpoint) with the canaries in the event
   fields, the headers and the URL. Then: 0 canaries in the collector's log
   (its stdout and stderr), in every error body, in every quarantine reason as
   answered and as indexed (`quarantine_records`).
2. The SDK with the plan and a PII key, through the fault proxy capturing every
   request (heads, bodies and decompressed bodies): 0 raw canaries of tagged
   fields on the wire (`mask` and `hash` are transformed before send) and 0
   bytes of `drop`-tagged fields (the plan's equivalent of JR/T 0171-2020 C3:
   never transmitted). The untagged canary *is* on the wire: the capture sees
   plain values, so its silence about the tagged ones means something.

Already proven elsewhere: validator messages never carry values
(tests/tracking_plan/test_validator.py), the SDK transforms tags for both shells
(tests/sdk/test_parity.py), the identity store keeps no canary after forget
(tests/collector/test_identity_store.py).
"""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from maidian.collector.read import quarantine_records
from maidian.sdk import Client
from maidian.tracking_plan import signing
from tests.conftest import MINI_PLAN
from tests.reliability.constants import KEY, SECRET, SOURCE
from tests.reliability.figures import Figures
from tests.reliability.probe import Reply, post
from tests.reliability.procs import CollectorProcess, KeySpec, batch_body, key_headers, write_config
from tests.reliability.proxy import FaultProxy

MOBILE = "13912345678"
ID_CARD = "11010119900307001X"
ACCOUNT = "6222020200112233445"
REAL_NAME = "CanaryZhangSan"
CANARY_KEY = "mk_CANARY_7c1d9e3a5b"
REVOKED_KEY = "mk_battery_revoked_0001"
LIMITED_KEY = "mk_battery_limited_0001"
CANARIES = (MOBILE, ID_CARD, ACCOUNT, REAL_NAME, CANARY_KEY)


def _order(eid: str, **props: Any) -> dict[str, Any]:
    properties = {"stock_code": "600519", "side": "buy", "price": 1688.5, "quantity": 100, **props}
    return {
        "type": "track",
        "event": "stock_order_submit",
        "event_id": eid,
        "time": int(time.time() * 1000),
        "identities": {"anonymous_id": "anon-t18"},
        "properties": properties,
    }


def _violations(n: int) -> list[dict[str, Any]]:
    """One event per kind of violation, each carrying canaries."""
    return [
        _order(f"q{n}-1", side=MOBILE),  # enum
        _order(f"q{n}-2", stock_code=ID_CARD),  # pattern
        _order(f"q{n}-3", quantity=ACCOUNT),  # type
        _order(f"q{n}-4", mobile=MOBILE),  # a masked field sent raw
        _order(f"q{n}-5", id_card=ID_CARD),  # a dropped field sent at all
        _order(f"q{n}-6", utm_source=ACCOUNT * 10),  # maxLength
        _order(f"q{n}-7", note=REAL_NAME, utm_source=MOBILE),  # an unknown property
        _order(f"q{n}-8", tags=[[[[[[[[[[MOBILE]]]]]]]]]]),  # nesting limit
        _order(f"q{n}-9", utm_source="x" * (40 << 10) + MOBILE),  # event over its size limit
        {**_order(f"q{n}-10"), "identities": {"anonymous_id": "anon", "mobile_hash": MOBILE}},  # hash field raw
        {**_order(f"q{n}-11"), "time": "at " + MOBILE},  # envelope type
        {**_order(f"q{n}-12"), "type": "profile_set", "properties": {"real_name": REAL_NAME}},  # mask, profile
    ]


def _signed(body: bytes, *, ts: int | None = None, nonce: str = "n-1", path: str = "/v1/batch") -> dict[str, str]:
    stamp = int(time.time()) if ts is None else ts
    sig = signing.sign(SECRET.encode(), timestamp=stamp, nonce=nonce, method="POST", path=path, body=body)
    return {
        "Content-Type": "application/msgpack",
        "Content-Encoding": "zstd",
        "X-Maidian-Source": SOURCE,
        "X-Maidian-Timestamp": str(stamp),
        "X-Maidian-Nonce": nonce,
        "X-Maidian-Signature": sig,
    }


def _error_paths(url: str) -> list[tuple[str, Reply]]:
    """Send a request down each error path; (name, reply)."""
    canary_body = batch_body([_order("c-1", utm_source=MOBILE, mobile=MOBILE)])
    json_headers = {**key_headers(), "Content-Type": "application/json", "Content-Encoding": "identity"}
    out: list[tuple[str, Reply]] = []

    def send(name: str, body: bytes, headers: dict[str, str], path: str = "/v1/batch") -> None:
        out.append((name, post(url, path, body, headers)))

    send("unknown key (a canary)", canary_body, key_headers(CANARY_KEY))
    send("key in the URL", canary_body, key_headers(), f"/v1/batch?write_key={CANARY_KEY}")
    send(
        "key in the URL, no header",
        canary_body,
        {**key_headers(), "X-Maidian-Write-Key": ""},
        f"/v1/batch?api_key={MOBILE}",
    )
    send("revoked key", canary_body, key_headers(REVOKED_KEY))
    send("undecodable zstd", b"\x28\xb5\x2f\xfd" + MOBILE.encode() * 10, key_headers())
    send("undecodable gzip", b"\x1f\x8b" + ID_CARD.encode() * 10, {**key_headers(), "Content-Encoding": "gzip"})
    send(
        "truncated gzip",
        gzip.compress(msgspec.msgpack.encode({"events": [MOBILE]}))[:-6],
        {**key_headers(), "Content-Encoding": "gzip"},
    )
    send("malformed JSON", f'{{"events": [{{"side": "{MOBILE}"'.encode(), json_headers)
    send("JSON with a bad token", f'{{"events": [{MOBILE}x]}}'.encode(), json_headers)
    send("not a batch (events a string)", json.dumps({"events": MOBILE}).encode(), json_headers)
    send("not a batch (sent_at a string)", json.dumps({"sent_at": ACCOUNT, "events": []}).encode(), json_headers)
    send("not a batch (a list)", json.dumps([MOBILE, ID_CARD]).encode(), json_headers)
    send("too many events", batch_body([_order(f"m-{i}", mobile=MOBILE) for i in range(2001)]), key_headers())
    send("over the wire cap", (MOBILE * 100_000).encode()[: (1 << 20) + 1], {**json_headers})
    send("unsupported media type", canary_body, {**key_headers(), "Content-Type": "text/plain"})
    send("unsupported encoding", canary_body, {**key_headers(), "Content-Encoding": "br"})
    send("a chain of encodings", canary_body, {**key_headers(), "Content-Encoding": "gzip, zstd"})
    for n in range(3):
        send(
            f"over the quota ({n})",
            batch_body([_order(f"r{n}-{i}", mobile=MOBILE) for i in range(20)]),
            key_headers(LIMITED_KEY),
        )
    signed = batch_body([{**_order("s-1"), "event": "stock_order_filled", "properties": {"stock_code": ID_CARD}}])
    tampered = batch_body([{**_order("s-2"), "event": "stock_order_filled", "properties": {"stock_code": MOBILE}}])
    send("signed, tampered body", tampered, _signed(signed, nonce="n-tamper"))
    send("signed, wrong path", signed, _signed(signed, nonce="n-path", path="/v1/debug"))
    send("signed, 301 s old", signed, _signed(signed, ts=int(time.time()) - 301, nonce="n-old"))
    send("signed, ok (then replayed)", signed, _signed(signed, nonce="n-replay"))
    send("signed, replayed", signed, _signed(signed, nonce="n-replay"))
    send("quarantine: every violation", batch_body(_violations(1)), key_headers())
    send("quarantine: the same again", batch_body(_violations(1)), key_headers())
    send("debug endpoint", batch_body(_violations(2)), key_headers(), "/v1/debug")
    send("json quarantine", json.dumps({"sent_at": 1, "events": _violations(3)}).encode(), json_headers)
    return out


def test_no_canary_in_logs_errors_or_reasons(
    tmp_path: Path, figures: Figures, collectors: Callable[..., CollectorProcess]
) -> None:
    config = write_config(
        tmp_path / "collector.toml",
        tmp_path / "data",
        keys=(
            KeySpec("current", KEY),
            KeySpec("revoked", REVOKED_KEY, revoked=True),
            KeySpec("limited", LIMITED_KEY, rate_events_per_s=10, burst_events=20),
        ),
    )
    collector = collectors(config)
    replies = _error_paths(collector.url)
    statuses = {name: r.status for name, r in replies}
    error_bodies = [(name, r.body) for name, r in replies if r.status != 200]
    reasons = []
    quarantined = 0
    for name, r in replies:
        if r.status == 200:
            for result in json.loads(r.body)["results"]:
                if result["status"] == "quarantined":
                    quarantined += 1
                    reasons.append((name, json.dumps(result["reasons"], ensure_ascii=False)))
    assert collector.stop() == 0  # every log line is written
    log = collector.log_text(whole=True)
    indexed = json.dumps(quarantine_records(tmp_path / "data"), ensure_ascii=False)
    hits = [
        f"{where}: {canary}"
        for canary in CANARIES
        for where, text in [
            ("log", log),
            ("quarantine index", indexed),
            *((f"error body of {n}", b.decode("utf-8", "replace")) for n, b in error_bodies),
            *((f"reasons of {n}", t) for n, t in reasons),
        ]
        if canary in text
    ]
    figures.inputs += len(replies)
    figures.status_5xx += sum(1 for s in statuses.values() if s >= 500)
    figures.note(
        f"{len(replies)} error-path requests ({len(set(statuses.values()))} statuses: "
        f"{sorted(set(statuses.values()))}), {quarantined} quarantined events, "
        f"{len(log.splitlines())} log lines: {len(hits)} canary hits"
    )
    assert figures.status_5xx == 0, statuses
    expected = {"unknown key (a canary)": 401, "key in the URL": 401, "revoked key": 403, "undecodable zstd": 400}
    assert {k: statuses[k] for k in expected} == expected
    assert statuses["signed, replayed"] == 401
    assert statuses["over the quota (2)"] == 429
    assert quarantined >= 3 * 12 - 2, quarantined  # every violation, three times (the repeat answers again)
    assert "quarantine" in log or log, "the collector's log is empty: nothing was grepped"
    assert not hits, hits


def test_tagged_fields_never_leave_the_device_raw(
    figures: Figures, collectors: Callable[..., CollectorProcess], proxy: FaultProxy
) -> None:
    collector = collectors()
    proxy.capture = True
    proxy.set_upstream(collector.url)
    errors: list[str] = []
    if True:
        client = Client(
            proxy.url, write_key=KEY, plan=str(MINI_PLAN), pii_key="battery-pii-key", on_error=errors.append
        )
        try:
            for i in range(50):
                client.track(
                    "stock_order_submit",
                    {
                        "stock_code": "600519",
                        "side": "buy",
                        "price": 10.5,
                        "quantity": 100,
                        "mobile": MOBILE,
                        "id_card": ID_CARD,
                        "utm_source": ACCOUNT if i == 0 else "ad",
                    },
                )
            client.bind("mobile_hash", MOBILE)
            client.profile_set({"real_name": REAL_NAME, "risk_level": "C3"})
            # Invalid (side is an enum, untagged): sent as it is, for the collector to quarantine.
            client.track("stock_order_submit", {"side": ACCOUNT, "mobile": MOBILE, "id_card": ID_CARD})
            assert client.flush(30)
        finally:
            client.close(10)
        wire = b"\n".join(proxy.captured)
        posts = sum(1 for ex in proxy.snapshot() if ex.path.startswith("/v1/batch"))
    tagged = {"mobile (mask)": MOBILE, "id_card (drop)": ID_CARD, "real_name (mask)": REAL_NAME}
    on_wire = {name: wire.count(c.encode()) for name, c in tagged.items()}
    dropped_field_bytes = wire.count(b"id_card")
    figures.inputs += 53
    figures.note(
        f"{posts} requests captured ({len(wire):,} B with decompressed bodies): raw tagged canaries {on_wire}, "
        f"bytes of the dropped field {dropped_field_bytes}; untagged canary seen {wire.count(ACCOUNT.encode())}x"
    )
    assert wire.count(ACCOUNT.encode()) >= 1, "the capture does not see plain values: it proves nothing"
    assert on_wire == dict.fromkeys(tagged, 0)
    assert dropped_field_bytes == 0
    assert not any(c in e for e in errors for c in CANARIES), errors
