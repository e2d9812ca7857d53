"""Generate large, realistic tracking plans and matching events for benchmarks.

`generate_plan(3000)` makes a plan shaped like a bank's: business lines with
prefixes, about ten properties per event drawn from shared definitions (codes,
amounts, enums, flags), a few required, some PII-tagged. `events_for(plan, n)`
makes valid wire events spread uniformly over the plan's event types.
"""

from __future__ import annotations

import random
from typing import Any

LINES = ["stock", "forex", "p2p", "fund", "account", "bank", "news", "push", "copy", "margin", "bond", "futures"]
ACTIONS = [
    "view",
    "click",
    "submit",
    "confirm",
    "cancel",
    "success",
    "fail",
    "open",
    "close",
    "share",
    "search",
    "select",
]
OBJECTS = [
    "order",
    "page",
    "banner",
    "product",
    "card",
    "coupon",
    "quote",
    "chart",
    "position",
    "transfer",
    "report",
    "form",
]


def _property(rng: random.Random, i: int) -> tuple[str, dict[str, Any], Any]:
    kind = rng.choice(["code", "amount", "count", "enum", "flag", "text"])
    if kind == "code":
        return f"code_{i}", {"type": "string", "pattern": "^[0-9]{6}$"}, "600519"
    if kind == "amount":
        return f"amount_{i}", {"type": "number", "minimum": 0, "maximum": 1e12}, 1688.5
    if kind == "count":
        return f"count_{i}", {"type": "integer", "minimum": 0, "maximum": 1000000}, 100
    if kind == "enum":
        return f"choice_{i}", {"type": "string", "enum": ["a", "b", "c", "d", "e"]}, "c"
    if kind == "flag":
        return f"flag_{i}", {"type": "boolean"}, True
    return f"text_{i}", {"type": "string", "maxLength": 64}, "贵州茅台"


def generate_plan(
    n_events: int, seed: int = 7, props_per_event: int = 10
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """A plan document with `n_events` events, and one valid properties dict per event."""
    rng = random.Random(seed)
    events: dict[str, Any] = {}
    samples: dict[str, dict[str, Any]] = {}
    i = 0
    while len(events) < n_events:
        name = f"{rng.choice(LINES)}_{rng.choice(OBJECTS)}_{rng.choice(ACTIONS)}_{i}"
        i += 1
        props: dict[str, Any] = {}
        sample: dict[str, Any] = {}
        for j in range(props_per_event):
            pname, schema, value = _property(rng, j)
            props[pname] = schema
            sample[pname] = value
        events[name] = {
            "description": f"Generated event {name}.",
            "owner": "bench",
            "trigger": "client",
            "properties": {"type": "object", "properties": props, "required": sorted(props)[:3]},
        }
        samples[name] = sample
    doc = {
        "maidian_plan": 1,
        "name": f"Generated {n_events}",
        "version": "1.0.0",
        "business_lines": {line: {"description": line, "owner": "bench"} for line in LINES},
        "common_properties": {
            "type": "object",
            "properties": {"utm_source": {"type": "string"}, "utm_campaign": {"type": "string"}},
        },
        "events": events,
    }
    return doc, samples


def events_for(samples: dict[str, dict[str, Any]], n: int, seed: int = 11) -> list[dict[str, Any]]:
    """`n` valid wire events spread uniformly over the sampled event types."""
    rng = random.Random(seed)
    names = sorted(samples)
    t0 = 1_763_800_000_000
    source = "0193a5b2c3d4e5f60718293a4b5c6d7e"
    out = []
    for k in range(n):
        name = rng.choice(names)
        props = dict(samples[name])
        props["$lib"] = "maidian-python"
        props["$lib_version"] = "0.1.0"
        out.append(
            {
                "type": "track",
                "event": name,
                "event_id": f"{source}-{k + 1}",
                "time": t0 + k,
                "identities": {"anonymous_id": f"dev-{k % 1000}", "login_id": f"u{k % 700}"},
                "properties": props,
            }
        )
    return out
