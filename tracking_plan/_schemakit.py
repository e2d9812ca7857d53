"""Small readings of property schemas shared by the linter, the differ and the code generator."""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from typing import Any, Final

from .validator import json_type

__all__ = ["UNTYPED", "enum_key", "json_kind", "types_of"]

UNTYPED: Final[frozenset[str]] = frozenset()


def types_of(schema: Mapping[str, Any]) -> frozenset[str]:
    """The schema's `type` as a set; empty when it does not say (any type)."""
    t = schema.get("type")
    if t is None:
        return UNTYPED
    return _type_set(t if isinstance(t, str) else tuple(t))


@cache
def _type_set(t: str | tuple[str, ...]) -> frozenset[str]:
    return frozenset([t] if isinstance(t, str) else t)


def json_kind(value: object) -> str:
    """The JSON Schema type a JSON value satisfies most narrowly (2.0 is an integer)."""
    kind = json_type(value)
    return "integer" if kind == "number" and float(value).is_integer() else kind  # type: ignore[arg-type]


def enum_key(value: object) -> object:
    """A hashable key under which two JSON values are equal as `enum` sees them: 1 == 1.0, true != 1."""
    if isinstance(value, bool) or value is None:
        return ("literal", value)
    if isinstance(value, (int, float)):
        return ("number", value)
    if isinstance(value, (list, dict)):
        return ("json", json.dumps(value, sort_keys=True))
    return ("string", value)
