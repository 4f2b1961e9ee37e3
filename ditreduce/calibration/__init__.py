"""Calibration: measure a model on a few dense generations and write a schedule (see docs/calibrate.md)."""
from __future__ import annotations

from ..schedules import schedule_yaml
from .coredit import Redundancy, allocate, measure_redundancy

__all__ = ["Redundancy", "allocate", "measure_redundancy", "write_schedule"]


def write_schedule(doc: dict, info: dict, path: str, command: str) -> None:
    """An ordinary version-1 schedule; what was measured goes into a comment header."""
    comments = (f"written by: {command}", *(f"{k}: {v}" for k, v in info.items()))
    with open(path, "w") as f:
        f.write(schedule_yaml(doc, comments))
