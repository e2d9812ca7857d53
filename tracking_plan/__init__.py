"""The tracking plan: the contract between app code, QA and the collector.

    >>> from maidian.tracking_plan import load_plan, Validator
    >>> plan = load_plan("examples/securities_app.plan.json")      # doctest: +SKIP
    >>> Validator(plan).validate(event)                             # doctest: +SKIP
    [Violation(rule='enum', path='/properties/side', ...)]

See docs/plan-format.md for the format.
"""

from ._version import __version__
from .errors import EventFileError, PlanLoadError, PlanProblem, TrackingPlanError
from .loader import build_plan, load_plan, parse_plan, read_document
from .model import BusinessLine, EventMapping, EventSpec, IdentityType, Plan, PlanSettings, VendorMapping
from .validator import Stage, Validator, Violation

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
