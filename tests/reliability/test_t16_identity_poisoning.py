"""T16, identity poisoning, end to end through a real `maidian serve` process.

tests/collector/test_identity_t16.py proves the rules on the identity graph
itself (first binding holds, 500 devices per login, junk ids refused, a
hijack refused, every refusal recorded, messages free of values). This module
sends the same attack through HTTP to a collector process and checks what
only the whole pipeline shows:

- every attacking event is stored (0 lost: the identity refusals never cost
  an event), or quarantined at the door with its reason when the envelope
  itself refuses the id;
- the collector's refusal counters (`maidian_identity_refusals_total`) are
  exact: 4,999 `anonymous_already_bound` for one device identifying as 5,000
  logins, 9,500 `device_cap` for one login with 10,000 devices, and every junk
  id refused;
- identity lookups (`person_of`) on the resulting graph of more than 15,000
  bindings: p99 <= 10 ms.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Callable
from typing import Any

from maidian.collector.identity.graph import IdentityGraph
from tests.reliability.figures import Figures
from tests.reliability.ledger import Ledger
from tests.reliability.probe import percentile, post
from tests.reliability.procs import CollectorProcess, batch_body, http_get, key_headers
from tests.reliability.store import read_store

HOUR_MS = 3_600_000
LOGINS = 5_000
DEVICES = 10_000
DEVICE_CAP = 500
JUNK = ("null", "undefined", "0", "NULL", "Undefined", "none", "-1", "00000000-0000-0000-0000-000000000000")
LOOKUP_P99_S = 0.010
_RULE = re.compile(r'^maidian_identity_refusals_total\{rule="([a-z_]+)"\} (\d+)$', re.MULTILINE)


def _login(eid: str, t: int, identities: dict[str, str]) -> dict[str, Any]:
    return {
        "type": "track",
        "event": "account_login",
        "event_id": eid,
        "time": t,
        "identities": identities,
        "properties": {"method": "sms"},
    }


def _refusals(url: str) -> dict[str, int]:
    status, body = http_get(url + "/metrics")
    assert status == 200
    return {rule: int(n) for rule, n in _RULE.findall(body.decode())}


def test_identity_poisoning_end_to_end(figures: Figures, collectors: Callable[..., CollectorProcess]) -> None:
    collector = collectors()
    rng = random.Random(16)
    now = int(time.time() * 1000) - HOUR_MS
    events: list[dict[str, Any]] = []
    for i, t in enumerate(rng.sample(range(HOUR_MS), LOGINS)):
        events.append(_login(f"t16-a-{i}", now + t, {"anonymous_id": "poisoned-device", "login_id": f"attacker-{i}"}))
    for i, t in enumerate(rng.sample(range(HOUR_MS), DEVICES)):
        events.append(_login(f"t16-b-{i}", now + t, {"anonymous_id": f"device-{i:05d}", "login_id": "shared-login"}))
    junk = [
        _login(f"t16-j-{n}-{i}", now, {"anonymous_id": f"junk-holder-{n}-{i}", kind: value})
        for n, kind in enumerate(("login_id", "customer_no"))
        for i, value in enumerate(JUNK)
    ]
    events += junk
    rng.shuffle(events)
    ledger = Ledger()
    ledger.track(e["event_id"] for e in events)
    quarantined: dict[str, int] = {}
    status_5xx = 0
    for start in range(0, len(events), 500):
        chunk = events[start : start + 500]
        reply = post(collector.url, "/v1/batch", batch_body(chunk), key_headers(), timeout_s=60)
        status_5xx += reply.status >= 500
        assert reply.status == 200, reply
        for event, result in zip(chunk, json.loads(reply.body)["results"], strict=True):
            if result["status"] in ("accepted", "duplicate"):
                ledger.ack([event["event_id"]])
            else:
                rule = result["reasons"][0]["rule"]
                quarantined[rule] = quarantined.get(rule, 0) + 1
                ledger.quarantine_expected.add(event["event_id"])
    expected = {"anonymous_already_bound": LOGINS - 1, "device_cap": DEVICES - DEVICE_CAP}
    junk_at_door = len(junk) - sum(1 for e in junk if e["event_id"] in ledger.acked)
    deadline = time.monotonic() + 120
    while True:
        refusals = _refusals(collector.url)
        counted = {k: refusals.get(k, 0) for k in expected}
        if counted == expected and refusals.get("junk_id", 0) + junk_at_door >= len(junk):
            break
        assert time.monotonic() < deadline, f"the identity feed did not catch up: {refusals}"
        time.sleep(0.2)
    assert collector.stop() == 0
    data_dir = collector.config.parent / "data"
    stored = read_store(data_dir)
    check = ledger.check(stored)
    figures.add_check(check)
    figures.inputs += len(events)
    figures.status_5xx += status_5xx
    with IdentityGraph(data_dir / "identity.sqlite") as graph:
        shared = graph.person_of("login_id", "shared-login")
        assert shared is not None
        devices = graph.identities_of(shared)["anonymous_id"]
        poisoned = graph.person_of("anonymous_id", "poisoned-device")
        logins_of_poisoned = graph.identities_of(poisoned)["login_id"] if poisoned is not None else set()
        probes = [("anonymous_id", f"device-{rng.randrange(DEVICES):05d}") for _ in range(5_000)]
        probes += [("login_id", f"attacker-{rng.randrange(LOGINS)}") for _ in range(5_000)]
        seconds = []
        for kind, value in probes:
            started = time.perf_counter()
            graph.person_of(kind, value)
            seconds.append(time.perf_counter() - started)
    p99 = percentile(seconds, 99)
    figures.note(
        f"{len(events):,} events: refusals {refusals}, quarantined at the door {quarantined}; "
        f"{len(devices)} devices on the shared login; the poisoned device holds {len(logins_of_poisoned)} login; "
        f"person_of p99 {p99 * 1000:.3f} ms over {len(probes):,} lookups"
    )
    assert status_5xx == 0
    check.assert_clean()  # every event stored, or quarantined at the door with its reason
    assert refusals.get("junk_id", 0) + junk_at_door == len(junk), (refusals, quarantined)
    assert {k: refusals.get(k, 0) for k in expected} == expected
    assert len(devices) == DEVICE_CAP
    assert len(logins_of_poisoned) == 1
    assert p99 <= LOOKUP_P99_S
