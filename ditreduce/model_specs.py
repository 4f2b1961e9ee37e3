"""Model specs: the one resolver behind every command that takes a MODEL argument (inspect, export,
calibrate, bench, demo).

Spellings (`resolve_model`):
    small-dit[:RES]                    the trained DiT shipped in the package, RES pixels (default 64;
                                       patch 2: (RES/2)^2 image tokens); it can sample (quality, calibrate)
    pixart-alpha:TOKENS:BLOCKS         PixArt-α shape (hidden 1152 = 16 heads x 72, 120 caption tokens of 4096
                                       channels, patch 2), random weights, TOKENS image tokens (a square), BLOCKS blocks
    DiffusersClass:{json config}       any diffusers transformer class built from a (tiny) config dict
    package.module:callable            a callable returning (model, example_kwargs) or
                                       (model, example_kwargs, generate); generate(transformer) runs full
                                       generations through `transformer` (what `calibrate` needs)
"""
from __future__ import annotations

import importlib
import json
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from .errors import BenchModelError

SPELLINGS = ("small-dit[:RES]", "pixart-alpha:TOKENS:BLOCKS", "DiffusersClass:{json config}",
             "package.module:callable")

# PixArt-α (PixArt-alpha/PixArt-XL-2-512x512): 28 blocks, hidden 1152 = 16 x 72, T5-XXL captions (4096 ch,
# 120 tokens), SD VAE latents (4 channels in, 8 out with learned sigma), patch 2.
PIXART_ALPHA = dict(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, patch_size=2,
                    cross_attention_dim=1152, caption_channels=4096, norm_type="ada_norm_single",
                    norm_elementwise_affine=False, norm_eps=1e-6, num_embeds_ada_norm=1000,
                    use_additional_conditions=False, attention_bias=True, activation_fn="gelu-approximate",
                    dropout=0.0)
PIXART_CAPTION_TOKENS = 120


@dataclass
class ModelSpec:
    """What every command's MODEL argument resolves to (resolve_model): a model and one call's keyword
    arguments (batch 2 unless said otherwise), and what the spec knows of it."""

    name: str
    module: nn.Module
    kwargs: dict
    image_tokens: int | None = None
    blocks: int | None = None
    small_dit: object | None = None   # SmallDiT when the model can sample (quality metrics)
    res: int | None = None            # pixel resolution of the small DiT's samples
    info: dict = field(default_factory=dict)
    generate: Callable | None = None  # generate(transformer): full generations (a 3-tuple callable's third item)

    @property
    def can_sample(self) -> bool:
        return self.small_dit is not None


def _accepted() -> str:
    return f"accepted spellings: {', '.join(SPELLINGS)}"


def _side(tokens: int, what: str) -> int:
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise BenchModelError(f"{what}: image tokens must be a square number (1024, 4096, 16384), got {tokens}")
    return side


def pixart_alpha(tokens: int = 4096, blocks: int = 2, batch: int = 2, seed: int = 0) -> ModelSpec:
    """PixArt-α-shaped diffusers PixArtTransformer2DModel with random weights, fp32, at `tokens` image tokens."""
    from diffusers import PixArtTransformer2DModel

    side = _side(tokens, f"pixart-alpha:{tokens}:{blocks}")
    if blocks < 1:
        raise BenchModelError(f"pixart-alpha:{tokens}:{blocks}: BLOCKS must be >= 1 (PixArt-α has 28)")
    torch.manual_seed(seed)
    model = PixArtTransformer2DModel(num_layers=blocks, sample_size=side * 2, **PIXART_ALPHA).eval()
    g = torch.Generator().manual_seed(seed + 1)
    kw = dict(hidden_states=torch.randn(batch, 4, side * 2, side * 2, generator=g),
              encoder_hidden_states=torch.randn(batch, PIXART_CAPTION_TOKENS, 4096, generator=g),
              timestep=torch.full((batch,), 500.0), return_dict=False)
    params = sum(p.numel() for p in model.parameters())
    return ModelSpec(f"pixart-alpha:{tokens}:{blocks}", model, kw, tokens, blocks,
                      info={"params": params, "batch": batch, "dtype": "float32", "weights": "random"})


def small_dit(res: int = 64, batch: int = 2) -> ModelSpec:
    """The shipped trained DiT; `res` pixels (patch 2: res/2 squared image tokens); a CFG-shaped batch.

    The example's hidden states and captions are random / real embeddings, never zeros: an integer-valued
    tensor may be read as position ids (part of the capture's signature)."""
    from .smalldit.models import load_small_dit

    m = load_small_dit()
    labels = torch.arange(batch) % len(m.class_names)
    kw = dict(hidden_states=torch.randn(batch, 3, res, res, generator=torch.Generator().manual_seed(0)),
              encoder_hidden_states=m.captions(labels).detach(), timestep=torch.full((batch,), 500.0),
              return_dict=False)
    params = sum(p.numel() for p in m.transformer.parameters())
    return ModelSpec(f"small-dit:{res}", m.transformer, kw, (res // 2) ** 2, m.transformer.config.num_layers,
                      small_dit=m, res=res, info={"params": params, "batch": batch, "dtype": "float32",
                                                  "weights": "trained (shipped)"})


def _diffusers_example(cls_name: str, config: dict, batch: int = 2) -> ModelSpec:
    import diffusers

    cls = getattr(diffusers, cls_name, None)
    if cls is None or not isinstance(cls, type) or not issubclass(cls, nn.Module):
        raise BenchModelError(f"{cls_name!r} is not a diffusers model class; {_accepted()}")
    torch.manual_seed(0)
    try:
        model = cls(**config).eval()
    except TypeError as e:
        raise BenchModelError(f"{cls_name}({config}): {e}") from None
    c = model.config
    p = getattr(c, "patch_size", None) or 1
    size = getattr(c, "sample_size", None)
    in_ch = getattr(c, "in_channels", None)
    if size is None or in_ch is None:
        raise BenchModelError(f"{cls_name}: inputs are built from config.sample_size and config.in_channels, "
                              "which this class lacks; pass a `package.module:callable` returning (model, kwargs)")
    size = size if isinstance(size, int) else size[0]
    g = torch.Generator().manual_seed(1)
    kw = dict(hidden_states=torch.randn(batch, in_ch, size, size, generator=g), timestep=torch.full((batch,), 500.0),
              return_dict=False)
    text_dim = next((getattr(c, a) for a in ("caption_channels", "joint_attention_dim", "cross_attention_dim")
                     if getattr(c, a, None)), None)
    if text_dim is not None:
        kw["encoder_hidden_states"] = torch.randn(batch, 8, text_dim, generator=g)
    if getattr(c, "pooled_projection_dim", None):
        kw["pooled_projections"] = torch.randn(batch, c.pooled_projection_dim, generator=g)
    if cls_name == "DiTTransformer2DModel":
        kw["class_labels"] = torch.zeros(batch, dtype=torch.long)
    return ModelSpec(f"{cls_name}", model, kw, (size // p) ** 2, getattr(c, "num_layers", None),
                      info={"config": config, "batch": batch, "weights": "random"})


def load_callable(spec: str):
    """`package.module:callable` -> the callable; anything else is a BenchModelError naming the spec."""
    mod, _, fn = spec.partition(":")
    if not fn or not mod:
        raise BenchModelError(f"model {spec!r}: not a model spec; {_accepted()}")
    try:
        return getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise BenchModelError(f"model {spec!r}: cannot load it: {type(e).__name__}: {e}; {_accepted()}") from None


def _callable_example(spec: str) -> ModelSpec:
    out = load_callable(spec)()
    ok = (isinstance(out, tuple) and len(out) in (2, 3) and isinstance(out[0], nn.Module) and isinstance(out[1], dict)
          and (len(out) == 2 or callable(out[2])))
    if not ok:
        got = f"a {len(out)}-tuple" if isinstance(out, tuple) else type(out).__name__
        raise BenchModelError(f"model {spec!r}: the callable must return (model, example_kwargs) or "
                              f"(model, example_kwargs, generate), got {got}")
    return ModelSpec(spec, out[0].eval(), out[1], info={"weights": "from callable"},
                      generate=out[2] if len(out) == 3 else None)


def resolve_model(spec: str, res: int = 64, batch: int = 2) -> ModelSpec:
    """Build the model a spec names (see the module docstring for the spellings). `res` is small-dit's
    resolution when the spec does not carry one; `batch` the example's batch (a callable picks its own)."""
    if spec == "small-dit" or spec.startswith("small-dit:"):
        r = spec.partition(":")[2]
        if r and not r.isdigit() or r and int(r) < 2:
            raise BenchModelError(f"model {spec!r}: write small-dit or small-dit:RES with RES pixels, e.g. small-dit:64")
        return small_dit(int(r) if r else res, batch)
    if spec.startswith("pixart-alpha"):
        parts = spec.split(":")
        if len(parts) != 3 or not all(x.isdigit() for x in parts[1:]):
            raise BenchModelError(f"{spec!r}: write pixart-alpha:TOKENS:BLOCKS, e.g. pixart-alpha:4096:2")
        return pixart_alpha(int(parts[1]), int(parts[2]), batch)
    name, sep, rest = spec.partition(":")
    if sep and rest.lstrip().startswith("{"):
        try:
            config = json.loads(rest)
        except json.JSONDecodeError as e:
            raise BenchModelError(f"{spec!r}: the config after ':' must be a JSON object ({e})") from None
        if not isinstance(config, dict):
            raise BenchModelError(f"{spec!r}: the config after ':' must be a JSON object")
        return _diffusers_example(name, config, batch)
    if sep and name and rest:
        return _callable_example(spec)
    raise BenchModelError(f"model {spec!r}: not a model spec; {_accepted()}")


def calibration_target(spec: str, steps: int, samples: int) -> tuple[nn.Module, dict, Callable]:
    """(model, example_kwargs, generate) for `ditreduce calibrate`: the small DiT samples `samples` images
    (classes 0.., seeds 1000+ so calibration never sees the seeds the benchmarks evaluate on; CFG, so the
    example batch is 2 x samples); a callable spec must return a 3-tuple. Anything else cannot generate:
    a BenchModelError."""
    if spec == "small-dit" or spec.startswith("small-dit:"):
        bm = resolve_model(spec, batch=2 * samples)
        from .smalldit.sampling import sample

        m = bm.small_dit
        labels = [i % len(m.class_names) for i in range(samples)]
        return bm.module, bm.kwargs, lambda net: sample(m, labels, range(1000, 1000 + samples), res=bm.res,
                                                        steps=steps, transformer=net)
    bm = resolve_model(spec)
    if bm.generate is None:
        raise BenchModelError(f"model {spec!r} cannot generate: calibrate measures full generations, so it needs "
                              "small-dit[:RES] or a `package.module:callable` returning (model, example_kwargs, "
                              "generate) where generate(transformer) runs the generations through `transformer`")
    return bm.module, bm.kwargs, bm.generate
