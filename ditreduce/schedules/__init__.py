"""Schedule IR: format, loading/validation, presets, lowering to per-step variants."""
from .ir import FORMAT_VERSION, IndexRange, LayoutOverride, Rule, Schedule
from .load import ScheduleError, json_schema, load_schedule, presets, schedule_yaml, validate

__all__ = ["FORMAT_VERSION", "IndexRange", "LayoutOverride", "Rule", "Schedule", "ScheduleError", "dense_prefix",
           "default_schedule", "json_schema", "load_schedule", "presets", "schedule_dict", "schedule_yaml", "validate"]


def dense_prefix(fraction: float) -> dict:
    """The rule that keeps every site dense on the first `fraction` of the run's steps (a schedule dict's
    rule: `{"step_fraction": {"start": 0.0, "stop": fraction}, "method": "none"}`)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"dense_prefix: a fraction in (0, 1] expected, got {fraction}")
    return {"step_fraction": {"start": 0.0, "stop": fraction}, "method": "none"}


def schedule_dict(method: str, ratio: float, scope: str | None = None, dense_fraction: float = 0.0,
                  params: dict | None = None, late_ratio: float | None = None) -> dict:
    """The schedule document the bench, tune and the methods' defaults build: `method` at `ratio` in `scope`
    (None: the format's default), `late_ratio` over the last half of the reduced steps, dense on the first
    `dense_fraction` of the steps; `params` sets top-level fields (`prop_attn`) and, as `method.key`, method
    parameters."""
    doc = {"version": FORMAT_VERSION, "method": method, "ratio": ratio, **({"scope": scope} if scope else {}),
           "rules": []}
    if late_ratio is not None:
        start = dense_fraction + (1 - dense_fraction) / 2
        doc["rules"].append({"step_fraction": {"start": round(start, 4), "stop": 1.0}, "ratio": late_ratio})
    if dense_fraction > 0:
        doc["rules"].append(dense_prefix(dense_fraction))
    for key, value in (params or {}).items():
        if "." in key:
            name, _, k = key.partition(".")
            doc.setdefault("params", {}).setdefault(name, {})[k] = value
        else:
            doc[key] = value
    return doc


def default_schedule(method: str) -> "str | dict":
    """The schedule the demo runs for `method` (Method.default_schedule): its own, else the preset
    `<method>-default` where one ships, else the method at ratio 0.5 after the first 20 % of the steps."""
    from ..methods import get_method

    own = get_method(method).default_schedule
    if own is not None:
        return own
    return f"{method}-default" if f"{method}-default" in presets() else schedule_dict(method, 0.5, dense_fraction=0.2)
