"""The battery's figures: what each test counted, printed as one table at the end of the run and kept as JSON.

Every battery test gets a `Figures` (the `figures` fixture) and adds to it as
it goes: the set check's counts (`add_check`), crashes it injected, inputs it
tried, 5xx answers it saw, and short notes for the figures a column does not
hold (restart-to-ready, p99s, drain times). The verdict comes from pytest's own
report of the test. `render` makes the table that `pytest_terminal_summary`
prints; `write_json` keeps the same figures under test-artifacts/.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.reliability.ledger import Check

__all__ = ["COLUMNS", "Figures", "Registry", "render"]


@dataclass
class Figures:
    test: str  # "T1"
    name: str  # the test function
    tracked: int = 0
    acknowledged: int = 0
    stored: int = 0
    lost: int = 0
    unexpected: int = 0
    dup_raw: int = 0
    dup_deduped: int = 0
    crashes: int = 0
    inputs: int = 0
    status_5xx: int = 0
    verdict: str = "not run"
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def add_check(self, check: Check) -> None:
        """Add one set check (a phase of a test) to the totals."""
        self.tracked += check.tracked
        self.acknowledged += check.acknowledged
        self.stored += check.stored
        self.lost += check.lost
        self.unexpected += check.unexpected
        self.dup_raw += check.dup_raw
        self.dup_deduped += check.dup_deduped

    def note(self, text: str) -> None:
        self.notes.append(text)


COLUMNS = (
    ("test", "test"),
    ("name", "name"),
    ("tracked", "tracked"),
    ("acked", "acknowledged"),
    ("stored", "stored"),
    ("lost", "lost"),
    ("unexp", "unexpected"),
    ("dup raw", "dup_raw"),
    ("dup dedup", "dup_deduped"),
    ("crashes", "crashes"),
    ("inputs", "inputs"),
    ("5xx", "status_5xx"),
    ("s", "seconds"),
    ("verdict", "verdict"),
)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def render(rows: list[Figures]) -> list[str]:
    """The figures as a text table, one line per test, then the totals and each test's notes."""
    table = [[_cell(getattr(r, attr)) for _title, attr in COLUMNS] for r in rows]
    totals = Figures("all", f"{len(rows)} tests")
    for r in rows:
        for attr in ("tracked", "acknowledged", "stored", "lost", "unexpected", "dup_raw", "dup_deduped"):
            setattr(totals, attr, getattr(totals, attr) + getattr(r, attr))
        for attr in ("crashes", "inputs", "status_5xx"):
            setattr(totals, attr, getattr(totals, attr) + getattr(r, attr))
        totals.seconds += r.seconds
    passed = sum(1 for r in rows if r.verdict == "passed")
    totals.verdict = f"{passed}/{len(rows)} passed"
    table.append([_cell(getattr(totals, attr)) for _title, attr in COLUMNS])
    titles = [title for title, _attr in COLUMNS]
    widths = [max(len(t), *(len(row[i]) for row in table)) for i, t in enumerate(titles)]
    numeric = {i for i, (_t, attr) in enumerate(COLUMNS) if attr not in ("test", "name", "verdict")}

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=False))
        )

    out = [line(titles), line(["-" * w for w in widths])]
    out += [line(row) for row in table[:-1]]
    out += [line(["-" * w for w in widths]), line(table[-1])]
    for r in rows:
        for n in r.notes:
            out.append(f"  {r.test} {r.name}: {n}")
    return out


class Registry:
    """The figures of one pytest session, by test node id."""

    def __init__(self) -> None:
        self.rows: dict[str, Figures] = {}
        self.started = time.time()

    def for_test(self, nodeid: str, test: str, name: str) -> Figures:
        figures = self.rows.get(nodeid)
        if figures is None:
            figures = self.rows[nodeid] = Figures(test, name)
        return figures

    def ordered(self) -> list[Figures]:
        def key(f: Figures) -> tuple[int, str]:
            digits = f.test.lstrip("T")
            return (int(digits) if digits.isdigit() else 99, f.name)

        return sorted(self.rows.values(), key=key)

    def write_json(self, path: Path, profile: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "profile": profile,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
            "wall_s": round(time.time() - self.started, 1),
            "machine": {
                "cpus": os.cpu_count(),
                "load_avg": [round(x, 2) for x in os.getloadavg()],
                "python": platform.python_version(),
            },
            "tests": [asdict(f) for f in self.ordered()],
        }
        path.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
