"""What deriving the User-Agent's presets costs: a new User-Agent, a cached one, and per event of a request.

`ua-parser` with its Rust matcher (the `regex` extra, what the collector
installs) against its pure-Python matcher, on real User-Agents made distinct
by a suffix (a cache miss each), then the collector's cached path
(`user_agent_properties`) and `Deriver.apply` on a request of 50 mapped
events. Microseconds, the median of ROUNDS.

    .venv/bin/python benchmarks/ua_derive.py [--json]
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable

from maidian.collector.vendors.common import Mapped, MappedRecord, wire_event
from maidian.collector.vendors.derive import Deriver, user_agent_properties

AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/142.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 "
    "MicroMessenger/8.0.50(0x1800322d) NetType/WIFI Language/zh_CN",
    "Mozilla/5.0 (Linux; Android 14; V2309A Build/UP1A.231005.007; wv) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Version/4.0 Chrome/116.0.0.0 Mobile Safari/537.36",
)
ROUNDS = 5


def per_call_us(fn: Callable[[int], object], n: int) -> float:
    runs = []
    for r in range(ROUNDS):
        start = time.perf_counter()
        for i in range(n):
            fn(r * n + i)
        runs.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(runs)


def main() -> int:
    from ua_parser import Parser, basic, load_builtins, regex

    rules = load_builtins()
    rust, python = Parser(regex.Resolver(rules)), Parser(basic.Resolver(rules))
    events = tuple(
        wire_event("track", "stock_quote_view", event_id=f"e{i}", time_ms=0, identities={}, properties={})
        for i in range(50)
    )
    mapped = Mapped((MappedRecord(0, events, None),))
    deriver = Deriver()
    headers = {"User-Agent": AGENTS[2]}
    rows = {
        "new User-Agent, Rust matcher (us)": per_call_us(lambda i: rust.parse(f"{AGENTS[i % 3]} {i}"), 200),
        "new User-Agent, Python re (us)": per_call_us(lambda i: python.parse(f"{AGENTS[i % 3]} {i}"), 10),
        "cached User-Agent (us)": per_call_us(lambda i: user_agent_properties(AGENTS[i % 3]), 20000),
        "a request of 50 events, per event (us)": per_call_us(
            lambda _i: deriver.apply(mapped, peer="203.0.113.9", headers=headers, switches=None), 2000
        )
        / 50,
    }
    if "--json" in sys.argv:
        print(json.dumps({k: round(v, 2) for k, v in rows.items()}))
    else:
        for name, value in rows.items():
            print(f"{name:<42} {value:10.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
