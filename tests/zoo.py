"""The test zoo: the tiny random-weight diffusers DiTs shipped in ditreduce.zoo (configs after diffusers' own
model tests) and a hand-written DiT.

Each builder returns (model, kwargs) for a call with a lattice of `grid` = (h, w) tokens
(or (f, h, w) for video) and batch `batch`. Weights come from torch.manual_seed(seed).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ditreduce.zoo.tiny import (TINY, _g, _rand, cogvideox, dit, flux, hunyuan, lumina2, pixart,  # noqa: F401
                                qwenimage, sana, sd3, wan)
from ditreduce.zoo.tiny import VIDEO as _TINY_VIDEO


def dit_pipeline(transformer):
    """A diffusers DiTPipeline around `transformer` (zoo.dit) with a tiny random VAE and DDIM."""
    from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
                        up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[8, 16], latent_channels=4,
                        norm_num_groups=8, sample_size=16)
    return DiTPipeline(transformer=transformer, vae=vae, scheduler=DDIMScheduler())


class HandAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads, self.qkv, self.proj = heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        scale = (c // self.heads) ** -0.5
        attn = torch.softmax(q @ k.transpose(-2, -1) * scale, dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class HandBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), HandAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x, t):
        x = x + self.attn(self.norm1(x) * (1 + t[:, None]))
        return x + self.mlp(self.norm2(x))


class HandDiT(nn.Module):
    """A DiT written by hand: reshape/permute patchify + linear, softmax(q @ kᵀ * s) @ v attention."""

    def __init__(self, channels=4, patch=2, dim=32, heads=4, depth=2):
        super().__init__()
        self.p, self.c = patch, channels
        self.embed = nn.Linear(channels * patch * patch, dim)
        self.t_embed = nn.Sequential(nn.Linear(1, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.blocks = nn.ModuleList(HandBlock(dim, heads) for _ in range(depth))
        self.out = nn.Linear(dim, channels * patch * patch)

    def forward(self, hidden_states, timestep):
        b, c, hh, ww = hidden_states.shape
        p = self.p
        h, w = hh // p, ww // p
        x = hidden_states.view(b, c, h, p, w, p).permute(0, 2, 4, 1, 3, 5).reshape(b, h * w, c * p * p)
        x = self.embed(x)
        t = self.t_embed(timestep.float().view(b, 1) / 1000)
        for blk in self.blocks:
            x = blk(x, t)
        x = self.out(x).view(b, h, w, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, c, hh, ww)
        return (x,)


def handdit(grid=(4, 4), batch=2, seed=0):
    torch.manual_seed(seed)
    m = HandDiT()
    g = _g(seed + 1)
    kw = dict(hidden_states=_rand(g, batch, 4, grid[0] * 2, grid[1] * 2),
              timestep=torch.randint(0, 1000, (batch,), generator=g))
    return m.eval(), kw


class _InWeightDtype(nn.Sequential):
    """A Sequential whose input is cast to its first layer's weight dtype."""

    def forward(self, x):
        return super().forward(x.to(self[0].weight.dtype))


def handdit_typed(grid=(4, 4), batch=2, seed=0):
    """zoo.HandDiT with its timestep embedding run in the weights' dtype, so that its output dtype follows the
    model's: HandDiT's float32 timestep promotes every block of a bf16 / fp16 model to float32. Same weights
    and inputs as handdit(grid, batch, seed)."""
    m, kw = handdit(grid=grid, batch=batch, seed=seed)
    m.t_embed = _InWeightDtype(*m.t_embed)
    return m, kw


# family -> builder (lumina2 cannot be captured: kept out of the families the tests sweep)
ZOO = {**{k: v for k, v in TINY.items() if k != "lumina2"}, "handdit": handdit}
VIDEO = set(_TINY_VIDEO)


def build(family: str, grid=None, batch=2, seed=0):
    fn = ZOO[family]
    if grid is None:
        grid = (2, 4, 4) if family in VIDEO else (4, 4)
    return fn(grid=tuple(grid), batch=batch, seed=seed)


def lattice_tokens(grid) -> int:
    return math.prod(grid)


def pixart_example():
    """For `ditreduce inspect zoo:pixart_example` (any callable returning (model, example_kwargs))."""
    model, kw = pixart(grid=(4, 6))
    return model, dict(kw, return_dict=False)


def pixart_generate_example(steps=3):
    """For `ditreduce calibrate zoo:pixart_generate_example`: (model, example_kwargs, generate), where
    generate(transformer) runs one `steps`-step generation (a made-up Euler loop) through `transformer`."""
    model, kw = pixart_example()

    def generate(net):
        x = kw["hidden_states"]
        with torch.no_grad():
            for t in torch.linspace(999, 0, steps):
                x = x - 0.1 * net(**dict(kw, hidden_states=x, timestep=t.expand(x.shape[0])))[0][:, :4]
        return x
    return model, kw, generate
