"""The pass pipeline: one named driver from a model call to an Analysis the runtime rewrites.

    capture   torch.export of the call (capture.py)
    match     attention sites and the modules without one (match_attention.py)
    layout    which tokens are image / text: seeds from the inputs, axis labels propagated once over
              the graph and kept in node.meta[AXES] (layout.py, propagate.py)
    scopes    how far each site's region may widen, proved on those labels (scope.py)

The rewrite (rewrite.py) then builds one variant graph per variant key of the run plan
(schedules/plan.py); the Analysis caches its variants, their backend runners and its run plans.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch

from ..schedules.check import unused_selectors
from ..schedules.lower import check_reduces_something
from ..schedules.plan import MAX_VARIANTS, RunPlan, plan_run
from . import capture as capture_pass
from .axes import AXES
from .layout import infer_layout
from .match_attention import match_attention
from .scope import plan_scopes
from .site import RUN_TIME_TEXT

@dataclass
class Analysis:
    """What the passes found for one input signature, and the per-signature caches built on it."""

    graph: torch.fx.GraphModule
    sites: list
    layout_notes: list                            # what the layout pass read and decided
    unmatched: dict
    layout: object = None                         # the schedule's `layout:` overrides this analysis applied
    schedule_notes: list = field(default_factory=list)  # selectors of the current schedule that no site uses
    variants: dict = field(default_factory=dict)  # variant key -> rewritten GraphModule
    runners: dict = field(default_factory=dict)   # variant key -> the backend's callable for that variant
    plans: dict = field(default_factory=dict)     # num_steps (None: open) -> RunPlan

    @property
    def notes(self) -> list:
        return self.layout_notes + self.schedule_notes

    def derives_from(self, schedule) -> bool:
        """Whether this analysis serves `schedule`: the label propagation and the scopes depend on the schedule's
        `layout:` overrides only; everything else a schedule changes is re-derived by `apply_schedule`."""
        return self.layout == schedule.layout

    def apply_schedule(self, schedule, warn: bool = True) -> None:
        """Derive what depends on the schedule beyond the layout: the "reduces something" check (a ScheduleError)
        and the notes about selectors no site uses; the run plans of another schedule are dropped."""
        check_reduces_something(schedule, self.sites, self.unmatched)
        self.schedule_notes = unused_selectors(schedule, self.sites)   # a typo'd `modules:` glob, an unused `layout:`
        if warn:
            for note in self.schedule_notes:
                warnings.warn(f"ditreduce: {note}", stacklevel=5)
        self.plans.clear()

    def plan(self, schedule, num_steps: int | None, max_variants: int = MAX_VARIANTS) -> RunPlan:
        """The run plan for num_steps, computed once per (analysis, num_steps)."""
        plan = self.plans.get(num_steps)
        if plan is None:
            plan = self.plans[num_steps] = plan_run(schedule, self.sites, num_steps, max_variants)
        return plan


def analyze(model: torch.nn.Module, kw: dict, schedule) -> Analysis:
    """capture -> match -> layout -> scopes for one call's keyword arguments."""
    gm = capture_pass.capture(model, kw)
    matched = match_attention(gm, model)
    in_ch = getattr(getattr(model, "config", None), "in_channels", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seeds = infer_layout(gm, matched.sites, kw, in_ch, schedule.layout)
    for w in caught:
        warnings.warn(w.message, stacklevel=4)
    for node, lab in seeds.propagated.items():
        if isinstance(lab, tuple):
            node.meta[AXES] = lab
    plan_scopes(gm, seeds.propagated, matched.sites)
    gm.meta[RUN_TIME_TEXT] = [s.module for s in matched.sites if s.run_time_text and s.skip_reason is None]
    cap = Analysis(gm, matched.sites, list(seeds.notes), matched.unmatched_modules, layout=schedule.layout)
    cap.apply_schedule(schedule)
    return cap
