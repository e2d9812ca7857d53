"""Preset properties (`$lib`, `$os`, ...), computed once per process, not per call."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from maidian.tracking_plan._version import __version__

__all__ = ["LIB", "LIB_VERSION", "presets"]

LIB = "maidian-python"
LIB_VERSION = __version__


def presets(app_name: str | None, app_version: str | None, *, server: bool) -> dict[str, Any]:
    """The presets every track event carries; `$server` marks events from signed backend sources."""
    uname = os.uname()
    out: dict[str, Any] = {
        "$lib": LIB,
        "$lib_version": LIB_VERSION,
        "$os": uname.sysname,
        "$os_version": uname.release[:256],
        "$runtime": sys.implementation.name,
        "$runtime_version": "{}.{}.{}".format(*sys.version_info[:3]),
        "$timezone_offset": max(-1440, min(1440, time.localtime().tm_gmtoff // 60)),
    }
    if app_name:
        out["$app_name"] = app_name
    if app_version:
        out["$app_version"] = app_version
    if server:
        out["$server"] = True
    return out
