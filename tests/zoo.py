"""Tiny random-weight diffusers DiTs (configs after diffusers' own model tests) and a hand-written DiT.

Each builder returns (model, kwargs) for a call with a lattice of `grid` = (h, w) tokens
(or (f, h, w) for video) and batch `batch`. Weights come from torch.manual_seed(seed).
"""
from __future__ import annotations

import math

import torch
from torch import nn


def _g(seed):
    return torch.Generator().manual_seed(seed)


def _rand(g, *shape):
    return torch.randn(*shape, generator=g)


def dit(grid=(4, 4), batch=2, seed=0):
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(seed)
    p = 2
    m = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                              num_layers=2, sample_size=grid[0] * p, patch_size=p, num_embeds_ada_norm=1000,
                              norm_num_groups=1)
    g = _g(seed + 1)
    kw = dict(hidden_states=_rand(g, batch, 4, grid[0] * p, grid[1] * p),
              timestep=torch.randint(0, 1000, (batch,), generator=g),
              class_labels=torch.randint(0, 10, (batch,), generator=g))
    return m.eval(), kw


def dit_pipeline(transformer):
    """A diffusers DiTPipeline around `transformer` (zoo.dit) with a tiny random VAE and DDIM."""
    from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
                        up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[8, 16], latent_channels=4,
                        norm_num_groups=8, sample_size=16)
    return DiTPipeline(transformer=transformer, vae=vae, scheduler=DDIMScheduler())


def pixart(grid=(4, 4), batch=2, seed=0, text=5):
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(seed)
    p = 2
    m = PixArtTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                 num_layers=2, sample_size=grid[0] * p, patch_size=p, cross_attention_dim=16,
                                 caption_channels=12, norm_type="ada_norm_single", use_additional_conditions=False,
                                 norm_elementwise_affine=False, norm_eps=1e-6, num_embeds_ada_norm=1000)
    g = _g(seed + 1)
    kw = dict(hidden_states=_rand(g, batch, 4, grid[0] * p, grid[1] * p),
              encoder_hidden_states=_rand(g, batch, text, 12), timestep=torch.rand(batch, generator=g) * 1000)
    return m.eval(), kw


def sd3(grid=(4, 4), batch=2, seed=0, text=6, dual=False):
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    p = 2
    extra = dict(dual_attention_layers=(0,), qk_norm="rms_norm") if dual else {}
    m = SD3Transformer2DModel(sample_size=max(grid) * p, patch_size=p, in_channels=4, num_layers=2,
                              attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                              caption_projection_dim=16, pooled_projection_dim=10, out_channels=4,
                              pos_embed_max_size=max(grid) * 2, **extra)
    g = _g(seed + 1)
    kw = dict(hidden_states=_rand(g, batch, 4, grid[0] * p, grid[1] * p),
              encoder_hidden_states=_rand(g, batch, text, 16), pooled_projections=_rand(g, batch, 10),
              timestep=torch.rand(batch, generator=g) * 1000)
    return m.eval(), kw


def flux(grid=(4, 4), batch=2, seed=0, text=6):
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    m = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                               attention_head_dim=16, num_attention_heads=2, joint_attention_dim=16,
                               pooled_projection_dim=12, axes_dims_rope=(4, 6, 6))
    g = _g(seed + 1)
    h, w = grid
    img_ids = torch.zeros(h, w, 3)
    img_ids[..., 1] = torch.arange(h)[:, None]
    img_ids[..., 2] = torch.arange(w)[None, :]
    kw = dict(hidden_states=_rand(g, batch, h * w, 16), encoder_hidden_states=_rand(g, batch, text, 16),
              pooled_projections=_rand(g, batch, 12), timestep=torch.rand(batch, generator=g),
              img_ids=img_ids.reshape(h * w, 3), txt_ids=torch.zeros(text, 3))
    return m.eval(), kw


def hunyuan(grid=(4, 4), batch=2, seed=0):
    from diffusers import HunyuanDiT2DModel
    from diffusers.models.embeddings import get_2d_rotary_pos_embed

    torch.manual_seed(seed)
    p = 2
    m = HunyuanDiT2DModel(sample_size=grid[0] * p, patch_size=p, in_channels=4,
                          num_attention_heads=2, attention_head_dim=8, num_layers=2, cross_attention_dim=16,
                          cross_attention_dim_t5=16, pooled_projection_dim=8, hidden_size=16,
                          text_len=5, text_len_t5=7, learn_sigma=False)
    g = _g(seed + 1)
    rope = get_2d_rotary_pos_embed(8, ((0, 0), grid), grid, use_real=True)
    kw = dict(hidden_states=_rand(g, batch, 4, grid[0] * p, grid[1] * p), timestep=torch.rand(batch, generator=g) * 1000,
              encoder_hidden_states=_rand(g, batch, 5, 16), text_embedding_mask=torch.ones(batch, 5),
              encoder_hidden_states_t5=_rand(g, batch, 7, 16), text_embedding_mask_t5=torch.ones(batch, 7),
              image_meta_size=torch.rand(batch, 6, generator=g) * 64, style=torch.zeros(batch, dtype=torch.long),
              image_rotary_emb=rope)
    return m.eval(), kw


def cogvideox(grid=(2, 4, 4), batch=2, seed=0, text=6):
    from diffusers import CogVideoXTransformer3DModel
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    torch.manual_seed(seed)
    f, h, w = grid
    p = 2
    m = CogVideoXTransformer3DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
                                    time_embed_dim=4, text_embed_dim=16, num_layers=2, sample_width=w * p,
                                    sample_height=h * p, sample_frames=(f - 1) * 4 + 1, patch_size=p,
                                    temporal_compression_ratio=4, max_text_seq_length=text,
                                    use_rotary_positional_embeddings=True)
    g = _g(seed + 1)
    cos, sin = get_3d_rotary_pos_embed(16, ((0, 0), (h, w)), (h, w), f)
    kw = dict(hidden_states=_rand(g, batch, f, 4, h * p, w * p), encoder_hidden_states=_rand(g, batch, text, 16),
              timestep=torch.randint(0, 1000, (batch,), generator=g), image_rotary_emb=(cos, sin))
    return m.eval(), kw


def wan(grid=(2, 4, 4), batch=2, seed=0, text=6):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    f, h, w = grid
    m = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4,
                              out_channels=4, text_dim=16, freq_dim=32, ffn_dim=32, num_layers=2,
                              cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
    g = _g(seed + 1)
    kw = dict(hidden_states=_rand(g, batch, 4, f, h * 2, w * 2), encoder_hidden_states=_rand(g, batch, text, 16),
              timestep=torch.randint(0, 1000, (batch,), generator=g))
    return m.eval(), kw


def qwenimage(grid=(4, 4), batch=2, seed=0, text=7):
    from diffusers import QwenImageTransformer2DModel

    torch.manual_seed(seed)
    h, w = grid
    m = QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16,
                                    num_attention_heads=3, joint_attention_dim=16, guidance_embeds=False,
                                    axes_dims_rope=(8, 4, 4))
    g = _g(seed + 1)
    kw = dict(hidden_states=_rand(g, batch, h * w, 16), encoder_hidden_states=_rand(g, batch, text, 16),
              encoder_hidden_states_mask=torch.ones(batch, text), timestep=torch.rand(batch, generator=g),
              img_shapes=[(1, h, w)] * batch)
    return m.eval(), kw


def sana(grid=(4, 4), batch=2, seed=0, text=5):
    from diffusers import SanaTransformer2DModel

    torch.manual_seed(seed)
    m = SanaTransformer2DModel(patch_size=1, in_channels=4, out_channels=4, num_layers=1, num_attention_heads=2,
                               attention_head_dim=4, num_cross_attention_heads=2, cross_attention_head_dim=4,
                               cross_attention_dim=8, caption_channels=8, sample_size=max(grid))
    g = _g(seed + 1)
    kw = dict(hidden_states=_rand(g, batch, 4, *grid), encoder_hidden_states=_rand(g, batch, text, 8),
              timestep=torch.randint(0, 1000, (batch,), generator=g))
    return m.eval(), kw


def lumina2(grid=(4, 4), batch=2, seed=0, text=6):
    from diffusers import Lumina2Transformer2DModel

    torch.manual_seed(seed)
    m = Lumina2Transformer2DModel(sample_size=max(grid) * 2, patch_size=2, in_channels=4, hidden_size=24,
                                  num_layers=2, num_refiner_layers=1, num_attention_heads=3, num_kv_heads=1,
                                  multiple_of=2, ffn_dim_multiplier=None, norm_eps=1e-5, scaling_factor=1.0,
                                  axes_dim_rope=(4, 2, 2), axes_lens=(128, 128, 128), cap_feat_dim=8)
    g = _g(seed + 1)
    mask = torch.ones(batch, text, dtype=torch.bool)
    kw = dict(hidden_states=_rand(g, batch, 4, grid[0] * 2, grid[1] * 2), timestep=torch.rand(batch, generator=g),
              encoder_hidden_states=_rand(g, batch, text, 8), encoder_attention_mask=mask)
    return m.eval(), kw


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


# family -> (builder, expected sites: list of (module glob, kind), video?)
ZOO = {
    "dit": dit, "pixart": pixart, "sd3": sd3, "sd35": lambda **k: sd3(dual=True, **k), "flux": flux,
    "hunyuan": hunyuan, "cogvideox": cogvideox, "wan": wan, "qwenimage": qwenimage, "sana": sana,
    "handdit": handdit,
}
VIDEO = {"cogvideox", "wan"}


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
