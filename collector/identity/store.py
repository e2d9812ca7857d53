"""The identity graph's SQLite store: schema, the write path and the reads.

Tables (one file, WAL mode):

- `node`: one row per identity (type, value), with the key of the earliest
  link that carries it, its cluster and its person.
- `link`: one row per distinct set of identities (`members`: node ids,
  ascending), with the key of its earliest event and its cluster.
- `cluster`: the connected parts of all links, refused ones included, with the
  key of their latest multi-identity link. A cluster is the unit of replay.
- `person`: one row per component: its representative and the counts the
  rules need, so one link at the end of history is checked without loading
  the people it touches.
- `explicit`: bind and unbind events, one row per pair of identities named.
- `refusal`: the refusal record: per event and identity type for junk ids,
  unknown types and untrusted unbinds; per refused link (under its earliest
  event) for the rules.
- `meta`: schema version, policy fingerprint, a generation that `forget`
  bumps (other processes drop their caches when it moves), the caller's
  checkpoint.

Every write happens in a `Unit` (`_identity_unit`), inside one `BEGIN
IMMEDIATE` transaction per call.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from maidian.collector.identity.rules import Key, Link, Node, Rules, person_id
from maidian.collector.identity.types import IdentityGraphError, IdentityPolicy, Observation
from maidian.collector.identity.unit import Change, Unit, members_of
from maidian.collector.sqlite import connect

SCHEMA_VERSION: Final = 1

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS node (
    id INTEGER PRIMARY KEY,
    type TEXT NOT NULL,
    value TEXT NOT NULL,
    first_time INTEGER NOT NULL,
    first_event TEXT NOT NULL,
    cluster INTEGER NOT NULL,
    person TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS node_identity ON node (value, type);
CREATE INDEX IF NOT EXISTS node_cluster ON node (cluster);
CREATE INDEX IF NOT EXISTS node_person ON node (person);
CREATE TABLE IF NOT EXISTS link (
    id INTEGER PRIMARY KEY,
    members TEXT NOT NULL UNIQUE,
    first_time INTEGER NOT NULL,
    first_event TEXT NOT NULL,
    cluster INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS link_cluster ON link (cluster);
CREATE TABLE IF NOT EXISTS cluster (
    id INTEGER PRIMARY KEY,
    size INTEGER NOT NULL,
    last_time INTEGER,
    last_event TEXT
);
CREATE TABLE IF NOT EXISTS person (
    id TEXT PRIMARY KEY,
    rep INTEGER NOT NULL,
    size INTEGER NOT NULL,
    anons INTEGER NOT NULL,
    logins INTEGER NOT NULL,
    uniques TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS explicit (
    a INTEGER NOT NULL,
    b INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    time INTEGER NOT NULL,
    kind TEXT NOT NULL,
    PRIMARY KEY (a, b, event_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS explicit_b ON explicit (b);
CREATE TABLE IF NOT EXISTS refusal (
    event_id TEXT NOT NULL,
    identity_type TEXT NOT NULL,
    rule TEXT NOT NULL,
    detail TEXT NOT NULL,
    link INTEGER,
    PRIMARY KEY (event_id, identity_type)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS refusal_link ON refusal (link) WHERE link IS NOT NULL;
"""

# Transactions wait this long for another process's write lock before failing.
DEFAULT_BUSY_TIMEOUT_S: Final = 5.0


class StoreError(IdentityGraphError):
    """The store cannot be used as asked (a closed graph, a schema from another version, a fork)."""


def policy_fingerprint(policy: IdentityPolicy) -> str:
    """What stored results depend on; a different one means every cluster is replayed."""
    return json.dumps(
        {
            "one_login_per_anonymous": policy.one_login_per_anonymous,
            "max_devices_per_login": policy.max_devices_per_login,
            "unique_types": sorted(policy.unique_types),
            "priorities": sorted(policy.priorities.items()),
            "unbind_requires_trusted": policy.unbind_requires_trusted,
            "person_id_key": policy.person_id_key.hex(),
            **({"signed_only_types": sorted(policy.signed_only_types)} if policy.signed_only_types else {}),
        },
        sort_keys=True,
    )


# Kept for the life of the process: a connection inherited across fork must be
# neither used nor closed in the child (closing it could disturb the parent's
# locks), so the child drops its reference here and opens its own.
_ABANDONED: list[sqlite3.Connection] = []


class Store:
    """One SQLite connection, reopened after fork, and the operations on it."""

    def __init__(self, path: Path | None, policy: IdentityPolicy, busy_timeout_s: float) -> None:
        self.path = path
        self.policy = policy
        self.rules = Rules(policy)
        self.busy_timeout_s = busy_timeout_s
        self.pid = os.getpid()
        self._conn: sqlite3.Connection | None = self._connect()
        # Clusters replayed and links replayed in them, since this store was opened.
        self.replays = 0
        self.replayed_links = 0
        self.pending: list[Change] = self._check_policy()

    # -- connection ------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        target = ":memory:" if self.path is None else str(self.path)
        conn = connect(target, timeout_s=self.busy_timeout_s)
        if self.path is not None:
            conn.execute("PRAGMA journal_mode=WAL")
            # The raw log is the source of truth; a commit lost to power failure is
            # observed again when the collector replays its log tail.
            conn.execute("PRAGMA synchronous=NORMAL")
        # Deleted rows are overwritten, so `forget` leaves no values in free pages.
        conn.execute("PRAGMA secure_delete=ON")
        conn.executescript(_SCHEMA)
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if version is None:
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif int(version[0]) != SCHEMA_VERSION:
            conn.close()
            raise StoreError(
                f"{self.path}: identity store schema {version[0]}, this version reads schema {SCHEMA_VERSION}"
            )
        return conn

    @property
    def conn(self) -> sqlite3.Connection:
        """The connection of this process: reopened when the pid changed since it was opened."""
        if self.pid != os.getpid():
            if self._conn is not None:
                _ABANDONED.append(self._conn)
                self._conn = None
            if self.path is None:
                raise StoreError("an in-memory identity graph cannot be used after fork; give it a file path")
            self.pid = os.getpid()
            self._conn = self._connect()
        if self._conn is None:
            raise StoreError("the identity graph is closed")
        return self._conn

    def ensure(self) -> None:
        """Reopen after fork; raise when closed."""
        _ = self.conn

    def close(self) -> None:
        if self._conn is not None and self.pid == os.getpid():
            self._conn.close()
        self._conn = None

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: BEGIN IMMEDIATE, COMMIT, or ROLLBACK on any error."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _check_policy(self) -> list[Change]:
        """Replay every cluster when the policy differs from the one the store was built with."""
        fingerprint = policy_fingerprint(self.policy)
        with self.write() as conn:
            stored = conn.execute("SELECT value FROM meta WHERE key = 'policy'").fetchone()
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('policy', ?)", (fingerprint,))
            if stored is None or stored[0] == fingerprint:
                return []
            unit = Unit(self, conn)
            unit.dirty.update(c for (c,) in conn.execute("SELECT id FROM cluster"))
            unit.finish()
            return unit.changes()

    # -- reads -----------------------------------------------------------------

    def person_of(self, identity_type: str, value: str) -> str | None:
        row = self.conn.execute(
            "SELECT person FROM node WHERE value = ? AND type = ?", (value, identity_type)
        ).fetchone()
        return None if row is None else str(row[0])

    def identities_of(self, person: str) -> list[tuple[str, str]]:
        return [
            (str(t), str(v)) for t, v in self.conn.execute("SELECT type, value FROM node WHERE person = ?", (person,))
        ]

    def identities_seen(self, person: str) -> list[tuple[str, str, int]]:
        """(type, value, first event time) for every identity of a person."""
        rows = self.conn.execute("SELECT type, value, first_time FROM node WHERE person = ?", (person,))
        return [(str(t), str(v), int(f)) for t, v, f in rows]

    def cluster_members(self, identities: Iterable[tuple[str, str]]) -> list[tuple[str, str, str]]:
        """(type, value, person) of every identity in the clusters of the given identities."""
        conn = self.conn
        clusters: set[int] = set()
        for t, v in identities:
            row = conn.execute("SELECT cluster FROM node WHERE value = ? AND type = ?", (v, t)).fetchone()
            if row is not None:
                clusters.add(int(row[0]))
        out: list[tuple[str, str, str]] = []
        for cluster in sorted(clusters):
            rows = conn.execute("SELECT type, value, person FROM node WHERE cluster = ?", (cluster,))
            out += [(str(t), str(v), str(p)) for t, v, p in rows]
        return out

    def all_persons(self) -> dict[tuple[str, str], str]:
        return {(str(t), str(v)): str(p) for t, v, p in self.conn.execute("SELECT type, value, person FROM node")}

    def find(self, value: str) -> list[tuple[str, str]]:
        """(type, person) for every identity with this value."""
        return [
            (str(t), str(p)) for t, p in self.conn.execute("SELECT type, person FROM node WHERE value = ?", (value,))
        ]

    def refusals(self) -> list[tuple[str, str, str, str]]:
        """The whole record: (event_id, identity_type, rule, detail)."""
        rows = self.conn.execute(
            "SELECT event_id, identity_type, rule, detail FROM refusal ORDER BY event_id, identity_type"
        )
        return [(str(e), str(t), str(r), str(d)) for e, t, r, d in rows]

    def counts(self) -> dict[str, int]:
        conn = self.conn
        return {
            table: int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # noqa: S608 (fixed names)
            for table in ("node", "link", "cluster", "person", "explicit", "refusal")
        }

    def check(self) -> list[str]:
        """Problems with the stored summaries against the rows they summarise (none when healthy).

        A full scan, for tests and offline verification: persons (representative,
        counts), node first keys, clusters (sizes, latest link, membership).
        """
        conn = self.conn
        rules = self.rules
        problems: list[str] = []
        nodes = {
            int(i): (Node(int(i), str(t), str(v), (int(ft), str(fe))), int(c), str(p))
            for i, t, v, ft, fe, c, p in conn.execute(
                "SELECT id, type, value, first_time, first_event, cluster, person FROM node"
            )
        }
        links = [
            (Link(int(i), members_of(m), (int(t), str(e))), int(c))
            for i, m, t, e, c in conn.execute("SELECT id, members, first_time, first_event, cluster FROM link")
        ]
        firsts: dict[int, Key] = {}
        last: dict[int, Key] = {}
        for link, cid in links:
            for m in link.members:
                if m not in nodes or nodes[m][1] != cid:
                    problems.append(f"link {link.id}: member {m} missing or in another cluster")
                    continue
                firsts[m] = min(firsts.get(m, link.first), link.first)
            if len(link.members) > 1:
                last[cid] = max(last.get(cid, link.first), link.first)
        groups: dict[str, list[Node]] = {}
        sizes: dict[int, int] = {}
        for node, cid, pid in nodes.values():
            if firsts.get(node.id) != node.first:
                problems.append(f"node {node.id}: first {node.first}, its links say {firsts.get(node.id)}")
            groups.setdefault(pid, []).append(node)
            sizes[cid] = sizes.get(cid, 0) + 1
        for cid, size, ltime, levent in conn.execute("SELECT id, size, last_time, last_event FROM cluster"):
            stored_last = None if ltime is None else (int(ltime), str(levent))
            if sizes.pop(int(cid), 0) != int(size) or last.get(int(cid)) != stored_last:
                problems.append(f"cluster {cid}: size {size} last {stored_last} disagree with its rows")
        problems += [f"cluster {cid}: no row" for cid in sizes]
        rows = {str(r[0]): r[1:] for r in conn.execute("SELECT id, rep, size, anons, logins, uniques FROM person")}
        for pid, members in groups.items():
            comp = rules.single(members[0])
            for n in members[1:]:
                comp = rules.merged(comp, rules.single(n))
            if person_id(comp.rep, rules.person_key) != pid:
                problems.append(f"person {pid}: its representative is named differently")
            want = (comp.rep.id, comp.size, comp.anons, comp.logins, ",".join(sorted(comp.uniques)))
            got = rows.pop(pid, None)
            if comp.size > 1 and (got is None or tuple(got) != want):
                problems.append(f"person {pid}: row {got}, members say {want}")
            if comp.size == 1 and got is not None:
                problems.append(f"person {pid}: a lone identity with a row")
        problems += [f"person {pid}: row without members" for pid in rows]
        return problems

    # -- forget ------------------------------------------------------------------

    def forget(self, person: str) -> tuple[list[tuple[str, str]], list[Change]]:
        """Delete a person's identities, every link that carries one, and what only those links held."""
        with self.write() as conn:
            rows = conn.execute("SELECT id, type, value, cluster FROM node WHERE person = ?", (person,)).fetchall()
            if not rows:
                return [], []
            unit = Unit(self, conn)
            gone = {int(r[0]) for r in rows}
            cluster = int(rows[0][3])
            links = unit.load_links(cluster)
            doomed = [lk for lk in links if gone.intersection(lk.members)]
            kept = [lk for lk in links if not gone.intersection(lk.members)]
            for lk in doomed:
                for e, t, r, d in conn.execute(
                    "SELECT event_id, identity_type, rule, detail FROM refusal WHERE link = ?", (lk.id,)
                ).fetchall():
                    unit.touch((str(e), str(t)), (str(r), str(d)), None)
            conn.executemany("DELETE FROM refusal WHERE link = ?", [(lk.id,) for lk in doomed])
            conn.executemany("DELETE FROM link WHERE id = ?", [(lk.id,) for lk in doomed])
            # Identities left without any link were only ever seen beside the forgotten ones.
            still_linked = {m for lk in kept for m in lk.members}
            cluster_nodes = {int(i) for (i,) in conn.execute("SELECT id FROM node WHERE cluster = ?", (cluster,))}
            orphans = cluster_nodes - gone - still_linked
            removed = gone | orphans
            conn.executemany("DELETE FROM explicit WHERE a = ? OR b = ?", [(i, i) for i in removed])
            persons = {
                str(p) for (p,) in conn.execute("SELECT DISTINCT person FROM node WHERE cluster = ?", (cluster,))
            }
            conn.executemany("DELETE FROM node WHERE id = ?", [(i,) for i in removed])
            conn.executemany("DELETE FROM person WHERE id = ?", [(p,) for p in persons])
            # The cluster may fall apart, and one old person with it: no part's replay may treat
            # another part's person as its own (and clear its row), so the parts start unnamed.
            conn.execute("UPDATE node SET person = '' WHERE cluster = ?", (cluster,))
            conn.execute("DELETE FROM cluster WHERE id = ?", (cluster,))
            for part in _connected_parts(kept, cluster_nodes - removed):
                unit.dirty.add(unit.recluster(part, [lk for lk in kept if lk.members[0] in part]))
            unit.finish()
            generation = int(self.meta("generation") or 0) + 1
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('generation', ?)", (str(generation),))
            changes = unit.changes()
        # Move the deleted pages out of the WAL into the (zeroed) database file.
        if self.path is not None:
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return [(str(t), str(v)) for _i, t, v, _c in rows], changes

    # -- writes ------------------------------------------------------------------

    def ingest(
        self, observations: Sequence[Observation], checkpoint: str | None
    ) -> tuple[list[Change], list[tuple[Observation, Key]]]:
        """Apply observations in one transaction; return the record's changes and what to cache."""
        with self.write() as conn:
            unit = Unit(self, conn)
            unit.prefetch(observations)
            for obs in sorted(observations, key=lambda o: (o.time, o.event_id)):
                unit.observe(obs)
            unit.finish()
            if checkpoint is not None:
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('checkpoint', ?)", (checkpoint,))
        return unit.changes(), unit.cacheable


def _connected_parts(links: Sequence[Link], nodes: Iterable[int]) -> list[set[int]]:
    parent = {n: n for n in nodes}

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for lk in links:
        first = find(lk.members[0])
        for m in lk.members[1:]:
            parent[find(m)] = first
    parts: dict[int, set[int]] = {}
    for n in parent:
        parts.setdefault(find(n), set()).add(n)
    return list(parts.values())
