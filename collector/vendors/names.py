"""Vendor names onto the plan's: per-event map, vendor-wide map, built-in translations, then the name."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from maidian.collector.vendors.common import identity_value
from maidian.tracking_plan import Plan, VendorMapping
from maidian.tracking_plan.envelope import PRESET_SCHEMAS

Convert = Callable[[Any], Any]


def _same(value: Any) -> Any:
    return value


@dataclass(frozen=True, slots=True)
class Translation:
    """A vendor's own name for something maidian has: the target name and how to convert the value."""

    target: str
    convert: Convert = _same


_EXPLICIT, _BUILTIN, _ASIS = 0, 1, 2


_Resolved = tuple[str | None, Convert, int]


# Memo sizes for resolved property names: a plan maps a few hundred names over
# a few hundred events; past these, names are resolved each time.
_CACHED_TABLES: Final = 1024


_CACHED_NAMES: Final = 4096


@dataclass(slots=True)
class NameMapper:
    """Vendor property and identity names onto a plan's, for one vendor. Build once per plan."""

    plan: Plan
    mapping: VendorMapping
    _known: dict[str | None, frozenset[str]] = field(default_factory=dict)
    _tables: dict[tuple[str | None, str | None, int, bool], tuple[Mapping[str, Translation], dict[str, _Resolved]]] = (
        field(default_factory=dict)
    )

    @classmethod
    def for_plan(cls, plan: Plan, vendor: str) -> NameMapper:
        return cls(plan, plan.vendor_mapping(vendor))

    def event_name(self, vendor_event: str) -> str:
        """The plan's name for a vendor event; unmapped names are kept and follow the plan's unknown-event policy."""
        target = self.mapping.events.get(vendor_event)
        return vendor_event if target is None else target.event

    def declares(self, name: str, event: str | None) -> bool:
        """Whether the plan knows property `name` (for this track event, or for profiles when `event` is None)."""
        known = self._known.get(event)
        if known is None:
            if event is None:
                known = frozenset(self.plan.user_properties.get("properties", {}))
            else:
                known = self.plan.property_names(event)
            self._known[event] = known
        return name in known or name in PRESET_SCHEMAS

    def properties(
        self,
        values: Mapping[str, Any],
        *,
        vendor_event: str | None,
        event: str | None,
        builtin: Mapping[str, Translation],
        presets_only: bool = False,
        dropped: list[str],
    ) -> dict[str, Any]:
        """Rename (and convert) vendor properties for one maidian event.

        `vendor_event` selects the plan's per-event map; `event` is the maidian
        event they go to (None for profile operations), used to see whether a
        built-in translation's target exists. With `presets_only` (bind,
        unbind, profile_delete) only maidian presets are kept. Every vendor name
        that is not kept is appended to `dropped` as `properties.<name>`.
        """
        table = self._table(vendor_event, event, builtin, presets_only)
        out: dict[str, Any] = {}
        rank: dict[str, tuple[int, str]] = {}  # target -> (how it was reached, from which vendor name)
        for name, value in values.items():
            resolved = table.get(name) if table is not None else None
            if resolved is None:
                resolved = self._resolve(name, vendor_event, event, builtin, presets_only)
                if table is not None and len(table) < _CACHED_NAMES:
                    table[name] = resolved
            target, convert, level = resolved
            if target is None:
                dropped.append(f"properties.{name}")
                continue
            if target in rank:
                held, source = rank[target]
                if held <= level:
                    dropped.append(f"properties.{name}")
                    continue
                dropped.append(f"properties.{source}")
            out[target] = convert(value)
            rank[target] = (level, name)
        return out

    def _resolve(
        self,
        name: str,
        vendor_event: str | None,
        event: str | None,
        builtin: Mapping[str, Translation],
        presets_only: bool,
    ) -> _Resolved:
        """Where one vendor property name goes (None: dropped), how its value converts, and how strongly."""
        per_event = self.mapping.events.get(vendor_event) if vendor_event is not None else None
        target: str | None
        convert: Convert = _same
        if per_event is not None and name in per_event.properties:
            target, level = per_event.properties[name], _EXPLICIT
        elif name in self.mapping.properties:
            target, level = self.mapping.properties[name], _EXPLICIT
        elif name in builtin and (builtin[name].target.startswith("$") or self.declares(builtin[name].target, event)):
            target, convert, level = builtin[name].target, builtin[name].convert, _BUILTIN
        elif name.startswith("$"):
            target, level = None, _ASIS
        else:
            target, level = name, _ASIS
        if presets_only and target not in PRESET_SCHEMAS:
            target = None
        return target, convert, level

    def _table(
        self, vendor_event: str | None, event: str | None, builtin: Mapping[str, Translation], presets_only: bool
    ) -> dict[str, _Resolved] | None:
        """The memo of resolved names for one combination of arguments; None once the memo is full.

        Names and vendor events come from the wire, so both levels are
        bounded. The entry keeps `builtin` alive so that its id is not reused.
        """
        key = (vendor_event, event, id(builtin), presets_only)
        entry = self._tables.get(key)
        if entry is not None and entry[0] is builtin:
            return entry[1]
        if len(self._tables) >= _CACHED_TABLES:
            return None
        table: dict[str, _Resolved] = {}
        self._tables[key] = (builtin, table)
        return table

    def identity_type(self, vendor_key: str, builtin: Mapping[str, tuple[str, ...]]) -> str | None:
        """The plan's identity type for a vendor identity key, or None when the plan has no place for it.

        Order: the plan's explicit map; the vendor's built-in keys (each names
        candidate types, the first one the plan declares wins); the key itself,
        or the key without the `$identity_` prefix, when the plan declares an
        identity type of that name.
        """
        if vendor_key in self.mapping.identities:
            return self.mapping.identities[vendor_key]
        if vendor_key in builtin:
            return next((t for t in builtin[vendor_key] if t in self.plan.identities), None)
        bare = vendor_key.removeprefix("$identity_")
        return bare if bare in self.plan.identities else None

    def identities(
        self, pairs: Iterable[tuple[str, object]], builtin: Mapping[str, tuple[str, ...]], dropped: list[str]
    ) -> dict[str, str]:
        """Map (vendor key, value) pairs to maidian identities; the first value for a type wins."""
        out: dict[str, str] = {}
        for key, raw in pairs:
            if raw is None:
                continue
            value = identity_value(raw)
            target = self.identity_type(key, builtin)
            if value is None or target is None:
                dropped.append(f"identities.{key}")
                continue
            if target in out and out[target] != value:
                dropped.append(f"identities.{key}")
                continue
            out[target] = value
        return out
