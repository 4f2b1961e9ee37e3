"""More of diffusers' image / video transformers with tiny random configs (see tiny.py for the first eleven).

Each builder: (grid, batch, seed) -> (model, kwargs). Configs follow the classes' own __init__ arguments,
shrunk to 1-2 layers and a few heads; inputs are what the pipelines pass.
"""
from __future__ import annotations

import torch

import diffusers

from .tiny import _g
from .tiny import _rand as _r


def _make(cls_name, seed, **cfg):
    torch.manual_seed(seed)
    return getattr(diffusers, cls_name)(**cfg).eval()


def _ids(grid, txt):
    h, w = grid[-2:]
    ids = torch.zeros(h, w, 3)
    ids[..., 1] = torch.arange(h)[:, None]
    ids[..., 2] = torch.arange(w)[None, :]
    return ids.reshape(h * w, 3), torch.zeros(txt, 3)


def transformer2d(grid=(4, 4), batch=2, seed=0, text=5):
    m = _make("Transformer2DModel", seed, num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
              num_layers=1, sample_size=grid[0] * 2, patch_size=2, cross_attention_dim=16, norm_type="ada_norm_single",
              num_embeds_ada_norm=1000, caption_channels=12, norm_elementwise_affine=False, use_additional_conditions=False)
    g = _g(seed + 1)
    return m, dict(hidden_states=_r(g, batch, 4, grid[0] * 2, grid[1] * 2), encoder_hidden_states=_r(g, batch, text, 12),
                   timestep=torch.rand(batch, generator=g) * 1000)


def latte(grid=(2, 4, 4), batch=2, seed=0, text=5):
    f, h, w = grid
    m = _make("LatteTransformer3DModel", seed, num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
              num_layers=1, sample_size=max(h, w) * 2, patch_size=2, cross_attention_dim=16, caption_channels=16,
              norm_type="ada_norm_single", num_embeds_ada_norm=1000, norm_elementwise_affine=False, video_length=f)
    g = _g(seed + 1)
    return m, dict(hidden_states=_r(g, batch, 4, f, h * 2, w * 2), encoder_hidden_states=_r(g, batch, text, 16),
                   timestep=torch.rand(batch, generator=g) * 1000)


def allegro(grid=(2, 4, 4), batch=2, seed=0, text=5):
    f, h, w = grid
    m = _make("AllegroTransformer3DModel", seed, num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
              num_layers=1, cross_attention_dim=16, sample_height=h * 2, sample_width=w * 2, sample_frames=f, caption_channels=12)
    g = _g(seed + 1)
    return m, dict(hidden_states=_r(g, batch, 4, f, h * 2, w * 2), encoder_hidden_states=_r(g, batch, text, 12),
                   timestep=torch.rand(batch, generator=g) * 1000)


def auraflow(grid=(4, 4), batch=2, seed=0, text=6):
    m = _make("AuraFlowTransformer2DModel", seed, sample_size=max(grid) * 2, patch_size=2, in_channels=4, num_mmdit_layers=1,
              num_single_dit_layers=1, attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
              caption_projection_dim=16, out_channels=4, pos_embed_max_size=256)
    g = _g(seed + 1)
    return m, dict(hidden_states=_r(g, batch, 4, grid[0] * 2, grid[1] * 2), encoder_hidden_states=_r(g, batch, text, 16),
                   timestep=torch.rand(batch, generator=g) * 1000)


def cogview3plus(grid=(4, 4), batch=2, seed=0, text=6):
    m = _make("CogView3PlusTransformer2DModel", seed, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8,
              num_attention_heads=2, out_channels=4, text_embed_dim=16, time_embed_dim=8, condition_dim=2,
              pos_embed_max_size=16, sample_size=max(grid) * 2)
    g = _g(seed + 1)
    size = torch.tensor([[grid[0] * 16, grid[1] * 16]] * batch, dtype=torch.float32)
    return m, dict(hidden_states=_r(g, batch, 4, grid[0] * 2, grid[1] * 2), encoder_hidden_states=_r(g, batch, text, 16),
                   timestep=torch.randint(0, 1000, (batch,), generator=g), original_size=size, target_size=size,
                   crop_coords=torch.zeros(batch, 2))


def cogview4(grid=(4, 4), batch=2, seed=0, text=6):
    m = _make("CogView4Transformer2DModel", seed, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8,
              num_attention_heads=2, out_channels=4, text_embed_dim=16, time_embed_dim=8, condition_dim=2,
              rope_axes_dim=(4, 4))
    g = _g(seed + 1)
    size = torch.tensor([[grid[0] * 16, grid[1] * 16]] * batch, dtype=torch.float32)
    return m, dict(hidden_states=_r(g, batch, 4, grid[0] * 2, grid[1] * 2), encoder_hidden_states=_r(g, batch, text, 16),
                   timestep=torch.randint(0, 1000, (batch,), generator=g), original_size=size, target_size=size,
                   crop_coords=torch.zeros(batch, 2))


def _fluxlike(cls_name, grid, batch, seed, text, **cfg):
    m = _make(cls_name, seed, **cfg)
    g = _g(seed + 1)
    img_ids, txt_ids = _ids(grid, text)
    h, w = grid
    return m, g, dict(hidden_states=_r(g, batch, h * w, cfg["in_channels"]), img_ids=img_ids, txt_ids=txt_ids,
                      timestep=torch.rand(batch, generator=g))


def chroma(grid=(4, 4), batch=2, seed=0, text=6):
    m, g, kw = _fluxlike("ChromaTransformer2DModel", grid, batch, seed, text, patch_size=1, in_channels=16, num_layers=1,
                         num_single_layers=1, attention_head_dim=16, num_attention_heads=2, joint_attention_dim=16,
                         axes_dims_rope=(4, 6, 6), approximator_num_channels=8, approximator_hidden_dim=16,
                         approximator_layers=1)
    return m, dict(kw, encoder_hidden_states=_r(g, batch, text, 16))


def ovis(grid=(4, 4), batch=2, seed=0, text=6):
    m, g, kw = _fluxlike("OvisImageTransformer2DModel", grid, batch, seed, text, patch_size=1, in_channels=16,
                         out_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                         joint_attention_dim=16, axes_dims_rope=(4, 6, 6))
    return m, dict(kw, encoder_hidden_states=_r(g, batch, text, 16))


def longcat(grid=(4, 4), batch=2, seed=0, text=6):
    m, g, kw = _fluxlike("LongCatImageTransformer2DModel", grid, batch, seed, text, patch_size=1, in_channels=16,
                         num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                         joint_attention_dim=16, pooled_projection_dim=16, axes_dims_rope=[4, 6, 6])
    return m, dict(kw, encoder_hidden_states=_r(g, batch, text, 16))


def bria(grid=(4, 4), batch=2, seed=0, text=6):
    m, g, kw = _fluxlike("BriaTransformer2DModel", grid, batch, seed, text, patch_size=1, in_channels=16, num_layers=1,
                         num_single_layers=1, attention_head_dim=16, num_attention_heads=2, joint_attention_dim=16,
                         axes_dims_rope=[4, 6, 6])
    return m, dict(kw, encoder_hidden_states=_r(g, batch, text, 16))


def flux2(grid=(4, 4), batch=2, seed=0, text=6):
    h, w = grid
    m = _make("Flux2Transformer2DModel", seed, patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
              attention_head_dim=16, num_attention_heads=2, joint_attention_dim=16, timestep_guidance_channels=16,
              axes_dims_rope=(4, 4, 4, 4), guidance_embeds=False)
    g = _g(seed + 1)
    ids = torch.zeros(h, w, 4)
    ids[..., 1] = torch.arange(h)[:, None]
    ids[..., 2] = torch.arange(w)[None, :]
    return m, dict(hidden_states=_r(g, batch, h * w, 16), encoder_hidden_states=_r(g, batch, text, 16),
                   timestep=torch.rand(batch, generator=g), img_ids=ids.reshape(1, h * w, 4).expand(batch, -1, -1),
                   txt_ids=torch.zeros(batch, text, 4))


def ltx(grid=(2, 4, 4), batch=2, seed=0, text=6):
    f, h, w = grid
    m = _make("LTXVideoTransformer3DModel", seed, in_channels=8, out_channels=8, num_attention_heads=2,
              attention_head_dim=8, cross_attention_dim=16, num_layers=1, caption_channels=16)
    g = _g(seed + 1)
    return m, dict(hidden_states=_r(g, batch, f * h * w, 8), encoder_hidden_states=_r(g, batch, text, 16),
                   timestep=torch.randint(0, 1000, (batch,), generator=g), encoder_attention_mask=torch.ones(batch, text),
                   num_frames=f, height=h, width=w)


def mochi(grid=(2, 4, 4), batch=2, seed=0, text=6):
    f, h, w = grid
    m = _make("MochiTransformer3DModel", seed, patch_size=2, num_attention_heads=2, attention_head_dim=8, num_layers=1,
              pooled_projection_dim=16, in_channels=4, out_channels=4, text_embed_dim=16, time_embed_dim=4,
              activation_fn="swiglu", max_sequence_length=text)
    g = _g(seed + 1)
    return m, dict(hidden_states=_r(g, batch, 4, f, h * 2, w * 2), encoder_hidden_states=_r(g, batch, text, 16),
                   timestep=torch.randint(0, 1000, (batch,), generator=g),
                   encoder_attention_mask=torch.ones(batch, text, dtype=torch.bool))


def hunyuanvideo(grid=(2, 4, 4), batch=2, seed=0, text=6):
    f, h, w = grid
    m = _make("HunyuanVideoTransformer3DModel", seed, in_channels=4, out_channels=4, num_attention_heads=2,
              attention_head_dim=10, num_layers=1, num_single_layers=1, num_refiner_layers=1, patch_size=1,
              patch_size_t=1, guidance_embeds=False, text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4))
    g = _g(seed + 1)
    return m, dict(hidden_states=_r(g, batch, 4, f, h, w), timestep=torch.randint(0, 1000, (batch,), generator=g),
                   encoder_hidden_states=_r(g, batch, text, 16), pooled_projections=_r(g, batch, 8),
                   encoder_attention_mask=torch.ones(batch, text))


def luminanext(grid=(4, 4), batch=2, seed=0, text=6):
    from diffusers.models.embeddings import get_2d_rotary_pos_embed_lumina

    m = _make("LuminaNextDiT2DModel", seed, sample_size=max(grid) * 2, patch_size=2, in_channels=4, hidden_size=16,
              num_layers=1, num_attention_heads=2, num_kv_heads=2, multiple_of=4, learn_sigma=False, qk_norm=True,
              cross_attention_dim=8)
    g = _g(seed + 1)
    rope = get_2d_rotary_pos_embed_lumina(8, 384, 384, linear_factor=1.0, ntk_factor=1.0)
    return m, dict(hidden_states=_r(g, batch, 4, grid[0] * 2, grid[1] * 2), timestep=torch.rand(batch, generator=g),
                   encoder_hidden_states=_r(g, batch, text, 8), encoder_mask=torch.ones(batch, text),
                   image_rotary_emb=rope, cross_attention_kwargs={})


def _wanlike(cls_name, grid, batch, seed, text, **extra):
    f, h, w = grid
    m = _make(cls_name, seed, patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4,
              out_channels=4, text_dim=16, freq_dim=32, ffn_dim=32, num_layers=2, rope_max_seq_len=32, **extra)
    g = _g(seed + 1)
    return m, g, dict(hidden_states=_r(g, batch, 4, f, h * 2, w * 2), encoder_hidden_states=_r(g, batch, text, 16),
                      timestep=torch.randint(0, 1000, (batch,), generator=g))


def skyreels(grid=(2, 4, 4), batch=2, seed=0, text=6):
    m, _, kw = _wanlike("SkyReelsV2Transformer3DModel", grid, batch, seed, text)
    return m, kw


def chronoedit(grid=(2, 4, 4), batch=2, seed=0, text=6):
    m, _, kw = _wanlike("ChronoEditTransformer3DModel", grid, batch, seed, text)
    return m, kw


def wanvace(grid=(2, 4, 4), batch=2, seed=0, text=6):
    f, h, w = grid
    m, g, kw = _wanlike("WanVACETransformer3DModel", grid, batch, seed, text, vace_layers=[0], vace_in_channels=8)
    return m, dict(kw, control_hidden_states=_r(g, batch, 8, f, h * 2, w * 2))


def sanavideo(grid=(2, 4, 4), batch=2, seed=0, text=5):
    f, h, w = grid
    m = _make("SanaVideoTransformer3DModel", seed, in_channels=4, out_channels=4, num_attention_heads=2,
              attention_head_dim=8, num_layers=1, num_cross_attention_heads=2, cross_attention_head_dim=8,
              cross_attention_dim=16, caption_channels=8, sample_size=max(h, w), rope_max_seq_len=32)
    g = _g(seed + 1)
    return m, dict(hidden_states=_r(g, batch, 4, f, h * 2, w * 2), encoder_hidden_states=_r(g, batch, text, 8),
                   timestep=torch.randint(0, 1000, (batch,), generator=g))


def easyanimate(grid=(2, 4, 4), batch=2, seed=0, text=6):
    f, h, w = grid
    m = _make("EasyAnimateTransformer3DModel", seed, num_attention_heads=2, attention_head_dim=16, in_channels=4,
              out_channels=4, patch_size=2, sample_width=w * 2, sample_height=h * 2, num_layers=1, mmdit_layers=1,
              time_embed_dim=8, text_embed_dim=16)
    g = _g(seed + 1)
    return m, dict(hidden_states=_r(g, batch, 4, f, h * 2, w * 2), timestep=torch.randint(0, 1000, (batch,), generator=g),
                   encoder_hidden_states=_r(g, batch, text, 16))


def hidream(grid=(4, 4), batch=2, seed=0, text=6):
    h, w = grid
    m = _make("HiDreamImageTransformer2DModel", seed, patch_size=2, in_channels=4, out_channels=4, num_layers=1,
              num_single_layers=1, attention_head_dim=8, num_attention_heads=2, caption_channels=[8, 4],
              text_emb_dim=8, num_routed_experts=4, num_activated_experts=2, axes_dims_rope=(2, 2, 4),
              max_resolution=(32, 32), llama_layers=(0, 1))
    g = _g(seed + 1)
    return m, dict(hidden_states=_r(g, batch, 4, h * 2, w * 2), timesteps=torch.randint(0, 1000, (batch,), generator=g),
                   encoder_hidden_states_t5=_r(g, batch, text, 8), encoder_hidden_states_llama3=_r(g, 2, batch, text, 4),
                   pooled_embeds=_r(g, batch, 8))


def zimage(grid=(4, 4), batch=2, seed=0, text=6):
    h, w = grid
    m = _make("ZImageTransformer2DModel", seed, all_patch_size=(2,), all_f_patch_size=(1,), in_channels=4, dim=16,
              n_layers=1, n_refiner_layers=1, n_heads=2, n_kv_heads=2, cap_feat_dim=8, axes_dims=[2, 2, 4],
              axes_lens=[64, 32, 32])
    g = _g(seed + 1)
    return m, dict(x=[_r(g, 4, 1, h * 2, w * 2) for _ in range(batch)], t=torch.rand(batch, generator=g),
                   cap_feats=[_r(g, text, 8) for _ in range(batch)])


def prx(grid=(4, 4), batch=2, seed=0, text=6):
    h, w = grid
    m = _make("PRXTransformer2DModel", seed, in_channels=4, patch_size=2, context_in_dim=16, hidden_size=16, mlp_ratio=2.0,
              num_heads=2, depth=1, axes_dim=[4, 4])
    g = _g(seed + 1)
    return m, dict(hidden_states=_r(g, batch, 4, h * 2, w * 2), timestep=torch.rand(batch, generator=g),
                   encoder_hidden_states=_r(g, batch, text, 16))


MORE = {
    "transformer2d": transformer2d, "latte": latte, "allegro": allegro, "auraflow": auraflow,
    "cogview3plus": cogview3plus, "cogview4": cogview4, "chroma": chroma, "ovis": ovis, "longcat": longcat,
    "bria": bria, "flux2": flux2, "ltx": ltx, "mochi": mochi, "hunyuanvideo": hunyuanvideo, "luminanext": luminanext,
    "skyreels": skyreels, "chronoedit": chronoedit, "wanvace": wanvace, "sanavideo": sanavideo,
    "easyanimate": easyanimate, "hidream": hidream, "zimage": zimage, "prx": prx,
}
VIDEO = {"latte", "allegro", "ltx", "mochi", "hunyuanvideo", "skyreels", "chronoedit", "wanvace", "sanavideo",
         "easyanimate"}


# --- a second batch ---------------------------------------------------------------------------------
def hunyuanimage(grid=(4, 4), batch=2, seed=0, text=6):
    h, w = grid
    m = _make("HunyuanImageTransformer2DModel", seed, in_channels=4, out_channels=4, num_attention_heads=2,
              attention_head_dim=8, num_layers=1, num_single_layers=1, num_refiner_layers=1, patch_size=(1, 1),
              text_embed_dim=16, rope_axes_dim=(4, 4))
    g = _g(seed + 1)
    return m, dict(hidden_states=_r(g, batch, 4, h, w), timestep=torch.rand(batch, generator=g) * 1000,
                   encoder_hidden_states=_r(g, batch, text, 16), encoder_attention_mask=torch.ones(batch, text))


def motifvideo(grid=(2, 4, 4), batch=2, seed=0, text=6):
    f, h, w = grid
    m = _make("MotifVideoTransformer3DModel", seed, in_channels=4, out_channels=4, num_attention_heads=2,
              attention_head_dim=10, num_layers=1, num_single_layers=1, patch_size=1, patch_size_t=1,
              text_embed_dim=16, rope_axes_dim=(2, 4, 4))
    g = _g(seed + 1)
    return m, dict(hidden_states=_r(g, batch, 4, f, h, w), timestep=torch.randint(0, 1000, (batch,), generator=g),
                   encoder_hidden_states=_r(g, batch, text, 16), encoder_attention_mask=torch.ones(batch, text))


def joyimage(grid=(2, 4, 4), batch=2, seed=0, text=6):
    f, h, w = grid
    m = _make("JoyImageEditTransformer3DModel", seed, patch_size=[1, 2, 2], in_channels=4, out_channels=4, hidden_size=16,
              num_attention_heads=2, text_dim=16, num_layers=1, rope_dim_list=[2, 2, 4])
    g = _g(seed + 1)
    return m, dict(hidden_states=_r(g, batch, 4, f, h * 2, w * 2), timestep=torch.randint(0, 1000, (batch,), generator=g),
                   encoder_hidden_states=_r(g, batch, text, 16))


def flux3(grid=(4, 4), batch=2, seed=0, text=6):
    h, w = grid
    m = _make("Flux3Transformer2DModel", seed, in_channels=16, cond_in_channels=16, num_layers=1, num_single_layers=1,
              attention_head_dim=16, num_attention_heads=2, joint_attention_dim=16, timestep_channels=16,
              axes_dims_rope=(4, 4, 4, 4))
    g = _g(seed + 1)
    ids = torch.zeros(h, w, 4)
    ids[..., 1] = torch.arange(h)[:, None]
    ids[..., 2] = torch.arange(w)[None, :]
    return m, dict(hidden_states=_r(g, batch, h * w, 16), encoder_hidden_states=_r(g, batch, text, 16),
                   timestep=torch.rand(batch, generator=g), img_ids=ids.reshape(h * w, 4), txt_ids=torch.zeros(text, 4))


def nucleusmoe(grid=(4, 4), batch=2, seed=0, text=7):
    h, w = grid
    m = _make("NucleusMoEImageTransformer2DModel", seed, patch_size=2, in_channels=16, num_layers=1, attention_head_dim=16,
              num_attention_heads=2, joint_attention_dim=16, axes_dims_rope=(8, 4, 4), moe_enabled=False)
    g = _g(seed + 1)
    return m, dict(hidden_states=_r(g, batch, h * w, 16), encoder_hidden_states=_r(g, batch, text, 16),
                   encoder_hidden_states_mask=torch.ones(batch, text), timestep=torch.rand(batch, generator=g),
                   img_shapes=[(1, h, w)] * batch)


def dreamlite(grid=(4, 4), batch=2, seed=0, text=5):
    m = _make("DreamLiteTransformer2DModel", seed, num_attention_heads=2, attention_head_dim=8, in_channels=4,
              out_channels=4, num_layers=1, norm_num_groups=1, cross_attention_dim=12)
    g = _g(seed + 1)
    return m, dict(hidden_states=_r(g, batch, 4, *grid), encoder_hidden_states=_r(g, batch, text, 12))


def consisid(grid=(2, 4, 4), batch=2, seed=0, text=6):
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    f, h, w = grid
    m = _make("ConsisIDTransformer3DModel", seed, num_attention_heads=2, attention_head_dim=16, in_channels=4,
              out_channels=4, time_embed_dim=4, text_embed_dim=16, num_layers=1, sample_width=w * 2, sample_height=h * 2,
              sample_frames=(f - 1) * 4 + 1, patch_size=2, max_text_seq_length=text,
              use_rotary_positional_embeddings=True)
    g = _g(seed + 1)
    cos, sin = get_3d_rotary_pos_embed(16, ((0, 0), (h, w)), (h, w), f)
    return m, dict(hidden_states=_r(g, batch, f, 4, h * 2, w * 2), encoder_hidden_states=_r(g, batch, text, 16),
                   timestep=torch.randint(0, 1000, (batch,), generator=g), image_rotary_emb=(cos, sin))


MORE.update({"hunyuanimage": hunyuanimage, "motifvideo": motifvideo, "joyimage": joyimage,
             "flux3": flux3, "nucleusmoe": nucleusmoe, "dreamlite": dreamlite,
             "consisid": consisid})
VIDEO |= {"motifvideo", "joyimage", "consisid"}


def krea2(grid=(4, 4), batch=2, seed=0, text=5):
    h, w = grid
    m = _make("Krea2Transformer2DModel", seed, in_channels=16, num_layers=1, attention_head_dim=16, num_attention_heads=2,
              num_key_value_heads=1, intermediate_size=32, timestep_embed_dim=16, text_hidden_dim=16, num_text_layers=2,
              text_num_attention_heads=2, text_num_key_value_heads=2, text_intermediate_size=32,
              num_layerwise_text_blocks=1, num_refiner_text_blocks=1, axes_dims_rope=(4, 6, 6))
    g = _g(seed + 1)
    img = torch.zeros(h, w, 3)
    img[..., 1] = torch.arange(h)[:, None]
    img[..., 2] = torch.arange(w)[None, :]
    pos = torch.cat([torch.zeros(text, 3), img.reshape(h * w, 3)])
    return m, dict(hidden_states=_r(g, batch, h * w, 16), encoder_hidden_states=_r(g, batch, text, 2, 16),
                   timestep=torch.rand(batch, generator=g), position_ids=pos)


MORE["krea2"] = krea2


def anyflow(grid=(2, 4, 4), batch=2, seed=0, text=6):
    f, h, w = grid
    m = _make("AnyFlowTransformer3DModel", seed, patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
              in_channels=4, out_channels=4, text_dim=16, freq_dim=32, ffn_dim=32, num_layers=1, rope_max_seq_len=32)
    g = _g(seed + 1)
    t = torch.randint(500, 1000, (batch, 1), generator=g).float().expand(batch, f)
    return m, dict(hidden_states=_r(g, batch, f, 4, h * 2, w * 2), timestep=t, r_timestep=t - 100,
                   encoder_hidden_states=_r(g, batch, text, 16))


def ernie(grid=(4, 4), batch=2, seed=0, text=6):
    h, w = grid
    m = _make("ErnieImageTransformer2DModel", seed, hidden_size=16, num_attention_heads=2, num_layers=1, ffn_hidden_size=32,
              in_channels=4, out_channels=4, patch_size=1, text_in_dim=16, rope_axes_dim=(2, 2, 4))
    g = _g(seed + 1)
    return m, dict(hidden_states=_r(g, batch, 4, h, w), timestep=torch.rand(batch, generator=g) * 1000,
                   text_bth=_r(g, batch, text, 16), text_lens=torch.full((batch,), text))


def helios(grid=(2, 4, 4), batch=2, seed=0, text=6):
    f, h, w = grid
    m = _make("HeliosTransformer3DModel", seed, patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
              in_channels=4, out_channels=4, text_dim=16, freq_dim=32, ffn_dim=32, num_layers=1, rope_dim=(4, 4, 4))
    g = _g(seed + 1)
    return m, dict(hidden_states=_r(g, batch, 4, f, h * 2, w * 2), timestep=torch.randint(0, 1000, (batch,), generator=g),
                   encoder_hidden_states=_r(g, batch, text, 16))


def hunyuanvideo15(grid=(2, 4, 4), batch=2, seed=0, text=6):
    f, h, w = grid
    m = _make("HunyuanVideo15Transformer3DModel", seed, in_channels=4, out_channels=4, num_attention_heads=2,
              attention_head_dim=10, num_layers=1, num_refiner_layers=1, text_embed_dim=16, text_embed_2_dim=8,
              image_embed_dim=8, rope_axes_dim=(2, 4, 4), task_type="t2v")
    g = _g(seed + 1)
    return m, dict(hidden_states=_r(g, batch, 4, f, h, w), timestep=torch.rand(batch, generator=g) * 1000,
                   encoder_hidden_states=_r(g, batch, text, 16), encoder_attention_mask=torch.ones(batch, text),
                   encoder_hidden_states_2=_r(g, batch, 3, 8), encoder_attention_mask_2=torch.ones(batch, 3),
                   image_embeds=torch.zeros(batch, 4, 8))


def kandinsky5(grid=(2, 4, 4), batch=1, seed=0, text=6):
    f, h, w = grid
    m = _make("Kandinsky5Transformer3DModel", seed, in_visual_dim=4, in_text_dim=16, in_text_dim2=8, time_dim=16,
              out_visual_dim=4, patch_size=(1, 2, 2), model_dim=16, ff_dim=32, num_text_blocks=1, num_visual_blocks=1,
              axes_dims=(4, 2, 2))
    g = _g(seed + 1)
    return m, dict(hidden_states=_r(g, batch, f, h * 2, w * 2, 4), encoder_hidden_states=_r(g, batch, text, 16),
                   timestep=torch.rand(batch, generator=g) * 1000, pooled_projections=_r(g, batch, 8),
                   visual_rope_pos=[torch.arange(f), torch.arange(h), torch.arange(w)], text_rope_pos=torch.arange(text))


MORE.update({"anyflow": anyflow, "ernie": ernie, "helios": helios, "hunyuanvideo15": hunyuanvideo15,
             "kandinsky5": kandinsky5})
VIDEO |= {"anyflow", "helios", "hunyuanvideo15", "kandinsky5"}


def briafibo(grid=(4, 4), batch=2, seed=0, text=6):
    m, g, kw = _fluxlike("BriaFiboTransformer2DModel", grid, batch, seed, text, patch_size=1, in_channels=16,
                         num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                         joint_attention_dim=16, axes_dims_rope=[4, 6, 6], text_encoder_dim=8)
    return m, dict(kw, encoder_hidden_states=_r(g, batch, text, 16), text_encoder_layers=[_r(g, batch, text, 8)] * 2)


def glmimage(grid=(4, 4), batch=2, seed=0, text=6):
    h, w = grid
    m = _make("GlmImageTransformer2DModel", seed, patch_size=2, in_channels=4, out_channels=4, num_layers=1,
              attention_head_dim=8, num_attention_heads=2, text_embed_dim=16, time_embed_dim=8, condition_dim=2,
              prior_vq_quantizer_codebook_size=32)
    g = _g(seed + 1)
    size = torch.tensor([[h * 16, w * 16]] * batch, dtype=torch.float32)
    return m, dict(hidden_states=_r(g, batch, 4, h * 2, w * 2), encoder_hidden_states=_r(g, batch, text, 16),
                   prior_token_id=torch.randint(0, 32, (batch, h * w), generator=g),
                   prior_token_drop=torch.zeros(batch, dtype=torch.bool),
                   timestep=torch.randint(0, 1000, (batch,), generator=g), target_size=size, crop_coords=torch.zeros(batch, 2))


MORE.update({"briafibo": briafibo, "glmimage": glmimage})
