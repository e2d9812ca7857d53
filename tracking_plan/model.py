"""The tracking plan as data: what `load_plan` returns.

The model is built once from a document that passed the meta-schema and the
loader's semantic checks, so its invariants hold: every event has a registered
business line, every `$ref` is resolved (schemas here contain none), every
pattern compiles and every PII tag is known.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "VENDORS",
    "BusinessLine",
    "EventMapping",
    "EventSpec",
    "Funnel",
    "FunnelStep",
    "IdentityType",
    "Plan",
    "PlanSettings",
    "VendorMapping",
    "iter_pii",
]

Trigger = Literal["client", "server"]
Schema = dict[str, Any]

# The vendor SDKs whose traffic the collector can take in (docs/migration.md);
# the keys allowed under a plan's `mappings`.
VENDORS = ("sensors", "segment")


@dataclass(frozen=True, slots=True)
class BusinessLine:
    """A business line; its key in the plan is the prefix of its event names."""

    prefix: str
    title: str = ""
    description: str = ""
    owner: str = ""


@dataclass(frozen=True, slots=True)
class IdentityType:
    """A declared identity type (`login_id`, `customer_no`, ...)."""

    name: str
    priority: int = 100
    unique: bool = False
    description: str = ""
    pattern: str | None = None
    max_length: int | None = None
    pii: str | None = None
    # Who may introduce a value of this type to the identity graph: "any" sender, or only "signed" sources.
    introduced_by: Literal["any", "signed"] = "any"


@dataclass(frozen=True, slots=True)
class PlanSettings:
    """Plan-wide policies."""

    unknown_events: Literal["quarantine", "accept"] = "quarantine"
    additional_properties: bool = False


@dataclass(frozen=True, slots=True)
class EventSpec:
    """One planned event. `schema` is the JSON Schema of its own properties, refs resolved."""

    name: str
    business_line: str
    schema: Schema
    description: str = ""
    owner: str = ""
    trigger: Trigger = "client"
    fires_when: str = ""
    status: str = "active"
    tags: tuple[str, ...] = ()

    @property
    def properties(self) -> Mapping[str, Schema]:
        props: Mapping[str, Schema] = self.schema.get("properties", {})
        return props

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(self.schema.get("required", ()))


@dataclass(frozen=True, slots=True)
class EventMapping:
    """Where one vendor event goes: a planned event, and property names for that event only."""

    event: str
    properties: Mapping[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class VendorMapping:
    """How one vendor's names map onto the plan's (`mappings.<vendor>` in the plan).

    Keys are the vendor's names as its SDK sends them (`SubmitOrder`,
    `StockCode`, `$identity_mobile`); values are the plan's names, or None to
    drop that vendor name on purpose. The loader has checked that every target
    exists in the plan.
    """

    vendor: str
    events: Mapping[str, EventMapping] = field(default_factory=dict)
    properties: Mapping[str, str | None] = field(default_factory=dict)
    identities: Mapping[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FunnelStep:
    """One step of a funnel: an event, and property values it must carry (a list: any of them)."""

    event: str
    where: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Funnel:
    """A named funnel (the plan's `funnels`): ordered steps, a window from the first step, and who walks it.

    `identity` is `person` (the identity graph's person: a journey that crosses
    a login stays one) or a declared identity type (`anonymous_id` for a
    device's funnel). `success` marks the funnel's last step as a success
    event that channel reports count.
    """

    name: str
    steps: tuple[FunnelStep, ...]
    window_s: int = 7 * 86_400
    identity: str = "person"
    description: str = ""
    success: bool = True


@dataclass(frozen=True, slots=True)
class Plan:
    """A loaded tracking plan."""

    name: str
    version: str
    business_lines: Mapping[str, BusinessLine]
    identities: Mapping[str, IdentityType]
    events: Mapping[str, EventSpec]
    common_properties: Schema
    user_properties: Schema
    settings: PlanSettings = field(default_factory=PlanSettings)
    description: str = ""
    mappings: Mapping[str, Any] = field(default_factory=dict)
    funnels: Mapping[str, Funnel] = field(default_factory=dict)
    source: str = "<plan>"
    document: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def server_user_properties(self) -> frozenset[str]:
        """User properties only signed server sources may write (`"x-trigger": "server"` on their schema)."""
        props = self.user_properties.get("properties") or {}
        return frozenset(
            n for n, spec in props.items() if isinstance(spec, Mapping) and spec.get("x-trigger") == "server"
        )

    def business_line_of(self, event_name: str) -> str | None:
        """The prefix of the business line an event name belongs to (longest match)."""
        best: str | None = None
        for prefix in self.business_lines:
            if event_name.startswith(prefix + "_") and (best is None or len(prefix) > len(best)):
                best = prefix
        return best

    def pii_paths(self, event_name: str | None = None) -> dict[tuple[str, ...], str]:
        """Tagged property paths for an event (with the common properties), or for profiles."""
        if event_name is None:
            return dict(iter_pii(self.user_properties))
        paths = dict(iter_pii(self.common_properties))
        spec = self.events.get(event_name)
        if spec is not None:
            paths.update(iter_pii(spec.schema))
        return paths

    def identity_pii(self) -> dict[str, str]:
        """Identity types whose values are tagged, with their tag."""
        return {name: t.pii for name, t in self.identities.items() if t.pii}

    def vendor_mapping(self, vendor: str) -> VendorMapping:
        """The plan's mapping for a vendor in `VENDORS` (empty when the plan has none)."""
        if vendor not in VENDORS:
            raise ValueError(f"unknown vendor {vendor!r}; expected one of {', '.join(VENDORS)}")
        spec: Mapping[str, Any] = self.mappings.get(vendor) or {}
        events = {
            name: EventMapping(target)
            if isinstance(target, str)
            else EventMapping(target["event"], dict(target.get("properties", {})))
            for name, target in spec.get("events", {}).items()
        }
        return VendorMapping(vendor, events, dict(spec.get("properties", {})), dict(spec.get("identities", {})))

    def property_names(self, event_name: str | None = None) -> frozenset[str]:
        """Every property name an event may carry (its own and the common ones), or that any part of the plan declares.

        Presets are not included; `envelope.PRESET_SCHEMAS` lists them.
        """
        names = set(self.common_properties.get("properties", {}))
        if event_name is not None:
            spec = self.events.get(event_name)
            if spec is not None:
                names.update(spec.properties)
            return frozenset(names)
        names.update(self.user_properties.get("properties", {}))
        for spec in self.events.values():
            names.update(spec.properties)
        return frozenset(names)


def iter_pii(schema: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], str]]:
    """Yield (path, tag) for every property carrying `x-pii` inside an object schema."""
    for name, sub in schema.get("properties", {}).items():
        path = (*prefix, name)
        tag = sub.get("x-pii")
        if tag:
            yield path, tag
            continue
        yield from _iter_pii_value(sub, path)


def _iter_pii_value(schema: Mapping[str, Any], path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], str]]:
    if "properties" in schema:
        yield from iter_pii(schema, path)
    items = schema.get("items")
    if isinstance(items, Mapping):
        tag = items.get("x-pii")
        if tag:
            yield (*path, "*"), tag
        else:
            yield from _iter_pii_value(items, (*path, "*"))
