"""Load a tracking plan, or say precisely why it cannot be loaded.

Three stages, each reporting every problem it finds (not only the first):

1. Read and parse the JSON. A syntax error or a duplicated key is reported with
   its line and column.
2. Check the document against the meta-schema that ships with the package
   (`plan.schema.json`), and report each violation with its JSON pointer, line
   and column, and what was expected.
3. Semantic checks the meta-schema cannot express: every event name starts with
   a registered business-line prefix, `$ref`s resolve without cycles, patterns
   compile, PII tags are known, and every vendor mapping points at an event,
   property or identity type the plan declares.

`read_document` stops after stage 2 and returns the raw document; the linter and
the differ work on that. `load_plan` runs all three and returns a `Plan`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema_rs

from ._jsonpos import Locator, join_pointer
from .envelope import PRESET_SCHEMAS
from .errors import PlanLoadError, PlanProblem
from .funnels import build_funnels
from .model import VENDORS, BusinessLine, EventSpec, IdentityType, Plan, PlanSettings
from .pii import PII_TAGS

__all__ = ["Document", "load_plan", "parse_plan", "read_document"]

Document = dict[str, Any]


@cache
def meta_schema() -> dict[str, Any]:
    """The plan meta-schema shipped with the package."""
    text = resources.files("maidian.tracking_plan").joinpath("plan.schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


@cache
def _meta_validator() -> jsonschema_rs.Validator:
    return jsonschema_rs.validator_for(meta_schema())


class _Problems:
    """Collects problems and attaches file positions to them."""

    def __init__(self, text: str, source: str) -> None:
        self.text = text
        self.source = source
        self.items: list[PlanProblem] = []
        self._seen: set[tuple[str, str, str]] = set()
        self._locator = Locator(text) if text else None

    def add(self, message: str, pointer: str, code: str) -> None:
        if (pointer, code, message) in self._seen:
            return
        self._seen.add((pointer, code, message))
        position = self._locator.position(pointer) if self._locator else None
        line, col = position if position else (None, None)
        self.items.append(PlanProblem(message, pointer, self.source, line, col, code))

    def raise_if_any(self) -> None:
        if self.items:
            raise PlanLoadError(self.items)


def _read(path: str | os.PathLike[str]) -> tuple[str, str]:
    source = os.fspath(path)
    try:
        return Path(path).read_text("utf-8"), source
    except FileNotFoundError:
        raise PlanLoadError([PlanProblem("file not found", source=source, code="io")]) from None
    except UnicodeDecodeError as exc:
        msg = f"not UTF-8 text (byte {exc.start})"
        raise PlanLoadError([PlanProblem(msg, source=source, code="io")]) from None
    except OSError as exc:
        raise PlanLoadError([PlanProblem(f"cannot read: {exc.strerror}", source=source, code="io")]) from None


class _DuplicateKeys:
    """An `object_pairs_hook` that notes whether any object repeats a key."""

    def __init__(self) -> None:
        self.found = False

    def __call__(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out = dict(pairs)
        if len(out) != len(pairs):
            self.found = True
        return out


def _report_duplicates(text: str, problems: _Problems) -> None:
    """Find the repeated keys again, with their paths (only runs when there are some)."""

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: set[str] = set()
        dupes: list[str] = []
        for key, _ in pairs:
            if key in seen:
                dupes.append(key)
            seen.add(key)
        out = dict(pairs)
        if dupes:
            out[_DUPES] = dupes
        return out

    _walk_duplicates(json.loads(text, object_pairs_hook=hook), [], problems)


_DUPES = "\x00duplicate keys"


def _walk_duplicates(node: Any, path: list[str | int], problems: _Problems) -> None:
    if isinstance(node, dict):
        for key in node.pop(_DUPES, ()):
            problems.add(
                f"key {key!r} appears more than once; only the last would count",
                join_pointer([*path, key]),
                "duplicate-key",
            )
        for key, value in node.items():
            _walk_duplicates(value, [*path, key], problems)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _walk_duplicates(value, [*path, i], problems)


def _describe_meta_error(error: jsonschema_rs.ValidationError) -> str:
    kind = error.kind
    name = kind.name
    detail = kind.as_dict()
    if name == "additionalProperties":
        unexpected = ", ".join(repr(u) for u in detail.get("unexpected", ()))
        return f"unknown key {unexpected}"
    if name == "required":
        return f"missing required key {detail.get('property')!r}"
    if name == "enum":
        return f"expected one of {', '.join(json.dumps(o) for o in detail.get('options', ()))}"
    if name == "oneOf" and error.instance_path and error.instance_path[-1] == "type":
        return "expected a JSON Schema type (string, integer, number, boolean, array, object, null) or a list of them"
    if name == "type":
        return f"expected {' or '.join(detail.get('types', ()))}"
    if name == "const":
        return f"expected {json.dumps(detail.get('expected_value'))}"
    return str(error.message)


def read_document(
    path: str | os.PathLike[str] | None = None, *, text: str | None = None, source: str | None = None
) -> Document:
    """Read, parse and meta-validate a plan document; raise `PlanLoadError` with every problem."""
    if text is None:
        if path is None:
            raise TypeError("read_document needs a path or text")
        text, source = _read(path)
    source = source or (os.fspath(path) if path is not None else "<plan>")
    duplicates = _DuplicateKeys()
    try:
        doc = json.loads(text, object_pairs_hook=duplicates)
    except json.JSONDecodeError as exc:
        raise PlanLoadError(
            [PlanProblem(f"invalid JSON: {exc.msg}", "", source, exc.lineno, exc.colno, "json")]
        ) from None
    except RecursionError:
        raise PlanLoadError([PlanProblem("invalid JSON: nested too deeply", source=source, code="json")]) from None
    problems = _Problems(text, source)
    if duplicates.found:
        _report_duplicates(text, problems)
    if not isinstance(doc, dict):
        problems.add("a plan must be a JSON object", "", "meta-schema")
        problems.raise_if_any()
    validator = _meta_validator()
    if not validator.is_valid(doc):
        errors = sorted(validator.iter_errors(doc), key=lambda e: [str(p) for p in e.instance_path])
        for error in errors:
            problems.add(_describe_meta_error(error), join_pointer(list(error.instance_path)), "meta-schema")
    problems.raise_if_any()
    return doc  # type: ignore[no-any-return]


Path_ = tuple[str | int, ...]


class _Schemas:
    """Resolves `$ref`s and checks patterns and PII tags, in one walk over schema positions.

    Only schema positions are visited (a property schema, its `properties` and
    its `items`), never `enum`, `examples` or `default` values, and a dict is
    copied only when something under it changes.
    """

    def __init__(self, defs: Mapping[str, Any], problems: _Problems) -> None:
        self.defs = defs
        self.problems = problems
        self.resolved: dict[str, Any] = {}

    def definition(self, name: str, stack: tuple[str, ...]) -> Any:
        if name not in self.resolved:
            self.resolved[name] = self.schema(self.defs[name], ("$defs", name), (*stack, name))
        return self.resolved[name]

    def schema(self, node: Any, path: Path_, stack: tuple[str, ...] = ()) -> Any:
        if not isinstance(node, dict):
            return node
        out = node
        if "$ref" in node:
            out = self._ref(node, path, stack)
        props = out.get("properties")
        if isinstance(props, dict):
            new_props = {k: self.schema(v, (*path, "properties", k), stack) for k, v in props.items()}
            if any(new_props[k] is not props[k] for k in props):
                out = {**out, "properties": new_props}
        items = out.get("items")
        if isinstance(items, dict):
            new_items = self.schema(items, (*path, "items"), stack)
            if new_items is not items:
                out = {**out, "items": new_items}
        self._check(out, path)
        return out

    def _ref(self, node: dict[str, Any], path: Path_, stack: tuple[str, ...]) -> dict[str, Any]:
        ref = node["$ref"]
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        name = ref.rsplit("/", 1)[-1]
        where = join_pointer([*path, "$ref"])
        if name not in self.defs:
            self.problems.add(f"$ref {ref!r} names no definition in $defs", where, "bad-ref")
            return siblings
        if name in stack:
            chain = " -> ".join((*stack, name))
            self.problems.add(f"$ref {ref!r} refers to itself ({chain})", where, "bad-ref")
            return siblings
        target = self.definition(name, stack)
        return {**target, **siblings} if isinstance(target, dict) else siblings

    def _check(self, schema: dict[str, Any], path: Path_) -> None:
        pattern = schema.get("pattern")
        if isinstance(pattern, str) and (err := _pattern_error(pattern)) is not None:
            self.problems.add(
                f"pattern {pattern!r} does not compile: {err}", join_pointer([*path, "pattern"]), "bad-regex"
            )
        tag = schema.get("x-pii")
        if tag is not None and tag not in PII_TAGS:
            known = ", ".join(PII_TAGS)
            self.problems.add(
                f"unknown PII tag {tag!r}; expected one of {known}", join_pointer([*path, "x-pii"]), "pii-tag"
            )


@cache
def _pattern_error(pattern: str) -> str | None:
    try:
        jsonschema_rs.validator_for({"pattern": pattern})
    except Exception as exc:  # the engine's own error types differ by version
        return str(exc).splitlines()[0]
    return None


def check_identity(name: str, spec: Mapping[str, Any], problems: _Problems) -> None:
    """What the meta-schema cannot say about an identity type: its pattern compiles, its tag keeps it usable."""
    where = join_pointer(["identities", name])
    pattern = spec.get("pattern")
    if pattern is not None and (err := _pattern_error(pattern)) is not None:
        problems.add(f"pattern {pattern!r} does not compile: {err}", where + "/pattern", "bad-regex")
    tag = spec.get("x-pii")
    if tag is not None and tag not in ("hash", "mask"):
        problems.add(
            f"identity PII tag {tag!r} must be 'hash' or 'mask' (an identity cannot be dropped)",
            where + "/x-pii",
            "pii-tag",
        )


def prefix_of(event_name: str, prefixes: list[str]) -> str | None:
    """The business-line prefix an event name starts with; `prefixes` sorted longest first."""
    return next((p for p in prefixes if event_name.startswith(p + "_")), None)


def _object_schema(schema: dict[str, Any] | None) -> dict[str, Any]:
    out = {"type": "object", "properties": {}}
    if schema:
        out.update(schema)
    return out


def build_plan(doc: Document, *, text: str = "", source: str = "<plan>") -> Plan:
    """Turn a meta-valid document into a `Plan`, or raise `PlanLoadError` with every problem."""
    problems = _Problems(text, source)
    defs = doc.get("$defs", {})
    schemas = _Schemas(defs, problems)
    for name in defs:
        schemas.definition(name, ())

    lines = {
        prefix: BusinessLine(prefix, spec.get("title", ""), spec.get("description", ""), spec.get("owner", ""))
        for prefix, spec in doc["business_lines"].items()
    }
    identities = {
        "anonymous_id": IdentityType(
            "anonymous_id", priority=1000, description="A device or install id minted by the SDK."
        ),
        "login_id": IdentityType("login_id", priority=1, unique=True, description="The id a user logs in with."),
    }
    for name, spec in doc.get("identities", {}).items():
        check_identity(name, spec, problems)
        identities[name] = IdentityType(
            name,
            priority=spec.get("priority", identities[name].priority if name in identities else 100),
            unique=spec.get("unique", identities[name].unique if name in identities else False),
            description=spec.get("description", ""),
            pattern=spec.get("pattern"),
            max_length=spec.get("maxLength"),
            pii=spec.get("x-pii"),
            introduced_by=spec.get("introduced_by", "any"),
        )

    common = _object_schema(schemas.schema(doc.get("common_properties"), ("common_properties",)))
    users = _object_schema(schemas.schema(doc.get("user_properties"), ("user_properties",)))

    prefixes = sorted(lines, key=len, reverse=True)
    events: dict[str, EventSpec] = {}
    for name, spec in doc["events"].items():
        where = join_pointer(["events", name])
        prefix = prefix_of(name, prefixes)
        if prefix is None:
            known = ", ".join(sorted(lines))
            problems.add(
                f"event {name!r} does not start with a registered business-line prefix ({known})",
                where,
                "unknown-prefix",
            )
            continue
        declared = spec.get("business_line")
        if declared is not None and declared != prefix:
            problems.add(
                f"business_line {declared!r} does not match the name's prefix {prefix!r}",
                where + "/business_line",
                "business-line-mismatch",
            )
        schema = _object_schema(schemas.schema(spec.get("properties"), ("events", name, "properties")))
        events[name] = EventSpec(
            name=name,
            business_line=prefix,
            schema=schema,
            description=spec.get("description", ""),
            owner=spec.get("owner", ""),
            trigger=spec.get("trigger", "client"),
            fires_when=spec.get("fires_when", ""),
            status=spec.get("status", "active"),
            tags=tuple(spec.get("tags", ())),
        )
    funnels = build_funnels(doc, events, identities, common, problems)
    plan_names = _PlanNames(events, identities, common, users)
    for vendor in VENDORS:
        _check_mapping(doc.get("mappings", {}).get(vendor, {}), ("mappings", vendor), plan_names, problems)
    problems.raise_if_any()
    settings = doc.get("settings", {})
    return Plan(
        name=doc["name"],
        version=doc["version"],
        business_lines=lines,
        identities=identities,
        events=events,
        common_properties=common,
        user_properties=users,
        settings=PlanSettings(
            unknown_events=settings.get("unknown_events", "quarantine"),
            additional_properties=settings.get("additional_properties", False),
        ),
        description=doc.get("description", ""),
        mappings=doc.get("mappings", {}),
        funnels=funnels,
        source=source,
        document=doc,
    )


class _PlanNames:
    """The names a vendor mapping may point at."""

    def __init__(
        self,
        events: Mapping[str, EventSpec],
        identities: Mapping[str, IdentityType],
        common: Mapping[str, Any],
        users: Mapping[str, Any],
    ) -> None:
        self.events = events
        self.identities = identities
        self.common = set(common.get("properties", {})) | set(PRESET_SCHEMAS)
        self.anywhere = self.common | set(users.get("properties", {}))
        for spec in events.values():
            self.anywhere.update(spec.properties)

    def of_event(self, name: str) -> set[str]:
        return self.common | set(self.events[name].properties)


def _check_mapping(spec: Mapping[str, Any], path: Path_, names: _PlanNames, problems: _Problems) -> None:
    """Every target of one vendor's mapping must exist in the plan (problem code `mapping-target`)."""

    def bad(message: str, *where: str | int) -> None:
        problems.add(message, join_pointer([*path, *where]), "mapping-target")

    for vendor_name, target in spec.get("events", {}).items():
        event = target if isinstance(target, str) else target["event"]
        if event not in names.events:
            bad(
                f"vendor event {vendor_name!r} maps to {event!r}, which is not an event in the plan",
                "events",
                vendor_name,
            )
            continue
        own = {} if isinstance(target, str) else target.get("properties", {})
        allowed = names.of_event(event)
        for prop, to in own.items():
            if to is not None and to not in allowed:
                bad(
                    f"vendor property {prop!r} maps to {to!r}, which event {event!r} does not declare "
                    "(nor the common properties or the presets)",
                    "events",
                    vendor_name,
                    "properties",
                    prop,
                )
    for prop, to in spec.get("properties", {}).items():
        if to is not None and to not in names.anywhere:
            bad(
                f"vendor property {prop!r} maps to {to!r}, "
                "which no event, common or user property and no preset declares",
                "properties",
                prop,
            )
    for ident, to in spec.get("identities", {}).items():
        if to is not None and to not in names.identities:
            known = ", ".join(names.identities)
            bad(
                f"vendor identity {ident!r} maps to {to!r}, which is not an identity type ({known})",
                "identities",
                ident,
            )


def parse_plan(text: str, source: str = "<plan>") -> Plan:
    """Load a plan from JSON text."""
    doc = read_document(text=text, source=source)
    return build_plan(doc, text=text, source=source)


def load_plan(path: str | os.PathLike[str]) -> Plan:
    """Load a plan file; raise `PlanLoadError` listing every problem with file, line, column and pointer."""
    text, source = _read(path)
    return parse_plan(text, source)
