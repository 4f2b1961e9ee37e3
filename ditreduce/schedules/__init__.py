"""Schedule IR: format, loading/validation, presets, lowering to per-step variants."""
from .ir import FORMAT_VERSION, IndexRange, LayoutOverride, Rule, Schedule
from .load import ScheduleError, json_schema, load_schedule, presets, validate

__all__ = ["FORMAT_VERSION", "IndexRange", "LayoutOverride", "Rule", "Schedule", "ScheduleError", "dense_prefix",
           "json_schema", "load_schedule", "presets", "validate"]


def dense_prefix(fraction: float) -> dict:
    """The rule that keeps every site dense on the first `fraction` of the run's steps (a schedule dict's
    rule: `{"step_fraction": {"start": 0.0, "stop": fraction}, "method": "none"}`)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"dense_prefix: a fraction in (0, 1] expected, got {fraction}")
    return {"step_fraction": {"start": 0.0, "stop": fraction}, "method": "none"}
