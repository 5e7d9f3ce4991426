"""Figures the robustness tests report (steps covered, kills, leaks, soak counts, ...).

Each test adds its numbers here; they are printed at the end of the session
(see tests/conftest.py) and, when $VMNET_FIGURES names a file, appended to it
as one JSON object per line, so docs/robustness.md can quote the last run.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

_FIGURES: list[dict[str, Any]] = []


def report(area: str, name: str, **numbers: Any) -> None:
    """Record one test's figures, e.g. report("crash", "up", points=10, kills=10, leaks=0)."""
    row = {"area": area, "name": name, **numbers}
    _FIGURES.append(row)
    path = os.environ.get("VMNET_FIGURES")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"time": round(time.time()), **row}, sort_keys=True) + "\n")


def collected() -> list[dict[str, Any]]:
    return list(_FIGURES)


def summary_lines() -> list[str]:
    lines = []
    for row in _FIGURES:
        nums = ", ".join(f"{k}={v}" for k, v in row.items() if k not in ("area", "name"))
        lines.append(f"{row['area']:<10} {row['name']:<28} {nums}")
    return lines
