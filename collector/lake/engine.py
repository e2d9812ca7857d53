"""The lake as DuckDB views: what every report and `maidian report sql` query.

Views (all read-only, over the Parquet files as they are when the connection
opens; `Lake.refresh` sees newer ones):

- `events_raw`: every `events` file (Hive partitions, columns unioned by name
  so files of older plan versions read too);
- `identities`: identity -> person, as the lake's last pass resolved it;
- `events`: `events_raw` with `person_id`, the person the identity graph
  attributes each event to now (through `identity_key`), and `person_key`,
  its 64-bit key (what reports group by); the partition column `event_date`;
- `profiles` and `users`: profile operations, and per person the latest value
  of every user property (`profile_set`: the latest; `profile_set_once`: the
  earliest, when no set exists; `profile_increment`: added to the latest set
  or, without one, summed).

A lake with no files yet answers with empty views of the plan's columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from maidian.tracking_plan import Plan

from .layout import LakeDir
from .schema import LakeSchema, schema_for
from .writer import LakeError, lake_files

if TYPE_CHECKING:
    import duckdb

__all__ = ["Lake", "open_lake", "quote"]


def quote(name: str) -> str:
    """A DuckDB identifier."""
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@dataclass(slots=True)
class Lake:
    """An open DuckDB connection with the lake's views."""

    root: LakeDir
    plan: Plan
    schema: LakeSchema
    db: duckdb.DuckDBPyConnection
    # The last report query and its parameters (benchmarks run it bare, as the floor).
    last_query: tuple[str, dict[str, Any]] | None = None

    def refresh(self) -> None:
        """Recreate the views over the files as they are now."""
        _create_views(self)

    def rows(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        cursor = self.db.execute(sql, params or {})
        names = [d[0] for d in cursor.description or ()]
        return [dict(zip(names, r, strict=True)) for r in cursor.fetchall()]

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Lake:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_lake(data_dir: Path, plan: Plan, *, threads: int | None = None, memory_limit: str = "1536MB") -> Lake:
    """Open the lake of a data directory for reading."""
    import duckdb

    root = LakeDir.of(Path(data_dir))
    if not root.exists():
        raise LakeError(f"{data_dir}: no lake yet; run `maidian lake build` first")
    db = duckdb.connect(":memory:", config={"memory_limit": memory_limit})
    # Reports scan the same files several times; their footers (hundreds of columns) are read once.
    db.execute("SET parquet_metadata_cache = true")
    if threads is not None:
        db.execute(f"SET threads = {int(threads)}")
    lake = Lake(root, plan, schema_for(plan), db)
    _create_views(lake)
    return lake


def _source(lake: Lake, table: Path, schema: pa.Schema, name: str) -> str:
    import pyarrow.parquet as pq

    files = [f for f in lake_files(lake.root) if f.is_relative_to(table)]
    if files:
        glob = _literal(str(table / "*" / "*.parquet"))
        # Files of one plan version share a schema; unioning by name costs every scan a schema merge.
        shapes = {pq.read_schema(f).remove_metadata().to_string() for f in files}
        union = ", union_by_name = true" if len(shapes) > 1 else ""
        return f"SELECT * FROM read_parquet({glob}, hive_partitioning = true{union})"
    empty = schema.empty_table().append_column("event_date", pa.array([], pa.date32()))
    lake.db.register(f"_{name}_empty", empty)
    return f"SELECT * FROM _{name}_empty"


def _create_views(lake: Lake) -> None:
    db = lake.db
    root = lake.root
    db.execute(f"CREATE OR REPLACE VIEW events_raw AS {_source(lake, root.events, lake.schema.events_schema(), 'e')}")
    db.execute(
        f"CREATE OR REPLACE VIEW profiles_raw AS {_source(lake, root.profiles, lake.schema.profiles_schema(), 'p')}"
    )
    if root.identities.exists():
        db.execute(f"CREATE OR REPLACE VIEW identities AS SELECT * FROM read_parquet({_literal(str(root.identities))})")
    else:
        db.execute(
            "CREATE OR REPLACE VIEW identities AS SELECT NULL::BIGINT AS identity_key, NULL::VARCHAR AS person_id,"
            " NULL::BIGINT AS person_key, NULL::VARCHAR AS identity_type, NULL::VARCHAR AS value,"
            " NULL::TIMESTAMP AS valid_from, NULL::TIMESTAMP AS valid_to WHERE false"
        )
    # The join keeps every event; one the graph no longer attributes to anyone has a null person.
    db.execute("CREATE OR REPLACE VIEW persons AS SELECT identity_key, person_id, person_key FROM identities")
    db.execute(
        "CREATE OR REPLACE VIEW events AS SELECT e.*, p.person_id, p.person_key FROM events_raw e"
        " LEFT JOIN persons p ON p.identity_key = e.identity_key"
    )
    db.execute(
        "CREATE OR REPLACE VIEW profiles AS SELECT e.*, p.person_id, p.person_key FROM profiles_raw e"
        " LEFT JOIN persons p ON p.identity_key = e.identity_key"
    )
    db.execute(f"CREATE OR REPLACE VIEW users AS {_users_sql(lake.schema)}")


def _users_sql(schema: LakeSchema) -> str:
    """Per person, every user property's value after its profile operations in time order."""
    windows = []
    outputs = []
    for c in schema.user_properties:
        col = quote(c.name)
        set_at = quote(f"{c.name}__set_at")
        windows.append(
            f"max(time) FILTER (WHERE type = 'profile_set' AND {col} IS NOT NULL) OVER (PARTITION BY person_id)"
            f" AS {set_at}"
        )
        latest = f"arg_max({col}, time) FILTER (WHERE type = 'profile_set' AND {col} IS NOT NULL)"
        once = f"arg_min({col}, time) FILTER (WHERE type = 'profile_set_once' AND {col} IS NOT NULL)"
        value = f"coalesce({latest}, {once})"
        if c.kind in ("int", "float"):
            added = (
                f"sum({col}) FILTER (WHERE type = 'profile_increment' AND {col} IS NOT NULL"
                f" AND ({set_at} IS NULL OR time > {set_at}))"
            )
            value = (
                f"CASE WHEN {value} IS NULL AND {added} IS NULL THEN NULL"
                f" ELSE coalesce({value}, 0) + coalesce({added}, 0) END"
            )
        outputs.append(f"{value} AS {col}")
    inner = ", ".join(["*", *windows])
    return (
        f"SELECT person_id, max(time) AS updated_at, {', '.join(outputs)}"
        f" FROM (SELECT {inner} FROM profiles WHERE person_id IS NOT NULL) GROUP BY person_id"
    )
