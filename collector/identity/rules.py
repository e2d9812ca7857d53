"""The stitching rules, applied to links in time order, without I/O.

The identity graph is defined by one sequential process: take every *link* (a
distinct set of valid identities seen together on an event) in the order of
its earliest event, `(time, event_id)`, and try to join its identities into
one component under the policy's rules. A person is a component. Because the
process only ever looks at a link's own identities and their components, the
links of one *cluster* (the connected parts of all links, refused ones
included) can be replayed on their own, and a link that sorts after every
link of the clusters it touches can be applied on top of the stored result.

This module holds that process: `Rules` (the policy as lookups and the three
checks), `Stitcher` (components with their summaries, and the step for one
link), `replay` (a whole cluster from its links) and `person_id`. The store
(`_identity_store`) loads what they need and writes back what changed, so the
incremental path and the replay path run the same code and cannot disagree.

Within one link, identities join in rank order (plan priority, then type,
then value). The first identity is the anchor; each next one joins unless it
is already in the anchor's component, it was unbound from an identity the
link already joined (skipped silently: an operator asked for it), or a rule
refuses it:

- `anonymous_already_bound`: the join would put two login ids into one
  component while the link's anonymous id is in one of the two sides;
- `unique_conflict`: both sides hold a (different) value of a unique type;
- `device_cap`: the joined component would hold more anonymous ids than
  `max_devices_per_login`;
- `signed_only`: an unsigned sender's link (its order time is past
  `UNTRUSTED_BASE`) would bring an identity of a type only signed sources may
  introduce to another person, or join a person holding one to anything but
  devices. In such a link those identities join last, so they never anchor.

A refused identity stays where it was; the link's other identities still join.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, replace
from typing import Final

from maidian.collector.identity.types import (
    ANONYMOUS,
    ANONYMOUS_ALREADY_BOUND,
    DEVICE_CAP,
    JUNK_ID,
    LOGIN,
    SIGNED_ONLY,
    UNBIND,
    UNIQUE_CONFLICT,
    UNKNOWN_TYPE,
    IdentityPolicy,
    is_untrusted_time,
)
from maidian.tracking_plan.envelope import IDENTITY_NAME_RE, is_junk_identity

# The plan loader's default priority for a declared identity type.
DEFAULT_PRIORITY: Final = 100

# The envelope's limit on names (`Limits.max_name_length`).
_MAX_TYPE_NAME: Final = 100

Key = tuple[int, str]
"""The order of events: (time in epoch ms, event_id)."""

Pair = tuple[int, int]
"""Two node ids, smaller first."""


@dataclass(frozen=True, slots=True)
class Node:
    """One identity as stored: `first` is the key of the earliest link that carries it."""

    id: int
    type: str
    value: str
    first: Key


@dataclass(frozen=True, slots=True)
class Link:
    """A distinct set of identities (node ids, ascending) and the key of its earliest event."""

    id: int
    members: tuple[int, ...]
    first: Key


@dataclass(frozen=True, slots=True)
class Component:
    """What the rules need to know about a component, and its representative."""

    rep: Node
    size: int
    anons: int
    logins: int
    # The unique types it holds a value of, and the signed-only ones (`IdentityPolicy.signed_only_types`).
    uniques: frozenset[str]


@dataclass(frozen=True, slots=True)
class Refused:
    """One identity of one link that was not joined, and the rule that said no.

    `detail` names the type the rule was about (the clashing unique type for
    `unique_conflict`); it is a type name, never a value.
    """

    link: int
    event_id: str
    identity_type: str
    rule: str
    detail: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """A cluster rebuilt from its links."""

    firsts: dict[int, Key]
    persons: dict[int, str]
    components: dict[str, Component]
    refusals: dict[tuple[str, str], Refused]
    last: Key | None


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


def pair(a: int, b: int) -> Pair:
    return (a, b) if a < b else (b, a)


def person_id(node: Node, key: bytes = b"") -> str:
    """The id of the person whose representative is `node`: a hash, so no value shows in it."""
    digest = hashlib.blake2b(f"{node.type}\x1f{node.value}".encode(), digest_size=12, key=key)
    return "p_" + digest.hexdigest()


class Rules:
    """The policy as the lookups the stitching step needs."""

    __slots__ = ("cap", "one_login", "person_key", "priorities", "signed_only", "tracked", "unique")

    def __init__(self, policy: IdentityPolicy) -> None:
        self.priorities = dict(policy.priorities)
        self.unique = frozenset(policy.unique_types)
        self.signed_only = frozenset(policy.signed_only_types)
        self.tracked = self.unique | self.signed_only
        self.cap = policy.max_devices_per_login
        self.one_login = policy.one_login_per_anonymous
        self.person_key = policy.person_id_key

    def priority(self, identity_type: str) -> int:
        return self.priorities.get(identity_type, DEFAULT_PRIORITY)

    def link_rank(self, node: Node) -> tuple[int, str, str]:
        """The order in which a link's identities join: highest priority (lowest number) first."""
        return (self.priority(node.type), node.type, node.value)

    def rep_rank(self, node: Node) -> tuple[int, int, str, str, str]:
        """The order that picks a component's representative: priority, then earliest seen."""
        return (self.priority(node.type), node.first[0], node.first[1], node.type, node.value)

    def single(self, node: Node) -> Component:
        return Component(
            rep=node,
            size=1,
            anons=int(node.type == ANONYMOUS),
            logins=int(node.type == LOGIN),
            uniques=frozenset({node.type}) if node.type in self.tracked else frozenset(),
        )

    def merged(self, a: Component, b: Component) -> Component:
        rep = a.rep if self.rep_rank(a.rep) <= self.rep_rank(b.rep) else b.rep
        return Component(rep, a.size + b.size, a.anons + b.anons, a.logins + b.logins, a.uniques | b.uniques)

    def conflict(self, a: Component, b: Component, anonymous_involved: bool) -> tuple[str, str] | None:
        """The rule that forbids joining `a` and `b`, with the type it is about; None when allowed."""
        if anonymous_involved and self.one_login and a.logins and b.logins:
            return ANONYMOUS_ALREADY_BOUND, LOGIN
        clash = a.uniques & b.uniques & self.unique
        if clash:
            return UNIQUE_CONFLICT, min(clash, key=lambda t: (self.priority(t), t))
        if a.anons + b.anons > self.cap:
            return DEVICE_CAP, ANONYMOUS
        return None

    def unsigned_conflict(self, a: Component, b: Component, node: Node) -> tuple[str, str] | None:
        """`signed_only` when an unsigned link may not join `node`'s component `b` to `a`; None when it may.

        An unsigned link never brings a signed-only identity to another person,
        and joins a person holding one only with a component of nothing but
        devices (a new phone logging in): never with another login or
        identity, which would hand that person's signed identity to whoever
        sent the link.
        """
        signed = self.signed_only
        if node.type in signed:
            return SIGNED_ONLY, node.type
        held = (a.uniques | b.uniques) & signed
        if not held:
            return None
        if (a.uniques & signed and b.size == b.anons) or (b.uniques & signed and a.size == a.anons):
            return None
        return SIGNED_ONLY, min(held)

    def unsigned_rank(self, node: Node) -> tuple[bool, int, str, str]:
        """The join order within an unsigned link: signed-only identities last, so they never anchor it."""
        return (node.type in self.signed_only, self.priority(node.type), node.type, node.value)


class Stitcher:
    """Components under union-find, each root carrying its `Component` summary."""

    __slots__ = ("_comp", "_parent", "rules")

    def __init__(self, rules: Rules) -> None:
        self.rules = rules
        self._parent: dict[int, int] = {}
        self._comp: dict[int, Component] = {}

    def add(self, node: Node) -> None:
        """A node on its own."""
        self._parent[node.id] = node.id
        self._comp[node.id] = self.rules.single(node)

    def add_component(self, comp: Component) -> int:
        """A component loaded whole, rooted at its representative; returns the root."""
        root = comp.rep.id
        self._parent[root] = root
        self._comp[root] = comp
        return root

    def attach(self, node_id: int, root: int) -> None:
        """A member of a component added with `add_component`."""
        self._parent[node_id] = root

    def unchanged(self, root: int, comp: Component) -> bool:
        """True when `root` still holds exactly the component it was given."""
        return self._comp.get(root) is comp

    def find(self, x: int) -> int:
        parent = self._parent
        while (p := parent[x]) != x:
            parent[x] = gp = parent[p]
            x = gp
        return x

    def component(self, x: int) -> Component:
        return self._comp[self.find(x)]

    def link(self, link: Link, nodes: Sequence[Node], severed: Set[Pair]) -> list[Refused]:
        """Join one link's identities as far as the rules allow; return what was refused."""
        rules = self.rules
        unsigned = bool(rules.signed_only) and is_untrusted_time(link.first[0])
        ordered = sorted(nodes, key=rules.unsigned_rank if unsigned else rules.link_rank)
        anon = next((n.id for n in ordered if n.type == ANONYMOUS), None)
        root = self.find(ordered[0].id)
        joined = [ordered[0].id]
        refused: list[Refused] = []
        for node in ordered[1:]:
            other = self.find(node.id)
            if other == root:
                joined.append(node.id)
                continue
            if severed and any(pair(j, node.id) in severed for j in joined):
                continue
            involved = anon is not None and self.find(anon) in (root, other)
            problem = rules.conflict(self._comp[root], self._comp[other], involved)
            if problem is None and unsigned:
                problem = rules.unsigned_conflict(self._comp[root], self._comp[other], node)
            if problem is not None:
                refused.append(Refused(link.id, link.first[1], node.type, *problem))
                continue
            root = self._union(root, other)
            joined.append(node.id)
        return refused

    def _union(self, a: int, b: int) -> int:
        ca, cb = self._comp[a], self._comp[b]
        if ca.size < cb.size:
            a, b, ca, cb = b, a, cb, ca
        self._parent[b] = a
        del self._comp[b]
        self._comp[a] = self.rules.merged(ca, cb)
        return a


def _in_order(links: list[Link], nodes: Mapping[int, Node]) -> list[Link]:
    """Links by first key; links sharing one (an event id reused for other identities) by their identities."""
    links.sort(key=lambda lk: lk.first)
    i = 0
    while i < len(links) - 1:
        j = i + 1
        while j < len(links) and links[j].first == links[i].first:
            j += 1
        if j - i > 1:
            links[i:j] = sorted(links[i:j], key=lambda lk: sorted((nodes[m].type, nodes[m].value) for m in lk.members))
        i = j
    return links


def severed_pairs(explicit: Iterable[tuple[int, int, Key, str]]) -> set[Pair]:
    """The pairs whose latest explicit word (bind or unbind, by key) is an unbind."""
    latest: dict[Pair, tuple[Key, str]] = {}
    for a, b, key, kind in explicit:
        p = pair(a, b)
        seen = latest.get(p)
        if seen is None or key > seen[0]:
            latest[p] = (key, kind)
    return {p for p, (_key, kind) in latest.items() if kind == UNBIND}


def replay(
    rules: Rules,
    nodes: Mapping[int, Node],
    links: Sequence[Link],
    explicit: Iterable[tuple[int, int, Key, str]],
) -> Outcome:
    """Rebuild a cluster: every link in (first key, identities) order, from nothing."""
    firsts: dict[int, Key] = {}
    for link in links:
        for m in link.members:
            seen = firsts.get(m)
            if seen is None or link.first < seen:
                firsts[m] = link.first
    current = {i: replace(n, first=firsts[i]) if i in firsts and firsts[i] != n.first else n for i, n in nodes.items()}
    severed = severed_pairs(explicit)
    stitcher = Stitcher(rules)
    for node in current.values():
        stitcher.add(node)

    refusals: dict[tuple[str, str], Refused] = {}
    last: Key | None = None
    for link in _in_order([lk for lk in links if len(lk.members) > 1], current):
        last = link.first
        for r in stitcher.link(link, [current[m] for m in link.members], severed):
            refusals.setdefault((r.event_id, r.identity_type), r)
    persons: dict[int, str] = {}
    components: dict[str, Component] = {}
    named: dict[int, str] = {}
    for node_id in current:
        root = stitcher.find(node_id)
        pid = named.get(root)
        if pid is None:
            comp = stitcher.component(root)
            pid = named[root] = person_id(comp.rep, rules.person_key)
            components[pid] = comp
        persons[node_id] = pid
    return Outcome({i: n.first for i, n in current.items()}, persons, components, refusals, last)
