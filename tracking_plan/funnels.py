"""Funnels in the plan: the `funnels` section, and funnels derived from events' `x-funnel` annotations.

A plan declares named funnels (docs/plan-format.md, "Funnels")::

    "funnels": {
      "account_open": {
        "description": "The 12-step online account opening",
        "steps": [
          {"event": "account_open_start"},
          {"event": "account_open_mobile_verify_submit", "where": {"result": "passed"}},
          ...
        ],
        "window_days": 30,
        "identity": "person",
        "success": true
      }
    }

Promises:
- every step names a planned event; every `where` names a property that
  event may carry, with values its schema allows (an enum's members, a
  const); `identity` is `person` or a declared identity type. A broken
  funnel is a load error with a pointer to it, like any other.
- an event annotated `"x-funnel": {"name": N, "step": K}` whose funnel N is
  not declared contributes to a derived funnel N: its annotated events in
  step order, no conditions, the default window (7 days), `person`.
- `lint` (lint.py) warns when the annotations and a declared funnel disagree,
  and when annotated step numbers repeat or leave gaps.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Protocol

from .envelope import PRESET_SCHEMAS
from .model import EventSpec, Funnel, FunnelStep, IdentityType

__all__ = ["DEFAULT_WINDOW_DAYS", "annotated_funnels", "build_funnels"]

DEFAULT_WINDOW_DAYS: Final = 7
_DAY_S: Final = 86_400


class _Problems(Protocol):
    def add(self, message: str, pointer: str, code: str) -> None: ...


def annotated_funnels(document: Mapping[str, Any]) -> dict[str, list[tuple[int, str]]]:
    """(step, event) per funnel name, from the events' `x-funnel` annotations, in step order."""
    found: dict[str, list[tuple[int, str]]] = {}
    for name, spec in document.get("events", {}).items():
        note = spec.get("x-funnel") if isinstance(spec, Mapping) else None
        if isinstance(note, Mapping) and isinstance(note.get("name"), str) and isinstance(note.get("step"), int):
            found.setdefault(note["name"], []).append((note["step"], name))
    return {k: sorted(v) for k, v in found.items()}


def _allowed(schema: Mapping[str, Any], value: Any) -> bool:
    if "const" in schema:
        return bool(value == schema["const"])
    if "enum" in schema:
        return value in schema["enum"]
    kind = schema.get("type")
    checks = {
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
    }
    check = checks.get(kind) if isinstance(kind, str) else None
    return check is None or check(value)


def build_funnels(
    document: Mapping[str, Any],
    events: Mapping[str, EventSpec],
    identities: Mapping[str, IdentityType],
    common: Mapping[str, Any],
    problems: _Problems,
) -> dict[str, Funnel]:
    """The plan's funnels, declared and derived; every problem goes to `problems`."""
    out: dict[str, Funnel] = {}
    common_props: Mapping[str, Any] = common.get("properties", {})
    for name, spec in document.get("funnels", {}).items():
        where = f"/funnels/{name}"
        steps = []
        for i, step in enumerate(spec.get("steps", ())):
            at = f"{where}/steps/{i}"
            event = events.get(step["event"])
            if event is None:
                problems.add(f"funnel {name!r} step {i + 1}: event {step['event']!r} is not in the plan", at, "funnel")
                continue
            conditions = step.get("where", {})
            for prop, want in conditions.items():
                schema = event.properties.get(prop) or common_props.get(prop) or PRESET_SCHEMAS.get(prop)
                if schema is None:
                    problems.add(
                        f"funnel {name!r} step {i + 1}: {event.name} has no property {prop!r}",
                        f"{at}/where/{prop}",
                        "funnel",
                    )
                    continue
                values = want if isinstance(want, list) else [want]
                for value in values:
                    if not _allowed(schema, value):
                        problems.add(
                            f"funnel {name!r} step {i + 1}: {prop} can never be {value!r} on {event.name}",
                            f"{at}/where/{prop}",
                            "funnel",
                        )
            steps.append(FunnelStep(event.name, dict(conditions)))
        identity = spec.get("identity", "person")
        if identity != "person" and identity not in identities:
            problems.add(
                f"funnel {name!r}: identity {identity!r} is neither 'person' nor a declared identity type",
                f"{where}/identity",
                "funnel",
            )
        out[name] = Funnel(
            name,
            tuple(steps),
            window_s=int(float(spec.get("window_days", DEFAULT_WINDOW_DAYS)) * _DAY_S),
            identity=identity,
            description=spec.get("description", ""),
            success=bool(spec.get("success", True)),
        )
    for name, annotated in annotated_funnels(document).items():
        if name in out:
            continue
        steps = [FunnelStep(event) for _step, event in annotated if event in events]
        out[name] = Funnel(name, tuple(steps), window_s=DEFAULT_WINDOW_DAYS * _DAY_S)
    return out
