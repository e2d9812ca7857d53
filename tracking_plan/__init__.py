"""The tracking plan: the contract between app code, QA and the collector.

    >>> from maidian.tracking_plan import load_plan, Validator
    >>> plan = load_plan("examples/securities_app.plan.json")      # doctest: +SKIP
    >>> Validator(plan).validate(event)                             # doctest: +SKIP
    [Violation(rule='enum', path='/properties/side', ...)]

See docs/plan-format.md for the format.

The names below load on first use (PEP 562), so that importing a light module
such as `maidian.tracking_plan.envelope` (the SDK does, in the host's start-up
path) does not pull in the loader and the compiled validator.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from .errors import EventFileError, PlanLoadError, PlanProblem, TrackingPlanError
    from .loader import build_plan, load_plan, parse_plan, read_document
    from .model import BusinessLine, EventMapping, EventSpec, IdentityType, Plan, PlanSettings, VendorMapping
    from .validator import Stage, Validator, Violation

_WHERE = {
    "EventFileError": "errors",
    "PlanLoadError": "errors",
    "PlanProblem": "errors",
    "TrackingPlanError": "errors",
    "build_plan": "loader",
    "load_plan": "loader",
    "parse_plan": "loader",
    "read_document": "loader",
    "BusinessLine": "model",
    "EventMapping": "model",
    "EventSpec": "model",
    "IdentityType": "model",
    "Plan": "model",
    "PlanSettings": "model",
    "VendorMapping": "model",
    "Stage": "validator",
    "Validator": "validator",
    "Violation": "validator",
}

__all__ = [
    "BusinessLine",
    "EventFileError",
    "EventMapping",
    "EventSpec",
    "IdentityType",
    "Plan",
    "PlanLoadError",
    "PlanProblem",
    "PlanSettings",
    "Stage",
    "TrackingPlanError",
    "Validator",
    "VendorMapping",
    "Violation",
    "__version__",
    "build_plan",
    "load_plan",
    "parse_plan",
    "read_document",
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
