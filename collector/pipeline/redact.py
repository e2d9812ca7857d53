"""PII at rest in the quarantine: the plan's tags applied to a quarantined record before it is stored.

An event that fails validation is kept as sent so that it can be replayed
once the plan or the app is fixed. When it failed because a value the plan
tags `hash`, `mask` or `drop` arrived in clear (an old app, a misconfigured
source), keeping it "as sent" would keep an ID number or a mobile number in
clear on disk and print it with `export --quarantined`. So before a
quarantined record is stored, every tagged value in it that is not already in
its tagged form is transformed (`tracking_plan.pii.settle_pii`): dropped,
masked, or hashed with the collector's own key (`state/quarantine-pii.key`,
made once, readable by the collector's user only). A hashed value in the
quarantine then joins nothing an app sends (apps hash with their own key),
which is the point: the quarantine is for diagnosis, not analysis. A value
already hashed or masked is kept, so a replay still passes. The reasons were
never a leak: validation messages name the rule and the path, never a value.

Values in properties the plan does not declare for the event get no tag, so
they are checked for personal data the plan never planned for
(`tracking_plan.pii_detect`: mainland mobile numbers, resident ID numbers with
their check digit, bank cards passing Luhn, e-mail addresses), and what is
found is masked. Identity values are left as sent: they are how
`privacy delete` finds the person's quarantined records.

Records that do not decode stay as their bytes: nothing in them can be found
to transform.
"""

from __future__ import annotations

import os
import secrets
from typing import Any, Final

import msgspec

from maidian.collector.store.log import DataDir
from maidian.tracking_plan import Plan
from maidian.tracking_plan.envelope import PROFILE_TYPES
from maidian.tracking_plan.pii import PiiPaths, settle_pii
from maidian.tracking_plan.pii_detect import find_pii, mask_found

__all__ = ["QuarantinePii", "quarantine_key"]

_KEY_FILE: Final = "quarantine-pii.key"
_KEY_BYTES: Final = 32
_json = msgspec.json.Encoder()
_msgpack = msgspec.msgpack.Encoder()


def quarantine_key(data: DataDir) -> bytes:
    """The collector's key for hashing clear values in quarantined records (created on first use, mode 0600)."""
    path = data.state / _KEY_FILE
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    data.state.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(_KEY_BYTES)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first
        return path.read_bytes()
    try:
        os.write(fd, key)
        os.fsync(fd)
    finally:
        os.close(fd)
    return key


class QuarantinePii:
    """The plan's PII tags, applied to quarantined records (see the module docstring)."""

    def __init__(self, plan: Plan, key: bytes) -> None:
        self.plan = plan
        self.key = key
        self.identity_tags = plan.identity_pii()
        self._paths: dict[str | None, PiiPaths] = {}
        self._declared: dict[str | None, frozenset[str]] = {}

    @classmethod
    def for_plan(cls, plan: Plan, data: DataDir) -> QuarantinePii:
        return cls(plan, quarantine_key(data))

    def _declared_for(self, record: dict[str, Any]) -> frozenset[str]:
        kind = record.get("type")
        name = record.get("event") if kind == "track" else None
        key = name if isinstance(name, str) else None
        declared = self._declared.get(key)
        if declared is None:
            if kind == "track":
                spec = self.plan.events.get(key or "")
                own = spec.schema.get("properties", {}) if spec is not None else {}
                common = self.plan.common_properties.get("properties", {})
                declared = frozenset(own) | frozenset(common)
            else:
                declared = frozenset(self.plan.user_properties.get("properties", {}))
            self._declared[key] = declared
        return declared

    def _paths_for(self, record: dict[str, Any]) -> PiiPaths:
        kind = record.get("type")
        name = record.get("event") if kind == "track" else None
        if kind != "track" and kind not in PROFILE_TYPES:
            return {}
        key = name if isinstance(name, str) else None
        paths = self._paths.get(key)
        if paths is None:
            paths = self._paths[key] = self.plan.pii_paths(key) if kind == "track" else self.plan.pii_paths(None)
        return paths

    def __call__(self, record: Any, raw: msgspec.Raw, fmt: str) -> msgspec.Raw:
        """The record's bytes to store: `raw` itself when nothing needed changing."""
        if not isinstance(record, dict):
            return raw
        settled = settle_pii(record, self._paths_for(record), self.identity_tags, self.key)
        props = settled.get("properties")
        declared = self._declared_for(record)
        if isinstance(props, dict) and find_pii(props, declared=declared):
            masked = {k: (v if k in declared else mask_found(v)) for k, v in props.items()}
            settled = {**settled, "properties": masked}
        if settled is record:
            return raw
        return msgspec.Raw((_msgpack if fmt == "msgpack" else _json).encode(settled))
