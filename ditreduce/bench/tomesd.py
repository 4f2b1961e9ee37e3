"""`--methods tomesd`: the real tomesd package (ToMe for Stable Diffusion, `tomesd==0.1.3`, the `bench` extra)
as an external baseline, on diffusers models built of `BasicTransformerBlock`s (PixArt, the small DiT, DiT).

tomesd's own `apply_patch` swaps the block class for a copy of a 2023 diffusers forward, which current
blocks do not fit (PixArt: `'ToMeBlock' object has no attribute 'norm3'`). This adapter keeps tomesd's
merge code — `tomesd.patch.compute_merge` (hence `tomesd.merge.bipartite_soft_matching_random2d`) with
tomesd's own `_tome_info` settings — at the place its block applies it: the merge is computed from the
block's input, applied to the tensor self-attention (`attn1`) reads, and undone on attn1's output, before
the block's gate and residual. It does so with hooks registered only for the duration of a call of
`TomesdModel`, so the wrapped module stays the plain dense model outside it.

Determinism: tomesd forks the global RNG once and lets the generator run on; here the generator is
re-seeded with `seed` at every call, so a run is reproducible whatever ran before (each block still
draws its own destinations). The first `dense_fraction` of the steps run dense, as the bench's schedules.
"""
from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from ..errors import BenchError
from ..run_state import Generations
from .variants import StepVariants

TOMESD = "tomesd"
TOMESD_VERSION = "0.1.3"
TOMESD_SCOPE = "attention+proj"  # merge at the tensor the q/k/v projections read, unmerge after attn1


class TomesdUnavailableError(BenchError):
    """tomesd is not installed, or cannot patch this model; the message says why (the bench skips it)."""


def import_tomesd():
    try:
        import tomesd.patch
    except ImportError as e:
        raise TomesdUnavailableError(f"tomesd is not installed ({e}): pip install 'ditreduce[bench]' "
                                     f"(tomesd=={TOMESD_VERSION})") from None
    return tomesd.patch


def self_attention_blocks(model: nn.Module) -> list[nn.Module]:
    """The diffusers BasicTransformerBlocks whose attn1 is self-attention (what tomesd patches)."""
    return [m for m in model.modules() if any(c.__name__ == "BasicTransformerBlock" for c in type(m).__mro__)
            and getattr(m, "attn1", None) is not None and not getattr(m, "only_cross_attention", False)]


def check_applicable(model: nn.Module) -> None:
    """TomesdUnavailableError naming why tomesd cannot run on `model`; None if it can."""
    import_tomesd()
    if not self_attention_blocks(model):
        raise TomesdUnavailableError(f"tomesd patches diffusers BasicTransformerBlock self-attention; "
                                     f"{type(model).__name__} has none")
    if not getattr(getattr(model, "config", None), "patch_size", None):
        raise TomesdUnavailableError(f"{type(model).__name__}: no config.patch_size to read the token grid from")


class TomesdModel(nn.Module):
    """`model` with tomesd's merge around every block's self-attention while this wrapper is called."""

    def __init__(self, model: nn.Module, ratio: float, dense_fraction: float = 0.0, seed: int = 0,
                 sx: int = 2, sy: int = 2, use_rand: bool = True):
        super().__init__()
        check_applicable(model)
        self.model, self.ratio, self.dense_fraction, self.seed = model, ratio, dense_fraction, seed
        self.generations = Generations()   # the runtime's step clock, so dense steps match ReducedModel's
        self._info = {"size": None, "hooks": [],
                      "args": {"ratio": ratio, "max_downsample": 1, "sx": sx, "sy": sy, "use_rand": use_rand,
                               "generator": None, "merge_attn": True, "merge_crossattn": False, "merge_mlp": False}}

    @property
    def config(self):
        return self.model.config

    # --- step control, as ReducedModel ------------------------------------------------------------
    def set_step(self, step: int | None, num_steps: int | None = None) -> None:
        self.generations.set_step(step, num_steps)

    @contextlib.contextmanager
    def generation(self, num_steps: int | None = None):
        with self.generations.open(num_steps):
            yield self

    def step_ratio(self, timestep, latent=None) -> float:
        """The merge ratio of this call: 0 in the dense first `dense_fraction` of the steps."""
        gen, call = self.generations.advance(timestep, latent)
        num_steps = gen.resolved_num_steps(None)
        if call.step is None or not num_steps or self.dense_fraction <= 0:
            return self.ratio
        return 0.0 if call.step / num_steps < self.dense_fraction else self.ratio

    # --- the call: hooks on for its duration --------------------------------------------------------
    def forward(self, hidden_states, *args, **kwargs):
        patch = import_tomesd()
        p = self.model.config.patch_size
        info = self._info
        info["size"] = (hidden_states.shape[-2] // p, hidden_states.shape[-1] // p)
        info["args"]["ratio"] = self.step_ratio(kwargs.get("timestep"), hidden_states)
        info["args"]["generator"] = torch.Generator(device=hidden_states.device).manual_seed(self.seed)
        handles = []
        for block in self_attention_blocks(self.model):
            handles += _hook_block(block, info, patch.compute_merge)
        try:
            return self.model(hidden_states, *args, **kwargs)
        finally:
            for h in handles:
                h.remove()


def _hook_block(block: nn.Module, info: dict, compute_merge) -> list:
    """tomesd's placement in one block: merge from the block input, applied to attn1's input; unmerge of
    attn1's output."""
    held = {}

    def block_input(module, args, kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        tokens = math.prod(info["size"])
        if x.shape[1] != tokens:
            raise TomesdUnavailableError(f"tomesd: {type(module).__name__} gets {x.shape[1]} tokens, the image "
                                         f"grid has {tokens}; tomesd merges image-only sequences")
        held["merge"], _, _, held["unmerge"], _, _ = compute_merge(x, info)

    def attn_input(module, args, kwargs):
        if args:
            return (held["merge"](args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": held["merge"](kwargs["hidden_states"])}

    def attn_output(module, args, kwargs, out):
        return held["unmerge"](out)

    return [block.register_forward_pre_hook(block_input, with_kwargs=True),
            block.attn1.register_forward_pre_hook(attn_input, with_kwargs=True),
            block.attn1.register_forward_hook(attn_output, with_kwargs=True)]


class TomesdVariants(StepVariants):
    """A tomesd configuration as the bench runs one (the interface of runner.Variants): variant 0 its dense
    steps (the first `dense_fraction`), variant 1 its merged steps; the "graph at ratio 0" is the eager module
    (tomesd captures nothing)."""

    def __init__(self, module: nn.Module, kwargs: dict, steps: int, ratio: float, dense_fraction: float):
        self.reduced = TomesdModel(module, ratio, dense_fraction)
        self.module, self.kwargs, self.steps = module, kwargs, steps
        merged = [0 if i / steps < dense_fraction else 1 for i in range(steps)]
        used = sorted(set(merged))
        self.keys = [(TOMESD, 0.0 if v == 0 else ratio) for v in used]
        self.per_step = [used.index(v) for v in merged]
        self.capture_s = 0.0
        self._warm()

    def graph_caller(self):
        return lambda: self.module(**self.kwargs)
