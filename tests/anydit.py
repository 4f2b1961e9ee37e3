"""Hand-written DiTs in the styles research code uses, for tests/test_any_dit.py and the zoo table.

- OrigDiT: the original DiT repository (facebookresearch/DiT, also SiT): forward(x, t, y), conv patchify,
  timm-style Attention with fused qkv, per-head q/k LayerNorm, scale folded into q, dropout in eval.
- XTransDiT: x-transformers style joint attention over [context | image]: einsum logits,
  masked_fill(~mask, -finfo.max) with a boolean key-padding mask, softmax(dtype=float32) and a cast back.
- RegViT: a plain ViT denoiser with a class token before and register tokens after the image tokens; the
  time input `cond` is already an embedding [B, D] (no timestep to count).
- PackedDiT: packed tokens [B, N, C] with the lattice given as integer arguments (num_frames, height,
  width), sigma as time input, F.normalize per-head q / k, sdpa, RoPE built from the integer sizes.

Second pass (issue 19), one research pattern each:
- RopeDiT: flow-matching DiT (RMSNorm, SwiGLU, adaLN) whose rotary module is owned by the top-level model
  and called inside every block (lucidrains style): the q / k rotation is recorded under `rope`, not the block.
- GQADiT: grouped-query attention, k / v heads repeated with `Tensor.repeat` (or repeat_interleave) to q's.
- MPDiT: Next-DiT-like model-parallel linears: each q / k / v projection reads its own same-shape view /
  reshape / contiguous copy of the normalised hidden states.
- PerSampleTextDiT: a loop over the batch, each sample attending to [its unpadded text | image] (or
  [image | text]); the text length is read from the mask at run time (image tokens reduced, see docs/models.md).
- PerSampleCrossDiT: the same loop with image self-attention and cross-attention to the unpadded text.
- PerSampleValidImageDiT: the same loop over [text | the valid image tokens of the sample]: a run-time count
  of image tokens (a named ScheduleError).
- ListDiT: layers as ModuleLists without a forward, residual adds in the parent's loop.
- MixFFNDiT: a 3×3 depthwise conv on the lattice inside the block's MLP: `block` is refused, named.
- ProjOnlyMMDiT: pure-torch MMDiT / Flux code: the attention modules hold only the projections (and q / k
  norms); the parent block runs the joint sdpa. A real ReLU linear-attention module stays unmatched.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _sincos(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimmAttention(nn.Module):
    def __init__(self, dim, heads, qk_norm=True, fused=False):
        super().__init__()
        self.heads, self.head_dim, self.fused = heads, dim // heads, fused
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.q_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.attn_drop, self.proj = nn.Dropout(0.1), nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.fused:
            x = F.scaled_dot_product_attention(q, k, v)
        else:
            q = q * self.scale
            attn = q @ k.transpose(-2, -1)
            attn = attn.softmax(dim=-1)
            attn = self.attn_drop(attn)
            x = attn @ v
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


def _modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class DiTBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = TimmAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(approximate="tanh"), nn.Linear(2 * dim, dim))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x, c):
        s1, sc1, g1, s2, sc2, g2 = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + g1.unsqueeze(1) * self.attn(_modulate(self.norm1(x), s1, sc1))
        return x + g2.unsqueeze(1) * self.mlp(_modulate(self.norm2(x), s2, sc2))


class OrigDiT(nn.Module):
    def __init__(self, input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=4,
                 num_classes=10, learn_sigma=True):
        super().__init__()
        self.in_channels, self.p = in_channels, patch_size
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.x_embedder = nn.Conv2d(in_channels, hidden_size, patch_size, patch_size)
        self.t_embedder = nn.Sequential(nn.Linear(64, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))
        self.y_embedder = nn.Embedding(num_classes + 1, hidden_size)
        n = (input_size // patch_size) ** 2
        self.pos_embed = nn.Parameter(torch.randn(1, n, hidden_size) * 0.02, requires_grad=False)
        self.blocks = nn.ModuleList(DiTBlock(hidden_size, num_heads) for _ in range(depth))
        self.final_norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.final = nn.Linear(hidden_size, patch_size * patch_size * self.out_channels)

    def unpatchify(self, x, h, w):
        c, p = self.out_channels, self.p
        x = x.reshape(x.shape[0], h, w, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], c, h * p, w * p)

    def forward(self, x, t, y):
        h, w = x.shape[-2] // self.p, x.shape[-1] // self.p
        x = self.x_embedder(x).flatten(2).transpose(1, 2)
        x = x + self.pos_embed[:, : h * w]
        c = self.t_embedder(_sincos(t, 64).to(x.dtype)) + self.y_embedder(y)
        for block in self.blocks:
            x = block(x, c)
        return self.unpatchify(self.final(self.final_norm(x)), h, w)


class XAttention(nn.Module):
    """x-transformers' Attend: einsum logits, boolean keep-mask via masked_fill, fp32 softmax."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.to_qkv, self.to_out, self.dropout = nn.Linear(dim, 3 * dim, bias=False), nn.Linear(dim, dim), nn.Dropout(0.1)

    def forward(self, x, mask):
        b, n, _ = x.shape
        q, k, v = (t.reshape(b, n, self.heads, -1).transpose(1, 2) for t in self.to_qkv(x).chunk(3, dim=-1))
        sim = torch.einsum("b h i d, b h j d -> b h i j", q, k) * self.scale
        sim = sim.masked_fill(~mask[:, None, None, :], -torch.finfo(sim.dtype).max)
        attn = sim.softmax(dim=-1, dtype=torch.float32).type(q.dtype)
        attn = self.dropout(attn)
        out = torch.einsum("b h i j, b h j d -> b h i d", attn, v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class XTransDiT(nn.Module):
    def __init__(self, channels=4, patch=2, dim=32, heads=4, depth=2, context_dim=12):
        super().__init__()
        self.p, self.c = patch, channels
        self.embed = nn.Linear(channels * patch * patch, dim)
        self.context_proj = nn.Linear(context_dim, dim)
        self.time = nn.Sequential(nn.Linear(32, dim), nn.SiLU())
        self.layers = nn.ModuleList(nn.ModuleList([nn.LayerNorm(dim), XAttention(dim, heads), nn.LayerNorm(dim),
                                                   nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))])
                                    for _ in range(depth))
        self.out = nn.Linear(dim, channels * patch * patch)

    def forward(self, x, times, context, context_mask):
        b, c, hh, ww = x.shape
        p, h, w = self.p, hh // self.p, ww // self.p
        tok = self.embed(x.reshape(b, c, h, p, w, p).permute(0, 2, 4, 1, 3, 5).reshape(b, h * w, c * p * p))
        ctx = self.context_proj(context)
        seq = torch.cat([ctx, tok], dim=1) + self.time(_sincos(times, 32).to(x.dtype))[:, None]
        mask = torch.cat([context_mask, torch.ones(b, h * w, dtype=torch.bool, device=x.device)], dim=1)
        for norm1, attn, norm2, ff in self.layers:
            seq = seq + attn(norm1(seq), mask)
            seq = seq + ff(norm2(seq))
        img = self.out(seq[:, ctx.shape[1]:])
        return img.reshape(b, h, w, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, c, hh, ww)


class RegViT(nn.Module):
    def __init__(self, channels=3, patch=2, dim=32, heads=4, depth=2, registers=3, max_tokens=64):
        super().__init__()
        self.p, self.c = patch, channels
        self.patch = nn.Conv2d(channels, dim, patch, patch)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.registers = nn.Parameter(torch.randn(1, registers, dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, max_tokens, dim) * 0.02)
        self.blocks = nn.ModuleList(nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True,
                                                               norm_first=True) for _ in range(depth))
        self.cond = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, channels * patch * patch)

    def forward(self, pixels, cond):
        b, c, hh, ww = pixels.shape
        p, h, w = self.p, hh // self.p, ww // self.p
        x = self.patch(pixels).flatten(2).transpose(1, 2) + self.pos[:, : h * w] + self.cond(cond)[:, None]
        x = torch.cat([self.cls.expand(b, -1, -1), x, self.registers.expand(b, -1, -1)], dim=1)
        for blk in self.blocks:
            x = blk(x)
        img = self.head(x[:, 1: 1 + h * w]) + x[:, :1].mean(-1, keepdim=True)
        return img.reshape(b, h, w, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, c, hh, ww)


def _rope_1d(pos: torch.Tensor, dim: int):
    freqs = 1.0 / (100 ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    ang = pos.float()[:, None] * freqs[None]
    return ang.cos(), ang.sin()


class PackedAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x, cos, sin):
        b, n, c = x.shape
        q, k, v = (f(x).view(b, n, self.heads, -1).transpose(1, 2) for f in (self.q, self.k, self.v))
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)  # per-head q / k norm

        def rope(t):
            t1, t2 = t[..., 0::2], t[..., 1::2]
            return torch.stack([t1 * cos - t2 * sin, t1 * sin + t2 * cos], dim=-1).flatten(-2)

        out = F.scaled_dot_product_attention(rope(q), rope(k), v, scale=4.0)
        return self.o(out.transpose(1, 2).reshape(b, n, c))


class PackedDiT(nn.Module):
    def __init__(self, in_dim=8, dim=32, heads=2, depth=2):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.embed, self.t = nn.Linear(in_dim, dim), nn.Linear(32, dim)
        self.blocks = nn.ModuleList(PackedAttention(dim, heads) for _ in range(depth))
        self.out = nn.Linear(dim, in_dim)

    def forward(self, tokens, sigma, num_frames: int, height: int, width: int):
        f_, h_, w_ = torch.meshgrid(torch.arange(num_frames), torch.arange(height), torch.arange(width), indexing="ij")
        pos = (f_ * 7 + h_ * 3 + w_).reshape(-1)  # a toy 3-D position mixed into one angle per token
        cos, sin = _rope_1d(pos, self.head_dim)
        x = self.embed(tokens) + self.t(_sincos(sigma * 1000, 32).to(tokens.dtype))[:, None]
        for blk in self.blocks:
            x = x + blk(x, cos.to(x.dtype), sin.to(x.dtype))
        return self.out(x)


class Rotary(nn.Module):
    """1-D rotary embedding with a cached table; applied to [B, H, N, D] by the caller's block."""

    def __init__(self, head_dim, max_tokens=256):
        super().__init__()
        freqs = 1.0 / (100 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        ang = torch.arange(max_tokens, dtype=torch.float32)[:, None] * freqs[None]
        self.register_buffer("cos", torch.cat([ang.cos(), ang.cos()], -1), persistent=False)
        self.register_buffer("sin", torch.cat([ang.sin(), ang.sin()], -1), persistent=False)

    def forward(self, t):
        n = t.shape[-2]
        t1, t2 = t.chunk(2, dim=-1)
        return t * self.cos[:n].to(t.dtype) + torch.cat([-t2, t1], dim=-1) * self.sin[:n].to(t.dtype)


class SwiGLU(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.w1, self.w2, self.w3 = nn.Linear(dim, hidden, bias=False), nn.Linear(hidden, dim, bias=False), \
            nn.Linear(dim, hidden, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class RopeAttention(nn.Module):
    def __init__(self, dim, heads, kv_heads=None, repeat="repeat"):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim, self.repeat = heads, kv_heads or heads, dim // heads, repeat
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * self.kv_heads * self.head_dim)
        self.q_norm, self.k_norm = nn.RMSNorm(self.head_dim), nn.RMSNorm(self.head_dim)
        self.o = nn.Linear(dim, dim)

    def forward(self, x, rope=None):
        b, n, c = x.shape
        q = self.q_norm(self.q(x).view(b, n, self.heads, self.head_dim)).transpose(1, 2)
        k, v = self.kv(x).view(b, n, 2, self.kv_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        k = self.k_norm(k)
        if rope is not None:
            q, k = rope(q), rope(k)
        n_rep = self.heads // self.kv_heads
        if self.repeat == "repeat":
            k, v = k.repeat(1, n_rep, 1, 1), v.repeat(1, n_rep, 1, 1)
        elif self.repeat == "repeat_interleave":
            k, v = k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.o(out.transpose(1, 2).reshape(b, n, c))


class FlowBlock(nn.Module):
    def __init__(self, dim, heads, **attn):
        super().__init__()
        self.norm1, self.norm2 = nn.RMSNorm(dim, eps=1e-6), nn.RMSNorm(dim, eps=1e-6)
        self.attn = RopeAttention(dim, heads, **attn)
        self.mlp = SwiGLU(dim, 2 * dim)
        self.ada = nn.Linear(dim, 6 * dim)

    def forward(self, x, c, rope=None):
        s1, sc1, g1, s2, sc2, g2 = self.ada(F.silu(c)).chunk(6, dim=1)
        x = x + g1.unsqueeze(1) * self.attn(_modulate(self.norm1(x), s1, sc1), rope)
        return x + g2.unsqueeze(1) * self.mlp(_modulate(self.norm2(x), s2, sc2))


class MixFFN(nn.Module):
    """Mix-FFN (SegFormer / Sana style): a 3×3 depthwise conv on the lattice between the two linears."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)

    def forward(self, x):
        b, n, _ = x.shape
        h = w = math.isqrt(n)
        x = self.fc1(x).transpose(1, 2).reshape(b, -1, h, w)
        return self.fc2(F.gelu(self.dwconv(x)).flatten(2).transpose(1, 2))


class _PatchDiT(nn.Module):
    """forward(x, t): conv patchify, flow-matching time embedding, blocks(x, c), unpatchify."""

    def __init__(self, blocks, dim=32, channels=4, patch=2):
        super().__init__()
        self.p, self.c = patch, channels
        self.x_embedder = nn.Conv2d(channels, dim, patch, patch)
        self.t_embedder = nn.Sequential(nn.Linear(32, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.blocks = nn.ModuleList(blocks)
        self.final = nn.Linear(dim, patch * patch * channels)

    def run_blocks(self, x, c):
        for block in self.blocks:
            x = block(x, c)
        return x

    def forward(self, x, t):
        b, _, hh, ww = x.shape
        p, h, w = self.p, hh // self.p, ww // self.p
        x = self.x_embedder(x).flatten(2).transpose(1, 2)
        c = self.t_embedder(_sincos(t * 1000, 32).to(x.dtype))
        x = self.final(self.run_blocks(x, c))
        return x.reshape(b, h, w, p, p, self.c).permute(0, 5, 1, 3, 2, 4).reshape(b, self.c, hh, ww)


class RopeDiT(_PatchDiT):
    def __init__(self, dim=32, heads=4, depth=2):
        super().__init__([FlowBlock(dim, heads, repeat=None) for _ in range(depth)], dim)
        self.rope = Rotary(dim // heads)  # owned here, called inside every block

    def run_blocks(self, x, c):
        for block in self.blocks:
            x = block(x, c, self.rope)
        return x


class MixFFNDiT(_PatchDiT):
    def __init__(self, dim=32, heads=4, depth=2):
        blocks = [FlowBlock(dim, heads, repeat=None) for _ in range(depth)]
        for b in blocks:
            b.mlp = MixFFN(dim, 2 * dim)
        super().__init__(blocks, dim)


class ListDiT(_PatchDiT):
    """U-ViT / x-transformers style layers: a ModuleList [norm, attention, norm, MLP] with no forward of its
    own; the residual adds are written in the parent's loop."""

    def __init__(self, dim=32, heads=4, depth=2):
        super().__init__([nn.ModuleList([nn.LayerNorm(dim), TimmAttention(dim, heads, fused=True), nn.LayerNorm(dim),
                                         SwiGLU(dim, 2 * dim)]) for _ in range(depth)], dim)

    def run_blocks(self, x, c):
        x = x + c[:, None]
        for norm1, attn, norm2, ff in self.blocks:
            x = x + attn(norm1(x))
            x = x + ff(norm2(x))
        return x


class GQADiT(_PatchDiT):
    def __init__(self, dim=32, heads=4, kv_heads=2, depth=2, repeat="repeat"):
        super().__init__([FlowBlock(dim, heads, kv_heads=kv_heads, repeat=repeat) for _ in range(depth)], dim)


class ParallelLinear(nn.Linear):
    """Model-parallel linear (one shard here): reads its own same-shape copy of the input."""

    def __init__(self, dim_in, dim_out, copy="view"):
        super().__init__(dim_in, dim_out, bias=False)
        self.copy = copy

    def forward(self, x):
        if self.copy == "view":
            x = x.view(x.shape)
        elif self.copy == "reshape":
            x = x.reshape(*x.shape[:-1], -1)
        else:
            x = x.contiguous()
        return F.linear(x, self.weight)


class MPAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.wq, self.wk, self.wv = (ParallelLinear(dim, dim, c) for c in ("view", "reshape", "contiguous"))
        self.wo = ParallelLinear(dim, dim, "view")

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = (f(x).view(b, n, self.heads, -1).transpose(1, 2) for f in (self.wq, self.wk, self.wv))
        return self.wo(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))


class MPBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.attention_norm, self.ffn_norm = nn.RMSNorm(dim), nn.RMSNorm(dim)
        self.attention, self.feed_forward = MPAttention(dim, heads), SwiGLU(dim, 2 * dim)
        self.adaLN_modulation = nn.Linear(dim, 4 * dim)

    def forward(self, x, c):
        sc1, g1, sc2, g2 = self.adaLN_modulation(F.silu(c)).chunk(4, dim=1)
        x = x + g1.tanh().unsqueeze(1) * self.attention(self.attention_norm(x) * (1 + sc1.unsqueeze(1)))
        return x + g2.tanh().unsqueeze(1) * self.feed_forward(self.ffn_norm(x) * (1 + sc2.unsqueeze(1)))


class MPDiT(_PatchDiT):
    def __init__(self, dim=32, heads=4, depth=2):
        super().__init__([MPBlock(dim, heads) for _ in range(depth)], dim)


class ProjAttention(nn.Module):
    """Holds the projections and q / k norms only; the parent block runs the attention."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.to_q, self.to_k, self.to_v, self.to_out = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q, self.norm_k = nn.RMSNorm(dim // heads), nn.RMSNorm(dim // heads)

    def qkv(self, x):
        b, n, _ = x.shape
        q, k, v = (f(x).view(b, n, self.heads, -1).transpose(1, 2) for f in (self.to_q, self.to_k, self.to_v))
        return self.norm_q(q), self.norm_k(k), v


class LinearAttention(nn.Module):
    """ReLU linear attention (Sana style): no softmax, really unmatched."""

    def __init__(self, dim):
        super().__init__()
        self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        q, k, v = self.qkv(x).relu().chunk(3, dim=-1)
        kv = k.transpose(1, 2) @ v
        return self.out((q @ kv) / (q @ k.sum(1, keepdim=True).transpose(1, 2) + 1e-6))


class JointBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm1_context = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn, self.attn_context = ProjAttention(dim, heads), ProjAttention(dim, heads)
        self.norm2, self.ff = nn.LayerNorm(dim), SwiGLU(dim, 2 * dim)
        self.norm2_context, self.ff_context = nn.LayerNorm(dim), SwiGLU(dim, 2 * dim)

    def forward(self, x, ctx):
        qi, ki, vi = self.attn.qkv(self.norm1(x))
        qt, kt, vt = self.attn_context.qkv(self.norm1_context(ctx))
        out = F.scaled_dot_product_attention(torch.cat([qt, qi], 2), torch.cat([kt, ki], 2), torch.cat([vt, vi], 2))
        out = out.transpose(1, 2).flatten(2)
        t = ctx.shape[1]
        x = x + self.attn.to_out(out[:, t:])
        ctx = ctx + self.attn_context.to_out(out[:, :t])
        return x + self.ff(self.norm2(x)), ctx + self.ff_context(self.norm2_context(ctx))


class ProjOnlyMMDiT(nn.Module):
    def __init__(self, dim=32, heads=4, depth=2, channels=4, patch=2, context_dim=12):
        super().__init__()
        self.p, self.c = patch, channels
        self.x_embedder = nn.Conv2d(channels, dim, patch, patch)
        self.context_embedder = nn.Linear(context_dim, dim)
        self.t_embedder = nn.Linear(32, dim)
        self.transformer_blocks = nn.ModuleList(JointBlock(dim, heads) for _ in range(depth))
        self.refiner = LinearAttention(dim)
        self.proj_out = nn.Linear(dim, patch * patch * channels)

    def forward(self, hidden_states, encoder_hidden_states, timestep):
        b, _, hh, ww = hidden_states.shape
        p, h, w = self.p, hh // self.p, ww // self.p
        x = self.x_embedder(hidden_states).flatten(2).transpose(1, 2)
        x = x + self.t_embedder(_sincos(timestep, 32).to(x.dtype))[:, None]
        ctx = self.context_embedder(encoder_hidden_states)
        for block in self.transformer_blocks:
            x, ctx = block(x, ctx)
        x = self.proj_out(x + self.refiner(x))
        return x.reshape(b, h, w, p, p, self.c).permute(0, 5, 1, 3, 2, 4).reshape(b, self.c, hh, ww)


class PerSampleTextDiT(nn.Module):
    """Joint attention over [the unpadded text of each sample | image] ([image | text] with text_after), one
    sample at a time: the text length comes from the mask at run time (a data-dependent size for torch.export)."""

    def __init__(self, dim=32, heads=4, depth=2, channels=4, patch=2, context_dim=12, text_after=False, fused=True):
        super().__init__()
        self.p, self.c, self.heads, self.text_after = patch, channels, heads, text_after
        self.x_embedder = nn.Conv2d(channels, dim, patch, patch)
        self.context_embedder = nn.Linear(context_dim, dim)
        self.t_embedder = nn.Linear(32, dim)
        self.blocks = nn.ModuleList(TimmAttention(dim, heads, fused=fused) for _ in range(depth))
        self.proj_out = nn.Linear(dim, patch * patch * channels)

    def embed(self, x, t, context):
        """Image tokens (timestep added) and projected text."""
        img = self.x_embedder(x).flatten(2).transpose(1, 2) + self.t_embedder(_sincos(t, 32).to(x.dtype))[:, None]
        return img, self.context_embedder(context)

    def unpatchify(self, out, x):
        b, _, hh, ww = x.shape
        p, h, w = self.p, hh // self.p, ww // self.p
        return out.reshape(b, h, w, p, p, self.c).permute(0, 5, 1, 3, 2, 4).reshape(b, self.c, hh, ww)

    def forward(self, x, t, context, context_mask):
        h, w = x.shape[2] // self.p, x.shape[3] // self.p
        img, ctx = self.embed(x, t, context)
        outs = []
        for i in range(x.shape[0]):
            if self.text_after:
                seq = torch.cat([img[i:i + 1], ctx[i][context_mask[i]][None]], dim=1)
            else:
                seq = torch.cat([ctx[i][context_mask[i]][None], img[i:i + 1]], dim=1)  # unpadded text | image
            for blk in self.blocks:
                seq = seq + blk(seq)
            outs.append(seq[:, :h * w] if self.text_after else seq[:, -h * w:])
        return self.unpatchify(self.proj_out(torch.cat(outs, 0)), x)


class PerSampleValidImageDiT(PerSampleTextDiT):
    """Each sample attends to [text | its image tokens where `image_mask` is set]: a run-time image count."""

    def forward(self, x, t, context, image_mask):
        img, ctx = self.embed(x, t, context)
        outs = []
        for i in range(x.shape[0]):
            seq = torch.cat([ctx[i:i + 1], img[i][image_mask[i]][None]], dim=1)  # text | valid image tokens
            for blk in self.blocks:
                seq = seq + blk(seq)
            outs.append(seq.mean(1))
        return self.proj_out(torch.stack(outs, 0))


class CrossAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.q, self.kv, self.proj = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)

    def forward(self, x, context):
        b, n, c = x.shape
        q = self.q(x).reshape(b, n, self.heads, -1).transpose(1, 2)
        k, v = self.kv(context).reshape(b, context.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))


class CrossBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn, self.cross = TimmAttention(dim, heads, fused=True), CrossAttention(dim, heads)

    def forward(self, x, context):
        x = x + self.attn(self.norm1(x))
        return x + self.cross(self.norm2(x), context)


class PerSampleCrossDiT(PerSampleTextDiT):
    """Per sample: self-attention over the image tokens, cross-attention from them to the unpadded text."""

    def __init__(self, dim=32, heads=4, depth=2, **kw):
        super().__init__(dim, heads, depth, **kw)
        self.blocks = nn.ModuleList(CrossBlock(dim, heads) for _ in range(depth))

    def forward(self, x, t, context, context_mask):
        img, ctx = self.embed(x, t, context)
        outs = []
        for i in range(x.shape[0]):
            tok, text = img[i:i + 1], ctx[i][context_mask[i]][None]
            for blk in self.blocks:
                tok = blk(tok, text)
            outs.append(tok)
        return self.unpatchify(self.proj_out(torch.cat(outs, 0)), x)


def _g(seed):
    return torch.Generator().manual_seed(seed)


def origdit(grid=(4, 4), batch=2, seed=0):
    torch.manual_seed(seed)
    m = OrigDiT(input_size=max(grid) * 2)
    g = _g(seed + 1)
    return m.eval(), dict(x=torch.randn(batch, 4, grid[0] * 2, grid[1] * 2, generator=g),
                          t=torch.randint(0, 1000, (batch,), generator=g), y=torch.randint(0, 10, (batch,), generator=g))


def xtransdit(grid=(4, 4), batch=2, seed=0, text=5):
    torch.manual_seed(seed)
    m = XTransDiT()
    g = _g(seed + 1)
    mask = torch.ones(batch, text, dtype=torch.bool)
    mask[0, text // 2:] = False  # padded caption
    return m.eval(), dict(x=torch.randn(batch, 4, grid[0] * 2, grid[1] * 2, generator=g),
                          times=torch.rand(batch, generator=g) * 1000,
                          context=torch.randn(batch, text, 12, generator=g), context_mask=mask)


def regvit(grid=(4, 4), batch=2, seed=0):
    torch.manual_seed(seed)
    m = RegViT(max_tokens=max(64, grid[0] * grid[1]))
    g = _g(seed + 1)
    return m.eval(), dict(pixels=torch.randn(batch, 3, grid[0] * 2, grid[1] * 2, generator=g),
                          cond=torch.randn(batch, 32, generator=g))


def packeddit(grid=(2, 3, 4), batch=2, seed=0):
    torch.manual_seed(seed)
    m = PackedDiT()
    g = _g(seed + 1)
    f, h, w = grid if len(grid) == 3 else (1, *grid)
    return m.eval(), dict(tokens=torch.randn(batch, f * h * w, 8, generator=g), sigma=torch.rand(batch, generator=g),
                          num_frames=f, height=h, width=w)


def _latent_t(model, grid, batch, seed):
    g = _g(seed + 1)
    return model.eval(), dict(x=torch.randn(batch, 4, grid[0] * 2, grid[1] * 2, generator=g),
                              t=torch.rand(batch, generator=g))


def ropedit(grid=(4, 4), batch=2, seed=0):
    torch.manual_seed(seed)
    return _latent_t(RopeDiT(), grid, batch, seed)


def gqadit(grid=(4, 4), batch=2, seed=0, kv_heads=2, repeat="repeat"):
    torch.manual_seed(seed)
    return _latent_t(GQADiT(kv_heads=kv_heads, repeat=repeat), grid, batch, seed)


def mixffndit(grid=(4, 4), batch=2, seed=0):
    torch.manual_seed(seed)
    return _latent_t(MixFFNDiT(), grid, batch, seed)


def persampletext(grid=(4, 4), batch=2, seed=0, text=5, cls=PerSampleTextDiT, **build):
    """Sample 0's caption is padded to text // 2 tokens, the others use all `text`."""
    torch.manual_seed(seed)
    g = _g(seed + 1)
    mask = torch.ones(batch, text, dtype=torch.bool)
    mask[0, text // 2:] = False
    return cls(**build).eval(), dict(x=torch.randn(batch, 4, grid[0] * 2, grid[1] * 2, generator=g),
                                           t=torch.rand(batch, generator=g) * 1000,
                                           context=torch.randn(batch, text, 12, generator=g), context_mask=mask)


def listdit(grid=(4, 4), batch=2, seed=0):
    torch.manual_seed(seed)
    return _latent_t(ListDiT(), grid, batch, seed)


def mpdit(grid=(4, 4), batch=2, seed=0):
    torch.manual_seed(seed)
    return _latent_t(MPDiT(), grid, batch, seed)


def projonly(grid=(4, 4), batch=2, seed=0, text=5):
    torch.manual_seed(seed)
    g = _g(seed + 1)
    return ProjOnlyMMDiT().eval(), dict(hidden_states=torch.randn(batch, 4, grid[0] * 2, grid[1] * 2, generator=g),
                                        encoder_hidden_states=torch.randn(batch, text, 12, generator=g),
                                        timestep=torch.rand(batch, generator=g) * 1000)


HAND = {"origdit": origdit, "xtransdit": xtransdit, "regvit": regvit, "packeddit": packeddit}
