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
    notes: list
    unmatched: dict
    variants: dict = field(default_factory=dict)  # variant key -> rewritten GraphModule
    runners: dict = field(default_factory=dict)   # variant key -> the backend's callable for that variant
    plans: dict = field(default_factory=dict)     # num_steps (None: open) -> RunPlan

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
    check_reduces_something(schedule, matched.sites, matched.unmatched_modules)
    for node, lab in seeds.propagated.items():
        if isinstance(lab, tuple):
            node.meta[AXES] = lab
    plan_scopes(gm, seeds.propagated, matched.sites)
    gm.meta[RUN_TIME_TEXT] = [s.module for s in matched.sites if s.run_time_text and s.skip_reason is None]
    notes = list(seeds.notes)
    for note in unused_selectors(schedule, matched.sites):   # a typo'd `modules:` glob, an unused `layout:`
        warnings.warn(f"ditreduce: {note}", stacklevel=4)
        notes.append(note)
    return Analysis(gm, matched.sites, notes, matched.unmatched_modules)
