"""The run plan: which variant runs at each step of a run, computed once per (analysis, num_steps).

    plan_run(schedule, sites, num_steps) -> RunPlan(keys, per_step)

A variant key is one RegionConfig (or None: dense) per site. Lowering gives each step its key
(`lower.step_key`); then every method present in a site's column of keys over the steps may rewrite
that column (`Method.assign_phases`: identity by default; DiTo turns its steps into prime / match /
reduce / tail phases, tail only where the whole run is known). The runtime, the exporters, report(), the
bench and calibration read only the plan.

With num_steps unknown (a pipeline that never says, a schedule without step_fraction rules) the plan
is open: it grows as steps are asked for, each step lowered once.
"""
from __future__ import annotations

import warnings

from ..errors import ScheduleError
from ..methods import get_method
from .ir import Schedule
from .lower import NumStepsUnknown, step_key

WARN_VARIANTS = 16       # a capture with more distinct variants than this warns once
MAX_VARIANTS = 64        # ... and more than max_variants (this by default) is a ScheduleError


def is_stateful(schedule: Schedule) -> bool:
    return any(get_method(m).stateful for m in schedule.methods)


def is_step_dependent(schedule: Schedule) -> bool:
    """Can a step's variant differ from another's? (step rules, or a stateful method's phases)"""
    return schedule.step_dependent or is_stateful(schedule)


def _phase_column(column: list, complete: bool) -> list:
    for name in dict.fromkeys(c.method for c in column if c is not None):
        column = get_method(name).assign_phases(column, complete)
    return column


def phase_keys(raw: list[tuple], complete: bool = False) -> list[tuple]:
    """Per-step keys with every method's phases assigned, column (site) by column. complete: `raw` is the whole
    run, so a method may use what later steps read (DiTo's tail steps); an open plan's prefix is not."""
    if not raw:
        return []
    cols = [_phase_column([key[j] for key in raw], complete) for j in range(len(raw[0]))]
    return [tuple(col[i] for col in cols) for i in range(len(raw))]


class RunPlan:
    """keys: the distinct variant keys in first-use order; per_step: the variant index of each step."""

    def __init__(self, schedule: Schedule, sites: list, num_steps: int | None, max_variants: int = MAX_VARIANTS):
        self.schedule, self.sites, self.num_steps, self.max_variants = schedule, sites, num_steps, max_variants
        self.step_dependent = is_step_dependent(schedule)
        self.keys: list[tuple] = []
        self.per_step: list[int] = []
        self._raw: list[tuple] = []
        self._stepless: tuple | None = None
        self._warned = False
        if num_steps is not None:
            self._extend(num_steps)

    def key(self, step: int | None) -> tuple:
        """The variant key of one step (None: the call has no step; only step-independent plans allow it)."""
        if step is None:
            if self.step_dependent:
                raise NumStepsUnknown("step")
            if self._stepless is None:
                self._stepless = step_key(self.schedule, self.sites, None, self.num_steps)
                self._index(self._stepless)
            return self._stepless
        if self.num_steps is not None and step >= self.num_steps:
            raise ScheduleError(
                f"step {step} is past the run's num_steps={self.num_steps} (from the schedule's `num_steps:`, "
                "generation(num_steps=...), set_step(i, num_steps), or the previous generation's length where "
                "step_fraction rules need one): the pipeline runs more steps; give the real number of steps")
        if step >= len(self.per_step):
            self._extend(max(2 * len(self.per_step), step + 1, 8))
        return self.keys[self.per_step[step]]

    def _extend(self, length: int) -> None:
        # an open plan lowers one step ahead: a step's phase may depend on the next (DiTo's prime step)
        want = length if self.num_steps is not None else length + 1
        while len(self._raw) < want:
            self._raw.append(step_key(self.schedule, self.sites, len(self._raw), self.num_steps))
        for key in phase_keys(self._raw, complete=self.num_steps is not None)[len(self.per_step):length]:
            self.per_step.append(self._index(key))

    def _index(self, key: tuple) -> int:
        if key not in self.keys:
            self.keys.append(key)
            self._check_size()
        return self.keys.index(key)

    def _check_size(self) -> None:
        n = len(self.keys)
        if n > self.max_variants:
            raise ScheduleError(
                f"the schedule gives {n} distinct variants (more than max_variants={self.max_variants}): each variant "
                "is a graph built (and, on inductor / ONNX / TensorRT, compiled) once; use a coarser `ratio_step` or "
                "fewer distinct per-step ratios, or raise max_variants in compile_with_reduction")
        if n > WARN_VARIANTS and not self._warned:
            self._warned = True
            warnings.warn(f"the schedule gives {n} distinct variants: each is built (and compiled) once; a coarser "
                          "`ratio_step` gives fewer", stacklevel=4)


def plan_run(schedule: Schedule, sites: list, num_steps: int | None, max_variants: int = MAX_VARIANTS) -> RunPlan:
    """The step -> variant plan of a run of num_steps steps (None: open, grows with the steps asked for)."""
    return RunPlan(schedule, sites, num_steps, max_variants)
