"""Validate events against a tracking plan, fast for valid events and precise for invalid ones.

`Validator(plan)` compiles the plan once (jsonschema-rs). For plans of up to
500 event types, one JSON Schema per planned event covers the whole envelope
(type, name, id, time, identities, properties with the presets and common
properties merged in): a valid event costs one dict lookup and one native call,
about 1.5-2 µs. Larger plans check a track event through one envelope schema
shared by every type and a table of property checks, each compiled once per
distinct property schema (`_PropertyTable`): about 5 µs across 3,000 types,
where one compiled schema per type costs 11 µs in cache misses
(`benchmarks/validation.py`); the plain `jsonschema` package takes 75-130 µs.
Profile and identity operations have one compiled schema per type.

Only when the fast check says "invalid" are the detailed `Violation`s built,
from the event's whole schema as the plan writes it.

Two stages:
- `wire` (the collector, and the default): PII-tagged fields must arrive
  transformed (hashed, masked, or absent when tagged `drop`).
- `source` (the SDK, before it applies the PII tags): the plan's own schemas.

Messages never quote the offending value, only its type or size, so a phone
number sent in the wrong field cannot leak into quarantine reasons or logs.
`validate` never raises, whatever it is given.
"""

from __future__ import annotations

import enum
import json
import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

import jsonschema_rs

from ._jsonpos import join_pointer
from .envelope import (
    DEFAULT_LIMITS,
    EVENT_TYPES,
    PRESET_SCHEMAS,
    PROPERTY_NAME_RE,
    Limits,
)
from .model import Plan
from .pii import HASH_PATTERN

__all__ = [
    "PRESETS_SCHEMA",
    "Stage",
    "Validator",
    "Violation",
    "build_schemas",
    "integral_bounds",
    "json_type",
    "reference_schema",
    "with_presets",
]

Stage = Literal["wire", "source"]
Schema = dict[str, Any]

# The mask form: empty, or at least one star (pii.mask_value).
_MASK_FORM: Final = "^$|[*]"


@dataclass(frozen=True, slots=True)
class Violation:
    """One way an event breaks the plan.

    `rule` is a stable id (`unknown_event`, `missing_identity`, `unknown_identity`,
    `invalid_identity`, `type`, `required`, `enum`, `range`, `length`, `pattern`,
    `format`, `additional_property`, `property_name`, `pii`, `envelope`);
    `path` a JSON pointer into the event; `expected` what the plan wants;
    `actual` the JSON type (and size) of what came, never the value itself.
    """

    rule: str
    path: str
    message: str
    expected: Any = None
    actual: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rule": self.rule, "path": self.path, "message": self.message}
        if self.expected is not None:
            out["expected"] = self.expected
        if self.actual is not None:
            out["actual"] = self.actual
        return out

    def __str__(self) -> str:
        return f"{self.path or '/'}: {self.message} [{self.rule}]"


def json_type(value: object) -> str:
    """The JSON type name of a decoded value ('integer', 'string', ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number" if math.isfinite(value) else "non-finite number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _describe(value: object) -> str:
    kind = json_type(value)
    if isinstance(value, (str, list, tuple, dict)):
        return f"{kind} of length {len(value)}"
    return kind


# -- building the compiled schemas ---------------------------------------------


def _types_of(schema: Mapping[str, Any]) -> list[str]:
    t = schema.get("type")
    if t is None:
        return []
    return [t] if isinstance(t, str) else list(t)


def _wire_property(schema: Mapping[str, Any]) -> Schema | bool:
    """The schema a PII-tagged property must satisfy once transformed."""
    tag = schema.get("x-pii")
    if tag is None and "properties" not in schema and "items" not in schema:
        return schema  # type: ignore[return-value]  # shared, never mutated
    if tag == "drop":
        return False
    nullable = ["null"] if "null" in _types_of(schema) else []
    if tag == "hash":
        return {"type": ["string", *nullable], "pattern": HASH_PATTERN, "x-pii": "hash"}
    if tag == "mask":
        return {"type": ["string", *nullable], "pattern": _MASK_FORM, "x-pii": "mask"}
    out = dict(schema)
    if "properties" in schema:
        out["properties"] = {k: _wire_property(v) for k, v in schema["properties"].items()}
        out["required"] = [
            r for r in schema.get("required", ()) if schema["properties"].get(r, {}).get("x-pii") != "drop"
        ]
    if isinstance(schema.get("items"), Mapping):
        out["items"] = _wire_property(schema["items"])
    return out


class _Builder:
    def __init__(self, plan: Plan, stage: Stage, limits: Limits) -> None:
        self.plan = plan
        self.stage = stage
        self.limits = limits
        self.property_names: Schema = {
            "maxLength": limits.max_name_length,
            "anyOf": [{"enum": sorted(PRESET_SCHEMAS)}, {"pattern": PROPERTY_NAME_RE.pattern}],
        }
        self._identities = {n: self._identities_schema(n) for n in (1, 2)}
        # Presets as `true` (checked once by PRESETS_SCHEMA), then the common properties.
        self._base_props: dict[str, Any] = dict.fromkeys(PRESET_SCHEMAS, True)
        for name, sub in plan.common_properties.get("properties", {}).items():
            self._base_props[name] = self.prop(sub)

    def prop(self, schema: Mapping[str, Any]) -> Schema | bool:
        return _wire_property(schema) if self.stage == "wire" else schema  # type: ignore[return-value]

    def identities(self, minimum: int) -> Schema:
        return self._identities[minimum]

    def _identities_schema(self, minimum: int) -> Schema:
        props: dict[str, Any] = {}
        for name, ident in self.plan.identities.items():
            s: Schema = {
                "type": "string",
                "minLength": 1,
                "maxLength": min(ident.max_length or 255, self.limits.max_identity_length),
            }
            if self.stage == "wire" and ident.pii == "hash":
                s["pattern"] = HASH_PATTERN
            elif self.stage == "wire" and ident.pii == "mask":
                s["pattern"] = _MASK_FORM
            elif ident.pattern:
                s["pattern"] = ident.pattern
            props[name] = s
        return {"type": "object", "minProperties": minimum, "properties": props, "additionalProperties": False}

    def envelope(self, type_: str, properties: Schema, *, event: str | None = None, min_identities: int = 1) -> Schema:
        fields: dict[str, Any] = {
            "type": {"const": type_},
            "event_id": {"type": "string", "minLength": 1, "maxLength": self.limits.max_event_id_length},
            "time": {"type": "integer", "minimum": 0, "maximum": 253_402_300_799_999},
            "identities": self.identities(min_identities),
            "properties": properties,
        }
        required = ["type", "event_id", "time", "identities", "properties"]
        if event is not None:
            fields["event"] = {"const": event}
            required.insert(1, "event")
        return {"type": "object", "required": required, "properties": fields, "additionalProperties": False}

    def merged_properties(self, own: Mapping[str, Any] | None) -> Schema:
        """An event's properties: its own, the common ones, and the presets.

        Presets appear as `true` (allowed, checked by the one shared presets
        schema) unless the plan redeclares them; compiling their schemas into
        each of thousands of events costs a third of the compile time and memory.
        """
        common = self.plan.common_properties
        own = own or {"properties": {}}
        props = dict(self._base_props)
        for name, s in own.get("properties", {}).items():
            props[name] = self.prop(s)
        required = sorted(
            r for r in {*common.get("required", ()), *own.get("required", ())} if props.get(r) is not False
        )
        additional = own.get("additionalProperties", self.plan.settings.additional_properties)
        out: Schema = {"type": "object", "properties": props, "additionalProperties": bool(additional)}
        if required:
            out["required"] = required
        if additional:
            out["propertyNames"] = self.property_names
        return out

    def user_properties(self, keep: str | None = None) -> Schema:
        """Profile properties: all optional; `keep` narrows to numeric or array ones."""
        users = self.plan.user_properties
        props: dict[str, Any] = {}
        for name, s in users.get("properties", {}).items():
            types = _types_of(s)
            if keep == "number" and not {"integer", "number"} & set(types):
                continue
            if keep == "array" and "array" not in types:
                continue
            if keep == "number":
                props[name] = {"type": "number"}
            elif keep == "unset":
                props[name] = {"const": True}
            else:
                props[name] = self.prop(s)
        additional = users.get("additionalProperties", self.plan.settings.additional_properties)
        out: Schema = {"type": "object", "properties": props, "minProperties": 1}
        if additional:
            out["propertyNames"] = self.property_names
            out["additionalProperties"] = {
                "number": {"type": "number"},
                "array": {"type": "array"},
                "unset": {"const": True},
            }.get(keep or "", True)
        else:
            out["additionalProperties"] = False
        return out

    def operations(self) -> dict[str, Schema]:
        presets_only: Schema = {"type": "object", "properties": dict(PRESET_SCHEMAS), "additionalProperties": False}
        return {
            "profile_set": self.envelope("profile_set", self.user_properties()),
            "profile_set_once": self.envelope("profile_set_once", self.user_properties()),
            "profile_increment": self.envelope("profile_increment", self.user_properties("number")),
            "profile_append": self.envelope("profile_append", self.user_properties("array")),
            "profile_unset": self.envelope("profile_unset", self.user_properties("unset")),
            "profile_delete": self.envelope("profile_delete", presets_only),
            "bind": self.envelope("bind", presets_only, min_identities=2),
            "unbind": self.envelope("unbind", presets_only, min_identities=2),
        }

    def unknown_event(self) -> Schema:
        """Any track event, for plans that accept unplanned events: names must still follow the rules."""
        props = self.merged_properties({"properties": {}, "additionalProperties": True})
        schema = self.envelope("track", props)
        schema["properties"]["event"] = {"type": "string", "minLength": 1, "maxLength": self.limits.max_name_length}
        schema["required"].insert(1, "event")
        return schema


# Checked on the properties of every track event, beside the event's own schema.
PRESETS_SCHEMA: Final[Schema] = {"type": "object", "properties": PRESET_SCHEMAS}


def build_schemas(
    plan: Plan, stage: Stage = "wire", limits: Limits = DEFAULT_LIMITS
) -> tuple[dict[str, Schema], dict[str, Schema], Schema]:
    """The envelope schemas the validator compiles: (per track event, per operation, unknown track event).

    A track event is valid when it satisfies its envelope schema and its
    properties satisfy `PRESETS_SCHEMA`; `reference_schema` joins the two.
    """
    b = _Builder(plan, stage, limits)
    track = {
        name: b.envelope("track", b.merged_properties(spec.schema), event=name) for name, spec in plan.events.items()
    }
    return track, b.operations(), b.unknown_event()


def _as_is(schema: Schema) -> Schema:
    return schema


_BOUNDS: Final = frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"})
# Keywords whose values are instances, not schemas: left exactly as written.
_INSTANCE_KEYWORDS: Final = frozenset({"const", "enum", "default", "examples"})
# Integers up to 2**53 convert to and from floats exactly.
_EXACT_FLOAT_INT: Final = 2**53


def integral_bounds(schema: Any) -> Any:
    """The schema with whole-number float bounds (`"maximum": 1e12`) written as integers.

    The same schema for every instance (a bound is a number, whichever way it
    is written, and every bound changed is an integer below 2**53, which a
    float holds exactly), but jsonschema-rs checks an integer bound about six
    times faster than a float one (0.1 µs against 0.6 µs per value, measured).
    Nodes on the way are copied only where something changes; an unchanged
    schema is returned as it is.
    """
    if isinstance(schema, list):
        items = [integral_bounds(v) for v in schema]
        return items if any(a is not b for a, b in zip(items, schema, strict=True)) else schema
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] | None = None
    for key, value in schema.items():
        if key in _INSTANCE_KEYWORDS:
            continue
        if key in _BOUNDS and type(value) is float and value.is_integer() and abs(value) <= _EXACT_FLOAT_INT:
            new: Any = int(value)
        elif isinstance(value, (dict, list)):
            new = integral_bounds(value)
            if new is value:
                continue
        else:
            continue
        if out is None:
            out = dict(schema)
        out[key] = new
    return schema if out is None else out


def reference_schema(envelope: Schema) -> Schema:
    """One schema equivalent to a track envelope schema plus the shared presets check."""
    return {"allOf": [envelope, {"properties": {"properties": PRESETS_SCHEMA}}]}


# The `regex` crate's engine: linear time, and 6-11% less time per event across a
# 3,000-event plan here than the default engine, which supports look-around and
# backreferences as well; a schema with such a pattern is compiled with the default.
_LINEAR_PATTERNS: Final = jsonschema_rs.RegexOptions()


def _compile(schema: Schema) -> jsonschema_rs.Validator:
    try:
        return jsonschema_rs.validator_for(schema, validate_formats=True, pattern_options=_LINEAR_PATTERNS)
    except ValueError:
        return jsonschema_rs.validator_for(schema, validate_formats=True)


# Plans with at most this many events get the preset schemas compiled into each
# event's schema, so a valid event costs one native call instead of two (0.5 µs
# less per event). Folding costs about 0.09 ms of compile time per event. Larger
# plans check track events through `_PropertyTable`: past a few hundred types
# the compiled schemas (about 37 KB each) outgrow the processor's caches, and
# cache misses, not checks, become the cost (docs/decisions.md, "Validation:
# large plans check properties through a table").
FOLD_PRESETS_MAX_EVENTS: Final = 500


def with_presets(envelope: Schema) -> Schema:
    """A track envelope schema with the shared presets check folded into its properties.

    Equivalent to `reference_schema(envelope)`: every preset name the
    envelope's properties list (they all list every preset, as `true` unless
    the plan redeclares it) must also satisfy the preset's own schema. Nodes on
    the way are copied; the envelope itself is not changed.
    """
    props_schema = envelope["properties"]["properties"]
    listed = props_schema["properties"]
    folded = dict(listed)
    for name, preset in PRESET_SCHEMAS.items():
        if name not in listed:
            continue
        own = listed[name]
        folded[name] = preset if own is True else {"allOf": [own, preset]}
    fields = dict(envelope["properties"], properties=dict(props_schema, properties=folded))
    return dict(envelope, properties=fields)


# -- large plans: a shared envelope and a table of property checks -------------

# The keywords `_Builder.merged_properties` writes at an event's properties; a
# schema with any other is compiled whole instead (`_PropertyTable.untabled`).
_TABLE_KEYWORDS: Final = frozenset({"type", "properties", "additionalProperties", "required", "propertyNames"})

# (checks by property name, required names, the check for an undeclared name or None when none is allowed)
_Row = tuple[dict[str, Callable[[Any], bool]], frozenset[str], Callable[[Any], bool] | None]


class _PropertyTable:
    """Track events of a large plan, checked as one shared envelope plus one table row per event type.

    Equivalent to the event's compiled envelope schema together with the shared
    presets schema: `envelope` is every type's envelope with the name any
    string and the properties any object whose keys are strings (the same key
    handling as the full schema: `str` and `StrEnum` keys pass, other keys
    make jsonschema-rs raise, which is "invalid"); a row holds, for each
    declared property, one compiled check of its schema (a redeclared preset's
    joined with the built-in one; the presets the plan leaves alone are checked
    through `presets`, shared by every row), compiled once per distinct schema,
    so a plan's thousands of `stock_code`s share one. Values are checked by the same
    engine with the same subschemas, so verdicts cannot drift from the whole
    schema's (tests/tracking_plan/test_validator_layouts.py compares them).
    """

    def __init__(self, track: Mapping[str, Schema]) -> None:
        self._compiled: dict[str, Callable[[Any], bool]] = {}
        self._by_identity: dict[int, tuple[Any, Callable[[Any], bool]]] = {}
        self.rows: dict[str, _Row] = {}
        self.untabled: dict[str, Schema] = {}
        for name, schema in track.items():
            row = self._row(schema["properties"]["properties"])
            if row is None:
                self.untabled[name] = schema
            else:
                self.rows[name] = row
        # Presets the plan does not redeclare (`true` in every event's schema), left out of the rows:
        # looked up here when a row has no check for a name (the name rule always admits them).
        self.presets = {sys.intern(key): self._check(schema) for key, schema in PRESET_SCHEMAS.items()}
        fields = next(iter(track.values()))["properties"]
        shared = {"type": "object", "propertyNames": {"type": "string"}}  # `propertyNames` makes it read every key
        envelope = dict(fields, event={"type": "string"}, properties=shared)
        self.envelope = self._check(dict(next(iter(track.values())), properties=envelope))

    def _check(self, schema: Schema | bool) -> Callable[[Any], bool]:
        """The compiled check of a schema, shared by every equal schema (looked up by identity, then by text)."""
        got = self._by_identity.get(id(schema))
        if got is not None:
            return got[1]
        fast = integral_bounds(schema)
        text = json.dumps(fast, sort_keys=True)
        check = self._compiled.get(text)
        if check is None:
            check = self._compiled[text] = _compile(fast).is_valid
        self._by_identity[id(schema)] = (schema, check)  # the schema is kept so that its id stays its own
        return check

    def _row(self, schema: Schema) -> _Row | None:
        if not _TABLE_KEYWORDS.issuperset(schema) or schema.get("type") != "object":
            return None
        names: Callable[[Any], bool] | None = None
        if schema.get("additionalProperties", True) is not False:
            names = self._check(schema.get("propertyNames", True))
        checks: dict[str, Callable[[Any], bool]] = {}
        try:
            for key, own in schema.get("properties", {}).items():
                preset = PRESET_SCHEMAS.get(key)
                if preset is not None and own is True:
                    continue  # checked through `presets`: rows stay small, fewer cache lines per lookup
                joined = own if preset is None or own is False else {"allOf": [own, preset]}
                if names is not None and not names(key):
                    joined = False  # `propertyNames` applies to declared names too
                # One string object per name across all rows: lookups compare against a string in cache.
                checks[sys.intern(key)] = self._check(joined)
        except ValueError:  # a subschema that does not compile on its own
            return None
        return checks, frozenset(schema.get("required", ())), names


def _refuse(event: object) -> bool:
    return False


# -- the validator -------------------------------------------------------------


class Validator:
    """A plan compiled for validation. Build once per plan; thread-safe to share."""

    def __init__(self, plan: Plan, *, stage: Stage = "wire", limits: Limits = DEFAULT_LIMITS) -> None:
        self.plan = plan
        self.stage = stage
        track, ops, unknown = build_schemas(plan, stage, limits)
        self._schemas: dict[tuple[str, str | None], Schema] = {("track", n): s for n, s in track.items()}
        self._schemas.update({(t, None): s for t, s in ops.items()})
        # Small plans: one compiled schema per event with the presets folded in (one native
        # call per valid event). Large plans: one shared envelope schema and a table of
        # property checks (`_PropertyTable`), where memory, not checking, was the cost.
        # Bounds are compiled as integers where they are whole numbers (`integral_bounds`).
        # The detailed path (`_explain`) needs the schemas as written, unfolded (messages
        # quote the bounds), so it compiles those when they differ, once per event type
        # that has a bad event.
        self._folded = len(track) <= FOLD_PRESETS_MAX_EVENTS
        fold = with_presets if self._folded else _as_is
        self._table = None if self._folded or not track else _PropertyTable(track)
        rest = track if self._table is None else self._table.untabled
        self._rows: dict[str, _Row] = {} if self._table is None else self._table.rows
        self._envelope: Callable[[Any], bool] = _refuse if self._table is None else self._table.envelope
        self._preset_checks: dict[str, Callable[[Any], bool]] = {} if self._table is None else self._table.presets
        fast = {name: integral_bounds(fold(s)) for name, s in rest.items()}
        self._track = {name: _compile(s) for name, s in fast.items()}
        self._ops = {t: _compile(s) for t, s in ops.items()}
        self._unknown_schema = unknown
        fast_unknown = integral_bounds(fold(unknown))
        self._unknown = _compile(fast_unknown)
        self._presets = _compile(PRESETS_SCHEMA)
        self._presets_in_event = _compile({"properties": {"properties": PRESETS_SCHEMA}})
        self._accept_unknown = plan.settings.unknown_events == "accept"
        # Compiled schemas as written, for `_explain`, where the fast ones are them (None: unknown events).
        self._as_written: dict[str | None, jsonschema_rs.Validator] = {
            name: v for name, v in self._track.items() if fast[name] is track[name]
        }
        if fast_unknown is unknown:
            self._as_written[None] = self._unknown

    def schema_for(self, event_type: str, name: str | None = None) -> Schema | None:
        """One JSON Schema equivalent to the checks for a track event name or an operation type."""
        if event_type == "track":
            schema = self._schemas.get(("track", name))
            if schema is None and self._accept_unknown:
                schema = self._unknown_schema
            return None if schema is None else reference_schema(schema)
        return self._schemas.get((event_type, None))

    def is_valid(self, event: object) -> bool:
        """True when the event satisfies the plan. Never raises."""
        try:
            if event["type"] == "track":  # type: ignore[index]
                name = event["event"]  # type: ignore[index]
                row = self._rows.get(name)
                if row is not None:  # a large plan's event: the shared envelope, then the table (`_PropertyTable`)
                    if not self._envelope(event):
                        return False
                    checks, required, names = row
                    properties: dict[str, Any] = event["properties"]  # type: ignore[index]
                    presets = self._preset_checks
                    for key, value in properties.items():
                        check = checks.get(key) or presets.get(key)
                        if check is None:
                            if names is None or not names(key):
                                return False
                        elif not check(value):
                            return False
                    return properties.keys() >= required
                v = self._track.get(name)
                if v is None:
                    if not self._accept_unknown:
                        return False
                    v = self._unknown
                if self._folded:
                    return v.is_valid(event)
                return v.is_valid(event) and self._presets.is_valid(event["properties"])  # type: ignore[index]
            op = self._ops.get(event["type"])  # type: ignore[index]
            return op is not None and op.is_valid(event)
        except (KeyError, TypeError, ValueError, IndexError):
            return False

    def validate(self, event: object) -> list[Violation]:
        """Every violation of the plan by `event`; an empty list when it is valid. Never raises."""
        if self.is_valid(event):
            return []
        try:
            return self._explain(event)
        except RecursionError:
            return [Violation("envelope", "", "the event is nested too deeply")]

    # -- the slow path, for invalid events only --------------------------------

    def _explain(self, event: object) -> list[Violation]:
        if not isinstance(event, dict):
            return [
                Violation(
                    "envelope", "", f"an event must be an object, got {json_type(event)}", "object", json_type(event)
                )
            ]
        bad = _find_non_json(event, [])
        if bad is not None:
            return [bad]
        etype = event.get("type")
        if not isinstance(etype, str) or etype not in EVENT_TYPES:
            expected = sorted(EVENT_TYPES)
            what = "missing" if etype is None else f"unknown event type ({_describe(etype)})"
            return [
                Violation(
                    "envelope",
                    "/type",
                    f"{what}; expected one of {', '.join(expected)}",
                    expected,
                    None if etype is None else _describe(etype),
                )
            ]
        out: list[Violation] = []
        if etype == "track":
            name = event.get("event")
            if not isinstance(name, str):
                what = "missing" if name is None else f"must be a string, got {json_type(name)}"
                return [
                    Violation(
                        "envelope", "/event", f"event name {what}", "string", None if name is None else json_type(name)
                    )
                ]
            validator = self._separate_track(name)
            if validator is None:
                validator = self._separate_unknown()
                if not self._accept_unknown:
                    out.append(
                        Violation(
                            "unknown_event",
                            "/event",
                            f"event {name!r} is not in the plan {self.plan.name!r} {self.plan.version}",
                        )
                    )
                    out.extend(
                        v
                        for v in self._violations(validator, event)
                        if v.rule not in ("additional_property", "property_name")
                    )
                    return out
        else:
            validator = self._ops[etype]
        out.extend(self._violations(validator, event))
        if etype == "track":
            out.extend(self._violations(self._presets_in_event, event))
            out.sort(key=lambda v: (v.rule != "unknown_event", v.path, v.rule))
        if not out:  # the compiled schema said no, so say something rather than nothing
            out.append(Violation("envelope", "", "the event does not satisfy the plan"))
        return out

    def _separate_track(self, name: str) -> jsonschema_rs.Validator | None:
        """A planned event's envelope schema as written: no presets folded in, bounds as the plan has them.

        Violations come from it and from the shared presets schema, as they
        always have, whichever layout the fast path uses. None: not planned.
        """
        got = self._as_written.get(name)
        if got is None:
            schema = self._schemas.get(("track", name))
            if schema is None:
                return None
            got = self._as_written[name] = _compile(schema)
        return got

    def _separate_unknown(self) -> jsonschema_rs.Validator:
        """The unknown-event envelope schema as written."""
        got = self._as_written.get(None)
        if got is None:
            got = self._as_written[None] = _compile(self._unknown_schema)
        return got

    def _violations(self, validator: jsonschema_rs.Validator, event: dict[str, Any]) -> list[Violation]:
        out: list[Violation] = []
        declared = tuple(sorted(self.plan.identities))
        for error in validator.iter_errors(event):
            out.extend(_violation(error, event, declared))
        out.sort(key=lambda v: (v.path, v.rule))
        return out


_PROFILE_WHAT: Final = {
    "profile_set": "a user property in the plan",
    "profile_set_once": "a user property in the plan",
    "profile_increment": "a numeric user property in the plan",
    "profile_append": "an array user property in the plan",
    "profile_unset": "a user property in the plan",
    "profile_delete": "allowed: profile_delete carries no properties",
    "bind": "allowed: bind carries no properties",
    "unbind": "allowed: unbind carries no properties",
}


_JSON_SCALARS: Final = frozenset({str, int, float, bool, type(None)})


def _find_non_json(node: Any, path: list[str | int]) -> Violation | None:
    if isinstance(node, dict):
        for key, value in node.items():
            if not isinstance(key, str):
                return Violation(
                    "type",
                    join_pointer(path),
                    f"object keys must be strings, got {json_type(key)}",
                    "string",
                    json_type(key),
                )
            if type(key) is not str and not isinstance(key, enum.Enum):
                # jsonschema-rs takes str and str enums as keys and raises on any other str subclass.
                return Violation(
                    "type",
                    join_pointer([*path, key]),
                    f"object keys must be plain strings, got an instance of {type(key).__name__}",
                    "string",
                    type(key).__name__,
                )
            if _lone_surrogate(key):
                return _surrogate_violation([*path, key])
            found = _find_non_json(value, [*path, key])
            if found is not None:
                return found
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            found = _find_non_json(value, [*path, i])
            if found is not None:
                return found
    elif isinstance(node, str) and _lone_surrogate(node):
        return _surrogate_violation(path)
    elif not (node is None or isinstance(node, (str, int, float, bool))):
        kind = json_type(node)
        return Violation("type", join_pointer(path), f"{kind} is not a JSON value", "a JSON value", kind)
    elif type(node) not in _JSON_SCALARS and not isinstance(node, enum.Enum):
        # jsonschema-rs takes str and int enums and raises on any other subclass of a JSON scalar.
        kind = type(node).__name__
        return Violation(
            "type", join_pointer(path), f"an instance of {kind} is not a JSON value", "a plain JSON value", kind
        )
    return None


def _lone_surrogate(text: str) -> bool:
    """True when the text holds a lone surrogate: no UTF-8 for it, so it is no JSON string.

    jsonschema-rs raises on one where it reads the text (patterns, enums, a
    string checked on its own) and lets it through where it only counts it.
    """
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _surrogate_violation(path: list[str | int]) -> Violation:
    return Violation(
        "type",
        join_pointer(path),
        "a string with a lone surrogate is not valid Unicode text",
        "valid Unicode text",
        "string with a lone surrogate",
    )


def _at(event: Any, path: list[str | int]) -> Any:
    node = event
    for part in path:
        node = node[part]
    return node


def _violation(
    error: jsonschema_rs.ValidationError, event: dict[str, Any], declared: tuple[str, ...]
) -> list[Violation]:
    path = list(error.instance_path)
    kind = error.kind.name
    detail = error.kind.as_dict()
    pointer = join_pointer(path)
    area = path[0] if path else None
    try:
        actual = _at(event, path)
    except (KeyError, IndexError, TypeError):
        actual = None

    if kind == "additionalProperties":
        names = detail.get("unexpected", ())
        if area == "identities":
            known = ", ".join(declared)
            return [
                Violation(
                    "unknown_identity",
                    join_pointer([*path, n]),
                    f"unknown identity type {n!r}; the plan declares {known}",
                    list(declared),
                )
                for n in names
            ]
        if area == "properties":
            what = _PROFILE_WHAT.get(event.get("type", ""), "in the plan for this event")
            return [
                Violation(
                    "property_name",
                    join_pointer([*path, n]),
                    f"{n!r} is not a known preset; names starting with $ are reserved for presets",
                )
                if isinstance(n, str) and n.startswith("$")
                else Violation("additional_property", join_pointer([*path, n]), f"property {n!r} is not {what}")
                for n in names
            ]
        return [Violation("envelope", join_pointer([*path, n]), f"unknown envelope field {n!r}") for n in names]
    if kind == "required":
        prop = detail.get("property")
        target = join_pointer([*path, str(prop)])
        if not path and prop == "identities":
            return [Violation("missing_identity", target, "the event carries no identities")]
        if area == "properties":
            return [Violation("required", target, f"required property {prop!r} is missing")]
        return [Violation("envelope", target, f"required field {prop!r} is missing")]
    if kind == "minProperties" and area == "identities" and len(path) == 1:
        need = detail.get("limit")
        return [
            Violation(
                "missing_identity",
                pointer,
                f"at least {need} identit{'y is' if need == 1 else 'ies are'} required",
                need,
                _describe(actual),
            )
        ]
    if kind == "falseSchema":
        return [Violation("pii", pointer, f"property {path[-1]!r} is tagged 'drop' and must never be sent")]
    if kind == "type":
        types = detail.get("types", [])
        rule = (
            "invalid_identity"
            if area == "identities" and len(path) == 2
            else ("envelope" if area not in ("properties",) else "type")
        )
        return [
            Violation(
                rule, pointer, f"expected {' or '.join(types)}, got {json_type(actual)}", types, json_type(actual)
            )
        ]
    if kind in ("enum", "const"):
        options = detail.get("options") if kind == "enum" else [detail.get("expected_value")]
        shown = ", ".join(json.dumps(o, ensure_ascii=False) for o in (options or []))
        rule = "enum" if area == "properties" else "envelope"
        return [
            Violation(
                rule,
                pointer,
                f"expected one of {shown}" if kind == "enum" else f"expected {shown}",
                options,
                _describe(actual),
            )
        ]
    if kind == "pattern":
        pattern = detail.get("pattern")
        if pattern == HASH_PATTERN:
            return [
                Violation(
                    "pii",
                    pointer,
                    "value is tagged 'hash' and must be sent as its keyed hash",
                    pattern,
                    _describe(actual),
                )
            ]
        if pattern == _MASK_FORM:
            return [
                Violation("pii", pointer, "value is tagged 'mask' and must be sent masked", pattern, _describe(actual))
            ]
        rule = "invalid_identity" if area == "identities" else ("pattern" if area == "properties" else "envelope")
        return [Violation(rule, pointer, f"does not match the pattern {pattern}", pattern, _describe(actual))]
    if kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"):
        limit = detail.get("limit", detail.get("multiple_of"))
        words = {
            "minimum": ">=",
            "maximum": "<=",
            "exclusiveMinimum": ">",
            "exclusiveMaximum": "<",
            "multipleOf": "a multiple of",
        }
        rule = "range" if area == "properties" else "envelope"
        return [Violation(rule, pointer, f"must be {words[kind]} {limit}", {kind: limit}, json_type(actual))]
    if kind == "minLength" and detail.get("limit") == 1:
        rule = "invalid_identity" if area == "identities" else ("length" if area == "properties" else "envelope")
        return [Violation(rule, pointer, "must not be empty", {kind: 1}, _describe(actual))]
    if kind in ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties"):
        limit = detail.get("limit")
        unit = "characters" if "Length" in kind else ("items" if "Items" in kind else "properties")
        bound = "at least" if kind.startswith("min") else "at most"
        rule = "invalid_identity" if area == "identities" else ("length" if area == "properties" else "envelope")
        return [Violation(rule, pointer, f"must have {bound} {limit} {unit}", {kind: limit}, _describe(actual))]
    if kind == "uniqueItems":
        return [Violation("length", pointer, "items must be unique", {"uniqueItems": True}, _describe(actual))]
    if kind == "format":
        fmt = detail.get("format")
        return [Violation("format", pointer, f"is not a valid {fmt}", fmt, _describe(actual))]
    if kind in ("propertyNames", "anyOf") and area == "properties":
        return [
            Violation(
                "property_name",
                pointer,
                "property names must be snake_case (at most 100 characters) or a known $ preset",
                PROPERTY_NAME_RE.pattern,
            )
        ]
    return [
        Violation(
            "envelope" if area is None else "type", pointer, f"does not satisfy '{kind}'", kind, _describe(actual)
        )
    ]
