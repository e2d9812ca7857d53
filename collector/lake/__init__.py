"""The lake: accepted events as typed Parquet derived from the plan, and the reports a data team asks for.

Needs the `lake` extra (pyarrow, duckdb). `writer.build` turns the raw log
into Parquet under `<data>/lake/` (layout.py), `engine.open_lake` opens it as
DuckDB views, `report` answers funnels, retention, channels, campaigns and
segments over them, and `privacy` applies deletions and retention to the
lake's files. docs/collector.md, "The lake", is the long form.

Nothing is imported here, so `import maidian.collector.lake` costs nothing
without the extra.
"""
