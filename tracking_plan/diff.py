"""Compare two versions of a tracking plan: what changed, what breaks, and whether the version says so.

A change is *breaking* when an event that was valid may become invalid, or when
what a field means changes under its consumers: something removed, a new
required property, a narrowed type, enum, range, length or pattern, closed
additional properties, a changed trigger, a new or changed PII tag. It is
*compatible* when every event that was valid stays valid: additions of events
and optional properties, widened types and ranges, and documentation.

Each change carries the part of a semantic version it calls for: `major` for a
breaking change, `minor` for an addition or a widening, `patch` for
documentation (descriptions, owners, `fires_when`, examples, tags, status).
`check_version` turns the largest one into the version the new plan needs:

- breaking: the next major version (in 0.x, where anything may change, the next minor);
- additions: the next minor version; documentation: the next patch version;
- nothing changed: no bump needed (a bump is allowed);
- a pre-release (`2.0.0-rc.1`) may change freely until its release (`2.0.0`),
  as long as the version moves forward.

Plans are compared after loading, with `$ref`s resolved, so moving a schema into
`$defs` is no change, and changing a definition changes every place that uses
it. Paths are JSON pointers to the place in the new plan (the old one for what
was removed).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Final, Literal, TypeVar

from ._jsonpos import join_pointer
from ._schemakit import enum_key, types_of
from .model import BusinessLine, EventSpec, IdentityType, Plan

__all__ = ["Change", "PlanDiff", "VersionVerdict", "check_version", "diff_plans"]

Part = Literal["major", "minor", "patch"]
Needed = Literal["major", "minor", "patch", "none"]
Schema = Mapping[str, Any]
Path = tuple[str | int, ...]
_T = TypeVar("_T")

_ORDER: Final[dict[str, int]] = {"none": 0, "patch": 1, "minor": 2, "major": 3}
# Keywords that only document a property.
_DOC_KEYWORDS: Final = ("title", "description", "examples", "default", "deprecated")


@dataclass(frozen=True, slots=True)
class Change:
    """One difference between two plans and the version part it calls for."""

    semver: Part
    path: str
    message: str

    @property
    def kind(self) -> Literal["breaking", "compatible"]:
        return "breaking" if self.semver == "major" else "compatible"

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "semver": self.semver, "path": self.path, "message": self.message}

    def __str__(self) -> str:
        return f"{self.kind:10} {self.path or '/'}: {self.message}"


@dataclass(frozen=True, slots=True)
class VersionVerdict:
    """Whether the new plan's version moved as far as its changes need."""

    old: str
    new: str
    needed: Needed  # the part to raise, with the 0.x rule applied
    expected: str  # the lowest version that would do
    ok: bool
    message: str

    def to_dict(self) -> dict[str, object]:
        return {
            "old": self.old,
            "new": self.new,
            "needed": self.needed,
            "expected": self.expected,
            "ok": self.ok,
            "message": self.message,
        }


@dataclass(frozen=True, slots=True)
class PlanDiff:
    """Every change between two plans, in plan order, and the version verdict."""

    changes: tuple[Change, ...]
    version: VersionVerdict

    @property
    def breaking(self) -> tuple[Change, ...]:
        return tuple(c for c in self.changes if c.kind == "breaking")

    def passes(self, *, allow_breaking: bool = False) -> bool:
        """True when CI should pass: the version is adequate and, unless allowed, nothing breaks."""
        return self.version.ok and (allow_breaking or not self.breaking)

    def to_dict(self, *, allow_breaking: bool = False) -> dict[str, object]:
        return {
            "changes": [c.to_dict() for c in self.changes],
            "breaking": len(self.breaking),
            "compatible": len(self.changes) - len(self.breaking),
            "version": self.version.to_dict(),
            "ok": self.passes(allow_breaking=allow_breaking),
        }


def diff_plans(old: Plan, new: Plan) -> PlanDiff:
    """Every change from `old` to `new`, classified, and the verdict on the new version."""
    differ = _Differ(old, new)
    differ.run()
    needed: Needed = max((c.semver for c in differ.changes), key=_ORDER.__getitem__, default="none")
    return PlanDiff(tuple(differ.changes), check_version(old.version, new.version, needed))


# -- versions ------------------------------------------------------------------------

_SEMVER: Final = re.compile(r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(?:-([0-9A-Za-z.-]+))?(?:\+.*)?$")


@dataclass(frozen=True, slots=True, order=True)
class _Version:
    core: tuple[int, int, int]
    release: tuple[tuple[int, int | str], ...]  # () for a release; pre-releases sort below it

    @classmethod
    def parse(cls, text: str) -> _Version:
        m = _SEMVER.match(text)
        if m is None:
            raise ValueError(f"{text!r} is not a semantic version MAJOR.MINOR.PATCH")
        core = (int(m.group(1)), int(m.group(2)), int(m.group(3)))
        if m.group(4) is None:
            return cls(core, ((2, 0),))
        ids = tuple((0, int(p)) if p.isdigit() else (1, p) for p in m.group(4).split("."))
        return cls(core, ((1, 0), *ids))

    @property
    def prerelease(self) -> bool:
        return self.release[0] != (2, 0)


def _next(version: _Version, part: Needed) -> tuple[int, int, int]:
    major, minor, patch = version.core
    if part == "major":
        return (major + 1, 0, 0)
    if part == "minor":
        return (major, minor + 1, 0)
    if part == "patch":
        return (major, minor, patch + 1)
    return version.core


def check_version(old: str, new: str, needed: Needed) -> VersionVerdict:
    """Whether `new` is far enough from `old` for changes that call for `needed`."""
    v_old, v_new = _Version.parse(old), _Version.parse(new)
    zero = v_old.core[0] == 0
    if needed == "major" and zero:
        needed = "minor"  # 0.x: the minor version is the one that may break
    head = f"{old} -> {new}"
    if v_old.prerelease and v_new.core == v_old.core:
        # Until its release, a pre-release may change anything; it only has to move on.
        ok = v_new >= v_old and (needed == "none" or v_new > v_old)
        message = "ok" if ok else "a changed pre-release needs a later pre-release or its release"
        return VersionVerdict(old, new, needed, new if ok else old, ok, f"{head}: {message}")
    target = _next(v_old, needed)
    expected = old if needed == "none" else ".".join(map(str, target))
    if v_new < v_old:
        return VersionVerdict(old, new, needed, expected, False, f"{head}: the version went backwards")
    if needed == "none":
        return VersionVerdict(old, new, needed, expected, True, f"{head}: ok (no changes)")
    what = {
        "major": "breaking changes need",
        "minor": "breaking changes or additions in 0.x need" if zero else "additions need",
        "patch": "documentation changes need",
    }[needed]
    ok = v_new.core >= target
    message = f"ok ({what} {expected} or later)" if ok else f"{what} {expected} or later"
    return VersionVerdict(old, new, needed, expected, ok, f"{head}: {message}")


# -- the comparison --------------------------------------------------------------------


def _show(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)


def _lower(schema: Schema) -> tuple[float, bool] | None:
    """The lower bound as (value, exclusive); the stricter one when both keywords are present."""
    bounds = [(schema["minimum"], False)] if "minimum" in schema else []
    if "exclusiveMinimum" in schema:
        bounds.append((schema["exclusiveMinimum"], True))
    return max(bounds) if bounds else None


def _upper(schema: Schema) -> tuple[float, bool] | None:
    bounds = [(schema["maximum"], False)] if "maximum" in schema else []
    if "exclusiveMaximum" in schema:
        bounds.append((schema["exclusiveMaximum"], True))
    return min(bounds, key=lambda b: (b[0], not b[1])) if bounds else None


def _bound_text(bound: tuple[float, bool], below: bool) -> str:
    value, exclusive = bound
    sign = (">" if exclusive else ">=") if below else ("<" if exclusive else "<=")
    return f"{sign} {_show(value)}"


def _divides(new: float, old: float) -> bool:
    """Every multiple of `old` is a multiple of `new`."""
    ratio = Fraction(str(old)) / Fraction(str(new))
    return ratio.denominator == 1


def _covers(new: frozenset[str], old: frozenset[str]) -> frozenset[str]:
    """The types of `old` that `new` no longer accepts (empty sets mean any type)."""
    if not new:
        return frozenset()
    if not old:
        return frozenset({"any other type"})
    return frozenset(t for t in old if t not in new and not (t == "integer" and "number" in new))


class _Differ:
    def __init__(self, old: Plan, new: Plan) -> None:
        self.old = old
        self.new = new
        self.changes: list[Change] = []

    def add(self, semver: Part, path: Path, message: str) -> None:
        self.changes.append(Change(semver, join_pointer(path), message))

    def run(self) -> None:
        old, new = self.old, self.new
        for key, value_old, value_new in (
            ("name", old.name, new.name),
            ("description", old.description, new.description),
            ("owner", old.document.get("owner"), new.document.get("owner")),
        ):
            if value_old != value_new:
                self.add("patch", (key,), f"plan {key} changed")
        self._business_lines()
        self._identities()
        self._settings()
        self._properties(
            old.common_properties, new.common_properties, ("common_properties",), "common property", required=True
        )
        self._properties(old.user_properties, new.user_properties, ("user_properties",), "user property")
        self._objects(
            old.user_properties,
            new.user_properties,
            ("user_properties",),
            old.settings.additional_properties,
            new.settings.additional_properties,
        )
        self._events()
        if old.mappings != new.mappings:
            self.add("minor", ("mappings",), "vendor mappings changed")

    # -- plan-level sections -------------------------------------------------------

    def _members(
        self, section: str, what: str, old: Mapping[str, _T], new: Mapping[str, _T], compare: Callable[[_T, _T], None]
    ) -> None:
        """Removed members break, added ones are additions, the others are compared."""
        for name in old:
            if name not in new:
                self.add("major", (section, name), f"{what} {name!r} removed")
        for name, member in new.items():
            if name not in old:
                self.add("minor", (section, name), f"{what} {name!r} added")
            else:
                compare(old[name], member)

    def _business_lines(self) -> None:
        def compare(old: BusinessLine, new: BusinessLine) -> None:
            if old != new:
                self.add("patch", ("business_lines", new.prefix), "title, description or owner changed")

        self._members("business_lines", "business line", self.old.business_lines, self.new.business_lines, compare)

    def _identities(self) -> None:
        self._members("identities", "identity type", self.old.identities, self.new.identities, self._identity)

    def _identity(self, old: IdentityType, new: IdentityType) -> None:
        path = ("identities", new.name)
        if new.unique and not old.unique:
            self.add("major", (*path, "unique"), "became unique: values shared by two persons are now refused")
        elif old.unique and not new.unique:
            self.add("minor", (*path, "unique"), "no longer unique")
        if new.pattern != old.pattern:
            if new.pattern is None:
                self.add("minor", (*path, "pattern"), "pattern removed")
            else:
                what = "added" if old.pattern is None else f"changed from {old.pattern!r}"
                self.add("major", (*path, "pattern"), f"pattern {new.pattern!r} {what}")
        if new.max_length != old.max_length:
            tighter = new.max_length is not None and (old.max_length is None or new.max_length < old.max_length)
            self.add(
                "major" if tighter else "minor", (*path, "maxLength"), f"maxLength {old.max_length} -> {new.max_length}"
            )
        self._pii(old.pii, new.pii, path)
        if new.priority != old.priority:
            self.add("minor", (*path, "priority"), f"priority {old.priority} -> {new.priority} (changes display ids)")
        if new.description != old.description:
            self.add("patch", (*path, "description"), "description changed")

    def _settings(self) -> None:
        old, new = self.old.settings, self.new.settings
        if old.unknown_events != new.unknown_events:
            semver: Part = "major" if new.unknown_events == "quarantine" else "minor"
            self.add(
                semver,
                ("settings", "unknown_events"),
                f"unknown events: {old.unknown_events} -> {new.unknown_events}",
            )
        if old.additional_properties != new.additional_properties:
            closed = not new.additional_properties
            self.add(
                "major" if closed else "minor",
                ("settings", "additional_properties"),
                "undeclared properties are now refused unless an event allows them"
                if closed
                else "undeclared properties are now accepted unless an event refuses them",
            )

    def _events(self) -> None:
        self._members("events", "event", self.old.events, self.new.events, self._event)

    def _event(self, old: EventSpec, new: EventSpec) -> None:
        path = ("events", new.name)
        if old.trigger != new.trigger:
            self.add(
                "major",
                (*path, "trigger"),
                f"trigger {old.trigger} -> {new.trigger}: "
                + ("apps may no longer send it" if new.trigger == "server" else "it may now come from apps"),
            )
        for key in ("description", "owner", "fires_when", "status", "tags"):
            if getattr(old, key) != getattr(new, key):
                self.add("patch", (*path, key), f"{key} changed")
        old_doc = self.old.document.get("events", {}).get(old.name, {})
        new_doc = self.new.document.get("events", {}).get(new.name, {})
        if _annotations(old_doc) != _annotations(new_doc):
            self.add("patch", path, "x- annotations changed")
        schema = (*path, "properties")
        self._properties(old.schema, new.schema, schema, "property", required=True, moved_to=self.new.common_properties)
        self._objects(
            old.schema,
            new.schema,
            schema,
            self.old.settings.additional_properties,
            self.new.settings.additional_properties,
        )
        self._docs(old.schema, new.schema, schema)

    # -- property schemas ------------------------------------------------------------

    def _properties(
        self,
        old: Schema,
        new: Schema,
        path: Path,
        what: str,
        *,
        required: bool = False,
        moved_to: Schema | None = None,
    ) -> None:
        """Compare the properties of two object schemas; `required` says whether `required` counts here."""
        old_props: Mapping[str, Any] = old.get("properties", {})
        new_props: Mapping[str, Any] = new.get("properties", {})
        old_req = set(old.get("required", ())) if required else set()
        new_req = set(new.get("required", ())) if required else set()
        elsewhere: Mapping[str, Any] = (moved_to or {}).get("properties", {})
        for name, schema in old_props.items():
            if name in new_props:
                continue
            if name in elsewhere:
                at = (*path, "properties", name)
                self.add("minor", at, f"{what} {name!r} moved to common_properties")
                self._schema(schema, elsewhere[name], at)
                continue
            self.add("major", (*path, "properties", name), f"{what} {name!r} removed")
        for name, schema in new_props.items():
            at = (*path, "properties", name)
            if name not in old_props:
                if name in new_req:
                    self.add("major", at, f"new required {what} {name!r}")
                else:
                    self.add("minor", at, f"new optional {what} {name!r}")
                continue
            self._schema(old_props[name], schema, at)
            if name in new_req and name not in old_req:
                self.add("major", (*path, "required"), f"{what} {name!r} became required")
            elif name in old_req and name not in new_req:
                self.add("minor", (*path, "required"), f"{what} {name!r} is no longer required")
        for name in sorted(new_req - old_req - set(new_props)):
            self.add("major", (*path, "required"), f"{name!r} became required")

    def _objects(self, old: Schema, new: Schema, path: Path, old_default: bool, new_default: bool) -> None:
        """additionalProperties: only where a schema says it (the settings cover the rest)."""
        if "additionalProperties" not in old and "additionalProperties" not in new:
            return
        was = old.get("additionalProperties", old_default)
        now = new.get("additionalProperties", new_default)
        if was and not now:
            self.add("major", (*path, "additionalProperties"), "undeclared properties are now refused")
        elif now and not was:
            self.add("minor", (*path, "additionalProperties"), "undeclared properties are now accepted")

    def _schema(self, old: Schema, new: Schema, path: Path) -> None:
        """Compare two property schemas."""
        self._types(old, new, path)
        self._values(old, new, path)
        self._bounds(old, new, path)
        self._sizes(old, new, path)
        for key in ("pattern", "format"):
            if old.get(key) != new.get(key):
                if key not in new:
                    self.add("minor", (*path, key), f"{key} {old[key]!r} removed")
                else:
                    what = "added" if key not in old else f"changed from {old[key]!r}"
                    self.add("major", (*path, key), f"{key} {new[key]!r} {what}")
        self._pii(old.get("x-pii"), new.get("x-pii"), path)
        if "properties" in old or "properties" in new:
            self._properties(old, new, path, "property", required=True)
            self._objects(old, new, path, True, True)
        old_items, new_items = old.get("items"), new.get("items")
        if isinstance(old_items, Mapping) and isinstance(new_items, Mapping):
            self._schema(old_items, new_items, (*path, "items"))
        elif new_items is not None and old_items is None:
            self.add("major", (*path, "items"), "items are now constrained")
        elif old_items is not None and new_items is None:
            self.add("minor", (*path, "items"), "items are no longer constrained")
        self._docs(old, new, path)

    def _docs(self, old: Schema, new: Schema, path: Path) -> None:
        changed = [k for k in _DOC_KEYWORDS if old.get(k) != new.get(k)]
        if _annotations(old) != _annotations(new):
            changed.append("x- annotations")
        if changed:
            self.add("patch", path, f"{', '.join(changed)} changed")

    def _types(self, old: Schema, new: Schema, path: Path) -> None:
        t_old, t_new = types_of(old), types_of(new)
        if t_old == t_new:
            return
        lost = _covers(t_new, t_old)
        shown_old = " or ".join(sorted(t_old)) or "any type"
        shown_new = " or ".join(sorted(t_new)) or "any type"
        if lost:
            self.add("major", (*path, "type"), f"type narrowed from {shown_old} to {shown_new}")
        else:
            self.add("minor", (*path, "type"), f"type widened from {shown_old} to {shown_new}")

    def _values(self, old: Schema, new: Schema, path: Path) -> None:
        e_old, e_new = old.get("enum"), new.get("enum")
        if e_old != e_new:
            if e_new is None:
                self.add("minor", (*path, "enum"), "enum removed: any value of the type is allowed")
            elif e_old is None:
                self.add("major", (*path, "enum"), f"enum added: only {', '.join(map(_show, e_new))}")
            else:
                keys_new = {enum_key(v) for v in e_new}
                keys_old = {enum_key(v) for v in e_old}
                removed = [v for v in e_old if enum_key(v) not in keys_new]
                added = [v for v in e_new if enum_key(v) not in keys_old]
                if removed:
                    self.add("major", (*path, "enum"), f"enum values removed: {', '.join(map(_show, removed))}")
                if added:
                    self.add("minor", (*path, "enum"), f"enum values added: {', '.join(map(_show, added))}")
        if "const" in old or "const" in new:
            if "const" not in new:
                self.add("minor", (*path, "const"), "const removed")
            elif "const" not in old or enum_key(old["const"]) != enum_key(new["const"]):
                self.add("major", (*path, "const"), f"const {_show(new['const'])}")

    def _bounds(self, old: Schema, new: Schema, path: Path) -> None:
        for read, below, key in ((_lower, True, "minimum"), (_upper, False, "maximum")):
            b_old, b_new = read(old), read(new)
            if b_old == b_new:
                continue
            at = (*path, key)
            if b_new is None:
                assert b_old is not None
                self.add("minor", at, f"bound {_bound_text(b_old, below)} removed")
                continue
            at = (*path, ("exclusiveM" + key[1:]) if b_new[1] else key)
            if b_old is None:
                self.add("major", at, f"bound {_bound_text(b_new, below)} added")
                continue
            stricter = (b_new > b_old) if below else ((b_new[0], not b_new[1]) < (b_old[0], not b_old[1]))
            move = f"{_bound_text(b_old, below)} -> {_bound_text(b_new, below)}"
            self.add("major" if stricter else "minor", at, f"range {'narrowed' if stricter else 'widened'}: {move}")
        m_old, m_new = old.get("multipleOf"), new.get("multipleOf")
        if m_old != m_new:
            widened = m_new is None or (m_old is not None and _divides(m_new, m_old))
            self.add("minor" if widened else "major", (*path, "multipleOf"), f"multipleOf {m_old} -> {m_new}")

    def _sizes(self, old: Schema, new: Schema, path: Path) -> None:
        for key in ("minLength", "minItems"):
            a, b = old.get(key), new.get(key)
            if a != b:
                stricter = b is not None and (a is None or b > a)
                self.add("major" if stricter else "minor", (*path, key), f"{key} {a} -> {b}")
        for key in ("maxLength", "maxItems"):
            a, b = old.get(key), new.get(key)
            if a != b:
                stricter = b is not None and (a is None or b < a)
                self.add("major" if stricter else "minor", (*path, key), f"{key} {a} -> {b}")
        if bool(old.get("uniqueItems")) != bool(new.get("uniqueItems")):
            stricter = bool(new.get("uniqueItems"))
            self.add("major" if stricter else "minor", (*path, "uniqueItems"), f"uniqueItems -> {stricter}")

    def _pii(self, old: str | None, new: str | None, path: Path) -> None:
        if old == new:
            return
        if new is None:
            # A dropped field may now be sent (an addition); a hashed or masked one now arrives raw.
            semver: Part = "minor" if old == "drop" else "major"
            self.add(semver, (*path, "x-pii"), f"PII tag {old!r} removed")
        else:
            what = "added" if old is None else f"changed from {old!r}"
            self.add("major", (*path, "x-pii"), f"PII tag {new!r} {what}: senders must change")


def _annotations(node: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in node.items() if k.startswith("x-") and k != "x-pii"}
