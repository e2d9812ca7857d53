"""Per-event limits on decoded values: size, properties, nesting, string length, finite numbers, 64-bit integers."""

from __future__ import annotations

from typing import Any, Final

from maidian.tracking_plan import Violation
from maidian.tracking_plan.envelope import Limits

# The integers msgpack can carry, and so the raw log: a JSON body may hold any integer at all.
INT_MIN: Final = -(2**63)
INT_MAX: Final = 2**64 - 1


def check_limits(event: Any, limits: Limits, encoded_bytes: int | None = None) -> Violation | None:
    """The first limit the decoded event breaks (property count, nesting, string size, non-JSON value).

    When the whole event encodes to no more than `max_string_bytes`
    (`encoded_bytes`), no string in it can be longer, and strings are skipped.
    """
    if type(event) is not dict:
        return None  # the validator says what an event must be
    props = event.get("properties")
    if type(props) is not dict:
        return None
    if len(props) > limits.max_properties:
        return Violation(
            "limit",
            "/properties",
            f"{len(props)} properties; at most {limits.max_properties} are accepted",
            limits.max_properties,
        )
    strings = encoded_bytes is None or encoded_bytes > limits.max_string_bytes
    for value in props.values():
        t = type(value)
        if t is str:
            if strings and _too_long(value, limits):
                return _locate(props, limits)
        elif t is dict or t is list or t is float:
            if t is float:
                if value - value == 0.0:
                    continue
            elif _nested_ok(value, 1, limits, strings):
                continue
            return _locate(props, limits)
        elif t is int and not INT_MIN <= value <= INT_MAX:
            return _locate(props, limits)
    return None


def check_decoded_limits(event: dict[str, Any], limits: Limits, encoded_bytes: int) -> Violation | None:
    """`check_limits` for an event from a `json_checked` batch: the same answer, without the walk.

    Such an event holds only JSON values nested within the limit, so only the
    property count and string sizes can break a limit. A string longer than
    `max_string_bytes` cannot fit in an event that encodes to no more bytes than
    that, and more than `max_properties` properties need more than twice as many
    bytes; in a larger event, or one with too many properties, the full check
    runs and names the offending property.
    """
    if encoded_bytes <= limits.max_string_bytes:
        if encoded_bytes <= 2 * limits.max_properties + 1:
            # Each property takes at least two encoded bytes (msgpack: a key and a value of
            # one byte each; JSON: `"":0`), so this many bytes cannot hold one too many.
            return None
        props = event.get("properties")
        if type(props) is not dict or len(props) <= limits.max_properties:
            return None
    return check_limits(event, limits, encoded_bytes)


def _too_long(value: str, limits: Limits) -> bool:
    # A character is at most 4 bytes in UTF-8: only long strings need encoding.
    return len(value) * 4 > limits.max_string_bytes and (
        len(value.encode("utf-8", "surrogatepass")) > limits.max_string_bytes
    )


def _nested_ok(node: Any, depth: int, limits: Limits, strings: bool) -> bool:
    if depth > limits.max_depth:
        return False
    for value in node.values() if type(node) is dict else node:
        t = type(value)
        if t is str:
            if strings and _too_long(value, limits):
                return False
        elif t is dict or t is list:
            if not _nested_ok(value, depth + 1, limits, strings):
                return False
        elif (t is float and value - value != 0.0) or (t is int and not INT_MIN <= value <= INT_MAX):
            return False
    return True


def _locate(props: dict[str, Any], limits: Limits) -> Violation:
    """The violation for the first bad property (the slow path, for bad events only)."""
    for key, value in props.items():
        path = f"/properties/{key}"
        t = type(value)
        if t is str and _too_long(value, limits):
            return _string_too_long(path, limits)
        if t is float and value - value != 0.0:
            return _not_finite(path)
        if t is int and not INT_MIN <= value <= INT_MAX:
            return _int_too_wide(path)
        if (t is dict or t is list) and not _nested_ok(value, 1, limits, True):
            return _nested_violation(value, 1, path, limits)
    return Violation("limit", "/properties", "the properties break a size limit")


def _not_finite(path: str) -> Violation:
    return Violation("type", path, "NaN and infinities are not JSON numbers", "a finite number", "non-finite number")


def _int_too_wide(path: str) -> Violation:
    return Violation(
        "limit",
        path,
        f"the integer is outside {INT_MIN} to {INT_MAX}, the 64-bit range the log stores",
        {"minimum": INT_MIN, "maximum": INT_MAX},
        "integer beyond 64 bits",
    )


def _nested_violation(node: Any, depth: int, path: str, limits: Limits) -> Violation:
    if depth > limits.max_depth:
        return Violation("limit", path, f"nested more than {limits.max_depth} levels deep", limits.max_depth)
    items = node.items() if type(node) is dict else enumerate(node)
    for key, value in items:
        sub = f"{path}/{key}"
        t = type(value)
        if t is str and _too_long(value, limits):
            return _string_too_long(sub, limits)
        if t is float and value - value != 0.0:
            return _not_finite(sub)
        if t is int and not INT_MIN <= value <= INT_MAX:
            return _int_too_wide(sub)
        if (t is dict or t is list) and not _nested_ok(value, depth + 1, limits, True):
            return _nested_violation(value, depth + 1, sub, limits)
    return Violation("limit", path, "a nested value breaks a size limit")


def _string_too_long(path: str, limits: Limits) -> Violation:
    return Violation(
        "limit", path, f"the string is over {limits.max_string_bytes} bytes", {"maxBytes": limits.max_string_bytes}
    )
