"""Tiny random-weight diffusers DiTs (configs after diffusers' own model tests): the first eleven of the zoo.

Each builder returns (model, kwargs) for a call with a lattice of `grid` = (h, w) tokens
(or (f, h, w) for video) and batch `batch`. Weights come from torch.manual_seed(seed).
"""
from __future__ import annotations

import torch


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


TINY = {"dit": dit, "pixart": pixart, "sd3": sd3, "sd35": lambda **k: sd3(dual=True, **k), "flux": flux,
        "hunyuan": hunyuan, "cogvideox": cogvideox, "wan": wan, "qwenimage": qwenimage, "sana": sana, "lumina2": lumina2}
VIDEO = {"cogvideox", "wan"}
