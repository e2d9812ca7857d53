"""False positives of the unplanned-PII detector (tracking_plan/pii_detect.py), and its cost per value.

    .venv/bin/python benchmarks/pii_detect.py

Corpora:
- every string value (properties and identities) of examples/events.jsonl and
  examples/events_invalid.jsonl, minus the values the plan tags as PII (what a
  detector may flag there is a false positive unless it is personal data);
- generated ordinary values, 20,000 of each kind: order and request ids with
  dates, prices and quantities, epoch-millisecond timestamps, 6-digit stock
  codes, UUIDs, 32-hex SDK source ids, 64-hex hashes, and the hard cases:
  random 11-digit numbers starting 1, random 18-digit numbers, random
  16-digit numbers (1 in 10 passes Luhn by chance);
- generated true positives for the detection rate: valid mobile numbers,
  resident ID numbers with their check digit, Luhn-valid card numbers, e-mail.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from maidian.tracking_plan.pii_detect import detect

ROOT = Path(__file__).resolve().parent.parent
N = 20_000


def _strings(node: object) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return []


def _examples() -> list[str]:
    out = []
    for name in ("events.jsonl", "events_invalid.jsonl"):
        for line in (ROOT / "examples" / name).read_text().splitlines():
            event = json.loads(line)
            out += _strings(event.get("properties")) + _strings(event.get("identities"))
    return out


def _luhn_digit(body: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(body)):
        n = int(ch)
        if i % 2 == 0:
            n *= 2
            if n > 9:
                n -= 9
        total += n
    return str((10 - total % 10) % 10)


def _resident_id(rng: random.Random) -> str:
    body = f"{rng.randint(110000, 659000)}{rng.randint(1950, 2005)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
    body += f"{rng.randint(0, 999):03d}"
    weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    return body + "10X98765432"[sum(int(d) * w for d, w in zip(body, weights, strict=True)) % 11]


def main() -> None:
    rng = random.Random(7)
    ordinary: dict[str, Callable[[], str]] = {
        "order ids": lambda: f"ORD-{rng.randint(20240101, 20261231)}-{rng.randint(0, 999999):06d}",
        "prices and quantities": lambda: f"{rng.uniform(0, 5000):.2f}",
        "epoch ms": lambda: str(rng.randint(1_600_000_000_000, 1_800_000_000_000)),
        "stock codes": lambda: f"{rng.randint(0, 999999):06d}",
        "uuids": lambda: str(uuid.UUID(int=rng.getrandbits(128))),
        "sdk source ids": lambda: f"{rng.getrandbits(128):032x}",
        "64-hex hashes": lambda: f"{rng.getrandbits(256):064x}",
        "random 11 digits from 1": lambda: f"1{rng.randint(0, 10**10 - 1):010d}",
        "random 18 digits": lambda: f"{rng.randint(10**17, 10**18 - 1)}",
        "random 16 digits": lambda: f"{rng.randint(10**15, 10**16 - 1)}",
    }
    positives: dict[str, Callable[[], str]] = {
        "mobile": lambda: f"1{rng.choice('3456789')}{rng.randint(0, 10**9 - 1):09d}",
        "resident_id": lambda: _resident_id(rng),
        "bank_card": lambda: (b := f"62{rng.randint(0, 10**13 - 1):013d}") + _luhn_digit(b),
        "email": lambda: f"user{rng.randint(0, 99999)}@example{rng.randint(0, 99)}.com",
    }
    rows = []
    examples = _examples()
    flagged = [v for v in examples if detect(v)]
    rows.append(("example events (all string values)", len(examples), len(flagged)))
    for name, make in ordinary.items():
        values = [make() for _ in range(N)]
        rows.append((name, N, sum(1 for v in values if detect(v))))
    print("| corpus | values | flagged | rate |")
    print("|---|---|---|---|")
    for name, n, hits in rows:
        print(f"| {name} | {n:,} | {hits:,} | {hits / max(1, n):.2%} |")
    print()
    print("| kind | generated | detected as that kind |")
    print("|---|---|---|")
    for kind, make in positives.items():
        values = [make() for _ in range(N)]
        print(f"| {kind} | {N:,} | {sum(1 for v in values if any(k == kind for k, _t in detect(v))) / N:.2%} |")
    sample = [make() for make in ordinary.values() for _ in range(2_000)]
    started = time.perf_counter()
    for v in sample:
        detect(v)
    per_value = (time.perf_counter() - started) / len(sample) * 1e6
    print(f"\ncost: {per_value:.2f} µs per ordinary value (detect, one process)")
    if flagged:
        print("\nflagged in the examples:", sorted(set(flagged))[:10])


if __name__ == "__main__":
    main()
