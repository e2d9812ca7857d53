"""The identity feed: the catalog's observations into the identity graph, in order, once each (checkpointed)."""

from __future__ import annotations

import json
from typing import Any

from maidian.collector.identity.graph import IdentityGraph
from maidian.collector.identity.types import IdentityPolicy, Observation, order_time
from maidian.collector.store.log import DataDir
from maidian.tracking_plan import Plan


class IdentityFeed:
    """Feeds the catalog's observations to the identity graph, in order, once each.

    How far the graph has been fed is stored inside the graph's own transaction
    (`observe_many(..., checkpoint=)`), so a crash between the two files costs
    at most a replay, which the graph ignores (it is idempotent per event).
    """

    def __init__(self, data: DataDir, policy: IdentityPolicy) -> None:
        self.path = data.identity
        self.policy = policy
        self.graph = IdentityGraph(self.path, policy)
        checkpoint = self.graph.checkpoint()
        # Never fed: nothing in it to throw away, so it takes any catalog's generation without a reset.
        self.blank = checkpoint is None
        self.generation, self.fed = _parse_checkpoint(checkpoint)

    @classmethod
    def for_plan(cls, data: DataDir, plan: Plan) -> IdentityFeed:
        return cls(data, IdentityPolicy.from_plan(plan))

    def checkpoint(self, row_id: int) -> str:
        return f"{self.generation}:{row_id}"

    def reset(self, generation: str) -> None:
        """Start the graph again from nothing, for a catalog of another generation (its rows are numbered anew)."""
        self.graph.close()
        for suffix in ("", "-wal", "-shm"):
            self.path.with_name(self.path.name + suffix).unlink(missing_ok=True)
        self.graph = IdentityGraph(self.path, self.policy)
        self.generation, self.fed = generation, 0
        self.blank = False

    def close(self) -> None:
        self.graph.close()


def _parse_checkpoint(text: str | None) -> tuple[str, int]:
    """(catalog generation, observation rows fed); a checkpoint without a generation predates them."""
    if not text or ":" not in text:
        return "", 0
    generation, _, row = text.rpartition(":")
    return generation, int(row)


def observation_of(row: tuple[Any, ...]) -> Observation:
    """The graph's observation for a catalog row (event_id, time, kind, identities, trusted, at).

    Its time is the graph's order time (`order_time`): the event time for a
    signed source, the receive time after every signed event for anyone else.
    """
    event_id, time, kind, identities, trusted, at = row
    return Observation(
        event_id=event_id,
        time=order_time(int(time), int(at if at is not None else time), trusted=bool(trusted)),
        kind=kind,
        identities=json.loads(identities),
        trusted=bool(trusted),
    )
