"""Flow-matching Euler sampler (diffusers' FlowMatchEulerDiscreteScheduler) with classifier-free guidance."""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from .models import SmallDiT


def flow_scheduler(num_steps: int):
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    sched.set_timesteps(num_steps)
    return sched


def initial_noise(seeds: Sequence[int], res: int, channels: int = 3) -> torch.Tensor:
    """One generator per seed: sample i depends on seeds[i] only, whatever the batch."""
    return torch.cat([torch.randn(1, channels, res, res, generator=torch.Generator().manual_seed(int(s)))
                      for s in seeds])


@torch.no_grad()
def sample(model: SmallDiT, labels: Sequence[int], seeds: Sequence[int], *, res: int = 64, steps: int = 20,
           guidance: float = 3.0, transformer: torch.nn.Module | None = None,
           progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Images in [-1, 1], (B, 3, res, res). `transformer` overrides model.transformer (e.g. a ReducedModel).

    CFG runs as one batch [uncond, cond] per step, as diffusers pipelines do.
    """
    net = transformer if transformer is not None else model.transformer
    labels_t = torch.as_tensor(list(labels), dtype=torch.long)
    b = len(labels_t)
    cond = model.captions(labels_t)
    uncond = model.captions(torch.full_like(labels_t, model.null_class))
    ctx = torch.cat([uncond, cond]) if guidance != 1.0 else cond
    x = initial_noise(seeds, res)
    sched = flow_scheduler(steps)
    for i, t in enumerate(sched.timesteps):
        xin = torch.cat([x, x]) if guidance != 1.0 else x
        out = net(xin, encoder_hidden_states=ctx, timestep=t.expand(xin.shape[0]), return_dict=False)[0]
        if guidance != 1.0:
            u, c = out.chunk(2)
            out = u + guidance * (c - u)
        x = sched.step(out, t, x, return_dict=False)[0]
        if progress is not None:
            progress(i)
    assert x.shape[0] == b
    return x.clamp(-1, 1)
