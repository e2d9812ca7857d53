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

Every write happens in `Unit`, inside one `BEGIN IMMEDIATE` transaction per
call. A new link that sorts after every multi-identity link of the clusters it
touches is applied on top of the stored components (`Stitcher` over the
`person` rows); anything else marks its cluster dirty, and dirty clusters are
replayed from their links once, at the end of the call.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import TYPE_CHECKING, Final

from maidian.tracking_plan.envelope import IDENTITY_NAME_RE, is_junk_identity

from ._identity_rules import (
    BIND,
    JUNK_ID,
    UNBIND,
    UNKNOWN_TYPE,
    UNTRUSTED_UNBIND,
    Component,
    Key,
    Link,
    Node,
    Pair,
    Refused,
    Rules,
    Stitcher,
    pair,
    person_id,
    replay,
)

if TYPE_CHECKING:
    from .identity import IdentityPolicy, Observation

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

# Values per `IN (...)` query when looking up a batch's identities (SQLite allows 32,766).
_PREFETCH_CHUNK: Final = 500

# The envelope's limit on names (`Limits.max_name_length`).
_MAX_TYPE_NAME: Final = 100

# Transactions wait this long for another process's write lock before failing.
DEFAULT_BUSY_TIMEOUT_S: Final = 5.0

RefusalKey = tuple[str, str]
"""(event_id, identity_type): one refusal in the record."""

RefusalValue = tuple[str, str]
"""(rule, detail)."""


@dataclass(frozen=True, slots=True)
class Change:
    """A refusal that entered (`withdrawn` False) or left the record."""

    event_id: str
    identity_type: str
    rule: str
    detail: str
    withdrawn: bool


class StoreError(Exception):
    """The store cannot be used as asked (a closed graph, a schema from another version, a fork)."""


def _is_type_name(identity_type: object) -> bool:
    return (
        isinstance(identity_type, str)
        and len(identity_type) <= _MAX_TYPE_NAME
        and IDENTITY_NAME_RE.match(identity_type) is not None
    )


def safe_type_name(identity_type: object) -> str:
    """An identity type as it may appear in a refusal: a plan-style name, or a placeholder.

    Types come from the sender; one that is not a snake_case name could carry
    anything (a phone number as a key), so it is never echoed.
    """
    return identity_type if isinstance(identity_type, str) and _is_type_name(identity_type) else "(invalid name)"


def unusable(policy: IdentityPolicy, identity_type: object, value: object) -> str | None:
    """Why an identity cannot be linked at all (`unknown_type`, `junk_id`), or None when it can.

    A type must be a plan-style name (a key such as a phone number is refused
    whatever the policy) and, when the policy lists types, one of them.
    """
    if not _is_type_name(identity_type) or (
        policy.identity_types is not None and identity_type not in policy.identity_types
    ):
        return UNKNOWN_TYPE
    if is_junk_identity(value):
        return JUNK_ID
    return None


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
        },
        sort_keys=True,
    )


def _members_text(ids: Iterable[int]) -> str:
    return ",".join(map(str, sorted(ids)))


def _members_of(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(","))


@dataclass(slots=True)
class _NodeRow:
    node: Node
    cluster: int
    person: str
    new: bool


@dataclass(slots=True)
class _ClusterRow:
    id: int
    size: int
    last: Key | None


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
        conn = sqlite3.connect(target, isolation_level=None, check_same_thread=False, timeout=self.busy_timeout_s)
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
            (Link(int(i), _members_of(m), (int(t), str(e))), int(c))
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


@dataclass(slots=True)
class Unit:
    """The work of one write transaction."""

    store: Store
    conn: sqlite3.Connection
    dirty: set[int] = field(default_factory=set)
    cacheable: list[tuple[Observation, Key]] = field(default_factory=list)
    _before: dict[RefusalKey, RefusalValue | None] = field(default_factory=dict)
    _after: dict[RefusalKey, RefusalValue | None] = field(default_factory=dict)
    _has_unbinds: bool = False
    _next_id: int = 0
    # Identities known to be stored (None: unknown, ask). Lets a new identity skip its lookup.
    _stored: set[tuple[str, str]] | None = None

    def __post_init__(self) -> None:
        self._has_unbinds = self.conn.execute("SELECT 1 FROM meta WHERE key = 'has_unbind'").fetchone() is not None

    # -- the record of refusals --------------------------------------------------

    def touch(self, key: RefusalKey, before: RefusalValue | None, after: RefusalValue | None) -> None:
        if key not in self._before:
            self._before[key] = before
        self._after[key] = after

    def changes(self) -> list[Change]:
        out: list[Change] = []
        for key in sorted(self._after):
            before, after = self._before[key], self._after[key]
            if before == after:
                continue
            if before is not None:
                out.append(Change(key[0], key[1], before[0], before[1], withdrawn=True))
            if after is not None:
                out.append(Change(key[0], key[1], after[0], after[1], withdrawn=False))
        return out

    def refuse_event(self, event_id: str, identity_type: str, rule: str) -> None:
        """A refusal that depends on the event alone (junk id, unknown type, untrusted unbind)."""
        cur = self.conn.execute(
            "INSERT OR IGNORE INTO refusal VALUES (?, ?, ?, ?, NULL)", (event_id, identity_type, rule, identity_type)
        )
        if cur.rowcount:
            self.touch((event_id, identity_type), None, (rule, identity_type))

    def _insert_refusals(self, refused: Iterable[Refused]) -> None:
        for r in refused:
            cur = self.conn.execute(
                "INSERT OR IGNORE INTO refusal VALUES (?, ?, ?, ?, ?)",
                (r.event_id, r.identity_type, r.rule, r.detail, r.link),
            )
            if cur.rowcount:
                self.touch((r.event_id, r.identity_type), None, (r.rule, r.detail))

    # -- one observation -----------------------------------------------------------

    def observe(self, obs: Observation) -> None:
        policy = self.store.policy
        key: Key = (obs.time, obs.event_id)
        valid: dict[str, str] = {}
        for t, v in obs.identities.items():
            rule = unusable(policy, t, v)
            if rule is None:
                valid[t] = v
            else:
                self.refuse_event(obs.event_id, safe_type_name(t), rule)
        if not valid:
            return
        if obs.kind == UNBIND:
            # The identities are registered (the event is stored under them); the pair is severed.
            named = [self._link({t: v}, key)[0][0] for t, v in valid.items()]
            if policy.unbind_requires_trusted and not obs.trusted:
                top = min(valid, key=lambda t: (self.store.rules.priority(t), t))
                self.refuse_event(obs.event_id, top, UNTRUSTED_UNBIND)
                return
            for a, b in combinations(named, 2):
                self._explicit(a, b, key, UNBIND)
            return
        nodes, first = self._link(valid, key)
        if obs.kind == BIND:
            for a, b in combinations(nodes, 2):
                self._explicit(a, b, key, BIND)
        elif len(valid) == len(obs.identities):
            self.cacheable.append((obs, first))

    def _explicit(self, a: int, b: int, key: Key, kind: str) -> None:
        """Record a bind or unbind of a pair; a change of the pair's verdict makes its cluster dirty."""
        a, b = pair(a, b)
        conn = self.conn
        latest = conn.execute(
            "SELECT time, event_id, kind FROM explicit WHERE a = ? AND b = ? ORDER BY time DESC, event_id DESC LIMIT 1",
            (a, b),
        ).fetchone()
        cur = conn.execute("INSERT OR IGNORE INTO explicit VALUES (?, ?, ?, ?, ?)", (a, b, key[1], key[0], kind))
        if not cur.rowcount:
            return
        if kind == UNBIND and not self._has_unbinds:
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('has_unbind', '1')")
            self._has_unbinds = True
        before = latest is not None and latest[2] == UNBIND
        after = (kind == UNBIND) if latest is None or key > (latest[0], latest[1]) else before
        if before != after:
            ca, cb = (int(c) for (c,) in conn.execute("SELECT cluster FROM node WHERE id IN (?, ?)", (a, b)))
            if ca == cb:
                self.dirty.add(ca)

    # -- links -------------------------------------------------------------------------

    def _link(self, identities: dict[str, str], key: Key) -> tuple[list[int], Key]:
        """Record that these identities were seen together at `key`; return their node ids and the link's first key."""
        rows = [self._node(t, v, key) for t, v in identities.items()]
        ids = [r.node.id for r in rows]
        if all(r.new for r in rows):
            self._fresh_link(rows, key)
            return ids, key
        if any(r.new for r in rows):  # a link with a new identity is new
            self._new_link(rows, key)
            return ids, key
        found = self.conn.execute(
            "SELECT id, first_time, first_event, cluster FROM link WHERE members = ?", (_members_text(ids),)
        ).fetchone()
        if found is not None:
            first: Key = (int(found[1]), str(found[2]))
            if key >= first:
                return ids, first
            self.conn.execute(
                "UPDATE link SET first_time = ?, first_event = ? WHERE id = ?", (key[0], key[1], found[0])
            )
            if len(rows) > 1:
                self.dirty.add(int(found[3]))
            self._lower_firsts(rows, key)
            return ids, key
        self._new_link(rows, key)
        return ids, key

    def prefetch(self, observations: Sequence[Observation]) -> None:
        """Learn in a few queries which of these identities are stored, so new ones need no lookup."""
        wanted = {(t, v) for o in observations for t, v in o.identities.items() if isinstance(v, str)}
        values = sorted({v for _t, v in wanted})
        stored: set[tuple[str, str]] = set()
        for i in range(0, len(values), _PREFETCH_CHUNK):
            chunk = values[i : i + _PREFETCH_CHUNK]
            marks = ",".join("?" * len(chunk))
            stored.update(
                (str(t), str(v))
                for t, v in self.conn.execute(f"SELECT type, value FROM node WHERE value IN ({marks})", chunk)  # noqa: S608
            )
        self._stored = stored & wanted

    def _node(self, identity_type: str, value: str, key: Key) -> _NodeRow:
        if self._stored is not None and (identity_type, value) not in self._stored:
            return self._new_node(identity_type, value, key)
        row = self.conn.execute(
            "SELECT id, first_time, first_event, cluster, person FROM node WHERE value = ? AND type = ?",
            (value, identity_type),
        ).fetchone()
        if row is not None:
            node = Node(int(row[0]), identity_type, value, (int(row[1]), str(row[2])))
            return _NodeRow(node, int(row[3]), str(row[4]), new=False)
        return self._new_node(identity_type, value, key)

    def _new_node(self, identity_type: str, value: str, key: Key) -> _NodeRow:
        if not self._next_id:
            # The write lock is held, so ids past the current maximum are ours.
            self._next_id = int(self.conn.execute("SELECT coalesce(max(id), 0) FROM node").fetchone()[0]) + 1
        node = Node(self._next_id, identity_type, value, key)
        self._next_id += 1
        return _NodeRow(node, 0, "", new=True)  # its person is known once the link is applied

    def _insert_nodes(self, rows: Iterable[_NodeRow]) -> None:
        params = []
        for row in rows:
            n = row.node
            if not row.person:
                row.person = person_id(n, self.store.rules.person_key)
            params.append((n.id, n.type, n.value, n.first[0], n.first[1], row.cluster, row.person))
            row.new = False
            if self._stored is not None:
                self._stored.add((n.type, n.value))
        self.conn.executemany("INSERT INTO node VALUES (?, ?, ?, ?, ?, ?, ?)", params)

    def _fresh_link(self, rows: list[_NodeRow], key: Key) -> None:
        """A link of identities never seen before: a cluster and a person of their own.

        No rule can refuse it (one value per type, nothing stored to clash
        with, no unbind can name a node that did not exist), so the general
        step is skipped: this is the path of every new device.
        """
        rules = self.store.rules
        multi = len(rows) > 1
        cluster = self._new_cluster(len(rows), key if multi else None)
        self.conn.execute(
            "INSERT INTO link (members, first_time, first_event, cluster) VALUES (?, ?, ?, ?)",
            (_members_text(r.node.id for r in rows), key[0], key[1], cluster.id),
        )
        rep = min((r.node for r in rows), key=rules.rep_rank)
        pid = person_id(rep, rules.person_key)
        if multi:
            comp = rules.single(rep)
            for r in rows:
                if r.node is not rep:
                    comp = rules.merged(comp, rules.single(r.node))
            self._put_person(pid, comp)
        for r in rows:
            r.cluster, r.person = cluster.id, pid
        self._insert_nodes(rows)

    def _new_link(self, rows: list[_NodeRow], key: Key) -> None:
        conn = self.conn
        self._lower_firsts(rows, key)
        clusters = {r.cluster: self._cluster(r.cluster) for r in rows if not r.new}
        multi = len(rows) > 1
        in_order = multi and all(
            c not in self.dirty and (info.last is None or key > info.last) for c, info in clusters.items()
        )
        added = [r for r in rows if r.new]
        last = key if multi else None
        if clusters:
            target = self._merge_clusters(list(clusters.values()))
            target.size += len(added)
            if last is not None and (target.last is None or last > target.last):
                target.last = last
            conn.execute(
                "UPDATE cluster SET size = ?, last_time = ?, last_event = ? WHERE id = ?",
                (target.size, *(target.last or (None, None)), target.id),
            )
        else:
            target = self._new_cluster(len(added), last)
        for r in added:
            r.cluster = target.id
        cur = conn.execute(
            "INSERT INTO link (members, first_time, first_event, cluster) VALUES (?, ?, ?, ?)",
            (_members_text(r.node.id for r in rows), key[0], key[1], target.id),
        )
        link = Link(int(cur.lastrowid or 0), tuple(sorted(r.node.id for r in rows)), key)
        if in_order:
            self._step(link, rows)
            return
        self._insert_nodes(added)
        if multi:
            self.dirty.add(target.id)

    def _lower_first(self, row: _NodeRow, key: Key) -> tuple[str, str] | None:
        """An existing node was seen earlier than thought: record it, and let it become its person's representative.

        Returns (old, new) person id when the person was renamed.
        """
        if key >= row.node.first:
            return None
        node = Node(row.node.id, row.node.type, row.node.value, key)
        row.node = node
        self.conn.execute("UPDATE node SET first_time = ?, first_event = ? WHERE id = ?", (key[0], key[1], node.id))
        if row.cluster in self.dirty:
            return None  # the replay names everyone
        comp = self._person(row.person)
        rules = self.store.rules
        if comp.rep.id == node.id or rules.rep_rank(node) >= rules.rep_rank(comp.rep):
            return None  # the representative is unchanged (its own row now holds the earlier key)
        old, new_pid = row.person, person_id(node, rules.person_key)
        self._move_person(old, new_pid)
        self._put_person(new_pid, Component(node, comp.size, comp.anons, comp.logins, comp.uniques))
        return old, new_pid

    def _lower_firsts(self, rows: list[_NodeRow], key: Key) -> None:
        for r in rows:
            if r.new:
                continue
            renamed = self._lower_first(r, key)
            if renamed is not None:
                for other in rows:
                    if other.person == renamed[0]:
                        other.person = renamed[1]

    def _step(self, link: Link, rows: list[_NodeRow]) -> None:
        """Apply a link that sorts after its clusters' history on top of the stored components."""
        rules = self.store.rules
        stitcher = Stitcher(rules)
        loaded: dict[str, Component] = {}
        for r in rows:
            if r.new:
                stitcher.add(r.node)
                continue
            comp = loaded.get(r.person)
            if comp is None:
                comp = loaded[r.person] = self._person(r.person)
                stitcher.add_component(comp)
            if r.node.id != comp.rep.id:
                stitcher.attach(r.node.id, comp.rep.id)
        severed = self._severed_among([r.node.id for r in rows]) if self._has_unbinds else set()
        self._insert_refusals(stitcher.link(link, [r.node for r in rows], severed))
        for root in {stitcher.find(r.node.id) for r in rows}:
            comp = stitcher.component(root)
            pid = person_id(comp.rep, rules.person_key)
            grew = any(r.new and stitcher.find(r.node.id) == root for r in rows)
            if not grew and pid in loaded and stitcher.unchanged(root, loaded[pid]):
                continue  # a side the link could not join: nothing changed
            for old, old_comp in loaded.items():
                if old != pid and stitcher.find(old_comp.rep.id) == root:
                    self._move_person(old, pid)
            self._put_person(pid, comp)
            joined = [r for r in rows if r.new and stitcher.find(r.node.id) == root]
            for r in joined:
                r.person = pid
            self._insert_nodes(joined)

    def _severed_among(self, ids: Sequence[int]) -> set[Pair]:
        severed: set[Pair] = set()
        for a, b in combinations(sorted(ids), 2):
            latest = self.conn.execute(
                "SELECT kind FROM explicit WHERE a = ? AND b = ? ORDER BY time DESC, event_id DESC LIMIT 1", (a, b)
            ).fetchone()
            if latest is not None and latest[0] == UNBIND:
                severed.add((a, b))
        return severed

    # -- persons and clusters --------------------------------------------------------

    def _person(self, pid: str) -> Component:
        """A stored component; one identity on its own has no `person` row."""
        row = self.conn.execute(
            "SELECT p.size, p.anons, p.logins, p.uniques, n.id, n.type, n.value, n.first_time, n.first_event"
            " FROM person p JOIN node n ON n.id = p.rep WHERE p.id = ?",
            (pid,),
        ).fetchone()
        if row is None:
            nid, ntype, value, ftime, fevent = self.conn.execute(
                "SELECT id, type, value, first_time, first_event FROM node WHERE person = ?", (pid,)
            ).fetchone()
            return self.store.rules.single(Node(int(nid), str(ntype), str(value), (int(ftime), str(fevent))))
        size, anons, logins, uniques, nid, ntype, value, ftime, fevent = row
        rep = Node(int(nid), str(ntype), str(value), (int(ftime), str(fevent)))
        return Component(rep, int(size), int(anons), int(logins), frozenset(str(uniques).split(",")) - {""})

    def _put_person(self, pid: str, comp: Component) -> None:
        if comp.size == 1:
            self.conn.execute("DELETE FROM person WHERE id = ?", (pid,))
            return
        self.conn.execute(
            "INSERT OR REPLACE INTO person VALUES (?, ?, ?, ?, ?, ?)",
            (pid, comp.rep.id, comp.size, comp.anons, comp.logins, ",".join(sorted(comp.uniques))),
        )

    def _move_person(self, old: str, new: str) -> None:
        self.conn.execute("UPDATE node SET person = ? WHERE person = ?", (new, old))
        self.conn.execute("DELETE FROM person WHERE id = ?", (old,))

    def _cluster(self, cid: int) -> _ClusterRow:
        size, ltime, levent = self.conn.execute(
            "SELECT size, last_time, last_event FROM cluster WHERE id = ?", (cid,)
        ).fetchone()
        return _ClusterRow(cid, int(size), None if ltime is None else (int(ltime), str(levent)))

    def _new_cluster(self, size: int, last: Key | None) -> _ClusterRow:
        cur = self.conn.execute(
            "INSERT INTO cluster (size, last_time, last_event) VALUES (?, ?, ?)", (size, *(last or (None, None)))
        )
        return _ClusterRow(int(cur.lastrowid or 0), size, last)

    def _merge_clusters(self, clusters: list[_ClusterRow]) -> _ClusterRow:
        """Relabel the smaller clusters into the largest one."""
        target = max(clusters, key=lambda c: (c.size, -c.id))
        for c in clusters:
            if c is target:
                continue
            self.conn.execute("UPDATE node SET cluster = ? WHERE cluster = ?", (target.id, c.id))
            self.conn.execute("UPDATE link SET cluster = ? WHERE cluster = ?", (target.id, c.id))
            self.conn.execute("DELETE FROM cluster WHERE id = ?", (c.id,))
            target.size += c.size
            if c.last is not None and (target.last is None or c.last > target.last):
                target.last = c.last
            if c.id in self.dirty:
                self.dirty.discard(c.id)
                self.dirty.add(target.id)
        return target

    def recluster(self, nodes: set[int], links: Sequence[Link]) -> int:
        """Give a set of nodes and links a cluster of their own (after `forget` split one)."""
        last = max((lk.first for lk in links if len(lk.members) > 1), default=None)
        cid = self._new_cluster(len(nodes), last).id
        self.conn.executemany("UPDATE node SET cluster = ? WHERE id = ?", [(cid, n) for n in nodes])
        self.conn.executemany("UPDATE link SET cluster = ? WHERE id = ?", [(cid, lk.id) for lk in links])
        return cid

    # -- replay ------------------------------------------------------------------------

    def load_links(self, cid: int) -> list[Link]:
        return [
            Link(int(i), _members_of(m), (int(t), str(e)))
            for i, m, t, e in self.conn.execute(
                "SELECT id, members, first_time, first_event FROM link WHERE cluster = ?", (cid,)
            )
        ]

    def finish(self) -> None:
        """Replay every cluster this transaction left dirty."""
        for cid in sorted(self.dirty):
            self._replay(cid)
        self.dirty.clear()

    def _replay(self, cid: int) -> None:
        conn = self.conn
        rules = self.store.rules
        nodes: dict[int, Node] = {}
        old_person: dict[int, str] = {}
        for i, t, v, ft, fe, p in conn.execute(
            "SELECT id, type, value, first_time, first_event, person FROM node WHERE cluster = ?", (cid,)
        ):
            nodes[int(i)] = Node(int(i), str(t), str(v), (int(ft), str(fe)))
            old_person[int(i)] = str(p)
        links = self.load_links(cid)
        explicit = [
            (int(a), int(b), (int(t), str(e)), str(k))
            for a, b, e, t, k in conn.execute(
                "SELECT x.a, x.b, x.event_id, x.time, x.kind FROM explicit x JOIN node n ON n.id = x.a"
                " WHERE n.cluster = ?",
                (cid,),
            )
            if int(b) in nodes
        ]
        old_refusals: dict[RefusalKey, tuple[str, str, int]] = {
            (str(e), str(t)): (str(r), str(d), int(lk))
            for e, t, r, d, lk in conn.execute(
                "SELECT r.event_id, r.identity_type, r.rule, r.detail, r.link FROM refusal r"
                " JOIN link l ON l.id = r.link WHERE l.cluster = ?",
                (cid,),
            )
        }
        out = replay(rules, nodes, links, explicit)
        self.store.replays += 1
        self.store.replayed_links += len(links)
        conn.executemany(
            "UPDATE node SET first_time = ?, first_event = ? WHERE id = ?",
            [(f[0], f[1], i) for i, f in out.firsts.items() if f != nodes[i].first],
        )
        conn.executemany(
            "UPDATE node SET person = ? WHERE id = ?",
            [(p, i) for i, p in out.persons.items() if p != old_person[i]],
        )
        old_pids = set(old_person.values())
        conn.executemany("DELETE FROM person WHERE id = ?", [(p,) for p in old_pids - out.components.keys()])
        for pid, comp in out.components.items():
            if comp.size > 1 or pid in old_pids:  # a lone identity has no row to write or clear
                self._put_person(pid, comp)
        for key in old_refusals.keys() | out.refusals.keys():
            old = old_refusals.get(key)
            new = out.refusals.get(key)
            if old is not None and new is not None and old == (new.rule, new.detail, new.link):
                continue
            if old is not None:
                conn.execute("DELETE FROM refusal WHERE event_id = ? AND identity_type = ?", key)
            if new is not None:
                conn.execute(
                    "INSERT OR REPLACE INTO refusal VALUES (?, ?, ?, ?, ?)",
                    (new.event_id, new.identity_type, new.rule, new.detail, new.link),
                )
            self.touch(
                key,
                None if old is None else (old[0], old[1]),
                None if new is None else (new.rule, new.detail),
            )
        conn.execute(
            "UPDATE cluster SET size = ?, last_time = ?, last_event = ? WHERE id = ?",
            (len(nodes), *(out.last or (None, None)), cid),
        )
