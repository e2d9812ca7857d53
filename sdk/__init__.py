"""The maidian SDK: track events from apps and backend services (docs/sdk.md).

    from maidian.sdk import Client

    client = Client("http://127.0.0.1:8106", write_key="wk_live_...", plan="tracking_plan.json")
    client.track("stock_order_submit", {"stock_code": "600519", "side": "buy", "price": 1688.5})

`Client` sends from a background thread with the standard library only;
`AsyncClient` (the `async` extra) sends from an asyncio task. Both share one
sans-I/O core (`maidian.sdk.core.SdkCore`). `maidian.sdk.testing.Recorder`
records instead of sending, for your unit tests.

Names load on first use, so `import maidian.sdk` costs next to nothing until
a client is made.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from maidian.tracking_plan._version import __version__

if TYPE_CHECKING:
    from .aio import AsyncClient
    from .client import Client
    from .config import BatchLimits, Config, QueueLimits, RetryPolicy, SpoolConfig, Timeouts
    from .core import Stats
    from .errors import (
        CallerError,
        ConfigError,
        InvalidEvent,
        MaidianSdkError,
        RemoteError,
        ServerRejected,
        TransportError,
    )
    from .utm import utm_properties

_WHERE = {
    "AsyncClient": "aio",
    "Client": "client",
    "BatchLimits": "config",
    "Config": "config",
    "QueueLimits": "config",
    "RetryPolicy": "config",
    "SpoolConfig": "config",
    "Timeouts": "config",
    "Stats": "core",
    "CallerError": "errors",
    "ConfigError": "errors",
    "InvalidEvent": "errors",
    "MaidianSdkError": "errors",
    "RemoteError": "errors",
    "ServerRejected": "errors",
    "TransportError": "errors",
    "utm_properties": "utm",
}

__all__ = [
    "AsyncClient",
    "BatchLimits",
    "CallerError",
    "Client",
    "Config",
    "ConfigError",
    "InvalidEvent",
    "MaidianSdkError",
    "QueueLimits",
    "RemoteError",
    "RetryPolicy",
    "ServerRejected",
    "SpoolConfig",
    "Stats",
    "Timeouts",
    "TransportError",
    "__version__",
    "utm_properties",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
