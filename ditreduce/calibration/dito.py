"""DiTo calibration: pair-match ratio (PMR) between matchings Δ steps apart, and the interval it allows.

    PMR(Δ) = mean over (generation, site, sample, step t) of |P_t ∩ P_{t−Δ}| / r

P_t is the pair set (source token, destination token) of the matching computed from the site's attention
outputs at step t (ToMe tables, r = N − k merged sources, no penalty). The outputs are recorded from a
dense run (a `dito` schedule at ratio 0: every site runs dense and hands its output out as state), so
PMR measures how stable output similarity is across steps, not how a reduced run feeds itself back.
The interval is the largest Δ ≤ max_interval such that PMR(Δ') ≥ threshold for every Δ' ≤ Δ (at least 1).
"""
from __future__ import annotations

from typing import Callable

import torch

from ..errors import ScheduleError
from ..methods.dito import DiTo, dito_match, num_sources, pairs
from ..schedules import dense_prefix
from .observed import check_steps_observed

DEFAULT_THRESHOLD = 0.8


def pmr(a: torch.Tensor, b: torch.Tensor) -> float:
    """|A ∩ B| / r of two pair sets [r, 2] (or batches [B, r, 2]: the mean over the batch)."""
    if a.dim() == 2:
        a, b = a[None], b[None]
    if a.shape != b.shape:
        raise ValueError(f"pmr: pair sets of different shapes {list(a.shape)} and {list(b.shape)}")
    r = a.shape[1]
    if r == 0:
        return 1.0
    out = []
    for x, y in zip(a, b):
        sx = {tuple(p) for p in x.tolist()}
        out.append(sum(tuple(p) in sx for p in y.tolist()) / r)
    return sum(out) / len(out)


def choose_interval(curve: dict[int, float], threshold: float) -> int:
    """The largest Δ with PMR(Δ') ≥ threshold for every Δ' ≤ Δ; 1 when even PMR(1) is below."""
    best = 1
    for d in sorted(curve):
        if curve[d] < threshold:
            break
        best = d
    return best


def record_matchings(model, sampler_fn: Callable, num_steps: int, *, ratio: float, seed: int = 0,
                     scope: str = "attention") -> list[dict]:
    """Runs sampler_fn(transformer) on a dense recorder of `model`; returns, per generation, {(slot, site):
    {step: pairs [B, r, 2]}} of the matching each step's outputs give at `ratio`."""
    from ..runtime import ReducedModel, compile_with_reduction

    base = model.model if isinstance(model, ReducedModel) else model
    rec = compile_with_reduction(base, {"version": 1, "method": "dito", "ratio": 0.0, "scope": scope,
                                        "num_steps": num_steps, "params": {"dito": {"interval": 1, "lam": 0.0,
                                                                                    "seed": seed}}})
    gens: dict[int, dict] = {}

    def on_state(call, state):
        step, slot = call.step, call.slot
        per = gens.setdefault(call.generation, {})
        cap = rec.last_capture
        for site in cap.sites:
            if site.name not in state:
                continue
            y = state[site.name]["y"]
            n, grid = site.image[1].length, tuple(site.grid)
            k = DiTo().kept_count(n, max(1, n - round(ratio * n)), grid)
            merged, _, arg, _ = dito_match(y, torch.zeros(y.shape[0], num_sources(grid, seed), device=y.device),
                                           lattice=grid, k=k, seed=seed, cfg="per_sample", lam=0.0)
            per.setdefault((slot, site.name), {})[step] = pairs(merged, arg, grid, seed)

    rec.on_state = on_state
    with torch.no_grad():
        sampler_fn(rec)
    return list(gens.values())


def pmr_curve(gens: list[dict], max_interval: int, first_step: int = 0) -> dict[int, float]:
    """{Δ: PMR(Δ)} over every recorded matching pair (t, t − Δ) with t − Δ ≥ first_step."""
    curve = {}
    for d in range(1, max_interval + 1):
        vals = [pmr(per[t - d], per[t]) for g in gens for per in g.values() for t in per
                if t - d >= first_step and (t - d) in per]
        if vals:
            curve[d] = sum(vals) / len(vals)
    return curve


def calibrate_dito(reduced_or_model, sampler_fn: Callable, num_steps: int, *, ratio: float = 0.5,
                   threshold: float = DEFAULT_THRESHOLD, max_interval: int = 6, lam: float | None = None,
                   dense_fraction: float = 0.2, scope: str = "attention", seed: int = 0,
                   log: Callable[[str], None] | None = None) -> dict:
    """A `dito` schedule (a dict load_schedule takes) whose `interval` is chosen from measured PMR.

    reduced_or_model  the DiT (or a ReducedModel: its .model is used)
    sampler_fn        called once as sampler_fn(transformer): runs one or more full generations of
                      num_steps steps through `transformer` (e.g. lambda tr: sample(m, labels, seeds,
                      steps=num_steps, transformer=tr))
    ratio, scope, dense_fraction, seed   the schedule's (dense_fraction: a `method: none` rule on the
                      first fraction of steps; PMR is measured on the steps after it)
    threshold         the PMR the interval keeps; max_interval the largest Δ tried
    lam               the frequency penalty written into the schedule (None: DiTo's default)
    log               optional callable receiving one line per Δ (the PMR curve)
    """
    gens = record_matchings(reduced_or_model, sampler_fn, num_steps, ratio=ratio, seed=seed, scope=scope)
    check_steps_observed({t for g in gens for per in g.values() for t in per}, num_steps)
    first = max(0, int(round(dense_fraction * num_steps)) - 1)  # the prime step's outputs feed the first match
    curve = pmr_curve(gens, max_interval, first)
    if not curve:
        raise ScheduleError(f"calibrate_dito: no matching pair {max_interval} steps apart after step {first} was "
                            f"recorded: sampler_fn must run full generations of num_steps={num_steps} steps")
    interval = choose_interval(curve, threshold)
    if log is not None:
        for d, v in curve.items():
            log(f"PMR(Δ={d}) = {v:.3f}{'  <- interval' if d == interval else ''}")
    params = {"interval": interval, "lam": float(DiTo.defaults["lam"] if lam is None else lam), "seed": seed}
    sched = {"version": 1, "method": "dito", "ratio": ratio, "scope": scope, "num_steps": num_steps,
             "params": {"dito": params}, "rules": []}
    if dense_fraction > 0:
        sched["rules"].append(dense_prefix(dense_fraction))
    return sched
