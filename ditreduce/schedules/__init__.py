"""Schedule IR: format, loading/validation, presets, lowering to per-step variants."""
from .ir import FORMAT_VERSION, IndexRange, LayoutOverride, Rule, Schedule
from .load import ScheduleError, json_schema, load_schedule, presets, validate

__all__ = ["FORMAT_VERSION", "IndexRange", "LayoutOverride", "Rule", "Schedule", "ScheduleError",
           "json_schema", "load_schedule", "presets", "validate"]
