"""Reports over the lake: funnel, retention, channels, campaign, segment, person, and read-only SQL.

Every report is one DuckDB query over the lake's views (engine.py) and
returns a `Report`: named columns and rows, printable as JSON or CSV and
rendered as HTML (html.py). Persons are the identity graph's, resolved at
query time, so a journey that crosses a login is one person's.

Definitions (the tests check each against a plain Python computation):

- **funnel**: a person reaches step k when, after some occurrence of step 1,
  they fired steps 2..k in order, each strictly after the previous one (by
  corrected time, then event id) and every step within `window` of that
  step-1 event. Each step's next event is the earliest that qualifies, which
  maximises the steps reached from that start; a person counts once, at their
  best start. Only step-1 events within the date range start a journey.
- **retention**: a person's cohort day is the date of their first start
  event (any event when none is given: new persons), their group the
  property's value on that event; day n retains them when they fired the
  return event (any) on cohort day + n. A rate's denominator holds only the
  persons whose day n is within the data (no cohort counts as lost before its
  day has come).
- **channels**: a person's channel is the (utm_source, utm_medium,
  utm_campaign) of their first event that has a utm_source (first touch);
  new persons are those whose first event falls in the range; each success
  event counts the new persons who ever fired it; day-1 and day-7 retention
  as above (day 7: any event on days 1 to 7).
- **campaign**: exposed persons fired the exposure event (with its
  conditions) in the range, from their first such event; not exposed are the
  other persons active in the range, from their first event there. Either
  converts by firing the conversion event within `window` after that moment.
- **segment**: persons who did every `did` filter, none of the `did_not`
  ones, and whose user properties (the `users` view) match every condition.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from maidian.tracking_plan.model import Funnel, FunnelStep

from .engine import Lake, quote
from .schema import column_name
from .writer import LakeError

__all__ = [
    "Did",
    "Report",
    "UserCondition",
    "campaign",
    "channels",
    "funnel",
    "person",
    "retention",
    "segment",
    "sql",
]

DEFAULT_RETENTION_DAYS: Final = (1, 2, 3, 7, 14, 30)
_OPS: Final = ("=", "!=", ">=", "<=", ">", "<")


@dataclass(frozen=True, slots=True)
class Report:
    """A report's result: a kind, its parameters, column names and rows (the CLI prints them as CSV too)."""

    kind: str
    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]
    params: Mapping[str, Any] = field(default_factory=dict)

    def records(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, r, strict=True)) for r in self.rows]

    def as_json(self) -> str:
        doc = {"report": self.kind, "title": self.title, "params": dict(self.params), "rows": self.records()}
        return json.dumps(doc, ensure_ascii=False, default=_jsonable, indent=1)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return str(value)


def _ratio(n: int, d: int) -> float | None:
    return None if d == 0 else round(n / d, 6)


class _Sql:
    """A query under construction, with its parameters in order."""

    def __init__(self, lake: Lake) -> None:
        self.lake = lake
        self.params: dict[str, Any] = {}
        self.columns = {c.prop: c for c in lake.schema.properties}

    def value(self, v: Any) -> str:
        name = f"p{len(self.params)}"
        self.params[name] = v
        return f"${name}"

    def where(self, conditions: Mapping[str, Any]) -> str:
        parts = []
        for prop, want in conditions.items():
            if prop not in self.columns:
                raise LakeError(f"property {prop!r} is not in the plan; a condition needs a planned property")
            col = quote(column_name(prop))
            if isinstance(want, list | tuple):
                parts.append(f"{col} IN ({', '.join(self.value(v) for v in want)})")
            else:
                parts.append(f"{col} = {self.value(want)}")
        return " AND ".join(parts) if parts else "true"

    def dates(self, since: dt.date | None, until: dt.date | None) -> str:
        parts = []
        if since is not None:
            parts.append(f"event_date >= {self.value(since)}")
        if until is not None:
            parts.append(f"event_date <= {self.value(until)}")
        return " AND ".join(parts) if parts else "true"

    def run(self, text: str) -> list[tuple[Any, ...]]:
        self.lake.last_query = (text, dict(self.params))
        return self.lake.db.execute(text, self.params).fetchall()


def _who(lake: Lake, identity: str) -> str:
    if identity == "person":
        return "person_key"
    if identity not in lake.schema.identity_types:
        raise LakeError(f"identity {identity!r} is neither 'person' nor an identity type of the plan")
    return quote(identity)


def _event_known(lake: Lake, event: str) -> None:
    if event not in lake.plan.events:
        raise LakeError(f"event {event!r} is not in the plan")


# -- funnel --------------------------------------------------------------------------------------------


def funnel(
    lake: Lake,
    spec: Funnel,
    *,
    since: dt.date | None = None,
    until: dt.date | None = None,
) -> Report:
    """Persons reaching each step of a funnel; see the module docstring for the definition."""
    if not spec.steps:
        raise LakeError(f"funnel {spec.name!r} has no steps")
    for step in spec.steps:
        _event_known(lake, step.event)
    q = _Sql(lake)
    who = _who(lake, spec.identity)
    window_ms = int(spec.window_s * 1000)
    # One scan: each event gets the list of steps it matches (the same event may be two steps).
    matches = []
    for i, step in enumerate(spec.steps, 1):
        dates = q.dates(since, until) if i == 1 else _after(q, since)
        matches.append(f"CASE WHEN event = {q.value(step.event)} AND {q.where(step.where)} AND {dates} THEN {i} END")
    names = ", ".join(q.value(e) for e in dict.fromkeys(s.event for s in spec.steps))
    parts = [
        f"tagged AS (SELECT {who} AS who, epoch_ms(time) AS t, event_id, unnest([{', '.join(matches)}]) AS step"
        f" FROM events WHERE event IN ({names}) AND {who} IS NOT NULL)",
        "hits AS (SELECT who, t, event_id, step FROM tagged WHERE step IS NOT NULL)",
        "ranked AS MATERIALIZED (SELECT who, t, step, dense_rank() OVER (PARTITION BY who ORDER BY t, event_id) AS o"
        " FROM hits)",
        "j1 AS (SELECT who, t AS t0, o AS o1 FROM ranked WHERE step = 1)",
    ]
    for k in range(2, len(spec.steps) + 1):
        parts.append(f"e{k} AS (SELECT who, o, t FROM ranked WHERE step = {k})")
        parts.append(
            f"m{k} AS (SELECT j.*, e.o AS x{k}, e.t AS y{k} FROM j{k - 1} j"
            f" ASOF LEFT JOIN e{k} e ON j.who = e.who AND e.o > j.o{k - 1})"
        )
        parts.append(
            f"j{k} AS (SELECT * EXCLUDE (x{k}, y{k}),"
            f" CASE WHEN y{k} <= t0 + {window_ms} THEN x{k} END AS o{k} FROM m{k})"
        )
    n = len(spec.steps)
    reached = " + ".join(f"(o{k} IS NOT NULL)::INT" for k in range(1, n + 1))
    parts.append(f"best AS (SELECT who, max({reached}) AS reached FROM j{n} GROUP BY who)")
    counts = ", ".join(f"count(*) FILTER (WHERE reached >= {k})" for k in range(1, n + 1))
    rows = q.run("WITH " + ",\n".join(parts) + f"\nSELECT {counts} FROM best")
    persons = [int(x or 0) for x in rows[0]] if rows else [0] * n
    out = []
    for i, (step, count) in enumerate(zip(spec.steps, persons, strict=True)):
        previous = persons[i - 1] if i else count
        out.append((i + 1, step.event, count, _ratio(count, previous), _ratio(count, persons[0])))
    return Report(
        "funnel",
        f"Funnel {spec.name}",
        ("step", "event", "persons", "from_previous", "from_first"),
        tuple(out),
        {"funnel": spec.name, "window_s": spec.window_s, "identity": spec.identity, **_range(since, until)},
    )


def _after(q: _Sql, since: dt.date | None) -> str:
    return "true" if since is None else f"event_date >= {q.value(since)}"


def _range(since: dt.date | None, until: dt.date | None) -> dict[str, Any]:
    return {"since": since.isoformat() if since else None, "until": until.isoformat() if until else None}


def funnel_of(lake: Lake, name: str) -> Funnel:
    """A funnel the plan names."""
    spec = lake.plan.funnels.get(name)
    if spec is None:
        known = ", ".join(sorted(lake.plan.funnels)) or "none"
        raise LakeError(f"the plan has no funnel {name!r} (it has: {known})")
    return spec


def adhoc_funnel(events: Sequence[str], *, window_s: int, identity: str = "person") -> Funnel:
    """A funnel from event names given on the command line."""
    return Funnel("adhoc", tuple(FunnelStep(e) for e in events), window_s=window_s, identity=identity)


# -- retention -----------------------------------------------------------------------------------------


def retention(
    lake: Lake,
    *,
    by: str | None = "utm_source",
    start: str | None = None,
    back: str | None = None,
    days: Sequence[int] = DEFAULT_RETENTION_DAYS,
    since: dt.date | None = None,
    until: dt.date | None = None,
    identity: str = "person",
) -> Report:
    """Retention per group of a property; see the module docstring for the definition."""
    q = _Sql(lake)
    who = _who(lake, identity)
    if by is not None and by not in q.columns:
        raise LakeError(f"property {by!r} is not in the plan")
    group = quote(column_name(by)) if by is not None else "NULL"
    start_filter = "true" if start is None else f"event = {q.value(start)}"
    back_filter = "true" if back is None else f"event = {q.value(back)}"
    if start is not None:
        _event_known(lake, start)
    if back is not None:
        _event_known(lake, back)
    day_list = sorted({int(d) for d in days if int(d) >= 1})
    if not day_list:
        raise LakeError("retention needs at least one day after the cohort day (1 or more)")
    cohort_dates = q.dates(since, until)
    columns = []
    for d in day_list:
        columns.append(f"count(DISTINCT who) FILTER (WHERE d = d0 + {d}) AS n{d}")
        columns.append(f"count(DISTINCT who) FILTER (WHERE d0 + {d} <= (SELECT last FROM bounds)) AS base{d}")
    text = (
        f"WITH base AS MATERIALIZED (SELECT {who} AS who, event_date AS d, time, event_id, {group} AS grp,"
        f" {start_filter} AS is_start, {back_filter} AS is_back FROM events WHERE {who} IS NOT NULL),"
        " firsts AS (SELECT who, min(d) AS d0, arg_min_null(grp, (time, event_id)) AS grp FROM base"
        " WHERE is_start GROUP BY 1),"
        f" cohort AS (SELECT * FROM firsts WHERE {cohort_dates.replace('event_date', 'd0')}),"
        " bounds AS (SELECT max(d) AS last FROM base),"
        " back AS (SELECT DISTINCT who, d FROM base WHERE is_back),"
        f" joined AS (SELECT c.who, c.d0, c.grp, r.d FROM cohort c LEFT JOIN back r ON r.who = c.who"
        f" AND r.d > c.d0 AND r.d <= c.d0 + {max(day_list)})"
        f" SELECT grp, count(DISTINCT who) AS persons, {', '.join(columns)}"
        " FROM joined GROUP BY 1 ORDER BY persons DESC, 1 NULLS LAST"
    )
    rows = q.run(text)
    out = []
    for row in rows:
        grp, persons, *rest = row
        cells: list[Any] = ["(none)" if grp is None else grp, int(persons)]
        for i, _d in enumerate(day_list):
            n, base = int(rest[2 * i]), int(rest[2 * i + 1])
            cells += [n, _ratio(n, base)]
        out.append(tuple(cells))
    cols: list[str] = [by or "group", "persons"]
    for d in day_list:
        cols += [f"day{d}", f"day{d}_rate"]
    return Report(
        "retention",
        f"Retention by {by or 'all'}",
        tuple(cols),
        tuple(out),
        {"by": by, "start": start, "back": back, "days": day_list, **_range(since, until), "identity": identity},
    )


# -- channels ------------------------------------------------------------------------------------------


def default_success_events(lake: Lake) -> list[str]:
    """The plan's success events: the last step of every funnel marked `success`."""
    return list(dict.fromkeys(f.steps[-1].event for f in lake.plan.funnels.values() if f.success and f.steps))


def channels(
    lake: Lake,
    *,
    success: Sequence[str] | None = None,
    since: dt.date | None = None,
    until: dt.date | None = None,
) -> Report:
    """New persons per first-touch UTM channel, their success events and day-1/day-7 retention."""
    q = _Sql(lake)
    for needed in ("utm_source", "utm_medium", "utm_campaign"):
        if needed not in q.columns:
            raise LakeError(f"the plan declares no {needed} property; channels need the UTM properties")
    events = list(success) if success is not None else default_success_events(lake)
    for e in events:
        _event_known(lake, e)
    range_filter = q.dates(since, until).replace("event_date", "n.d0")
    succ = ", ".join(q.value(e) for e in events) or "NULL"
    text = (
        "WITH base AS MATERIALIZED (SELECT person_key AS who, event_date AS d, time, event_id,"
        f" CASE WHEN event IN ({succ}) THEN event END AS success FROM events WHERE person_key IS NOT NULL),"
        " firsts AS (SELECT who, min(d) AS d0 FROM base GROUP BY 1),"
        " touch AS (SELECT person_key AS who, arg_min(struct_pack(utm_source, utm_medium, utm_campaign),"
        " (time, event_id)) AS ch FROM events WHERE person_key IS NOT NULL AND utm_source IS NOT NULL GROUP BY 1),"
        " new AS (SELECT n.who, n.d0, t.ch.utm_source AS src, t.ch.utm_medium AS med, t.ch.utm_campaign AS camp"
        f" FROM firsts n JOIN touch t USING (who) WHERE {range_filter}),"
        " per AS (SELECT n.who, any_value(n.d0) AS d0, bool_or(b.d = n.d0 + 1) AS d1,"
        " bool_or(b.d > n.d0 AND b.d <= n.d0 + 7) AS d7, list_distinct(list(b.success)) AS done"
        " FROM new n JOIN base b USING (who) GROUP BY 1),"
        " last AS (SELECT max(d) AS last FROM base)"
        " SELECT n.src, n.med, n.camp, count(*) AS persons"
        + "".join(f", count(*) FILTER (WHERE list_contains(p.done, {q.value(e)}))" for e in events)
        + ", count(*) FILTER (WHERE p.d1), count(*) FILTER (WHERE n.d0 + 1 <= (SELECT last FROM last)),"
        " count(*) FILTER (WHERE p.d7), count(*) FILTER (WHERE n.d0 + 7 <= (SELECT last FROM last))"
        " FROM new n JOIN per p USING (who) GROUP BY 1, 2, 3 ORDER BY persons DESC, 1, 2, 3"
    )
    rows = q.run(text)
    out = []
    for row in rows:
        src, med, camp, persons, *rest = row
        done = [int(x) for x in rest[: len(events)]]
        d1, d1_base, d7, d7_base = (int(x) for x in rest[len(events) :])
        cells: list[Any] = [src, med, camp, int(persons)]
        for n in done:
            cells += [n, _ratio(n, int(persons))]
        cells += [_ratio(d1, d1_base), _ratio(d7, d7_base)]
        out.append(tuple(cells))
    cols: list[str] = ["utm_source", "utm_medium", "utm_campaign", "new_persons"]
    for e in events:
        cols += [e, f"{e}_rate"]
    cols += ["day1_retention", "day7_retention"]
    return Report(
        "channels", "Channels (first touch)", tuple(cols), tuple(out), {"success": events, **_range(since, until)}
    )


# -- campaign ------------------------------------------------------------------------------------------


def campaign(
    lake: Lake,
    *,
    exposure: str,
    conversion: str,
    where: Mapping[str, Any] | None = None,
    window_s: int = 7 * 86_400,
    since: dt.date | None = None,
    until: dt.date | None = None,
) -> Report:
    """Conversion of persons exposed to a campaign against the persons who were not."""
    _event_known(lake, exposure)
    _event_known(lake, conversion)
    q = _Sql(lake)
    window_ms = int(window_s * 1000)
    dates = q.dates(since, until)
    exposed_filter = f"event = {q.value(exposure)} AND {q.where(where or {})} AND {dates}"
    dates2 = q.dates(since, until)
    conv = q.value(conversion)
    text = (
        f"WITH base AS MATERIALIZED (SELECT person_key AS who, epoch_ms(time) AS t, event_id,"
        f" ({exposed_filter}) AS exposing, ({dates2}) AS in_range, event = {conv} AS converting"
        " FROM events WHERE person_key IS NOT NULL),"
        " exposed AS (SELECT who, min((t, event_id)) AS ref FROM base WHERE exposing GROUP BY 1),"
        " active AS (SELECT who, min((t, event_id)) AS ref FROM base WHERE in_range GROUP BY 1),"
        " groups AS (SELECT 'exposed' AS grp, who, ref FROM exposed"
        " UNION ALL SELECT 'not_exposed', who, ref FROM active WHERE who NOT IN (SELECT who FROM exposed)),"
        " conv AS (SELECT who, t, event_id FROM base WHERE converting),"
        " hit AS (SELECT DISTINCT g.who FROM groups g JOIN conv c ON c.who = g.who"
        f" AND (c.t, c.event_id) > g.ref AND c.t <= g.ref[1] + {window_ms})"
        " SELECT g.grp, count(*), count(h.who) FROM groups g LEFT JOIN hit h ON h.who = g.who GROUP BY 1 ORDER BY 1"
    )
    found = {grp: (int(n), int(c)) for grp, n, c in q.run(text)}
    out = []
    for grp in ("exposed", "not_exposed"):
        n, c = found.get(grp, (0, 0))
        out.append((grp, n, c, _ratio(c, n)))
    exposed_rate, other_rate = out[0][3], out[1][3]
    lift = None if exposed_rate is None or not other_rate else round(exposed_rate / other_rate - 1, 6)
    return Report(
        "campaign",
        f"Campaign: {exposure} -> {conversion}",
        ("group", "persons", "converted", "rate"),
        tuple(out),
        {
            "exposure": exposure,
            "where": dict(where or {}),
            "conversion": conversion,
            "window_s": window_s,
            "lift": lift,
            **_range(since, until),
        },
    )


# -- segment -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Did:
    """Persons who fired an event (with these property values) between two dates (inclusive)."""

    event: str
    where: Mapping[str, Any] = field(default_factory=dict)
    since: dt.date | None = None
    until: dt.date | None = None


@dataclass(frozen=True, slots=True)
class UserCondition:
    """A user property compared with a value (`users` view): `op` one of = != >= <= > <."""

    prop: str
    op: Literal["=", "!=", ">=", "<=", ">", "<"]
    value: Any

    @classmethod
    def parse(cls, text: str) -> UserCondition:
        for op in (">=", "<=", "!=", "=", ">", "<"):
            name, sep, value = text.partition(op)
            if sep and name.strip():
                return cls(name.strip(), op, _scalar(value.strip()))
        raise LakeError(f"a user condition reads PROPERTY OP VALUE with OP one of {' '.join(_OPS)}: {text!r}")


def _scalar(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def segment(
    lake: Lake,
    *,
    did: Sequence[Did] = (),
    did_not: Sequence[Did] = (),
    users: Sequence[UserCondition] = (),
) -> Report:
    """The persons matching every filter, as a sorted list of person ids."""
    q = _Sql(lake)
    user_columns = {c.prop: c for c in lake.schema.user_properties}
    sets = ["SELECT DISTINCT person_id FROM events WHERE person_id IS NOT NULL"]
    for d in did:
        _event_known(lake, d.event)
        sets.append(
            f"SELECT DISTINCT person_id FROM events WHERE person_id IS NOT NULL AND event = {q.value(d.event)}"
            f" AND {q.where(d.where)} AND {q.dates(d.since, d.until)}"
        )
    if users:
        conditions = []
        for u in users:
            column = user_columns.get(u.prop)
            if column is None:
                raise LakeError(f"user property {u.prop!r} is not in the plan")
            if u.op not in _OPS:
                raise LakeError(f"unknown comparison {u.op!r}")
            conditions.append(f"{quote(column.name)} {u.op} {q.value(u.value)}")
        sets.append(f"SELECT person_id FROM users WHERE {' AND '.join(conditions)}")
    text = " INTERSECT ".join(f"({s})" for s in sets)
    for d in did_not:
        _event_known(lake, d.event)
        text = (
            f"({text}) EXCEPT (SELECT DISTINCT person_id FROM events WHERE event = {q.value(d.event)}"
            f" AND {q.where(d.where)} AND {q.dates(d.since, d.until)})"
        )
    rows = q.run(f"SELECT person_id FROM ({text}) ORDER BY 1")
    return Report(
        "segment",
        "Segment",
        ("person_id",),
        tuple((r[0],) for r in rows),
        {
            "did": [_did_doc(d) for d in did],
            "did_not": [_did_doc(d) for d in did_not],
            "users": [{"property": u.prop, "op": u.op, "value": u.value} for u in users],
        },
    )


def _did_doc(d: Did) -> dict[str, Any]:
    return {"event": d.event, "where": dict(d.where), **_range(d.since, d.until)}


# -- person and SQL ------------------------------------------------------------------------------------


def person(lake: Lake, value: str, identity_type: str | None = None) -> Report:
    """Every event of the person who owns an identity, in time order."""
    q = _Sql(lake)
    type_filter = "" if identity_type is None else f" AND identity_type = {q.value(identity_type)}"
    found = q.run(f"SELECT DISTINCT person_id FROM identities WHERE value = {q.value(value)}{type_filter}")
    persons = [r[0] for r in found if r[0] is not None]
    if not persons:
        raise LakeError("no identity in the lake has that value")
    found_keys = lake.db.execute("SELECT identity_key FROM identities WHERE person_id = $p", {"p": persons[0]})
    keys = [r[0] for r in found_keys.fetchall()]
    listed = ", ".join(str(int(k)) for k in keys)
    # Two steps: which events the person has (two narrow columns), then only the columns those events can fill.
    found_names = lake.db.execute(f"SELECT DISTINCT event FROM events_raw WHERE identity_key IN ({listed})")
    names_found = [r[0] for r in found_names.fetchall()]
    wanted = ["event_id", "event", "type", "time", "device_time", "received_at", "source", "flags", "identity_key"]
    wanted += list(lake.schema.identity_types)
    by_prop = {c.prop: c.name for c in lake.schema.properties}
    for name in names_found:
        spec = lake.plan.events.get(name)
        props = list(lake.plan.common_properties.get("properties", {})) + list(spec.properties if spec else ())
        wanted += [by_prop[p] for p in props if p in by_prop]
    wanted = [*dict.fromkeys(wanted), "extra", "event_date"]
    cursor = lake.db.execute(
        f"SELECT {', '.join(quote(c) for c in wanted)} FROM events_raw WHERE identity_key IN ({listed})"
        " ORDER BY time, event_id"
    )
    names = tuple(d[0] for d in cursor.description or ())
    rows = cursor.fetchall()
    keep = [i for i, n in enumerate(names) if any(r[i] is not None for r in rows)]
    return Report(
        "person",
        "Person",
        ("person_id", *(names[i] for i in keep)),
        tuple((persons[0], *(r[i] for i in keep)) for r in rows),
        {"identity_type": identity_type},
    )


def sql(lake: Lake, text: str) -> Report:
    """A read-only query over the lake's views (`maidian report sql`): one SELECT, nothing else."""
    import duckdb

    try:
        statements = lake.db.extract_statements(text)
    except duckdb.Error as exc:
        raise LakeError(f"the query does not parse: {exc}") from exc
    if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
        raise LakeError("report sql runs exactly one SELECT (or WITH ... SELECT) statement over the lake's views")
    try:
        cursor = lake.db.execute(text)
    except duckdb.Error as exc:
        raise LakeError(f"the query failed: {exc}") from exc
    names = tuple(d[0] for d in cursor.description or ())
    return Report("sql", "SQL", names, tuple(cursor.fetchall()), {"sql": text})
