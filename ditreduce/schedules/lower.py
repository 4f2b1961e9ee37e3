"""Lowering: (step, site) -> concrete RegionConfig; equal rows grouped into variants.

Precedence: the schedule's defaults (method, ratio, params), then every rule in order whose selectors
all match; a later rule overrides an earlier one field by field. `method: none` leaves a site dense.
Ratios are quantised to `ratio_step` before k = n - round(ratio * n) (at least one token kept).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..methods import get_method
from .ir import Schedule, _has_negative
from ..errors import ScheduleError

REDUCIBLE_KINDS = ("self", "joint")


@dataclass(frozen=True)
class RegionConfig:
    method: str
    ratio: float            # quantised
    k: int                  # image tokens kept (as the method really keeps them: TopK groups, pooling grids)
    n: int                  # image tokens in the site
    params: tuple = ()      # sorted (name, value) pairs
    scope: str = "attention"
    prop_attn: bool = False  # add log(token size) to the kept keys' logits (regions.with_size_bias)

    @property
    def param_dict(self) -> dict:
        return dict(self.params)


class NumStepsUnknown(RuntimeError):
    pass


def eligible(site, schedule: Schedule) -> str | None:
    """None if the schedule may reduce this site, else why not."""
    if site.skip_reason:
        return site.skip_reason
    if site.kind not in REDUCIBLE_KINDS:
        return f"{site.kind}-attention: keys are another token source; only self and joint sites are selected"
    if site.kind not in schedule.kinds:
        return f"kind {site.kind} not in schedule kinds {schedule.kinds}"
    return None


def quantise(ratio: float, step: float) -> float:
    return round(round(ratio / step) * step, 6)


def site_config(schedule: Schedule, site, num_blocks: int, step: int | None, num_steps: int | None) -> RegionConfig | None:
    if eligible(site, schedule) is not None:
        return None
    method, ratio, scope, prop_attn = schedule.method, schedule.ratio, schedule.scope, schedule.prop_attn
    params = dict(schedule.params.get(method, {}))
    for rule in schedule.rules:
        if not rule.matches_site(site.block, num_blocks, site.module, site.kind):
            continue
        if rule.step_dependent:
            if step is None:
                raise NumStepsUnknown("step")
            if num_steps is None and (rule.step_fraction is not None or _negative(rule.steps)):
                raise NumStepsUnknown("num_steps")
            if not rule.matches_step(step, num_steps):
                continue
        if rule.method is not None:
            method = rule.method
            params = dict(schedule.params.get(method, {}))
        if rule.ratio is not None:
            ratio = rule.ratio
        if rule.scope is not None:
            scope = rule.scope
        if rule.params is not None:
            params.update(rule.params)
        if rule.prop_attn is not None:
            prop_attn = rule.prop_attn
    if method == "none":
        return None
    n, grid = site.image[1].length, site.image[1].grid
    q = quantise(ratio, schedule.ratio_step)
    impl = get_method(method)
    if q > impl.max_ratio:
        raise ScheduleError(f"ratio {q:g} at {site.module or site.name}: method {method!r} supports ratios up to "
                            f"{impl.max_ratio:g} (see docs/methods.md); lower the ratio or pick another method")
    k = impl(**params).kept_count(n, max(1, n - round(q * n)), grid)
    return RegionConfig(method, q, k, n, tuple(sorted(params.items())), scope, prop_attn)


def _negative(sel) -> bool:
    return _has_negative(sel)


def step_key(schedule: Schedule, sites, step: int | None, num_steps: int | None) -> tuple:
    """The variant key for one call: one RegionConfig (or None: dense) per site."""
    nb = num_blocks(sites)
    return tuple(site_config(schedule, s, nb, step, num_steps) for s in sites)


def num_blocks(sites) -> int:
    blocks = [s.block for s in sites if s.block is not None]
    return max(blocks) + 1 if blocks else 0


def check_reduces_something(schedule: Schedule, sites, unmatched: dict | None = None) -> None:
    reasons = [eligible(s, schedule) for s in sites]
    if not any(r is None for r in reasons):
        lines = [f"  {s.module or s.name}: {r}" for s, r in zip(sites, reasons)]
        lines += [f"  {m}: {why}" for m, why in (unmatched or {}).items()]
        lines = lines or ["  (no attention site found)"]
        raise ScheduleError("the schedule reduces no attention site of this model:\n" + "\n".join(lines) +
                            "\nSee report() for the layout of each site; `layout:` overrides an undecided one.")
    if not schedule.methods:
        raise ScheduleError("method: every method in the schedule is `none`: nothing would be reduced")
