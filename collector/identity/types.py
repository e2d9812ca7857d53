"""The identity graph's vocabulary: identity and rule names, observations, refusals, the policy.

The bottom of `maidian.collector.identity`: the rules, the write unit, the
store and the graph all import from here, and this module imports none of
them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from maidian.collector.errors import CollectorError
from maidian.tracking_plan import Plan
from maidian.tracking_plan.envelope import BUILTIN_IDENTITIES

ANONYMOUS: Final = BUILTIN_IDENTITIES[0]
LOGIN: Final = BUILTIN_IDENTITIES[1]
BIND: Final = "bind"
UNBIND: Final = "unbind"

# Rule ids, as they appear in `Refusal.rule`.
JUNK_ID: Final = "junk_id"
UNKNOWN_TYPE: Final = "unknown_type"
ANONYMOUS_ALREADY_BOUND: Final = "anonymous_already_bound"
DEVICE_CAP: Final = "device_cap"
UNIQUE_CONFLICT: Final = "unique_conflict"
UNTRUSTED_UNBIND: Final = "untrusted_unbind"
SIGNED_ONLY: Final = "signed_only"

RULES: Final = (
    JUNK_ID,
    UNKNOWN_TYPE,
    ANONYMOUS_ALREADY_BOUND,
    DEVICE_CAP,
    UNIQUE_CONFLICT,
    UNTRUSTED_UNBIND,
    SIGNED_ONLY,
)
"""Every value `Refusal.rule` takes."""

PersonId = str

# Observations from senders that did not sign take their place in the graph's order after every signed
# one, by the collector's receive time (`order_time`). Epoch milliseconds stay far below this.
UNTRUSTED_BASE: Final = 1 << 61


def order_time(time_ms: int, received_ms: int, *, trusted: bool) -> int:
    """The time an event takes in the graph's order (docs/identity.md, "Trust").

    A signed source's events are ordered by their (corrected) event time; an
    unsigned sender's by the collector's receive time, after every signed
    event: a sender that chooses its event time cannot place a claim before
    someone else's, and an app's claim never comes before a signed binding.
    """
    return time_ms if trusted else UNTRUSTED_BASE + received_ms


def is_untrusted_time(time_ms: int) -> bool:
    """Whether an order time (`order_time`) is an unsigned sender's."""
    return time_ms >= UNTRUSTED_BASE


class IdentityGraphError(CollectorError):
    """The identity graph cannot do what was asked (closed, used after fork in memory, store unreadable)."""


@dataclass(frozen=True, slots=True)
class Observation:
    """The identities one stored event carries.

    `time` is the event's corrected time (epoch ms) and, with `event_id`,
    orders competing bindings. `kind` is the event's `type` (`track`,
    `profile_set`, ..., `bind`, `unbind`). `trusted` is true for signed server
    sources; only they may `unbind` under the default policy.
    """

    event_id: str
    time: int
    kind: str
    identities: Mapping[str, str]
    trusted: bool = False


@dataclass(frozen=True, slots=True)
class Refusal:
    """An identity link that was not made, and why; or, `withdrawn`, one that no longer stands.

    `rule` is one of `RULES`. `identity_type` names the identity that was not
    linked; `message` says why in words and never contains identity values
    (they may be PII). A refusal of a link is filed under the earliest event
    that carried that set of identities; a junk id, an undeclared type or an
    unsigned unbind under the event itself.

    `observe_many` returns changes to the graph's refusal record: a late event
    can reverse an earlier decision, and then the old refusal comes back with
    `withdrawn=True` (count it as -1) and the new one as usual.
    """

    event_id: str
    rule: str
    identity_type: str
    message: str
    withdrawn: bool = False


@dataclass(frozen=True, slots=True)
class IdentityPolicy:
    """Stitching rules. Defaults: strict one-to-one devices, 500 devices per login.

    `unique_types`: a person holds at most one value of each. `identity_types`:
    the types the plan declares (None accepts any). `priorities`: lower joins
    first and names the person (the plan's identity priorities; unlisted types
    get the plan default, 100). `unbind_requires_trusted`: only signed server
    sources may sever a binding, so an app cannot undo "first binding holds".
    `person_id_key`: keys the hash that person ids are made of; set a secret to
    make them unlinkable to the identity values (changing it renames everyone).
    `signed_only_types`: identity types that only signed sources may introduce:
    an unsigned link may carry one only where it already belongs to the same
    person (rule `signed_only`), and attribution of an unsigned event never
    goes through one.
    """

    one_login_per_anonymous: bool = True
    # Mixpanel's cap of anonymous ids merged into one user; past it, a shared or
    # scripted login is more likely than a real person with 500 devices.
    max_devices_per_login: int = 500
    unique_types: frozenset[str] = field(default_factory=lambda: frozenset({LOGIN}))
    identity_types: frozenset[str] | None = None
    # The plan loader's built-in priorities for the two built-in types.
    priorities: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({LOGIN: 1, ANONYMOUS: 1000}))
    unbind_requires_trusted: bool = True
    person_id_key: bytes = b""
    # Identity types only signed sources may introduce (the plan's `introduced_by: signed`).
    signed_only_types: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.max_devices_per_login < 1:
            raise ValueError(f"max_devices_per_login must be at least 1, got {self.max_devices_per_login}")
        if len(self.person_id_key) > 64:
            raise ValueError("person_id_key must be at most 64 bytes (a BLAKE2b key)")

    @classmethod
    def from_plan(cls, plan: Plan, **overrides: object) -> IdentityPolicy:
        """The policy with the plan's identity types, their priorities and `unique` flags (login_id always unique)."""
        derived: dict[str, object] = {
            "unique_types": frozenset(name for name, t in plan.identities.items() if t.unique) | {LOGIN},
            "identity_types": frozenset(plan.identities) | {ANONYMOUS, LOGIN},
            "priorities": MappingProxyType({name: t.priority for name, t in plan.identities.items()}),
            "signed_only_types": frozenset(name for name, t in plan.identities.items() if t.introduced_by == "signed"),
        }
        derived.update(overrides)
        return cls(**derived)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Forgotten:
    """What `forget` removed: the person's identities, and the changes to the refusal record."""

    person: PersonId
    identities: dict[str, set[str]]
    refusals: list[Refusal]
