"""The maidian collector: receive, validate, deduplicate, stitch and store events durably.

`maidian serve` runs it (docs/collector.md); it also takes Sensors Analytics
and Segment traffic (docs/migration.md). The HTTP edge is
`maidian.collector.http.app.make_app`, imported on its own because it needs
aiohttp (the `collector` extra), which the plan commands do without.
"""

from maidian.collector.config import Config, ConfigSource, resolve_config
from maidian.collector.errors import (
    BadRequest,
    CollectorError,
    ConfigError,
    DataDirError,
    Forbidden,
    NoSuchPerson,
    PayloadTooLarge,
    RateLimited,
    RequestError,
    Unauthenticated,
    Unavailable,
    UnsupportedMediaType,
)
from maidian.collector.read import export_events, person_events, quarantine_records, rebuild, replay_quarantine
from maidian.collector.vendors.common import VendorError

__all__ = [
    "BadRequest",
    "CollectorError",
    "Config",
    "ConfigError",
    "ConfigSource",
    "DataDirError",
    "Forbidden",
    "NoSuchPerson",
    "PayloadTooLarge",
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
