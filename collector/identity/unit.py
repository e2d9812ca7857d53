"""The write path of the identity graph: the work of one transaction.

`Unit` takes observations in key order and keeps the store's bookkeeping true
as it goes: nodes and links with their first keys, clusters with their latest
link, persons with the counts the rules need, explicit binds and unbinds, and
the refusal record, whose changes it collects for the caller. A link at the end
of its clusters' history is applied on top of the stored persons (`_step`, or
`_fresh_link` when every identity is new); anything else marks its cluster
dirty, and `finish` replays dirty clusters from their links.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Final, Protocol

from maidian.collector.identity.rules import (
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
    safe_type_name,
    unusable,
)
from maidian.collector.identity.types import (
    BIND,
    UNBIND,
    UNTRUSTED_UNBIND,
    IdentityPolicy,
    Observation,
    is_untrusted_time,
)


class UnitOwner(Protocol):
    """What a write unit needs of the store that opened it (the store is the only one)."""

    policy: IdentityPolicy
    rules: Rules
    replays: int
    replayed_links: int


# Values per `IN (...)` query when looking up a batch's identities (SQLite allows 32,766).
_PREFETCH_CHUNK: Final = 500

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


def members_text(ids: Iterable[int]) -> str:
    return ",".join(map(str, sorted(ids)))


def members_of(text: str) -> tuple[int, ...]:
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


@dataclass(slots=True)
class Unit:
    """The work of one write transaction."""

    store: UnitOwner
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
        if all(r.new for r in rows) and not self._unsigned_claim(rows, key):
            self._fresh_link(rows, key)
            return ids, key
        if any(r.new for r in rows):  # a link with a new identity is new
            self._new_link(rows, key)
            return ids, key
        found = self.conn.execute(
            "SELECT id, first_time, first_event, cluster FROM link WHERE members = ?", (members_text(ids),)
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

    def _unsigned_claim(self, rows: list[_NodeRow], key: Key) -> bool:
        """Whether the `signed_only` rule may refuse part of this link (so it cannot take the fresh path)."""
        signed = self.store.rules.signed_only
        return bool(signed) and len(rows) > 1 and is_untrusted_time(key[0]) and any(r.node.type in signed for r in rows)

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
            (members_text(r.node.id for r in rows), key[0], key[1], cluster.id),
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
            (members_text(r.node.id for r in rows), key[0], key[1], target.id),
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
            Link(int(i), members_of(m), (int(t), str(e)))
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
