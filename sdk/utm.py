"""Campaign attribution: a deep link's `utm_*` parameters as event properties."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

from maidian.tracking_plan.envelope import PROPERTY_NAME_RE

__all__ = ["utm_properties"]

# Longer values are cut: campaign ids are short, and a property string is capped at 8 KiB anyway.
MAX_VALUE_CHARS = 256


def utm_properties(url: str) -> dict[str, str]:
    """`{"utm_source": ..., "utm_campaign": ...}` from a deep link or web URL; first value wins.

    >>> utm_properties("broker://open/quote?code=600519&utm_source=wechat&utm_campaign=spring")
    {'utm_source': 'wechat', 'utm_campaign': 'spring'}
    """
    parts = urlsplit(url)
    query = parts.query or (parts.fragment.split("?", 1)[1] if "?" in parts.fragment else "")
    out: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=False):
        key = name.strip().lower()
        if key.startswith("utm_") and PROPERTY_NAME_RE.match(key) and key not in out:
            out[key] = value[:MAX_VALUE_CHARS]
    return out
