"""Writing the lake's Parquet files: the tables a pass builds, as typed, dictionary-encoded, zstd-compressed columns."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq

from maidian.tracking_plan import Plan

from .schema import Column, LakeSchema

# Files are sorted by identity, then time: a person's rows sit in a row group or two of each file, and row
# groups this small let a person lookup skip the rest (docs/decisions.md, "Lake: one typed column ...").
ROW_GROUP_ROWS: Final = 16 * 1024


_ORDER: Final = [("identity_key", "ascending"), ("time", "ascending")]


class _Event(msgspec.Struct):
    type: str = "track"
    event: str | None = None
    event_id: str = ""
    time: int = 0
    identities: dict[str, Any] = {}
    properties: dict[str, Any] = {}


_json: Final = msgspec.json.Encoder()


@dataclass(slots=True)
class _Rows:
    """Events gathered for one table, grouped by event name (the files' first sort key)."""

    groups: dict[str, list[tuple[_Event, int, int, str, str | None, int, str | None, int]]] = field(
        default_factory=dict
    )
    count: int = 0


def write_table(table: pa.Table, path: Path) -> None:
    """Write a Parquet file whole: under a temporary name, synced, then renamed."""
    tmp = path.with_name(path.name + ".tmp")
    no_dictionary = {"event_id", "extra"}
    pq.write_table(
        table,
        tmp,
        compression="zstd",
        compression_level=3,
        row_group_size=ROW_GROUP_ROWS,
        use_dictionary=[f.name for f in table.schema if f.name not in no_dictionary],
        write_statistics=["event", "type", "time", "identity_key", "event_id"],
    )
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _fits(kind: str, value: Any) -> bool:
    if kind in ("string", "enum"):
        return isinstance(value, str)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool) and -(1 << 63) <= value < (1 << 63)
    if kind == "float":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "list":
        return isinstance(value, list) and all(not isinstance(x, dict | list) for x in value)
    return True


def _column_array(column: Column, values: list[Any], extras: list[dict[str, Any] | None]) -> pa.Array:
    """One property's values as its column; a value that does not fit goes to that row's `extra`."""
    if column.kind == "json":
        return pa.array([None if v is None else _json.encode(v).decode() for v in values], pa.string())
    try:
        if column.kind == "float":
            return pa.array(values, pa.float64())
        return pa.array(values, column.arrow)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        pass
    kept = []
    for i, v in enumerate(values):
        if v is None or _fits(column.kind, v):
            kept.append(v)
            continue
        kept.append(None)
        extra = extras[i]
        if extra is None:
            extra = extras[i] = {}
        extra[column.prop] = v
    try:
        return pa.array(kept, column.arrow)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return pa.nulls(len(values), column.arrow)


class _Tables:
    """Turns gathered rows into Arrow tables with the plan's columns."""

    def __init__(self, plan: Plan, lake: LakeSchema) -> None:
        self.lake = lake
        self.events_schema = lake.events_schema()
        self.profiles_schema = lake.profiles_schema()
        by_prop = {c.prop: c for c in lake.properties}
        common = [by_prop[p] for p in plan.common_properties.get("properties", {}) if p in by_prop]
        self.columns_of: dict[str, list[Column]] = {}
        for name, spec in plan.events.items():
            own = [by_prop[p] for p in spec.properties if p in by_prop]
            self.columns_of[name] = list({c.prop: c for c in [*common, *own]}.values())
        self.common = common
        self.user_columns = list(lake.user_properties)

    def events(self, rows: _Rows) -> pa.Table:
        return self._table(rows, self.events_schema, profiles=False)

    def profiles(self, rows: _Rows) -> pa.Table:
        return self._table(rows, self.profiles_schema, profiles=True)

    def _table(self, rows: _Rows, schema: pa.Schema, *, profiles: bool) -> pa.Table:
        tables = []
        for name in sorted(rows.groups):
            group = rows.groups[name]
            columns = self.user_columns if profiles else self.columns_of.get(name, self.common)
            tables.append(self._group(group, columns, schema, profiles=profiles))
        if not tables:
            return schema.empty_table()
        # Each group has its own few columns; the others are nulls, made once per column for the whole table.
        table = pa.concat_tables(tables, promote_options="default")
        table = table.sort_by(_ORDER)
        n = table.num_rows
        columns = []
        for f in schema:
            i = table.schema.get_field_index(f.name)
            columns.append(table.column(i).combine_chunks() if i >= 0 else pa.nulls(n, f.type))
        return pa.Table.from_arrays(columns, schema=schema)

    def _group(
        self,
        group: list[tuple[_Event, int, int, str, str | None, int, str | None, int]],
        columns: list[Column],
        schema: pa.Schema,
        *,
        profiles: bool,
    ) -> pa.Table:
        events = [r[0] for r in group]
        n = len(events)
        # One pass over each event's own properties and identities (a few each), not over every column.
        values: dict[str, list[Any]] = {c.prop: [None] * n for c in columns}
        ids: dict[str, list[Any]] = {t: [None] * n for t in self.lake.identity_types}
        extras: list[dict[str, Any] | None] = [None] * n
        for i, e in enumerate(events):
            for k, v in e.properties.items():
                column = values.get(k)
                if column is not None:
                    column[i] = v
                else:
                    extra = extras[i]
                    if extra is None:
                        extra = extras[i] = {}
                    extra[k] = v
            for t, v in e.identities.items():
                column = ids.get(t)
                if column is not None:
                    column[i] = v if isinstance(v, str) else str(v)
        data: dict[str, pa.Array] = {
            "event_id": pa.array([e.event_id for e in events], pa.string()),
            "type": pa.array([e.type for e in events], pa.string()).dictionary_encode(),
            "time": pa.array([r[1] for r in group], pa.timestamp("ms")),
            "identity_key": pa.array([r[5] for r in group], pa.int64()),
        }
        if not profiles:
            data["event"] = pa.array([e.event or e.type for e in events], pa.string()).dictionary_encode()
            data["device_time"] = pa.array([e.time for e in events], pa.timestamp("ms"))
            data["received_at"] = pa.array([r[2] for r in group], pa.timestamp("ms"))
            data["source"] = pa.array([r[3] for r in group], pa.string()).dictionary_encode()
            data["flags"] = pa.array([r[4] for r in group], pa.string())
            data["person_id_at_write"] = pa.array([r[6] for r in group], pa.string())
        for t, column in ids.items():
            data[t] = pa.array(column, pa.string())
        for c in columns:
            data[c.name] = _column_array(c, values[c.prop], extras)
        data["extra"] = pa.array([None if x is None else _json.encode(x).decode() for x in extras], pa.string())
        fields = [schema.field(name) for name in data]
        arrays = [a if a.type == f.type else a.cast(f.type) for a, f in zip(data.values(), fields, strict=True)]
        return pa.Table.from_arrays(arrays, schema=pa.schema(fields))
