"""Identity stitching (ID mapping): which identities belong to one person.

This module is the seam between the ingest pipeline and the identity graph.
The pipeline calls `IdentityGraph.observe_many` once per request with the
identities of the events it has just stored; readers call `person_of` and
`identities_of`.

Rules (the defaults protect a bank; `IdentityPolicy` sets them):
- an anonymous id binds to at most one login id (shared devices in branches);
- a login id binds to at most `max_devices_per_login` anonymous ids;
- two identified persons never merge silently: an identity type marked
  `unique` in the plan belongs to one person, and an observation that would join
  two persons through it is refused;
- junk ids (`envelope.is_junk_identity`: "null", "undefined", "0", empty, ...)
  are refused;
- every refusal is returned as a `Refusal` (and recorded by the caller); the
  event itself is still stored under its valid identities.
- The result depends on the set of observations, not on their arrival order:
  competing bindings are decided by (time, event_id), earliest first, so an
  event that arrives late still belongs to the right person.

The implementation below is a placeholder with the final interface: an
in-memory union of identities without the rules. The real graph replaces it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from maidian.tracking_plan import Plan

__all__ = ["IdentityGraph", "IdentityPolicy", "Observation", "PersonId", "Refusal"]

PersonId = str


@dataclass(frozen=True, slots=True)
class Observation:
    """The identities one stored event carries.

    `time` is the event's corrected time (epoch ms) and, with `event_id`,
    orders competing bindings. `kind` is the event's `type` (`track`,
    `profile_set`, ..., `bind`, `unbind`). `trusted` is true for signed server
    sources.
    """

    event_id: str
    time: int
    kind: str
    identities: Mapping[str, str]
    trusted: bool = False


@dataclass(frozen=True, slots=True)
class Refusal:
    """An identity link that was not made, and why.

    `rule` is one of `junk_id`, `anonymous_already_bound`, `device_cap`,
    `unique_conflict`, `unknown_type`. `message` never contains identity values
    (they may be PII); `identity_type` names the type involved.
    """

    event_id: str
    rule: str
    identity_type: str
    message: str


@dataclass(frozen=True, slots=True)
class IdentityPolicy:
    """Stitching rules. Defaults: strict one-to-one devices, 500 devices per login."""

    one_login_per_anonymous: bool = True
    # Mixpanel's cap of anonymous ids merged into one user; past it, a shared or
    # scripted login is more likely than a real person with 500 devices.
    max_devices_per_login: int = 500
    unique_types: frozenset[str] = field(default_factory=lambda: frozenset({"login_id"}))

    @classmethod
    def from_plan(cls, plan: Plan, **overrides: object) -> IdentityPolicy:
        """The policy with the plan's `unique` identity types."""
        unique = frozenset(name for name, t in plan.identities.items() if t.unique)
        return cls(unique_types=unique, **overrides)  # type: ignore[arg-type]


class IdentityGraph:
    """The identity graph, persisted in `path` (a SQLite file) when given."""

    def __init__(self, path: Path | None = None, policy: IdentityPolicy | None = None) -> None:
        self.path = path
        self.policy = policy or IdentityPolicy()
        self._person: dict[tuple[str, str], PersonId] = {}
        self._members: dict[PersonId, set[tuple[str, str]]] = {}

    def observe_many(self, observations: Iterable[Observation]) -> list[Refusal]:
        """Take in the identities of stored events; return the links refused.

        Idempotent: observing the same event again changes nothing, so recovery
        may replay the log tail.
        """
        for obs in observations:
            keys = [(t, v) for t, v in obs.identities.items() if v]
            people = {self._person[k] for k in keys if k in self._person}
            person = min(people) if people else f"p:{keys[0][0]}:{keys[0][1]}" if keys else None
            if person is None:
                continue
            members = self._members.setdefault(person, set())
            for other in people - {person}:
                for key in self._members.pop(other, set()):
                    members.add(key)
                    self._person[key] = person
            for key in keys:
                members.add(key)
                self._person[key] = person
        return []

    def person_of(self, identity_type: str, value: str) -> PersonId | None:
        """The person an identity belongs to, or None when it was never observed."""
        return self._person.get((identity_type, value))

    def identities_of(self, person: PersonId) -> dict[str, set[str]]:
        """Every identity of a person, by type."""
        out: dict[str, set[str]] = {}
        for t, v in self._members.get(person, ()):
            out.setdefault(t, set()).add(v)
        return out

    def find(self, value: str, identity_type: str | None = None) -> PersonId | None:
        """The person that any identity with this value (of this type, if given) belongs to."""
        if identity_type is not None:
            return self.person_of(identity_type, value)
        for (_type, v), person in self._person.items():
            if v == value:
                return person
        return None

    def close(self) -> None:
        """Flush and close the persistent store."""


def observations_from(events: Sequence[Mapping[str, object]]) -> list[Observation]:
    """Observations for decoded wire events (helper for tests and replays)."""
    out = []
    for e in events:
        ids = e.get("identities")
        if isinstance(ids, Mapping):
            out.append(
                Observation(
                    event_id=str(e.get("event_id")),
                    time=int(e.get("time", 0)),  # type: ignore[call-overload]
                    kind=str(e.get("type")),
                    identities={str(k): str(v) for k, v in ids.items()},
                )
            )
    return out
