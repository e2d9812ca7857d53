"""Identity stitching (ID mapping): which identities belong to one person.

The folder, bottom to top: `types` (identity and rule names, observations,
refusals, the policy), `rules` (the stitching rules on nodes and links, pure),
`unit` (one write transaction's worth of rule work), `store` (the SQLite file
`identity.sqlite`), `graph` (`IdentityGraph`, the facade the rest of the
collector uses). Import from here: `from maidian.collector.identity import
IdentityGraph`. docs/identity.md is the long form.
"""

from maidian.collector.identity.graph import IdentityGraph, observations_from
from maidian.collector.identity.types import (
    ANONYMOUS,
    LOGIN,
    RULES,
    Forgotten,
    IdentityGraphError,
    IdentityPolicy,
    Observation,
    PersonId,
    Refusal,
)

__all__ = [
    "ANONYMOUS",
    "LOGIN",
    "RULES",
    "Forgotten",
    "IdentityGraph",
    "IdentityGraphError",
    "IdentityPolicy",
    "Observation",
    "PersonId",
    "Refusal",
    "observations_from",
]
