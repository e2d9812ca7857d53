"""The lake's tables as the tracking plan implies them: columns, Arrow types and DDL.

Promises:
- every planned property (an event's own and the common ones) is one typed
  column of `events`: strings stay strings (CJK intact), enums and consts are
  dictionary-encoded strings, integers are int64, numbers float64, booleans
  bool, arrays of scalars lists, anything else (objects, mixed types) a JSON
  string. Every user property is one column of `profiles`, typed the same way.
- a property whose name is taken by an envelope column gets the prefix `p_`;
  the mapping is one function (`column_name`), so readers and writers agree.
- a property declared with two different types across events gets one JSON
  column, never a column that refuses half its values.
- `extra` holds what the plan does not describe (and any value that does not
  fit its column), as a JSON object; it is null when there is nothing.

The column set depends only on the plan, so every file of one plan version has
the same schema; a newer plan adds columns, which readers union by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

import pyarrow as pa

from maidian.tracking_plan import Plan

__all__ = [
    "ENVELOPE",
    "Column",
    "LakeSchema",
    "column_name",
    "ddl",
    "schema_for",
]

Kind = Literal["string", "enum", "int", "float", "bool", "list", "json"]

_TIME = pa.timestamp("ms")
_DICT = pa.dictionary(pa.int32(), pa.string())
# The envelope of every `events` row, before the identity and property columns.
ENVELOPE: Final[tuple[tuple[str, pa.DataType], ...]] = (
    ("event_id", pa.string()),
    ("event", _DICT),
    ("type", _DICT),
    ("time", _TIME),
    ("device_time", _TIME),
    ("received_at", _TIME),
    ("source", _DICT),
    ("flags", pa.string()),
    ("identity_key", pa.int64()),
    ("person_id_at_write", pa.string()),
)
_RESERVED: Final = frozenset({n for n, _t in ENVELOPE} | {"extra", "event_date", "person_id", "person_key"})


@dataclass(frozen=True, slots=True)
class Column:
    """One property column: the property's name in events, its column name, kind and Arrow type."""

    prop: str
    name: str
    kind: Kind
    arrow: pa.DataType


@dataclass(frozen=True, slots=True)
class LakeSchema:
    """The columns of the lake's `events` and `profiles` tables for one plan."""

    identity_types: tuple[str, ...]
    properties: tuple[Column, ...]
    user_properties: tuple[Column, ...]

    def events_schema(self) -> pa.Schema:
        fields = [pa.field(n, t) for n, t in ENVELOPE]
        fields += [pa.field(t, pa.string()) for t in self.identity_types]
        fields += [pa.field(c.name, c.arrow) for c in self.properties]
        fields.append(pa.field("extra", pa.string()))
        return pa.schema(fields)

    def profiles_schema(self) -> pa.Schema:
        fields = [
            pa.field("event_id", pa.string()),
            pa.field("type", _DICT),
            pa.field("time", _TIME),
            pa.field("identity_key", pa.int64()),
        ]
        fields += [pa.field(t, pa.string()) for t in self.identity_types]
        fields += [pa.field(c.name, c.arrow) for c in self.user_properties]
        fields.append(pa.field("extra", pa.string()))
        return pa.schema(fields)


def column_name(prop: str) -> str:
    """The column a property is stored in."""
    return f"p_{prop}" if prop in _RESERVED else prop


def _kind_of(schema: Mapping[str, Any]) -> Kind:
    if "enum" in schema or "const" in schema:
        values = schema.get("enum", [schema.get("const")])
        if all(isinstance(v, str) for v in values):
            return "enum"
    t = schema.get("type")
    if isinstance(t, list):
        rest = [x for x in t if x != "null"]
        t = rest[0] if len(rest) == 1 else None
    if t == "string":
        return "string"
    if t == "integer":
        return "int"
    if t == "number":
        return "float"
    if t == "boolean":
        return "bool"
    if t == "array":
        items = schema.get("items")
        if isinstance(items, Mapping) and _kind_of(items) in ("string", "enum", "int", "float", "bool"):
            return "list"
    return "json"


def _arrow(kind: Kind, schema: Mapping[str, Any]) -> pa.DataType:
    if kind == "list":
        item = _kind_of(schema["items"])
        return pa.list_(_arrow(item, schema["items"]) if item != "enum" else pa.string())
    return {
        "string": pa.string(),
        "enum": _DICT,
        "int": pa.int64(),
        "float": pa.float64(),
        "bool": pa.bool_(),
        "json": pa.string(),
    }[kind]


def _columns(declared: Mapping[str, list[Mapping[str, Any]]]) -> tuple[Column, ...]:
    out = []
    for prop in sorted(declared):
        schemas = declared[prop]
        kinds = {_kind_of(s) for s in schemas}
        arrows = {str(_arrow(k, s)) for k, s in zip([_kind_of(s) for s in schemas], schemas, strict=True)}
        if len(kinds) == 1 and len(arrows) == 1:
            kind = kinds.pop()
            out.append(Column(prop, column_name(prop), kind, _arrow(kind, schemas[0])))
        elif kinds <= {"enum", "string"}:
            out.append(Column(prop, column_name(prop), "string", pa.string()))
        else:
            out.append(Column(prop, column_name(prop), "json", pa.string()))
    return tuple(out)


def schema_for(plan: Plan) -> LakeSchema:
    """The lake's columns for a plan."""
    declared: dict[str, list[Mapping[str, Any]]] = {}
    for prop, sub in plan.common_properties.get("properties", {}).items():
        declared.setdefault(prop, []).append(sub)
    for spec in plan.events.values():
        for prop, sub in spec.properties.items():
            declared.setdefault(prop, []).append(sub)
    users: dict[str, list[Mapping[str, Any]]] = {}
    for prop, sub in plan.user_properties.get("properties", {}).items():
        users.setdefault(prop, []).append(sub)
    identity_types = tuple(dict.fromkeys(["anonymous_id", "login_id", *sorted(plan.identities)]))
    return LakeSchema(identity_types, _columns(declared), _columns(users))


# -- DDL ----------------------------------------------------------------------------------------------

Engine = Literal["duckdb", "clickhouse", "postgres"]
ENGINES: Final = ("duckdb", "clickhouse", "postgres")


def _sql_type(t: pa.DataType, engine: Engine) -> str:
    if pa.types.is_dictionary(t):
        return {"duckdb": "VARCHAR", "clickhouse": "LowCardinality(String)", "postgres": "text"}[engine]
    if pa.types.is_list(t):
        inner = _sql_type(t.value_type, engine)
        return {"duckdb": f"{inner}[]", "clickhouse": f"Array({inner})", "postgres": f"{inner}[]"}[engine]
    if pa.types.is_timestamp(t):
        return {"duckdb": "TIMESTAMP", "clickhouse": "DateTime64(3, 'UTC')", "postgres": "timestamp"}[engine]
    if pa.types.is_int64(t):
        return {"duckdb": "BIGINT", "clickhouse": "Int64", "postgres": "bigint"}[engine]
    if pa.types.is_floating(t):
        return {"duckdb": "DOUBLE", "clickhouse": "Float64", "postgres": "double precision"}[engine]
    if pa.types.is_boolean(t):
        return {"duckdb": "BOOLEAN", "clickhouse": "Bool", "postgres": "boolean"}[engine]
    return {"duckdb": "VARCHAR", "clickhouse": "String", "postgres": "text"}[engine]


def _quote(name: str, engine: Engine) -> str:
    if engine == "clickhouse":
        return "`" + name.replace("`", "``") + "`"
    return '"' + name.replace('"', '""') + '"'


def _nullable(sql: str, engine: Engine, name: str) -> str:
    if engine != "clickhouse" or name in ("event_id", "event", "type", "time", "identity_key"):
        return sql
    if sql.startswith(("Array(", "LowCardinality(")):
        return sql if sql.startswith("Array(") else "LowCardinality(Nullable(String))"
    return f"Nullable({sql})"


def _table(name: str, schema: pa.Schema, engine: Engine, extra: list[tuple[str, str]]) -> str:
    cols = [(f.name, _nullable(_sql_type(f.type, engine), engine, f.name)) for f in schema]
    cols += extra
    body = ",\n".join(f"    {_quote(n, engine)} {t}" for n, t in cols)
    return f"CREATE TABLE {name} (\n{body}\n)"


def ddl(plan: Plan, engine: Engine) -> str:
    """The table definitions the plan implies, for one engine (`maidian lake ddl`)."""
    lake = schema_for(plan)
    date = {"duckdb": "DATE", "clickhouse": "Date", "postgres": "date"}[engine]
    ts = _sql_type(_TIME, engine)
    events = _table("events", lake.events_schema(), engine, [("event_date", date)])
    profiles = _table("profiles", lake.profiles_schema(), engine, [("event_date", date)])
    text = _sql_type(pa.string(), engine)
    identities_schema = [
        ("identity_key", _sql_type(pa.int64(), engine)),
        ("person_id", text),
        ("person_key", _sql_type(pa.int64(), engine)),
        ("identity_type", text),
        ("value", text),
        ("valid_from", _nullable(ts, engine, "valid_from")),
        ("valid_to", _nullable(ts, engine, "valid_to")),
    ]
    body = ",\n".join(f"    {_quote(n, engine)} {t}" for n, t in identities_schema)
    identities = f"CREATE TABLE identities (\n{body}\n)"
    parts = [f"-- maidian lake tables for plan {plan.name!r} {plan.version} ({engine})"]
    if engine == "clickhouse":
        events += "\nENGINE = MergeTree\nPARTITION BY event_date\nORDER BY (event, identity_key, time)"
        profiles += "\nENGINE = MergeTree\nPARTITION BY event_date\nORDER BY (identity_key, time)"
        identities += "\nENGINE = ReplacingMergeTree\nORDER BY identity_key"
        parts += [events + ";", profiles + ";", identities + ";", _clickhouse_kafka(events)]
    elif engine == "postgres":
        events += " PARTITION BY RANGE (event_date)"
        parts += [
            events + ";",
            "CREATE INDEX ON events (identity_key, time);",
            profiles + ";",
            identities + ";",
            "CREATE UNIQUE INDEX ON identities (identity_key);",
        ]
    else:
        parts += [events + ";", profiles + ";", identities + ";"]
    return "\n\n".join(parts) + "\n"


def _clickhouse_kafka(events: str) -> str:
    """A Kafka-engine queue of lake rows (JSONEachRow, as the lake writer makes them) and the view into `events`."""
    head, _sep, rest = events.partition("(\n")
    columns = rest.split("\n)\nENGINE", 1)[0]
    queue = head.replace("CREATE TABLE events", "CREATE TABLE events_queue") + "(\n" + columns + "\n)"
    return (
        queue
        + "\nENGINE = Kafka SETTINGS kafka_broker_list = 'kafka:9092', kafka_topic_list = 'maidian.lake.events',"
        + "\n    kafka_group_name = 'maidian-lake', kafka_format = 'JSONEachRow';\n\n"
        + "CREATE MATERIALIZED VIEW events_from_queue TO events AS SELECT * FROM events_queue;"
    )
