"""`ditreduce calibrate --method coredit`: a progressive, block-adaptive CoReDiT schedule from measured
redundancy.

1. Measure: a few dense generations; at every reducible site and step, the mean spatial-coherence score
   of the image tokens entering the site's attention (the tokens CoReDiT scores).
2. Allocate: the first `dense_fraction` of the steps stay dense; the rest is split into `phases`
   (each phase is one variant graph); in phase p the ratio of block b is
       r[b, p] = clip(scale · ramp(p) · S[b, p] / mean(S), 0, max_ratio)
   where S is the measured coherence (more redundancy → more pruning) and ramp rises linearly from
   `ramp_start` to 1 (pruning grows as the image settles). `scale` is found by bisection so that the
   self-attention FLOPs removed over the whole run, 1 − Σ(1 − r)² / Σ 1, equal the `budget`.
3. Write: an ordinary version-1 schedule (one rule per block and phase), readable and editable.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import ModelCallError, ScheduleError, UnsupportedModelError
from ..methods.coredit import CoReDiT, coherence
from ..methods.lattice import neighbour_cosines, neighbour_table
from ..passes.capture import bind_call
from ..passes.inputs import timestep_value
from ..run_state import Generations, latent_of
from ..schedules import dense_prefix
from ..schedules.lower import eligible, quantise
from .observed import check_steps_observed


@dataclass
class Redundancy:
    """Mean coherence per (site, step): blocks[i] is the block of row i, values[i][t] its mean at step t."""

    modules: list[str]
    blocks: list[int]
    values: torch.Tensor  # [sites, steps]


def _image_tokens(x: torch.Tensor, site) -> torch.Tensor:
    start, seg = site.image
    return x[:, start:start + seg.length]


def measure_redundancy(reduced, generate: Callable[[], None], num_steps: int) -> Redundancy:
    """Run `generate()` (dense generations through `reduced.model`) and record the mean coherence of every
    reducible site's attention input per step. `reduced` must have been captured (it knows the sites)."""
    cap = reduced.last_capture
    if cap is None:
        raise RuntimeError("capture the model first (reduced.capture(**example_kwargs)) so the sites are known")
    sites = [s for s in cap.sites if eligible(s, reduced.schedule) is None]
    model = reduced.model
    sums = torch.zeros(len(sites), num_steps)
    counts = torch.zeros(len(sites), num_steps)
    gens = Generations()   # the runtime's step clock: either timestep direction, CFG calls on one step
    state = {"step": -1}

    def on_model(_mod, args, kwargs):
        kw = bind_call(model, args, kwargs)
        _, call = gens.advance(timestep_value(kw), latent_of(kw))
        state["step"] = -1 if call.step is None else call.step

    def on_attention(i, site):
        _, valid = neighbour_table(tuple(site.grid))

        def hook(_mod, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            if x.dim() != 3 or x.shape[1] != site.q_len or not 0 <= state["step"] < num_steps:
                return
            sc = coherence(neighbour_cosines(_image_tokens(x, site), site.grid), valid)
            sums[i, state["step"]] += float(sc.mean())
            counts[i, state["step"]] += 1
        return hook

    modules = dict(model.named_modules())
    missing = [s.module for s in sites if s.module not in modules]
    if missing:
        raise UnsupportedModelError(f"attention modules {missing} not found by name: calibrate hooks each site's "
                                    "attention module, so it needs sites that are modules of the model")
    with contextlib.ExitStack() as stack:
        stack.enter_context(_hook(model.register_forward_pre_hook(on_model, with_kwargs=True)))
        for i, s in enumerate(sites):
            stack.enter_context(_hook(modules[s.module].register_forward_pre_hook(on_attention(i, s),
                                                                                  with_kwargs=True)))
        with torch.no_grad():
            generate()
    _check_every_step_observed(counts, sites, num_steps)
    return Redundancy([s.module for s in sites], [s.block for s in sites], sums / counts)


def _check_every_step_observed(counts: torch.Tensor, sites, num_steps: int) -> None:
    """Every (site, step) of the plan was measured, else a named error saying which and the way out."""
    check_steps_observed({t for t in range(num_steps) if counts[:, t].sum() > 0}, num_steps)
    unseen = [f"{s.module} ({s.q_len} tokens)" for i, s in enumerate(sites) if (counts[i] == 0).any()]
    if unseen:
        raise ModelCallError(
            f"calibrate: generate() did not call {', '.join(unseen)} at every step with the sequence length of the "
            "example the model was captured with; generate(transformer) must run the model at the example's "
            "resolution")


@contextlib.contextmanager
def _hook(handle):
    try:
        yield handle
    finally:
        handle.remove()


def allocate(red: Redundancy, num_steps: int, budget: float, dense_fraction: float = 0.2, phases: int = 4,
             ramp_start: float = 0.5, max_ratio: float = CoReDiT.max_ratio, ratio_step: float = 0.05) -> dict:
    """(schedule document, calibration info) for a self-attention FLOPs budget (fraction removed over the run)."""
    first = round(dense_fraction * num_steps)
    live = num_steps - first
    most = (1 - (1 - max_ratio) ** 2) * live / num_steps
    if not 0 < budget < most:
        raise ScheduleError(f"--budget {budget}: must be in (0, {most:.2f}) for {num_steps} steps with {first} "
                            f"dense (CoReDiT prunes at most {max_ratio:g} of the tokens); lower --budget or "
                            "--dense-fraction")
    phases = max(1, min(phases, live))
    bounds = [first + round(p * live / phases) for p in range(phases + 1)]
    blocks = sorted(set(red.blocks))
    s = torch.stack([torch.stack([red.values[[i for i, b in enumerate(red.blocks) if b == blk]][:, lo:hi].mean()
                                  for lo, hi in zip(bounds, bounds[1:])]) for blk in blocks])  # [blocks, phases]
    s = s.clamp(min=1e-3)
    ramp = torch.linspace(ramp_start, 1.0, phases) if phases > 1 else torch.ones(1)
    shape = ramp[None] * s / s.mean()
    steps_per_phase = torch.tensor([hi - lo for lo, hi in zip(bounds, bounds[1:])], dtype=torch.float32)

    def removed(scale: float) -> tuple[float, torch.Tensor]:
        r = (scale * shape).clamp(0, max_ratio)
        r = torch.round(r / ratio_step) * ratio_step
        kept = ((1 - r) ** 2 * steps_per_phase[None]).sum() + first * len(blocks)
        return float(1 - kept / (num_steps * len(blocks))), r

    lo, hi = 0.0, 10.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if removed(mid)[0] < budget else (lo, mid)
    achieved, ratios = removed(hi)
    rules = [dense_prefix(round(first / num_steps, 6))] if first else []
    for bi, blk in enumerate(blocks):
        for p, (a, b) in enumerate(zip(bounds, bounds[1:])):
            rules.append({"blocks": [blk], "steps": {"start": a, "stop": b}, "ratio": quantise(float(ratios[bi, p]), ratio_step)})
    doc = {"version": 1, "method": "coredit", "ratio": 0.0, "scope": "attention+proj", "num_steps": num_steps,
           "ratio_step": ratio_step, "rules": rules}
    info = {"budget": budget, "self_attention_flops_removed": round(achieved, 4), "dense_steps": first,
            "phases": phases, "blocks": blocks,
            "coherence_per_block_phase": [[round(float(v), 4) for v in row] for row in s]}
    return doc, info
