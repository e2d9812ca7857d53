"""Errors raised by `maidian.tracking_plan`.

Every error says whose fault it is. All of them are caller-side: the plan or
the input given to a command is wrong, and the message names the file, the
place and what was expected.

    TrackingPlanError                 root of this package's errors
     ├── PlanLoadError                 the plan cannot be used; carries every PlanProblem found
     └── EventFileError                an events file (JSON lines) cannot be read

Validating an event never raises: a bad event is a value (a list of
`Violation`s), because bad events are the collector's normal input.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["EventFileError", "PlanLoadError", "PlanProblem", "TrackingPlanError"]


class TrackingPlanError(Exception):
    """Root of the errors raised by `maidian.tracking_plan`."""


@dataclass(frozen=True, slots=True)
class PlanProblem:
    """One thing wrong with a plan document.

    `pointer` is a JSON pointer into the document ("" for the whole document);
    `line` and `column` are 1-based positions in the file, when known.
    """

    message: str
    pointer: str = ""
    source: str = "<plan>"
    line: int | None = None
    column: int | None = None
    code: str = "plan"

    def __str__(self) -> str:
        where = self.source
        if self.line is not None:
            where += f":{self.line}:{self.column or 1}"
        at = f" at {self.pointer}" if self.pointer else ""
        return f"{where}: {self.message}{at} [{self.code}]"


class PlanLoadError(TrackingPlanError):
    """The plan document cannot be used: unreadable, not JSON, or not a valid plan."""

    def __init__(self, problems: list[PlanProblem] | tuple[PlanProblem, ...]) -> None:
        self.problems = tuple(problems)
        count = len(self.problems)
        head = f"{count} problem{'s' if count != 1 else ''} in the tracking plan"
        super().__init__(head + ":\n" + "\n".join(f"  {p}" for p in self.problems))


class EventFileError(TrackingPlanError):
    """An events file cannot be read at all (missing, unreadable)."""
