"""The maidian collector: receive, validate, deduplicate, stitch and store events durably.

`maidian serve` runs it (docs/collector.md); it also takes Sensors Analytics
and Segment traffic (docs/migration.md). ARCHITECTURE.md draws the folders:
`pipeline/` (auth, decode, judge, dedupe, ingest), `store/` (the log and the
catalog), `identity/`, `vendors/`, `privacy/`, `qa/`, `http/` (the aiohttp
edge: `maidian.collector.http.app.make_app`), `run/` (the processes) and
`cli/`.

Names load on first use, so importing this package (as every `maidian`
command does) costs next to nothing until one is used.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from maidian.collector.config import ConfigSource, resolve_config
    from maidian.collector.errors import (
        BadRequest,
        CollectorError,
        ConfigError,
        DataDirError,
        DerivedFileError,
        Forbidden,
        NoSuchPerson,
        PayloadTooLarge,
        PrivacyError,
        RateLimited,
        RequestError,
        Unauthenticated,
        Unavailable,
        UnsupportedMediaType,
    )
    from maidian.collector.read import export_events, person_events, quarantine_records, rebuild, replay_quarantine
    from maidian.collector.settings import Config
    from maidian.collector.vendors.common import VendorError

_WHERE = {
    "Config": "config",
    "ConfigSource": "config",
    "resolve_config": "config",
    "BadRequest": "errors",
    "CollectorError": "errors",
    "ConfigError": "errors",
    "DataDirError": "errors",
    "DerivedFileError": "errors",
    "Forbidden": "errors",
    "NoSuchPerson": "errors",
    "PayloadTooLarge": "errors",
    "PrivacyError": "errors",
    "RateLimited": "errors",
    "RequestError": "errors",
    "Unauthenticated": "errors",
    "Unavailable": "errors",
    "UnsupportedMediaType": "errors",
    "export_events": "read",
    "person_events": "read",
    "quarantine_records": "read",
    "rebuild": "read",
    "replay_quarantine": "read",
    "VendorError": "vendors.common",
}

__all__ = [
    "BadRequest",
    "CollectorError",
    "Config",
    "ConfigError",
    "ConfigSource",
    "DataDirError",
    "DerivedFileError",
    "Forbidden",
    "NoSuchPerson",
    "PayloadTooLarge",
    "PrivacyError",
    "RateLimited",
    "RequestError",
    "Unauthenticated",
    "Unavailable",
    "UnsupportedMediaType",
    "VendorError",
    "export_events",
    "person_events",
    "quarantine_records",
    "rebuild",
    "replay_quarantine",
    "resolve_config",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
