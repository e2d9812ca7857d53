"""A reference model of the identity graph's documented semantics, written for clarity, not speed.

It takes the whole set of observations at once and applies docs/identity.md
literally: refusals that depend on the event alone; links (distinct sets of
valid identities) at the key of their earliest event; pair verdicts from the
latest explicit bind or unbind; then every multi-identity link in key order,
joining identities in rank order under the rules. The real graph, fed the same
observations in any order and any batches, must end in the same state.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import combinations

from maidian.collector.identity.graph import IdentityGraph
from maidian.collector.identity.types import IdentityPolicy, Observation, Refusal
from maidian.tracking_plan.envelope import is_junk_identity

Ident = tuple[str, str]
Key = tuple[int, str]


@dataclass(frozen=True)
class State:
    persons: dict[Ident, str]
    refusals: frozenset[tuple[str, str, str]]


def person_id(ident: Ident, key: bytes = b"") -> str:
    return "p_" + hashlib.blake2b(f"{ident[0]}\x1f{ident[1]}".encode(), digest_size=12, key=key).hexdigest()


def reference(observations: Iterable[Observation], policy: IdentityPolicy) -> State:
    def prio(t: str) -> int:
        return policy.priorities.get(t, 100)

    events: dict[str, Observation] = {}
    for o in observations:
        events.setdefault(o.event_id, o)
    refusals: set[tuple[str, str, str]] = set()
    links: dict[frozenset[Ident], Key] = {}
    explicit: list[tuple[frozenset[Ident], Key, str]] = []

    def see(s: frozenset[Ident], k: Key) -> None:
        links[s] = min(links.get(s, k), k)

    for o in events.values():
        k = (o.time, o.event_id)
        valid: dict[str, str] = {}
        for t, v in o.identities.items():
            if policy.identity_types is not None and t not in policy.identity_types:
                refusals.add((o.event_id, t, "unknown_type"))
            elif is_junk_identity(v):
                refusals.add((o.event_id, t, "junk_id"))
            else:
                valid[t] = v
        if not valid:
            continue
        if o.kind == "unbind":
            for ident in valid.items():
                see(frozenset({ident}), k)
            if policy.unbind_requires_trusted and not o.trusted:
                refusals.add((o.event_id, min(valid, key=lambda t: (prio(t), t)), "untrusted_unbind"))
                continue
            explicit += [(frozenset(p), k, "unbind") for p in combinations(valid.items(), 2)]
            continue
        see(frozenset(valid.items()), k)
        if o.kind == "bind":
            explicit += [(frozenset(p), k, "bind") for p in combinations(valid.items(), 2)]

    latest: dict[frozenset[Ident], tuple[Key, str]] = {}
    for p, k, kind in explicit:
        if p not in latest or k > latest[p][0]:
            latest[p] = (k, kind)
    severed = {p for p, (_k, kind) in latest.items() if kind == "unbind"}

    first: dict[Ident, Key] = {}
    for s, k in links.items():
        for ident in s:
            first[ident] = min(first.get(ident, k), k)
    parent = {i: i for i in first}
    members = {i: {i} for i in first}

    def find(i: Ident) -> Ident:
        while parent[i] != i:
            i = parent[i]
        return i

    def count(group: set[Ident], t: str) -> int:
        return sum(1 for i in group if i[0] == t)

    for s, k in sorted(links.items(), key=lambda item: (item[1], tuple(sorted(item[0])))):
        if len(s) < 2:
            continue
        ordered = sorted(s, key=lambda i: (prio(i[0]), i[0], i[1]))
        anon = next((i for i in ordered if i[0] == "anonymous_id"), None)
        root = find(ordered[0])
        joined = [ordered[0]]
        for y in ordered[1:]:
            other = find(y)
            if other == root:
                joined.append(y)
                continue
            if any(frozenset({j, y}) in severed for j in joined):
                continue
            x_group, y_group = members[root], members[other]
            involved = anon is not None and find(anon) in (root, other)
            clash = {i[0] for i in x_group if i[0] in policy.unique_types} & {
                i[0] for i in y_group if i[0] in policy.unique_types
            }
            rule = None
            if (
                policy.one_login_per_anonymous
                and involved
                and count(x_group, "login_id")
                and count(y_group, "login_id")
            ):
                rule = "anonymous_already_bound"
            elif clash:
                rule = "unique_conflict"
            elif count(x_group, "anonymous_id") + count(y_group, "anonymous_id") > policy.max_devices_per_login:
                rule = "device_cap"
            if rule is not None:
                if not any(r[0] == k[1] and r[1] == y[0] for r in refusals):
                    refusals.add((k[1], y[0], rule))
                continue
            parent[other] = root
            members[root] = x_group | y_group
            del members[other]
            joined.append(y)
    persons: dict[Ident, str] = {}
    for root, group in members.items():
        rep = min(group, key=lambda i: (prio(i[0]), first[i], i[0], i[1]))
        pid = person_id(rep, policy.person_id_key)
        del root
        for i in group:
            persons[i] = pid
    return State(persons, frozenset(refusals))


def graph_state(graph: IdentityGraph, observations: Iterable[Observation]) -> State:
    """The graph's state over every identity the observations mention."""
    idents = {(t, v) for o in observations for t, v in o.identities.items()}
    persons = {i: p for i in sorted(idents) if (p := graph.person_of(*i)) is not None}
    return State(persons, frozenset((r.event_id, r.identity_type, r.rule) for r in graph.refusals()))


class Ledger:
    """What a caller that records every returned change knows: +1 per refusal, -1 per withdrawn one."""

    def __init__(self) -> None:
        self.held: dict[tuple[str, str], str] = {}
        self.withdrawn = 0

    def apply(self, changes: Iterable[Refusal]) -> None:
        for r in changes:
            key = (r.event_id, r.identity_type)
            if r.withdrawn:
                assert self.held.pop(key) == r.rule, r
                self.withdrawn += 1
            else:
                assert key not in self.held, r
                self.held[key] = r.rule

    def as_set(self) -> frozenset[tuple[str, str, str]]:
        return frozenset((e, t, rule) for (e, t), rule in self.held.items())
