"""Credentials the battery's collectors are configured with, importable by light host programs."""

from __future__ import annotations

__all__ = ["KEY", "SECRET", "SOURCE"]

KEY = "mk_battery_current_0001"
SOURCE = "orders-service"
SECRET = "orders-service-secret-0123456789"
